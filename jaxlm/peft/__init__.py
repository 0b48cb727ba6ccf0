"""Parameter-efficient fine-tuning: which parameters train, and the surgery that adds them.

`config.peft.method`:
  "none"     everything trains.
  "lora"     LoRA factors on the linears matching `peft.targets` (rank, alpha; `peft.dropout`
             drops the LoRA input path in training); with `peft.use_dora`, DoRA (a learned
             magnitude per output column of the adapted weight); `peft.use_rslora` scales
             by alpha / sqrt(rank) — `lora.py`.
  "freeze"   only parameters whose path matches `peft.include` and not `peft.exclude` train.
  "adapter"  bottleneck adapters of `peft.adapter_size` after the attention and / or MLP of
             every block (`peft.adapter_placement`: attn | mlp | both) — `adapters.py`.
  "prefix"   `peft.prefix_len` trainable key/value slots per layer that every query sees,
             optionally reparameterised by an MLP (`peft.prefix_hidden`) — `prefix.py`.
  "prompt"   `peft.prompt_len` trainable virtual tokens before the input (of a decoder, or of
             T5's encoder), optionally through an MLP encoder (`peft.prompt_hidden`) —
             `prompt.py`.
Beside any of the last four, `peft.trainable_tokens` trains single rows of the token
embedding (PEFT's `trainable_token_indices`; "chat": the chat template's tokens) —
`token_rows.py`.
Added parameters are all `nnx.LoRAParam`s and, for every method but none / freeze, the only
trainable ones but for base parameters matching `peft.include` (and not `peft.exclude`),
which train beside them (PEFT's `modules_to_save`, e.g. `include=^embed/embedding$` for the
embeddings of tokens the base never saw); the rest of the base is frozen. A fresh lora or
adapter model equals the base model exactly. The optimizer sees only trainable leaves, so frozen ones get no optimizer state and
stay bit-identical. `save_adapter` (`checkpoint.py`) stores the trainable leaves alone;
`jaxlm.train.adapters.load_adapter` puts them back onto a base checkpoint. With
`model.scan_layers`, LoRA factors and adapters are stacked on the blocks' `layers` axis.
"""

from __future__ import annotations

import re
from typing import Any, Collection, Mapping

import jax
from flax import nnx

from jaxlm.peft.adapters import apply_adapters
from jaxlm.peft.checkpoint import save_adapter
from jaxlm.peft.lora import apply_lora, lora_scale, renorm_magnitudes
from jaxlm.models.stacking import path_name
from jaxlm.peft.params import PeftParam
from jaxlm.peft.prefix import apply_prefix
from jaxlm.peft.prompt import apply_prompt, resample_from_vocab
from jaxlm.peft import token_rows

METHODS = ("none", "lora", "freeze", "adapter", "prefix", "prompt")
ADDS_PARAMS = ("lora", "adapter", "prefix", "prompt")  # methods that train only what they add

__all__ = ["METHODS", "after_init_from", "check_method", "counts", "lora_scale_of", "path_name",
           "save_adapter", "trainable_mask", "wrap"]


def wrap(model: nnx.Module, peft: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
  """The model with the configured surgery applied (in place; returned for convenience)."""
  check_method(peft)
  method, get = peft["method"], peft.get
  if method == "lora":
    apply_lora(model, peft["targets"], peft["rank"], peft["alpha"], rngs, get("dropout", 0.0),
               get("use_dora", False), get("use_rslora", False))
  elif method == "adapter":
    apply_adapters(model, get("adapter_size", 64), get("adapter_placement", "both"), rngs)
  elif method == "prefix":
    apply_prefix(model, get("prefix_len", 16), get("prefix_hidden", 0), rngs)
  elif method == "prompt":
    apply_prompt(model, get("prompt_len", 16), get("prompt_hidden", 0), rngs)
  if get("trainable_tokens"):
    token_rows.apply_token_rows(model, token_rows.parse(peft["trainable_tokens"]))
  return model


def check_method(peft: Mapping[str, Any]) -> None:
  """ValueError for an unknown `peft.method`, or a LoRA variant asked of another method."""
  method = peft["method"]
  if method not in METHODS:
    raise ValueError(f"peft.method must be one of {METHODS}, got {method!r}")
  for variant in ("use_dora", "use_rslora"):
    if peft.get(variant) and method != "lora":
      raise ValueError(f"peft.{variant} is a LoRA variant: it needs peft.method=lora, got "
                       f"{method!r}")
  if peft.get("trainable_tokens") and method not in ADDS_PARAMS:
    raise ValueError(f"peft.trainable_tokens trains embedding rows beside an adapter: it needs "
                     f"peft.method in {ADDS_PARAMS}, got {method!r}")


def lora_scale_of(peft: Mapping[str, Any]) -> float:
  """The LoRA update's scale for a `peft` config: alpha / rank (alpha / sqrt(rank), rsLoRA)."""
  return lora_scale(peft["alpha"], peft["rank"], peft.get("use_rslora", False))


def after_init_from(params: Any, loaded: Collection[str], peft: Mapping[str, Any],
                    seed: int) -> Any:
  """Added parameters whose initial value depends on base weights, redone after `init_from`
  replaced those weights (`loaded`: the replaced paths): prompt tuning's virtual tokens,
  DoRA's magnitudes and trainable token rows."""
  if peft.get("trainable_tokens"):
    params = token_rows.recopy_rows(params, set(loaded), token_rows.parse(peft["trainable_tokens"]))
  if peft["method"] == "prompt":
    return resample_from_vocab(params, set(loaded), seed)
  if peft["method"] == "lora" and peft.get("use_dora"):
    return renorm_magnitudes(params, set(loaded), lora_scale_of(peft))
  return params


def trainable_mask(abstract_state: nnx.State, peft: Mapping[str, Any]) -> dict:
  """Pure-dict tree of bools: which parameters the optimizer updates."""
  method = peft["method"]
  # freeze: "" includes everything; the adding methods: "" adds no base parameter
  include = re.compile(peft["include"] or ".*") if peft["include"] or method == "freeze" else None
  exclude = re.compile(peft["exclude"]) if peft["exclude"] else None

  def included(path) -> bool:
    name = path_name(path)
    return bool(include and include.search(name)) and not (exclude and exclude.search(name))

  def trainable(path, v) -> bool:
    if method in ADDS_PARAMS:
      return isinstance(v, PeftParam) or included(path)
    if method == "freeze":
      return included(path)
    return True

  mask = jax.tree_util.tree_map_with_path(trainable, abstract_state,
                                          is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(nnx.State(mask)) if isinstance(mask, nnx.State) else mask


def counts(params: Any, mask: Any) -> tuple[int, int]:
  """(trainable, total) parameter counts."""
  sizes = jax.tree.leaves(jax.tree.map(lambda p, m: (p.size, p.size * m), params, mask))
  return int(sum(sizes[1::2])), int(sum(sizes[0::2]))
