"""Adapter-only checkpoints: the trainable leaves of a PEFT run, saved small and put back
onto a base checkpoint later.

`save_adapter(directory, params, trainable, config)` writes the leaves `trainable` marks
(Orbax, `directory/params`) and the run's resolved config (`directory/config.json`); the
trainer does this into `WORKDIR/adapter` at the end of every PEFT run.
`jaxlm.train.adapters.load_adapter(base, adapter)` rebuilds that run's model from a base
workdir plus the adapter (`overlay` below), the frozen leaves coming from the base checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm.models.stacking import path_name


def trainable_leaves(params: Any, trainable: Any) -> dict:
  """The sub-tree of the pure-dict `params` that `trainable` marks (empty branches dropped)."""
  if not isinstance(params, dict):
    return params if trainable else {}
  out = {k: trainable_leaves(v, trainable[k]) for k, v in params.items()}
  return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}


def save_adapter(directory: str | Path, params: Any, trainable: Any, config: dict) -> Path:
  """Saves the trainable leaves of `params` and `config`; call on every process. Overwrites."""
  directory = Path(directory).absolute()
  adapter = trainable_leaves(params, trainable)
  if not adapter:
    raise ValueError("no trainable parameters to save as an adapter")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / "params", adapter, force=True)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    (directory / "config.json").write_text(json.dumps(config, indent=2))
  return directory


def overlay(base: dict, adapter: dict, abstract: Any, trainable: Any) -> Any:
  """The parameter tree shaped like `abstract`: trainable leaves from `adapter`, the rest from
  `base`; a leaf missing from its source or of the wrong shape is an error naming it."""
  base_flat = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(base)[0]}
  adapter_flat = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(adapter)[0]}
  mask_flat = {path_name(p): m for p, m in jax.tree_util.tree_flatten_with_path(trainable)[0]}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  out = []
  for path, want in leaves:
    name = path_name(path)
    source, where = (adapter_flat, "adapter") if mask_flat[name] else (base_flat, "base model")
    if name not in source:
      raise ValueError(f"parameter {name} is missing from the {where}")
    if source[name].shape != want.shape:
      raise ValueError(f"parameter {name}: the {where} has shape {source[name].shape}, the "
                       f"model needs {want.shape}")
    out.append(source[name])
  return jax.tree_util.tree_unflatten(treedef, out)
