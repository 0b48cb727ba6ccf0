"""LoRA (Hu et al. 2021) as explicit tree surgery over a model.

`apply_lora` swaps every `nnx.Linear` whose path matches a regex for a `LoRALinear` that
keeps the same `kernel` and `bias` variables (so parameter paths, checkpoints and `init_from`
are unchanged) and adds `lora_a` (in, r; random) and `lora_b` (r, out; zero) as
`nnx.LoRAParam` variables: y = x W + b + (alpha / r) x A B. With B = 0 the model is exactly
the base model. With `dropout` > 0 the LoRA input path is dropped out,
y = x W + b + (alpha / r) drop(x) A B, when a key is passed as `rng=` (the decoder's blocks
pass one per layer in training, as `keyed_dropout` asks them to); without a key it is exact.
`merge_params` folds the update into the kernels for export or fast inference,
`unmerge_params` undoes it, and `adapter_params` is the adapter alone.
"""

from __future__ import annotations

import re

import jax
from flax import nnx

from jaxlm.models import layers
from jaxlm.peft.params import decoder_of, new_param


class LoRALinear(nnx.Module):
  """A linear layer with a low-rank trainable update; `kernel`/`bias` come from the base."""

  def __init__(self, base: nnx.Linear, rank: int, alpha: float, rngs: nnx.Rngs,
               dropout: float = 0.0):
    # A stacked linear (`model.scan_layers`) has a leading `layers` axis: its factors get one
    # too, and `lax.scan` hands each layer its own slice.
    *lead, d_in, d_out = base.kernel.get_value().shape
    names = base.kernel.get_metadata().get("out_sharding") or (None,) * (len(lead) + 2)
    lead_names, (in_name, out_name) = tuple(names[:-2]), names[-2:]
    self.kernel, self.bias = base.kernel, base.bias
    self.dtype = base.dtype
    self.scale = alpha / rank
    self.keyed_dropout = dropout
    init_a = nnx.initializers.kaiming_uniform(batch_axis=tuple(range(len(lead))))
    self.lora_a = new_param(init_a, (*lead_names, in_name, None), rngs.params(),
                            (*lead, d_in, rank))
    self.lora_b = new_param(nnx.initializers.zeros_init(), (*lead_names, None, out_name),
                            rngs.params(), (*lead, rank, d_out))

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    dt = self.dtype or x.dtype
    x = x.astype(dt)
    y = x @ self.kernel[...].astype(dt)
    if self.bias is not None:
      y = y + self.bias[...].astype(dt)
    x_in = layers.dropout(x, self.keyed_dropout, rng)
    update = (x_in @ self.lora_a[...].astype(dt)) @ self.lora_b[...].astype(dt)
    return y + self.scale * update


def _linears(model: nnx.Module):
  """(path string, parent module, attribute name, linear) for every nnx.Linear."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Linear) and path:
      parent = model
      for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
      yield "/".join(map(str, path)), parent, path[-1], node


def apply_lora(model: nnx.Module, targets: str, rank: int, alpha: float,
               rngs: nnx.Rngs, dropout: float = 0.0) -> list[str]:
  """Puts LoRA on the linears whose path matches `targets` (re.search); returns their paths.

  `dropout` > 0 needs a decoder, whose blocks hand the LoRA layers their dropout keys.
  """
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"peft.dropout must be in [0, 1), got {dropout}")
  if dropout > 0:
    decoder_of(model, "lora with peft.dropout > 0").keyed_dropout = dropout
  pattern = re.compile(targets)
  chosen = [(p, parent, name, lin) for p, parent, name, lin in _linears(model)
            if pattern.search(p)]
  if not chosen:
    raise ValueError(f"peft.targets={targets!r} matches no linear layer")
  for _, parent, name, linear in chosen:
    setattr(parent, name, LoRALinear(linear, rank, alpha, rngs, dropout))
  return [p for p, *_ in chosen]


def merge_params(params: dict, scale: float) -> dict:
  """Base-model parameters with every LoRA update folded in (W + s A B), LoRA leaves dropped:
  what a model built without LoRA loads for export or fast inference."""
  if not isinstance(params, dict):
    return params
  if "lora_a" in params:
    merged = {k: v for k, v in params.items() if k not in ("lora_a", "lora_b")}
    merged["kernel"] = params["kernel"] + scale * params["lora_a"] @ params["lora_b"]
    return merged
  return {k: merge_params(v, scale) for k, v in params.items()}


def unmerge_params(merged: dict, adapter: dict, scale: float) -> dict:
  """The inverse of `merge_params`: base kernels (W - s A B) plus the adapter's leaves."""
  if not isinstance(adapter, dict) or not adapter:
    return merged
  if "lora_a" in adapter:
    out = dict(merged)
    out["kernel"] = merged["kernel"] - scale * adapter["lora_a"] @ adapter["lora_b"]
    return {**out, "lora_a": adapter["lora_a"], "lora_b": adapter["lora_b"]}
  return {k: unmerge_params(v, adapter.get(k, {}), scale) for k, v in merged.items()}


def adapter_params(params: dict) -> dict:
  """The LoRA leaves alone (a small tree to save, or to apply onto a base later)."""
  if not isinstance(params, dict):
    return {}
  if "lora_a" in params:
    return {"lora_a": params["lora_a"], "lora_b": params["lora_b"]}
  out = {k: adapter_params(v) for k, v in params.items()}
  return {k: v for k, v in out.items() if v}
