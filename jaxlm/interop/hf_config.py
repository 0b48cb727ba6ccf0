"""Hugging Face `config.json` <-> jaxlm `config.model` fields, for GPT-2, Llama, BERT, T5 v1.1.

`model_fields(hf)` returns the jaxlm model fields of an HF config and raises
`UnsupportedModelError` naming the architecture or option jaxlm does not implement
(e.g. original T5's ReLU MLP, Llama RoPE scaling, GPT-2 attention without scaling).
`hf_config(cfg, base)` is the inverse; with the original HF config as `base` its other
entries (token ids, generation settings) are kept.
"""

from __future__ import annotations

from typing import Any

from jaxlm.models.config import ModelConfig

# HF architecture -> jaxlm style; the model_type is accepted when `architectures` is absent.
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama",
                 "BertForMaskedLM": "bert", "T5ForConditionalGeneration": "t5"}
MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "bert": "bert", "t5": "t5"}
T5_MAX_SEQ_LEN = 512  # T5 has no position limit; jaxlm needs one for data.seq_len checks


class UnsupportedModelError(ValueError):
  """An HF checkpoint whose architecture or options jaxlm cannot reproduce exactly."""


def style_of(hf: dict[str, Any]) -> str:
  """The jaxlm style of an HF config, from `architectures` (or `model_type`)."""
  archs = hf.get("architectures") or []
  for arch in archs:
    if arch in ARCHITECTURES:
      return ARCHITECTURES[arch]
  if not archs and hf.get("model_type") in MODEL_TYPES:
    return MODEL_TYPES[hf["model_type"]]
  raise UnsupportedModelError(
      f"unsupported architecture {archs or hf.get('model_type')!r}; jaxlm converts "
      f"{', '.join(ARCHITECTURES)}")


def _require(ok: bool, what: str) -> None:
  if not ok:
    raise UnsupportedModelError(what)


def rope_theta(hf: dict[str, Any]) -> float:
  """Llama's RoPE base; any RoPE scaling other than the default is unsupported."""
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  _require(kind == "default", f"Llama rope_type={kind!r} is not supported (only default RoPE)")
  return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


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
    _require(hf.get("hidden_act", "silu") == "silu",
             f"Llama hidden_act={hf.get('hidden_act')!r} is not supported (silu only)")
    bias = bool(hf.get("attention_bias", False))
    _require(bias == bool(hf.get("mlp_bias", False)),
             "Llama attention_bias != mlp_bias is not supported (one use_bias for both)")
    d, n = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // n
    return dict(style=style, vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
                num_heads=n, num_kv_heads=hf.get("num_key_value_heads") or n,
                head_dim=0 if head_dim * n == d else head_dim, embed_dim=d,
                mlp_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
                norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=rope_theta(hf),
                use_bias=bias, tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
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


def hf_config(cfg: ModelConfig, base: dict[str, Any] | None = None,
              dtype: str = "float32") -> dict[str, Any]:
  """The HF config.json dict of a jaxlm model (updating `base`, the original, when given)."""
  out = dict(base or {})
  arch = {v: k for k, v in ARCHITECTURES.items()}[cfg.style]
  out.update(architectures=[arch], model_type=cfg.style, vocab_size=cfg.vocab_size,
             dtype=dtype)
  d, n, h = cfg.embed_dim, cfg.num_heads, cfg.head_size
  if cfg.style == "gpt2":
    _require(cfg.bias, "GPT-2 export needs use_bias=true (HF GPT-2 always has biases)")
    out.update(n_embd=d, n_layer=cfg.num_layers, n_head=n, n_inner=cfg.mlp_dim,
               n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
               activation_function="gelu_new", tie_word_embeddings=cfg.tied)
  elif cfg.style == "llama":
    rope = dict(out.get("rope_parameters") or {}, rope_type="default", rope_theta=cfg.rope_theta)
    out.pop("rope_scaling", None)
    out.update(hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=n,
               num_key_value_heads=cfg.kv_heads, head_dim=h, intermediate_size=cfg.mlp_dim,
               max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
               rope_parameters=rope, hidden_act="silu", attention_bias=cfg.bias,
               mlp_bias=cfg.bias, tie_word_embeddings=cfg.tied)
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
