"""Stacked layers (`model.scan_layers`; decoders, BERT and both T5 stacks, through `Layered`):
one module per position in the layer pattern, its variables stacked over the repeats on a
leading `layers` axis, run by `lax.scan`.

XLA then compiles one block (or one period of a sliding / global pattern) instead of
`num_layers` copies, which is what keeps compile time flat as models get deeper. The
parameter layout differs from the per-layer one: `blocks/{i}/...` becomes `stack/{j}/...`
with a leading dimension of `num_layers / period`, layer i = g * period + j living at index
g of `stack/{i % period}`. `unstacked` and `in_layout_of` convert flat parameter dicts
between the two, so checkpoints, `init_from` and HF import / export work with either.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

STACK = "stack"  # the parameter-path key of a decoder's stacked blocks
LAYER_AXIS = "layers"  # logical name of the stacked axis (replicated: no mesh rule maps it)
_STACKED = re.compile(rf"(^|.*/){STACK}/(\d+)/(.*)$")


def path_name(path) -> str:
  """"blocks/0/attn/query/kernel" for a jax key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flatten(tree: Any) -> dict[str, Any]:
  """{"blocks/0/attn/query/kernel": leaf, ...} of a params pytree."""
  return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten_like(template: Any, flat: dict[str, Any]) -> Any:
  """The pytree of `template`'s structure whose leaves are `flat[path]`."""
  return jax.tree_util.tree_map_with_path(lambda p, _: flat[path_name(p)], template)


def is_stacked(path) -> bool:
  """Whether the leaf at jax key `path` is a stacked block variable (leading `layers` axis)."""
  return _STACKED.match(path_name(path)) is not None


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
  """One module like `modules[0]` whose variables stack all of theirs on a new leading axis
  (logical name `layers`). The modules must have the same structure and static settings."""
  splits = [nnx.split(m) for m in modules]
  graphdef = splits[0][0]
  if any(g != graphdef for g, _ in splits[1:]):
    raise ValueError("only modules of identical structure and settings stack")

  def stack(*variables: nnx.Variable) -> nnx.Variable:
    first = variables[0]
    value = jnp.stack([v[...] for v in variables])
    names = first.get_metadata().get("out_sharding")
    if names is None:
      return first.replace(value)
    return first.replace(value, out_sharding=(LAYER_AXIS, *names))

  states = [s for _, s in splits]
  stacked = jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, stacked)


def layer_of(stacks: Iterable[nnx.Module], layer: int) -> nnx.Module:
  """Layer `layer` of the stacked modules (`stacks[j]` holds layers j, j + p, ...)."""
  stacks = list(stacks)
  graphdef, state = nnx.split(stacks[layer % len(stacks)])
  return nnx.merge(graphdef, jax.tree.map(lambda x: x[layer // len(stacks)], state))


def scan_layers(stacks: Iterable[nnx.Module], run: Callable, x: Any, per_layer: Any) -> Any:
  """`x` through every layer of the stacked modules in order, by `lax.scan` over the repeats:
  `run(block, x, xs) -> (x, ys)` applies one layer to its own inputs `xs` (slices of the
  pytree `per_layer`, whose leaves have a leading `num_layers` axis: dropout keys, KV caches).
  Returns x and every layer's `ys` in order (the layers of one place in the pattern give `ys`
  of one structure; different places may differ, e.g. a mixture's statistics and a dense
  MLP's none)."""
  graphdefs, states = zip(*(nnx.split(m) for m in stacks))
  period = len(graphdefs)
  grouped = jax.tree.map(lambda a: a.reshape(-1, period, *a.shape[1:]), per_layer)

  def body(x, xs):
    layer_states, layer_xs = xs
    outputs = []
    for j, (graphdef, state) in enumerate(zip(graphdefs, layer_states)):
      x, ys = run(nnx.merge(graphdef, state), x, jax.tree.map(lambda a: a[j], layer_xs))
      outputs.append(ys)
    return x, tuple(outputs)

  x, ys = jax.lax.scan(body, x, (list(states), grouped))
  repeats = jax.tree.leaves(states[0])[0].shape[0]
  return x, [jax.tree.map(lambda a: a[r], ys[j]) for r in range(repeats) for j in range(period)]


class Layered:
  """Mixin of a module whose blocks run one after another: per layer in `self.blocks`, or,
  with `self.cfg.scan_layers`, stacked in `self.stack` (`stack[j]` holds layers j, j + p, ...
  for a layer pattern of length p) and run by `lax.scan`."""

  def set_layers(self, blocks: list[nnx.Module], period: int = 1) -> None:
    """Holds `blocks` per layer or stacked, as the config says."""
    if self.cfg.scan_layers:
      self.stack = nnx.List([stack_modules(blocks[j::period]) for j in range(period)])
    else:
      self.blocks = nnx.List(blocks)

  def num_blocks(self) -> int:
    """How many layers the module runs."""
    if not self.cfg.scan_layers:
      return len(self.blocks)
    return len(self.stack) * jax.tree.leaves(nnx.state(self.stack[0]))[0].shape[0]

  def block_groups(self) -> list[tuple[nnx.Module, int]]:
    """(module, repeats) for every block module in order: a per-layer block with repeats 0,
    or a stacked module holding `repeats` layers on its leading axis."""
    if not self.cfg.scan_layers:
      return [(block, 0) for block in self.blocks]
    return [(stack, self.num_blocks() // len(self.stack)) for stack in self.stack]

  def layer(self, i: int) -> nnx.Module:
    """Block `i` (sliced out of its stack when stacked)."""
    if self.cfg.scan_layers:
      return layer_of(self.stack, i)
    return self.blocks[i]

  def unstack_layers(self) -> None:
    """Per-layer blocks in place of stacked ones, holding the same weights: KV-cache decoding
    runs one layer at a time, and slices each stack once, not every step."""
    if self.cfg.scan_layers:
      self.blocks = nnx.List([self.layer(i) for i in range(self.num_blocks())])
      del self.stack
      self.cfg = dataclasses.replace(self.cfg, scan_layers=False)

  def run_layers(self, run: Callable, x: Any, keys: list[jax.Array | None]) -> Any:
    """`x` through every layer in order: `run(block, x, key, scanned) -> x`, `keys[i]` the
    dropout key of layer i (None: no dropout)."""
    return self.run_layers_with_outputs(
        lambda block, x, key, scanned: (run(block, x, key, scanned), None), x, keys)[0]

  def run_layers_with_outputs(self, run: Callable, x: Any,
                              per_layer: list[Any]) -> tuple[Any, list[Any]]:
    """`x` through every layer in order, each with inputs of its own and outputs:
    `run(block, x, xs, scanned) -> (x, ys)`, `per_layer[i]` the `xs` of layer i (a pytree:
    its dropout key, its KV cache). Returns x and the `ys` of every layer in order."""
    if not self.cfg.scan_layers:
      outputs = []
      for block, xs in zip(self.blocks, per_layer):
        x, ys = run(block, x, xs, False)
        outputs.append(ys)
      return x, outputs
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *per_layer)
    return scan_layers(self.stack, lambda block, x, xs: run(block, x, xs, True), x, stacked)


def unrolled(model: nnx.Module) -> nnx.Module:
  """`model` with the blocks of every module in it (a policy's critic, both T5 stacks)
  per layer, in place."""
  for module in [m for _, m in nnx.iter_graph(model) if isinstance(m, Layered)]:
    module.unstack_layers()
  return model


def _periods(names: Iterable[str]) -> dict[str, int]:
  """{path prefix: pattern length} of the stacks among flat parameter names."""
  periods: dict[str, int] = {}
  for name in names:
    m = _STACKED.match(name)
    if m:
      periods[m[1]] = max(periods.get(m[1], 0), int(m[2]) + 1)
  return periods


def _layer_name(stacked: re.Match, g: int, periods: dict[str, int]) -> str:
  """The per-layer name of repeat `g` of the stacked leaf `stacked` (a `_STACKED` match)."""
  prefix, j, rest = stacked[1], int(stacked[2]), stacked[3]
  return f"{prefix}blocks/{g * periods[prefix] + j}/{rest}"


def unstacked(flat: dict[str, Any]) -> dict[str, Any]:
  """A flat params dict with per-layer names (`blocks/{i}/...`) for stacked ones."""
  periods = _periods(flat)
  out = {}
  for name, leaf in flat.items():
    m = _STACKED.match(name)
    if not m:
      out[name] = leaf
      continue
    for g in range(leaf.shape[0]):
      out[_layer_name(m, g, periods)] = leaf[g]
  return out


def in_layout_of(flat: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
  """`flat` (either layout) with its block parameters in the layout of `template` (flat
  names -> arrays or shapes-with-dtype). Leaves the template lacks, or whose layers `flat`
  does not all have, keep their own names."""
  flat = unstacked(flat)
  periods = _periods(template)
  out, used = {}, set()
  for name, like in template.items():
    m = _STACKED.match(name)
    if not m:
      continue
    parts = [_layer_name(m, g, periods) for g in range(like.shape[0])]
    if all(p in flat for p in parts):
      values = [flat[p] for p in parts]
      stack = jnp.stack if any(isinstance(v, jax.Array) for v in values) else np.stack
      out[name] = stack(values)
      used.update(parts)
  out.update({k: v for k, v in flat.items() if k not in used})
  return out

