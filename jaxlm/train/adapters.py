"""Applying an adapter-only checkpoint (`jaxlm.peft.save_adapter`) onto a base run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm import config as configlib
from jaxlm.peft.checkpoint import overlay, trainable_leaves
from jaxlm.train import loop, pretrained, sharding
from jaxlm.train.checkpoint import abstract_like


def load_adapter(base_workdir: str | Path, adapter_dir: str | Path) -> tuple[Any, Any, Any, Any]:
  """(config, tokenizer, graphdef, params) of the PEFT model an adapter was trained as, with
  its frozen parameters from the newest checkpoint of `base_workdir` (same model config)."""
  adapter_dir = Path(adapter_dir).absolute()
  config_file = adapter_dir / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{adapter_dir} is not an adapter directory (no config.json)")
  cfg = configlib.from_dict(json.loads(config_file.read_text()))
  mesh = sharding.mesh_for_saved(cfg.mesh)
  base_cfg, tokenizer, _, base_params = loop.load_trained(base_workdir, mesh)
  diffs = pretrained.model_differences(configlib.to_dict(base_cfg.model),
                                       configlib.to_dict(cfg.model))
  if diffs:
    raise ValueError(f"the adapter in {adapter_dir} was trained on a different model than "
                     f"{base_workdir}:\n  " + "\n  ".join(diffs))
  setup = loop.build_model(cfg, tokenizer.vocab_size, mesh)
  abstract = abstract_like(jax.eval_shape(setup.init).params, setup.shardings.params)
  adapter = ocp.StandardCheckpointer().restore(adapter_dir / "params",
                                               trainable_leaves(abstract, setup.trainable))
  params = overlay(base_params, adapter, abstract, setup.trainable)
  return cfg, tokenizer, setup.graphdef, jax.device_put(params, setup.shardings.params)
