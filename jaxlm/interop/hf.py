"""In-memory conversion: an HF checkpoint folder <-> (ModelConfig, jaxlm params).

`load_hf(folder)` reads config.json and the safetensors (sharded or not) and returns the
jaxlm model config and a params pytree shaped like `nnx.to_pure_dict(nnx.split(model)[1])`;
`save_hf(folder, cfg, params)` writes config.json + model.safetensors that
`transformers.AutoModel*.from_pretrained` loads. `build_model(cfg, params)` is the NNX model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from jaxlm.interop import hf_config, hf_config_export, hf_weights, safetensors_io
from jaxlm.models import factory, stacking
from jaxlm.models.config import ModelConfig
from jaxlm.models.stacking import flatten, unflatten_like

CONFIG_FILE = "config.json"


def read_config(folder: str | Path) -> dict[str, Any]:
  """The HF config.json of `folder` as a dict; a multimodal checkpoint's (Gemma 3 4B+) is its
  language model's, as the text-only architecture's config (see `hf_config.LANGUAGE_MODELS`)."""
  path = Path(folder) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no {CONFIG_FILE})")
  return hf_config.language_model_config(json.loads(path.read_text()))


def abstract_state(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """Graph definition and shape-only state of the model of `cfg` (nothing allocated)."""
  return nnx.split(nnx.eval_shape(lambda: factory.create(cfg, nnx.Rngs(0))))


def build_model(cfg: ModelConfig, params: Any) -> nnx.Module:
  """The NNX model of `cfg` holding `params` (a pure dict as `load_hf` returns)."""
  graphdef, state = abstract_state(cfg)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def params_from_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray],
                        hf_cfg: dict[str, Any] | None = None) -> tuple[dict, list[str]]:
  """(params pure dict, unused HF tensor names) of an HF tensor dict for model `cfg`."""
  per_layer = dataclasses.replace(cfg, scan_layers=False)  # HF names are per layer
  shapes = {k: tuple(v.shape)
            for k, v in flatten(nnx.to_pure_dict(abstract_state(per_layer)[1])).items()}
  flat, unused = hf_weights.to_jaxlm(per_layer, tensors, shapes, hf_cfg)
  extra = sorted(set(shapes) - set(flat))
  if extra:
    raise hf_weights.WeightMismatchError(f"no HF tensor maps to jaxlm parameter(s) {extra}")
  template = nnx.to_pure_dict(abstract_state(cfg)[1])
  return unflatten_like(template, stacking.in_layout_of(flat, flatten(template))), unused


def load_hf(folder: str | Path, **model_overrides) -> tuple[ModelConfig, dict, dict[str, Any]]:
  """(ModelConfig, params, HF config dict) of an HF checkpoint folder (safetensors)."""
  hf_cfg = read_config(folder)
  fields = hf_config.model_fields(hf_cfg)
  cfg = ModelConfig(**{**fields, "dropout": 0.0, **model_overrides})
  params, _ = params_from_tensors(cfg, safetensors_io.read_tensors(folder), hf_cfg)
  return cfg, params, hf_cfg


def save_hf(folder: str | Path, cfg: ModelConfig, params: Any, *, dtype: str = "float32",
            base_config: dict[str, Any] | None = None) -> Path:
  """Writes config.json and model.safetensors of the model (params without LoRA leaves)."""
  folder = Path(folder)
  name = safetensors_io.dtype_name(dtype)
  config = hf_config_export.hf_config(cfg, base_config, name)  # names what HF cannot hold
  flat = {k: np.asarray(v, np.float32) for k, v in stacking.unstacked(flatten(params)).items()}
  safetensors_io.write_tensors(folder, hf_weights.to_hf(cfg, flat, config), name)
  (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
  return folder
