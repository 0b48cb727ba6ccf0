"""Hugging Face `config.json` <-> jaxlm `config.model` fields, for GPT-2, the Llama family
(Llama 1-3, Mistral, Qwen2 / 2.5, Qwen3, Gemma 1-3 text and the language model of image-text
Gemma 3), GPT-NeoX (Pythia), BERT and T5 v1.1.

`model_fields(hf)` returns the jaxlm model fields of an HF config and raises
`UnsupportedModelError` naming the architecture or option jaxlm does not implement
(e.g. original T5's ReLU MLP, LongRoPE scaling, GPT-2 attention without scaling).
`hf_config(cfg, base)` is the inverse; with the original HF config as `base` its other
entries (token ids, generation settings) are kept.
"""

from __future__ import annotations

import math
from typing import Any

from jaxlm.models.config import ModelConfig

# HF architecture -> HF model type; the model_type is accepted when `architectures` is absent.
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama",
                 "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                 "Qwen3ForCausalLM": "qwen3", "GemmaForCausalLM": "gemma",
                 "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text",
                 "GPTNeoXForCausalLM": "gpt_neox", "BertForMaskedLM": "bert", "T5ForConditionalGeneration": "t5"}
# HF model type -> jaxlm style: Mistral, Qwen and Gemma are Llama-style decoders with options.
STYLES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama",
          "qwen3": "llama", "gemma": "llama", "gemma2": "llama", "gemma3_text": "llama",
          "gpt_neox": "neox", "bert": "bert", "t5": "t5"}
# jaxlm style -> HF model type, where one style is one HF type.
MODEL_TYPES = {"gpt2": "gpt2", "neox": "gpt_neox", "bert": "bert", "t5": "t5"}
GEMMAS = ("gemma", "gemma2", "gemma3_text")
# HF activation name -> jaxlm model.mlp_activation
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu",
               "silu": "silu"}
T5_MAX_SEQ_LEN = 512  # T5 has no position limit; jaxlm needs one for data.seq_len checks
# HF rope_type -> jaxlm model.rope_scaling
ROPE_TYPES = {"default": "none", "linear": "linear", "llama3": "llama3", "yarn": "yarn"}


# Gemma3TextConfig's defaults: a Gemma 3 4B+ (multimodal) config.json lists only the
# text_config entries that differ from them.
GEMMA3_TEXT_DEFAULTS = dict(
    vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072, rms_norm_eps=1e-6,
    rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, query_pre_attn_scalar=256,
    sliding_window=4096, sliding_window_pattern=6, final_logit_softcapping=None,
    attn_logit_softcapping=None, attention_bias=False, tie_word_embeddings=True)
# Multimodal architectures whose language model jaxlm imports (as this text-only architecture).
LANGUAGE_MODELS = {"Gemma3ForConditionalGeneration": ("Gemma3ForCausalLM", GEMMA3_TEXT_DEFAULTS)}


def language_model_config(hf: dict[str, Any]) -> dict[str, Any]:
  """The config of a multimodal checkpoint's language model as its text-only architecture's
  config.json (its `text_config` over the class defaults); other configs unchanged."""
  wrapper = next((a for a in hf.get("architectures") or [] if a in LANGUAGE_MODELS), None)
  if wrapper is None:
    return hf
  arch, defaults = LANGUAGE_MODELS[wrapper]
  text = {**defaults, "tie_word_embeddings": hf.get("tie_word_embeddings", True),
          **(hf.get("text_config") or {})}
  return {**text, "architectures": [arch], "model_type": ARCHITECTURES[arch]}


class UnsupportedModelError(ValueError):
  """An HF checkpoint whose architecture or options jaxlm cannot reproduce exactly."""


def model_type_of(hf: dict[str, Any]) -> str:
  """The HF model type of a config, from `architectures` (or `model_type`)."""
  archs = hf.get("architectures") or []
  for arch in archs:
    if arch in ARCHITECTURES:
      return ARCHITECTURES[arch]
  if not archs and hf.get("model_type") in STYLES:
    return hf["model_type"]
  raise UnsupportedModelError(
      f"unsupported architecture {archs or hf.get('model_type')!r}; jaxlm converts "
      f"{', '.join(ARCHITECTURES)}")


def style_of(hf: dict[str, Any]) -> str:
  """The jaxlm style of an HF config."""
  return STYLES[model_type_of(hf)]


def _require(ok: bool, what: str) -> None:
  if not ok:
    raise UnsupportedModelError(what)


def rope_fields(hf: dict[str, Any], partial_rotary: bool = False) -> dict[str, Any]:
  """jaxlm RoPE fields (theta, scaling, and with `partial_rotary` the rotary fraction) of a
  Llama-family or GPT-NeoX config, old or new layout."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = params.get("rope_type") or params.get("type") or "default"
  _require(kind in ROPE_TYPES, f"rope_type={kind!r} is not supported (jaxlm has "
           f"{', '.join(ROPE_TYPES)})")
  partial = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
  _require(partial == 1.0 or partial_rotary, f"partial_rotary_factor={partial} is not "
           "supported here (jaxlm imports partial rotary for GPT-NeoX)")
  fields = dict(rope_theta=float(params.get("rope_theta", hf.get("rope_theta", 10000.0))),
                rope_scaling=ROPE_TYPES[kind])
  if partial != 1.0:
    fields["rope_fraction"] = partial
  if kind != "default":
    fields["rope_factor"] = float(params["factor"])
  if kind == "llama3":
    fields.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                  rope_high_freq_factor=float(params["high_freq_factor"]),
                  rope_original_max_len=int(params["original_max_position_embeddings"]))
  if kind == "yarn":
    fields.update(_yarn_fields(hf, params))
  return fields


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


def sliding_window(hf: dict[str, Any]) -> tuple[int | None, bool]:
  """(the attention window of a Mistral / Qwen config or None, whether every layer uses it)."""
  window = hf.get("sliding_window")
  if not window:
    return None, False
  if hf.get("layer_types") is not None:
    sliding = [kind == "sliding_attention" for kind in hf["layer_types"]]
    return (window, all(sliding)) if any(sliding) else (None, False)
  if "use_sliding_window" in hf:  # Qwen: off unless asked for, then from max_window_layers on
    return (window, False) if hf["use_sliding_window"] else (None, False)
  return window, True


def _llama_fields(hf: dict[str, Any], kind: str) -> dict[str, Any]:
  """Fields of a Llama, Mistral, Qwen2 or Qwen3 config (`kind`, the HF model type)."""
  _require(hf.get("hidden_act", "silu") == "silu",
           f"{kind} hidden_act={hf.get('hidden_act')!r} is not supported (silu only)")
  bias = bool(hf.get("attention_bias", False)) if kind == "llama" else False
  _require(bias == bool(hf.get("mlp_bias", False)),
           "Llama attention_bias != mlp_bias is not supported (one use_bias for both)")
  _require(kind != "qwen3" or not hf.get("attention_bias"),
           "Qwen3 attention_bias=true is not supported")
  d, n = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or d // n
  window, everywhere = sliding_window(hf)
  max_len = hf["max_position_embeddings"]
  if window and not everywhere:  # within the window, some layers' sliding attention is full
    max_len = min(window, max_len)  # attention: jaxlm has one window for all, so cap there
  return dict(style="llama", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
              num_heads=n, num_kv_heads=hf.get("num_key_value_heads") or n,
              head_dim=0 if head_dim * n == d else head_dim, embed_dim=d,
              mlp_dim=hf["intermediate_size"], max_seq_len=max_len,
              norm_eps=hf.get("rms_norm_eps", 1e-6), **rope_fields(hf), use_bias=bias,
              qkv_bias=kind == "qwen2", qk_norm=kind == "qwen3",
              sliding_window=window if everywhere else 0, tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def _neox_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """Fields of a GPT-NeoX (Pythia) config: its rotary_pct and rotary_emb_base (older files)
  or rope_parameters, parallel residual, exact-GELU MLP."""
  act = hf.get("hidden_act", "gelu")
  _require(act in ACTIVATIONS, f"GPT-NeoX hidden_act={act!r} is not supported (jaxlm has "
           f"{', '.join(ACTIVATIONS)})")
  _require(hf.get("attention_bias", True), "GPT-NeoX attention_bias=false is not supported")
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  params.setdefault("rope_theta", hf.get("rotary_emb_base", hf.get("rope_theta", 10000.0)))
  params.setdefault("partial_rotary_factor", hf.get("rotary_pct", 0.25))  # HF's default
  return dict(style="neox", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
              num_heads=hf["num_attention_heads"], embed_dim=hf["hidden_size"],
              mlp_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
              norm_eps=hf.get("layer_norm_eps", 1e-5), use_bias=True,
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
              mlp_activation="" if ACTIVATIONS[act] == "gelu" else ACTIVATIONS[act],
              parallel_residual=bool(hf.get("use_parallel_residual", True)),
              **rope_fields({"rope_parameters": params}, partial_rotary=True))


def global_every(layer_types: list[str]) -> int | None:
  """n where layer i attends to everything exactly when (i + 1) % n == 0 (0 when no layer
  does), or None for another pattern."""
  full = [kind == "full_attention" for kind in layer_types]
  if not any(full):
    return 0
  n = full.index(True) + 1
  return n if full == [(i + 1) % n == 0 for i in range(len(full))] else None


def _gemma_fields(hf: dict[str, Any], kind: str) -> dict[str, Any]:
  """Fields of a Gemma, Gemma 2 or Gemma 3 (text) config (`kind`, the HF model type)."""
  act_key = "hidden_act" if kind == "gemma" else "hidden_activation"
  act = hf.get(act_key) or "gelu_pytorch_tanh"
  _require(act in ACTIVATIONS, f"{kind} {act_key}={act!r} is not supported")
  _require(not hf.get("attention_bias"), f"{kind} attention_bias=true is not supported")
  _require(not hf.get("use_bidirectional_attention"),
           f"{kind} use_bidirectional_attention=true is not supported (a decoder is causal)")
  d, n = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or d // n
  fields = dict(style="llama", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
                num_heads=n, num_kv_heads=hf.get("num_key_value_heads") or n,
                head_dim=0 if head_dim * n == d else head_dim, embed_dim=d,
                mlp_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
                norm_eps=hf.get("rms_norm_eps", 1e-6), use_bias=False,
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                mlp_activation=ACTIVATIONS[act], embed_scale=True)
  params = hf.get("rope_parameters") or {}
  if "full_attention" in params:  # transformers 5 Gemma 3: RoPE per layer type
    fields.update(rope_fields({"rope_parameters": params["full_attention"]}))
    local = params.get("sliding_attention") or {}
    _require((local.get("rope_type") or "default") == "default",
             "RoPE scaling on sliding-window layers is not supported")
    local_theta = local.get("rope_theta")
  else:
    fields.update(rope_fields(hf))
    local_theta = hf.get("rope_local_base_freq")
  if kind == "gemma":
    return fields
  window = hf.get("sliding_window") or 0
  types = hf.get("layer_types")
  if types is None:
    pattern = 2 if kind == "gemma2" else (hf.get("sliding_window_pattern")
                                          or hf.get("_sliding_window_pattern") or 6)
    types = ["full_attention" if window == 0 or (i + 1) % pattern == 0 else "sliding_attention"
             for i in range(hf["num_hidden_layers"])]
  every = global_every(types)
  _require(every is not None, f"layer_types={types} is not supported (jaxlm's sliding layers "
           "are all but every n-th)")
  all_full = every == 1 or "sliding_attention" not in types
  fields.update(sandwich_norm=True, qk_norm=kind == "gemma3_text",
                query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or head_dim),
                attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
                logit_softcap=float(hf.get("final_logit_softcapping") or 0.0),
                sliding_window=0 if all_full else window,
                sliding_global_every=0 if all_full else every)
  if kind == "gemma3_text" and local_theta and not all_full:
    fields["rope_local_theta"] = float(local_theta)
  return fields


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """jaxlm `config.model` fields (style included) for an HF config dict."""
  style = style_of(hf)
  if style == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    _require(act in ("gelu_new", "gelu_pytorch_tanh"),
             f"GPT-2 activation_function={act!r} is not supported (tanh GELU only)")
    _require(hf.get("scale_attn_weights", True), "GPT-2 scale_attn_weights=false is not supported")
    _require(not hf.get("scale_attn_by_inverse_layer_idx"),
             "GPT-2 scale_attn_by_inverse_layer_idx=true is not supported")
    _require(not hf.get("add_cross_attention"), "GPT-2 add_cross_attention is not supported")
    d = hf["n_embd"]
    return dict(style=style, vocab_size=hf["vocab_size"], num_layers=hf["n_layer"],
                num_heads=hf["n_head"], embed_dim=d, mlp_dim=hf.get("n_inner") or 4 * d,
                max_seq_len=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                use_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True))
  if style == "llama":
    kind = model_type_of(hf)
    return _gemma_fields(hf, kind) if kind in GEMMAS else _llama_fields(hf, kind)
  if style == "neox":
    return _neox_fields(hf)
  if style == "bert":
    _require(hf.get("hidden_act", "gelu") == "gelu",
             f"BERT hidden_act={hf.get('hidden_act')!r} is not supported (exact gelu only)")
    pos = hf.get("position_embedding_type", "absolute")
    _require(pos == "absolute", f"BERT position_embedding_type={pos!r} is not supported")
    _require(not hf.get("is_decoder"), "BERT as a decoder (is_decoder=true) is not supported")
    return dict(style=style, vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], embed_dim=hf["hidden_size"],
                mlp_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
                type_vocab_size=hf.get("type_vocab_size", 2), post_norm=True,
                norm_eps=hf.get("layer_norm_eps", 1e-12), use_bias=True,
                tie_embeddings=hf.get("tie_word_embeddings", True))
  proj = hf.get("feed_forward_proj", "relu")
  _require(proj == "gated-gelu",
           f"T5 feed_forward_proj={proj!r} is not supported (T5 v1.1 gated-gelu only)")
  d, n, h = hf["d_model"], hf["num_heads"], hf["d_kv"]
  # The output head is always imported untied (see hf_weights): HF may tie it to `shared`
  # without the d_model**-0.5 scale that a tied jaxlm T5 applies.
  return dict(style=style, vocab_size=hf["vocab_size"], num_layers=hf["num_layers"],
              num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
              num_heads=n, head_dim=0 if h * n == d else h, embed_dim=d, mlp_dim=hf["d_ff"],
              max_seq_len=hf.get("n_positions") or T5_MAX_SEQ_LEN,
              norm_eps=hf.get("layer_norm_epsilon", 1e-6), use_bias=False,
              tie_embeddings=False,
              relative_buckets=hf.get("relative_attention_num_buckets", 32),
              relative_max_distance=hf.get("relative_attention_max_distance", 128))


def t5_scales_output(hf: dict[str, Any]) -> bool:
  """Whether HF T5 multiplies decoder outputs by d_model**-0.5 before its (tied) head."""
  if "scale_decoder_outputs" in hf:
    return bool(hf["scale_decoder_outputs"])
  return hf.get("tie_word_embeddings", True) is not False


def gemma_options(cfg: ModelConfig) -> dict[str, Any]:
  """The Gemma-only options a model sets (empty for the other Llama-family layouts)."""
  values = dict(embed_scale=cfg.embed_scale, mlp_activation=cfg.mlp_activation,
                sandwich_norm=cfg.sandwich_norm, attn_softcap=cfg.attn_softcap,
                logit_softcap=cfg.logit_softcap, query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                sliding_global_every=cfg.sliding_global_every,
                rope_local_theta=cfg.rope_local_theta)
  return {k: v for k, v in values.items() if v}


def _gemma_type(cfg: ModelConfig) -> str:
  """gemma, gemma2 or gemma3_text for a model with Gemma options, checked against HF's layout."""
  _require(cfg.embed_scale and cfg.mlp_activation in ("gelu_tanh", "gelu"),
           "a Gemma export needs embed_scale=true and mlp_activation gelu_tanh or gelu")
  _require(not (cfg.bias or cfg.qkv_bias), "a Gemma export needs no biases")
  if not cfg.sandwich_norm:
    _require(not (set(gemma_options(cfg)) - {"embed_scale", "mlp_activation"}
                  or cfg.qk_norm or cfg.sliding_window),
             "a Gemma (1) export takes no sandwich-norm-era options: set sandwich_norm=true "
             "for Gemma 2 / 3")
    return "gemma"
  if cfg.qk_norm:
    _require(not (cfg.attn_softcap or cfg.logit_softcap),
             "a Gemma 3 (qk_norm) export takes no softcaps")
    return "gemma3_text"
  _require(not cfg.rope_local_theta, "rope_local_theta needs qk_norm=true (Gemma 3's layout)")
  return "gemma2"


def llama_model_type(cfg: ModelConfig, base: dict[str, Any] | None) -> str:
  """The HF model type a Llama-style jaxlm model exports as: its options decide (Gemma's,
  Qwen2's q/k/v biases, Qwen3's query / key norms, Mistral's sliding window), else the
  original's Llama or Mistral."""
  if gemma_options(cfg):
    return _gemma_type(cfg)
  _require(not (cfg.qk_norm and (cfg.bias or cfg.qkv_bias)),
           "export with qk_norm needs use_bias=false and qkv_bias=false (HF Qwen3's layout)")
  if cfg.sliding_window:
    _require(not (cfg.qk_norm or cfg.qkv_bias or cfg.bias),
             "export with sliding_window needs Mistral's layout (no biases, no qk_norm)")
    return "mistral"
  if cfg.qk_norm:
    return "qwen3"
  if cfg.qkv_bias and not cfg.bias:
    return "qwen2"
  original = model_type_of(base) if base else "llama"
  return original if original in ("llama", "mistral") and not cfg.bias else "llama"


def hf_rope(cfg: ModelConfig) -> dict[str, Any]:
  """HF `rope_parameters` of a jaxlm model."""
  kind = {v: k for k, v in ROPE_TYPES.items()}[cfg.rope_scaling]
  out: dict[str, Any] = dict(rope_type=kind, rope_theta=cfg.rope_theta)
  if kind != "default":
    out["factor"] = cfg.rope_factor
  if kind == "llama3":
    out.update(low_freq_factor=cfg.rope_low_freq_factor,
               high_freq_factor=cfg.rope_high_freq_factor,
               original_max_position_embeddings=cfg.rope_original_max_len)
  if kind == "yarn":
    out.update(original_max_position_embeddings=cfg.rope_original_max_len,
               beta_fast=cfg.rope_beta_fast, beta_slow=cfg.rope_beta_slow,
               truncate=cfg.rope_truncate)
    if cfg.rope_attention_factor:
      out["attention_factor"] = cfg.rope_attention_factor
  return out


def hf_rope_entries(cfg: ModelConfig, base: dict[str, Any]) -> dict[str, Any]:
  """RoPE entries of an HF config in both layouts: `rope_parameters` (transformers 5) and
  `rope_theta` + `rope_scaling` (transformers 4, which would otherwise read the default
  theta of 10,000)."""
  rope = hf_rope(cfg)
  scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
  return dict(rope_parameters=dict(base.get("rope_parameters") or {}, **rope),
              rope_theta=cfg.rope_theta,
              rope_scaling=scaling if cfg.rope_scaling != "none" else None)


def _number(x: float) -> int | float:
  """`x` as an int when it is whole (HF's configs type such fields int)."""
  return int(x) if float(x).is_integer() else x


def _gemma_entries(cfg: ModelConfig, kind: str, base: dict[str, Any]) -> dict[str, Any]:
  """The Gemma-specific entries of an HF config (activation, norms, softcaps, layer types,
  RoPE per layer type for Gemma 3)."""
  act = {v: k for k, v in ACTIVATIONS.items() if k != "gelu_new"}[cfg.mlp_activation]
  out: dict[str, Any] = dict(attention_bias=False)
  if kind == "gemma":
    return dict(out, hidden_act=act, **hf_rope_entries(cfg, base))
  types = ["sliding_attention" if cfg.layer_window(i) else "full_attention"
           for i in range(cfg.num_layers)]
  out.update(hidden_activation=act,
             query_pre_attn_scalar=_number(cfg.query_pre_attn_scalar or cfg.head_size),
             attn_logit_softcapping=cfg.attn_softcap or None,  # HF writes no cap as null
             final_logit_softcapping=cfg.logit_softcap or None, layer_types=types,
             sliding_window=cfg.sliding_window or base.get("sliding_window") or cfg.max_seq_len)
  rope = hf_rope_entries(cfg, {})
  if kind == "gemma2":
    return dict(out, **rope)
  local = cfg.rope_local_theta or cfg.rope_theta
  pattern = (cfg.sliding_global_every or cfg.num_layers + 1) if cfg.sliding_window else 1
  per_type = dict(full_attention=rope["rope_parameters"],
                  sliding_attention=dict(rope_type="default", rope_theta=local))
  return dict(out, **{**rope, "rope_parameters": per_type}, rope_local_base_freq=local,
              sliding_window_pattern=pattern)


def _neox_entries(cfg: ModelConfig, base: dict[str, Any]) -> dict[str, Any]:
  """The GPT-NeoX entries of an HF config, RoPE in both layouts (rope_parameters with its
  partial_rotary_factor; rotary_pct and rotary_emb_base as older files and transformers 4)."""
  d, n = cfg.embed_dim, cfg.num_heads
  _require(cfg.bias and cfg.kv_heads == n and cfg.head_size * n == d
           and not (cfg.qk_norm or cfg.sliding_window or cfg.embed_scale),
           "GPT-NeoX export needs use_bias=true, num_kv_heads=0 and head_dim=0, and no qk_norm, "
           "sliding_window or embed_scale (HF GPT-NeoX's layout)")
  rope = hf_rope_entries(cfg, base)
  rope["rope_parameters"]["partial_rotary_factor"] = cfg.rope_fraction
  act = {"": "gelu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}[cfg.mlp_activation]
  return dict(hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=n,
              intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_seq_len,
              layer_norm_eps=cfg.norm_eps, hidden_act=act, attention_bias=True,
              use_parallel_residual=cfg.parallel_residual, tie_word_embeddings=cfg.tied,
              rotary_pct=cfg.rope_fraction, rotary_emb_base=cfg.rope_theta, **rope)


def hf_config(cfg: ModelConfig, base: dict[str, Any] | None = None,
              dtype: str = "float32") -> dict[str, Any]:
  """The HF config.json dict of a jaxlm model (updating `base`, the original, when given)."""
  out = dict(base or {})
  kind = llama_model_type(cfg, base) if cfg.style == "llama" else MODEL_TYPES[cfg.style]
  arch = {v: k for k, v in ARCHITECTURES.items()}[kind]
  out.update(architectures=[arch], model_type=kind, vocab_size=cfg.vocab_size, dtype=dtype)
  d, n, h = cfg.embed_dim, cfg.num_heads, cfg.head_size
  if cfg.style == "gpt2":
    _require(cfg.bias, "GPT-2 export needs use_bias=true (HF GPT-2 always has biases)")
    out.update(n_embd=d, n_layer=cfg.num_layers, n_head=n, n_inner=cfg.mlp_dim,
               n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
               activation_function="gelu_new", tie_word_embeddings=cfg.tied)
  elif cfg.style == "llama":
    _require(kind == "qwen2" or not cfg.qkv_bias,
             "export with qkv_bias needs use_bias=false (HF Qwen2's layout)")
    # An import capped the context at some layers' window; the original's limit still holds.
    window, everywhere = sliding_window(base) if base else (None, False)
    capped = window == cfg.max_seq_len and not everywhere
    max_len = base["max_position_embeddings"] if capped else cfg.max_seq_len
    out.update(hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=n,
               num_key_value_heads=cfg.kv_heads, head_dim=h, intermediate_size=cfg.mlp_dim,
               max_position_embeddings=max_len, rms_norm_eps=cfg.norm_eps,
               tie_word_embeddings=cfg.tied)
    if kind in GEMMAS:
      out.update(_gemma_entries(cfg, kind, out))
    else:
      out.update(hidden_act="silu", **hf_rope_entries(cfg, out))
    if kind == "llama":
      out.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
    elif kind == "mistral":
      out.update(sliding_window=cfg.sliding_window or None)
    elif kind == "qwen3":
      out.update(attention_bias=False)
  elif cfg.style == "neox":
    out.update(_neox_entries(cfg, out))
  elif cfg.style == "bert":
    _require(cfg.post_norm and cfg.bias,
             "BERT export needs post_norm=true and use_bias=true (HF BERT's layout)")
    out.update(hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=n,
               intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_seq_len,
               type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps,
               hidden_act="gelu", tie_word_embeddings=cfg.tied)
  else:
    _require(cfg.kv_heads == n and not cfg.bias,
             "T5 export needs num_kv_heads=0 and use_bias=false (HF T5's layout)")
    out.pop("scale_decoder_outputs", None)
    out.update(d_model=d, d_kv=h, d_ff=cfg.mlp_dim, num_layers=cfg.num_layers,
               num_decoder_layers=cfg.decoder_layers, num_heads=n,
               relative_attention_num_buckets=cfg.relative_buckets,
               relative_attention_max_distance=cfg.relative_max_distance,
               layer_norm_epsilon=cfg.norm_eps, feed_forward_proj="gated-gelu",
               is_encoder_decoder=True, tie_word_embeddings=cfg.tied)
  return out
