"""A jaxlm LoRA adapter as a Hugging Face PEFT adapter (adapter_config.json +
adapter_model.safetensors) that `peft.PeftModel.from_pretrained` loads onto the transformers
model.

jaxlm's LoRA computes x W + (alpha / r) x A B with A (in, r) and B (r, out); PEFT computes
W x + (alpha / r) B' A' x with lora_A.weight A' = A^T (r, in) and lora_B.weight B' = B^T
(out, r), so the factors are transposed and the scale is the same. GPT-2's fused `c_attn`
gets one adapter whose rank is the sum of the query / key / value ranks (block-diagonal B),
with `rank_pattern` / `alpha_pattern` keeping the scale alpha / r (rsLoRA: alpha / sqrt(r))
unchanged; GPT-NeoX's fused
`query_key_value` the same, B's rows interleaved head by head as the fused weight's are.
DoRA magnitudes become PEFT's `lora_magnitude_vector` (`use_dora`); a fused projection's runs
over all its rows, those of a part without an adapter being its kernel's column norms (its
rows of B are zero, so PEFT's norms there are the base weight's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.interop import hf_config, hf_weights, safetensors_io
from jaxlm.models.config import ModelConfig
from jaxlm.peft import lora

# HF model types whose router (`mlp.gate`) transformers builds as a module of its own (a
# top-k router holding a weight), not an nn.Linear that PEFT can put LoRA on.
ROUTERS_PEFT_CANNOT_ADAPT = ("qwen2_moe", "qwen3_moe", "olmoe")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TASK_TYPES = {"decoder": "CAUSAL_LM", "encdec": "SEQ_2_SEQ_LM", "encoder": None}


def _fused_factors(parts: list[tuple[np.ndarray, np.ndarray] | None],
                   widths: list[int]) -> tuple[np.ndarray, np.ndarray]:
  """One (A', B') for a fused projection from per-part (A, B) factors (None: no adapter)."""
  ranks = [0 if p is None else p[0].shape[1] for p in parts]
  a_rxI = np.concatenate([p[0].T for p in parts if p is not None], axis=0)
  b_OxR = np.zeros((sum(widths), sum(ranks)), np.float32)
  row = col = 0
  for part, width, rank in zip(parts, widths, ranks):
    if part is not None:
      b_OxR[row:row + width, col:col + rank] = part[1].T
    row, col = row + width, col + rank
  return a_rxI, b_OxR


def adapter_tensors(cfg: ModelConfig, flat: dict[str, np.ndarray], alpha: float,
                    hf_cfg: dict[str, Any], *, rslora: bool = False
                    ) -> tuple[dict[str, np.ndarray],
                                                     dict[str, tuple[int, float]]]:
  """(PEFT tensors by name, {HF module: (rank, alpha)}) of the LoRA leaves in flat params, for
  the base model written with config `hf_cfg`."""
  tensors, modules, exported = {}, {}, set()
  for rule in hf_weights.rules(cfg, hf_cfg):
    if not rule.paths[0].endswith("/kernel"):
      continue
    owners = [p.rsplit("/", 1)[0] for p in rule.paths]
    exported.update(owners)
    parts = [(np.asarray(flat[f"{o}/lora_a"], np.float32),
              np.asarray(flat[f"{o}/lora_b"], np.float32))
             if f"{o}/lora_a" in flat else None for o in owners]
    if all(p is None for p in parts):
      continue
    if any(f"{o}/lora_magnitude" in flat for o in owners):
      tensors[f"base_model.model.{rule.module}.lora_magnitude_vector"] = rule.to_hf([
          np.asarray(flat[f"{o}/lora_magnitude"], np.float32) if f"{o}/lora_magnitude" in flat
          else np.asarray(lora.column_norms(flat[f"{o}/kernel"])) for o in owners])
    kind = hf_config.model_type_of(hf_cfg)
    if owners[0].endswith("/mlp/router") and kind in ROUTERS_PEFT_CANNOT_ADAPT:
      raise ValueError(f"LoRA on the router ({owners[0]}) has no PEFT adapter form for "
                       f"{kind}: transformers' router there is not an nn.Linear; export with "
                       "--merge-lora (the adapter folded into the weights) instead")
    if rule.kind in ("split", "heads", "rows"):
      widths = [int(np.asarray(flat[p]).shape[-1]) for p in rule.paths]
      a, b = _fused_factors(parts, widths)
      if rule.kind == "heads":  # B' (out, r) is laid out as the fused weight: reorder its rows
        b = rule.to_hf([part.T for part in np.split(b, np.cumsum(widths)[:-1], axis=0)])
      rank = a.shape[0]
      part_rank = next(p[0].shape[1] for p in parts if p is not None)
      module_alpha = alpha * (rank / part_rank) ** (0.5 if rslora else 1.0)
    else:
      a, b = parts[0][0].T, parts[0][1].T
      rank, module_alpha = a.shape[0], alpha
    prefix = f"base_model.model.{rule.module}"
    tensors[f"{prefix}.lora_A.weight"] = a
    tensors[f"{prefix}.lora_B.weight"] = b
    modules[rule.module] = (rank, module_alpha)
  left = sorted(k[:-len("/lora_a")] for k in flat
                if k.endswith("/lora_a") and k[:-len("/lora_a")] not in exported)
  if left:
    raise ValueError(f"LoRA layers with no HF module to attach to: {', '.join(left)}")
  return tensors, modules


def save_adapter(folder: str | Path, cfg: ModelConfig, flat: dict[str, np.ndarray], *,
                 rank: int, alpha: float, base_model: str, hf_cfg: dict[str, Any],
                 rslora: bool = False, dtype: str = "float32") -> Path:
  """Writes the PEFT adapter of the LoRA leaves in `flat` (jaxlm paths) into `folder`, for
  the base model written with config `hf_cfg`."""
  tensors, modules = adapter_tensors(cfg, flat, alpha, hf_cfg, rslora=rslora)
  if not modules:
    raise ValueError("no LoRA parameters on a layer that HF has (the run did not use "
                     "peft.method=lora, or its peft.targets match no exported linear)")
  rank_pattern = {m: r for m, (r, _) in modules.items() if r != rank}
  alpha_pattern = {m: a for m, (r, a) in modules.items() if r != rank}
  config = {
      "peft_type": "LORA", "task_type": TASK_TYPES[cfg.family], "r": rank, "lora_alpha": alpha,
      "target_modules": sorted(modules), "rank_pattern": rank_pattern,
      "alpha_pattern": alpha_pattern, "lora_dropout": 0.0, "bias": "none",
      # GPT-2's Conv1D stores (in, out) weights
      "fan_in_fan_out": hf_config.model_type_of(hf_cfg) == "gpt2",
      "use_rslora": rslora, "init_lora_weights": True, "inference_mode": True,
      "use_dora": any(name.endswith(".lora_magnitude_vector") for name in tensors),
      "modules_to_save": None, "base_model_name_or_path": base_model}
  folder = Path(folder)
  safetensors_io.write_tensors(folder, tensors, dtype, ADAPTER_WEIGHTS)
  (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
  return folder
