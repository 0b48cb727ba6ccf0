"""Parameter-efficient fine-tuning: which parameters train, and the surgery that adds them.

`config.peft.method`: "none" (everything trains), "lora" (LoRA factors on the linears
matching `peft.targets`; the base is frozen), "freeze" (only parameters whose path matches
`peft.include` and not `peft.exclude` train). The optimizer sees only trainable leaves, so
frozen ones get no optimizer state and stay bit-identical.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
from flax import nnx

from jaxlm.peft.lora import apply_lora

METHODS = ("none", "lora", "freeze")


def wrap(model: nnx.Module, peft: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
  """The model with the configured surgery applied (in place; returned for convenience)."""
  if peft["method"] not in METHODS:
    raise ValueError(f"peft.method must be one of {METHODS}, got {peft['method']!r}")
  if peft["method"] == "lora":
    apply_lora(model, peft["targets"], peft["rank"], peft["alpha"], rngs)
  return model


def path_name(path) -> str:
  """"blocks/0/attn/query/kernel" for a jax key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_mask(abstract_state: nnx.State, peft: Mapping[str, Any]) -> dict:
  """Pure-dict tree of bools: which parameters the optimizer updates."""
  method = peft["method"]
  include = re.compile(peft["include"] or ".*")
  exclude = re.compile(peft["exclude"]) if peft["exclude"] else None

  def trainable(path, v) -> bool:
    if method == "lora":
      return isinstance(v, nnx.LoRAParam)
    if method == "freeze":
      name = path_name(path)
      return bool(include.search(name)) and not (exclude and exclude.search(name))
    return True

  mask = jax.tree_util.tree_map_with_path(trainable, abstract_state,
                                          is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.State(mask).to_pure_dict() if isinstance(mask, nnx.State) else mask


def counts(params: Any, mask: Any) -> tuple[int, int]:
  """(trainable, total) parameter counts."""
  sizes = jax.tree.leaves(jax.tree.map(lambda p, m: (p.size, p.size * m), params, mask))
  return int(sum(sizes[1::2])), int(sum(sizes[0::2]))
