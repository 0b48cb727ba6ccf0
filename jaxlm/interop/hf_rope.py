"""HF RoPE settings (`rope_parameters`, or transformers 4's `rope_theta` + `rope_scaling`) ->
jaxlm `model.rope_*` fields: default, linear, Llama 3, YaRN (DeepSeek's mscale pair included)
and LongRoPE (Phi-3's older names too), resolved as transformers resolves them."""

from __future__ import annotations

import math
from typing import Any

from jaxlm.interop.hf_support import require_supported

# HF rope_type -> jaxlm model.rope_scaling
ROPE_TYPES = {"default": "none", "linear": "linear", "llama3": "llama3", "yarn": "yarn",
              "longrope": "longrope"}
# Phi-3's older configs name LongRoPE "su" (and some "yarn": Phi-3 has no YaRN of its own)
PHI3_LONGROPE_NAMES = ("su", "yarn")


def rope_fields(hf: dict[str, Any], partial_rotary: bool = False) -> dict[str, Any]:
  """jaxlm RoPE fields (theta, scaling, and with `partial_rotary` the rotary fraction) of a
  Llama-family or GPT-NeoX config, old or new layout."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = params.get("rope_type") or params.get("type") or "default"
  if hf.get("model_type") == "phi3" and kind in PHI3_LONGROPE_NAMES:
    kind = "longrope"
  require_supported(kind in ROPE_TYPES, f"rope_type={kind!r} is not supported (jaxlm has "
           f"{', '.join(ROPE_TYPES)})")
  partial = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
  require_supported(partial == 1.0 or partial_rotary, f"partial_rotary_factor={partial} is not "
           "supported here (jaxlm imports partial rotary for GPT-NeoX, Phi and Phi-3)")
  fields = dict(rope_theta=float(params.get("rope_theta", hf.get("rope_theta", 10000.0))),
                rope_scaling=ROPE_TYPES[kind])
  if partial != 1.0:
    fields["rope_fraction"] = partial
  if kind == "longrope":
    return {**fields, **_longrope_fields(hf, params)}
  if kind != "default":
    fields["rope_factor"] = float(params["factor"])
  if kind == "llama3":
    fields.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                  rope_high_freq_factor=float(params["high_freq_factor"]),
                  rope_original_max_len=int(params["original_max_position_embeddings"]))
  if kind == "yarn":
    fields.update(_yarn_fields(hf, params))
  return fields


def _longrope_fields(hf: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
  """jaxlm fields of LongRoPE `params`, resolved as transformers does (a missing factor is the
  context ratio; the attention factor follows from it unless given)."""
  original = params.get("original_max_position_embeddings") or hf.get(
      "original_max_position_embeddings")
  require_supported(original and params.get("short_factor") and params.get("long_factor"),
                    "longrope scaling needs original_max_position_embeddings, short_factor and "
                    "long_factor")
  factor = params.get("factor") or hf["max_position_embeddings"] / original
  return dict(rope_factor=float(factor), rope_original_max_len=int(original),
              rope_attention_factor=float(params.get("attention_factor") or 0.0),
              rope_short_factor=tuple(map(float, params["short_factor"])),
              rope_long_factor=tuple(map(float, params["long_factor"])))


def _yarn_fields(hf: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
  """jaxlm fields of YaRN `params`, resolved as transformers does (a missing factor is the
  context ratio; DeepSeek's mscale pair gives the attention factor)."""
  original = int(params.get("original_max_position_embeddings")
                 or hf["max_position_embeddings"])
  factor = float(params.get("factor") or hf["max_position_embeddings"] / original)

  def mscale(scale: float) -> float:
    return 0.1 * scale * math.log(factor) + 1.0 if factor > 1 else 1.0

  attention = params.get("attention_factor")
  if attention is None and params.get("mscale") and params.get("mscale_all_dim"):
    attention = mscale(params["mscale"]) / mscale(params["mscale_all_dim"])
  return dict(rope_factor=factor, rope_original_max_len=original,
              rope_beta_fast=float(params.get("beta_fast") or 32.0),
              rope_beta_slow=float(params.get("beta_slow") or 1.0),
              rope_attention_factor=float(attention or 0.0),
              rope_truncate=bool(params.get("truncate", True)))
