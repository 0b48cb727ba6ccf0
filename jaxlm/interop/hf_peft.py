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
rows of B are zero, so PEFT's norms there are the base weight's). `read_adapter` is the
inverse, for any PEFT LoRA adapter (`jaxlm convert --from-hf BASE --adapter DIR`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.interop import hf_config, hf_weights, safetensors_io
from jaxlm.models.config import ModelConfig
from jaxlm.peft import lora, token_rows

# HF model types whose router (`mlp.gate`) transformers builds as a module of its own (a
# top-k router holding a weight), not an nn.Linear that PEFT can put LoRA on.
ROUTERS_PEFT_CANNOT_ADAPT = ("qwen2_moe", "qwen3_moe", "olmoe")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # of every tensor name in an adapter file
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
      tensors[f"{PEFT_PREFIX}{rule.module}.lora_magnitude_vector"] = rule.to_hf([
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
    else:  # B's rows in the HF weight's order (DeepSeek-V3's reordered heads)
      plain = dataclasses.replace(rule, scale=1.0, offset=0.0)
      a = parts[0][0].T
      b = plain.to_hf([parts[0][1]]) if rule.kind == "linear" else parts[0][1].T
      rank, module_alpha = a.shape[0], alpha
    prefix = f"{PEFT_PREFIX}{rule.module}"
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
                 rslora: bool = False, dtype: str = "float32",
                 rows: tuple[list[int], np.ndarray] | None = None) -> Path:
  """Writes the PEFT adapter of the LoRA leaves in `flat` (jaxlm paths) into `folder`, for
  the base model written with config `hf_cfg`; `rows` (token ids, their trained rows) as its
  `trainable_token_indices`."""
  tensors, modules = adapter_tensors(cfg, flat, alpha, hf_cfg, rslora=rslora)
  if not modules:
    raise ValueError("no LoRA parameters on a layer that HF has (the run did not use "
                     "peft.method=lora, or its peft.targets match no exported linear)")
  if rows is not None:
    tensors[f"{PEFT_PREFIX}{_embed_rule(cfg, hf_cfg).module}.token_adapter."
            "trainable_tokens_delta"] = rows[1]
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
      "modules_to_save": None, "base_model_name_or_path": base_model,
      "trainable_token_indices": None if rows is None else [int(i) for i in rows[0]]}
  folder = Path(folder)
  safetensors_io.write_tensors(folder, tensors, dtype, ADAPTER_WEIGHTS)
  (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
  return folder

# LoRA variants and extras of a PEFT adapter config that jaxlm's LoRA has no form for.
UNSUPPORTED = {"layer_replication": "repeats layers", "use_qalora": "is QA-LoRA",
               "lora_bias": "trains a bias on lora_B", "megatron_config": "is Megatron's"}


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
  """A PEFT `rank_pattern` / `alpha_pattern` value for `module` (its keys match a module name
  or its dotted tail, as regular expressions), else `default`."""
  for key, value in (pattern or {}).items():
    if re.fullmatch(rf"(.*\.)?({key})", module):
      return value
  return default


def _check_config(config: dict[str, Any], folder: Path) -> None:
  """ValueError for a PEFT adapter jaxlm's LoRA cannot hold."""
  if config.get("peft_type") != "LORA":
    raise ValueError(f"{folder}: peft_type {config.get('peft_type')!r} is not imported (only "
                     "LORA adapters, DoRA and rsLoRA included)")
  if config.get("bias", "none") != "none":
    raise ValueError(f"{folder}: bias={config['bias']!r} trains base biases; only bias='none' "
                     "adapters are imported")
  for key, what in UNSUPPORTED.items():
    if config.get(key):
      raise ValueError(f"{folder}: {key} is set, which {what}: jaxlm's LoRA has no form for it")


def _own_rank_only(b_parts: list[np.ndarray]) -> list[np.ndarray] | None:
  """For a fused projection's B split into its parts (each (r, out)): the rank components
  each part uses, when no component feeds two parts (jaxlm's own export: a block-diagonal B)
  and some part has any; else None (one dense B: every part keeps every component)."""
  live = [np.any(b != 0, axis=1) for b in b_parts]
  if not any(x.any() for x in live) or np.sum(live, axis=0).max() > 1:
    return None
  return live


def _pattern_for(chosen: set[str], paths: list[str]) -> str:
  """A path regex (`peft.targets`, `peft.include`) that picks exactly `chosen` among `paths`:
  their names past the layer index when that is exact (so it also fits stacked layers), else
  the paths themselves (a pattern that starts with "^"); "" for none."""
  if not chosen:
    return ""
  tails = sorted({re.sub(r"^(.*?/)?\d+/", "", path) for path in chosen})
  pattern = "(^|/)(" + "|".join(re.escape(t) for t in tails) + ")$"
  if {k for k in paths if re.search(pattern, k)} == chosen:
    return pattern
  return "^(" + "|".join(re.escape(p) for p in sorted(chosen)) + ")$"


def read_adapter(folder: str | Path, cfg: ModelConfig, hf_cfg: dict[str, Any]
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(LoRA leaves by jaxlm path, the `peft` settings that build them) of the PEFT LoRA adapter
  in `folder`, for the base model with config `hf_cfg`; exact for any ranks and alphas.

  jaxlm's LoRA has one rank and one scale: each module's scale (its alpha_pattern / rank) is
  folded into its B, and smaller ranks are padded with zero components (which stay zero in
  training). A fused projection (GPT-2's c_attn, NeoX's query_key_value, Phi-3's qkv_proj)
  gives each of its parts the shared A and its own rows of B, or only its own rank
  components when B is block-diagonal (as `save_adapter` writes it); DoRA magnitudes split
  the same way. `trainable_token_indices` rows become `peft.trainable_tokens`, and
  `modules_to_save` weights replace the base's and train on (`peft.include`).
  """
  folder = Path(folder)
  if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
    raise FileNotFoundError(f"{folder} is not a PEFT adapter folder (it needs {ADAPTER_CONFIG} "
                            f"and {ADAPTER_WEIGHTS})")
  config = json.loads((folder / ADAPTER_CONFIG).read_text())
  _check_config(config, folder)
  tensors = {k.removeprefix(PEFT_PREFIX): v
             for k, v in safetensors_io.read_file(folder / ADAPTER_WEIGHTS).items()}
  rslora = bool(config.get("use_rslora"))
  scale = lora.lora_scale(config["lora_alpha"], config["r"], rslora)
  rules = hf_weights.rules(cfg, hf_cfg)
  saved, used = _saved_modules(tensors, rules)
  layers, kernels = {}, []
  for rule in rules:
    if not rule.paths[0].endswith("/kernel"):
      continue
    owners = [p.rsplit("/", 1)[0] for p in rule.paths]
    kernels += owners
    a_key, b_key = f"{rule.module}.lora_A.weight", f"{rule.module}.lora_B.weight"
    if a_key not in tensors:
      continue
    if b_key not in tensors:
      raise hf_weights.WeightMismatchError(f"{folder}: {a_key} has no {b_key}")
    if owners[0].split("/")[0] in ("embed", "head"):
      raise ValueError(f"{folder}: LoRA on {rule.module} (a vocabulary-sized layer) is not "
                       "imported")
    mag_keys = [k for k in (f"{rule.module}.lora_magnitude_vector",
                            f"{rule.module}.lora_magnitude_vector.weight") if k in tensors]
    used.update([a_key, b_key, *mag_keys])
    a_rxI, b_OxR = tensors[a_key], tensors[b_key]
    rank = a_rxI.shape[0]
    alpha = _pattern_value(config.get("alpha_pattern"), rule.module, config["lora_alpha"])
    b_OxR = b_OxR * (lora.lora_scale(alpha, rank, rslora) / scale)
    magnitude = tensors[mag_keys[0]] if mag_keys else None
    plain = dataclasses.replace(rule, scale=1.0, offset=0.0)  # factors carry no such terms
    if len(owners) == 1 and rule.kind != "linear":
      b_parts, m_parts = [b_OxR.T], [magnitude]
    else:
      # A linear's B (out, r) maps as its weight (out, in) does: rows reordered, transposed.
      b_parts = plain.to_jaxlm(b_OxR.T if rule.kind == "split" else b_OxR)
      m_parts = plain.to_jaxlm(magnitude) if magnitude is not None else [None] * len(owners)
    own = _own_rank_only(b_parts) if len(owners) > 1 else None
    for j, (owner, b_RxO, m_O) in enumerate(zip(owners, b_parts, m_parts)):
      keep = own[j] if own is not None else np.ones(rank, bool)
      if keep.any():
        layers[owner] = (a_rxI[keep].T, b_RxO[keep], m_O)
  rows, token_ids = _token_rows(config, tensors, cfg, hf_cfg, folder)
  if rows is not None:
    used.add(rows)
  left = sorted(set(tensors) - used)
  if left:
    raise hf_weights.WeightMismatchError(
        f"{folder}: adapter tensors with no jaxlm layer: {', '.join(left[:5])}"
        + (f" and {len(left) - 5} more" if len(left) > 5 else ""))
  if not layers:
    raise ValueError(f"{folder}: no LoRA weights in the adapter")
  rank = max(a.shape[1] for a, _, _ in layers.values())
  flat = {}
  for owner, (a_IxR, b_RxO, m_O) in layers.items():
    pad = rank - a_IxR.shape[1]
    flat[f"{owner}/lora_a"] = np.pad(a_IxR, ((0, 0), (0, pad)))
    flat[f"{owner}/lora_b"] = np.pad(b_RxO, ((0, pad), (0, 0)))
    if m_O is not None:
      flat[f"{owner}/lora_magnitude"] = m_O
  if rows is not None:
    flat[token_rows.ROWS] = tensors[rows]
  settings = {"method": "lora", "rank": rank, "alpha": scale * (rank ** 0.5 if rslora else rank),
              "targets": _pattern_for(set(layers), kernels),
              "use_dora": bool(config.get("use_dora")), "use_rslora": rslora,
              "dropout": float(config.get("lora_dropout") or 0.0),
              "trainable_tokens": ",".join(map(str, token_ids)),
              "include": _pattern_for(set(saved), [p for rule in rules for p in rule.paths])}
  return {**flat, **saved}, settings


def _saved_modules(tensors: dict[str, np.ndarray], rules: list[hf_weights.Rule]
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
  """(jaxlm parameters by path, the tensor names they came from) of the base modules an
  adapter carries whole (PEFT's `modules_to_save`, saved under the modules' own names):
  they replace the base's and train beside the adapter (`peft.include`)."""
  saved, used = {}, set()
  for rule in rules:
    if rule.hf in tensors:
      saved.update(zip(rule.paths, rule.to_jaxlm(tensors[rule.hf])))
      used.add(rule.hf)
  return saved, used


def _embed_rule(cfg: ModelConfig, hf_cfg: dict[str, Any]) -> hf_weights.Rule:
  """The mapping rule of the token embedding."""
  return next(r for r in hf_weights.rules(cfg, hf_cfg) if r.paths == (token_rows.EMBED_TABLE,))


def _token_rows(config: dict[str, Any], tensors: dict[str, np.ndarray], cfg: ModelConfig,
                hf_cfg: dict[str, Any], folder: Path) -> tuple[str | None, list[int]]:
  """(the adapter's tensor of trainable token rows, their ids) for PEFT's
  `trainable_token_indices` on the token embedding ((None, []) without it)."""
  indices = config.get("trainable_token_indices")
  if not indices:
    return None, []
  embed = _embed_rule(cfg, hf_cfg)
  if isinstance(indices, dict):  # {module name pattern: ids}; jaxlm trains one table's rows
    matching = _pattern_value(indices, embed.module, None)
    if len(indices) != 1 or matching is None:
      raise ValueError(f"{folder}: trainable_token_indices {sorted(indices)} must name the "
                       f"token embedding ({embed.module}) alone")
    indices = matching
  name = f"{embed.module}.token_adapter.trainable_tokens_delta"
  if name not in tensors:
    raise hf_weights.WeightMismatchError(f"{folder}: trainable_token_indices without {name}")
  return name, [int(i) for i in indices]
