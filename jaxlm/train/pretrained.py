"""Starting a run from another run's weights (`config.init_from`) and loading frozen models.

Weights are matched by parameter path: a leaf present in both trees is taken from the
checkpoint (its shape must agree), a leaf only in the new model keeps its fresh
initialisation (a reward head, LoRA factors), a leaf only in the checkpoint is dropped (an
LM head the new model does not have). Both lists are reported, never silent.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxlm.models import stacking

# Model fields that may differ between a checkpoint and the run that starts from it.
FREE_MODEL_FIELDS = ("dropout", "attention_dropout", "dtype", "attention_impl", "remat")
# ... and those only a run started from a checkpoint may change (weights are converted; a
# resumed run's optimizer state keeps its layout).
LAYOUT_FIELDS = ("scan_layers",)


@dataclasses.dataclass
class MergeReport:
  """Which parameters were loaded, kept fresh, or dropped."""

  loaded: list[str]
  fresh: list[str]
  dropped: list[str]

  def __str__(self) -> str:
    parts = [f"{len(self.loaded)} tensors loaded"]
    if self.fresh:
      parts.append(f"newly initialised: {', '.join(self.fresh)}")
    if self.dropped:
      parts.append(f"not used: {', '.join(self.dropped)}")
    return "; ".join(parts)


def merge_pretrained(fresh: Any, loaded: Any) -> tuple[Any, MergeReport]:
  """`fresh` with every leaf that `loaded` also has replaced by the loaded value (blocks
  stacked or unstacked first to match `fresh`'s layout: `model.scan_layers`)."""
  loaded_flat = stacking.in_layout_of(stacking.flatten(loaded), stacking.flatten(fresh))
  fresh_paths = []
  out_leaves, taken = [], set()
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(fresh)
  for path, leaf in paths_and_leaves:
    name = stacking.path_name(path)
    if name in loaded_flat:
      value = loaded_flat[name]
      if value.shape != leaf.shape:
        raise ValueError(f"parameter {name}: checkpoint has shape {value.shape}, the model needs "
                         f"{leaf.shape}")
      out_leaves.append(value.astype(leaf.dtype, copy=False))
      taken.add(name)
    else:
      out_leaves.append(leaf)
      fresh_paths.append(name)
  report = MergeReport(sorted(taken), fresh_paths, sorted(set(loaded_flat) - taken))
  return jax.tree_util.tree_unflatten(treedef, out_leaves), report


def model_differences(saved_model: dict, model: dict, also_free: tuple[str, ...] = ()) -> list[str]:
  """Model-config fields (other than FREE_MODEL_FIELDS and `also_free`) that differ."""
  keys = (set(saved_model) | set(model)) - set(FREE_MODEL_FIELDS) - set(also_free)
  same = lambda a, b: a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                                 and list(a) == list(b))  # a JSON list read back is a tuple
  return [f"model.{k}: checkpoint has {saved_model.get(k)!r}, config has {model.get(k)!r}"
          for k in sorted(keys) if not same(saved_model.get(k), model.get(k))]
