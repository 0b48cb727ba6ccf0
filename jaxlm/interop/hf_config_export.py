"""jaxlm `config.model` -> Hugging Face `config.json`, the inverse of `hf_config.model_fields`.

`hf_config(cfg, base)` writes the HF config of a jaxlm model; with the original HF config as
`base` its other entries (token ids, generation settings) are kept. A model whose options HF's
layout cannot express raises `UnsupportedModelError` naming them.
"""

from __future__ import annotations

import math
from typing import Any

from jaxlm.interop.hf_config import (ACTIVATIONS, ARCHITECTURES, DEEPSEEKS, GEMMAS, MODEL_TYPES,
                                     MOE_TYPES, QWEN_MOES, model_type_of, require_supported,
                                     sliding_window)
from jaxlm.interop.hf_rope import ROPE_TYPES
from jaxlm.models.config import STYLE_MLPS, ModelConfig


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
  require_supported(cfg.embed_scale and cfg.mlp_activation in ("gelu_tanh", "gelu"),
           "a Gemma export needs embed_scale=true and mlp_activation gelu_tanh or gelu")
  require_supported(not (cfg.bias or cfg.qkv_bias), "a Gemma export needs no biases")
  if not cfg.sandwich_norm:
    require_supported(not (set(gemma_options(cfg)) - {"embed_scale", "mlp_activation"}
                  or cfg.qk_norm or cfg.sliding_window),
             "a Gemma (1) export takes no sandwich-norm-era options: set sandwich_norm=true "
             "for Gemma 2 / 3")
    return "gemma"
  if cfg.qk_norm:
    require_supported(not (cfg.attn_softcap or cfg.logit_softcap),
             "a Gemma 3 (qk_norm) export takes no softcaps")
    return "gemma3_text"
  require_supported(not cfg.rope_local_theta, "rope_local_theta needs qk_norm=true (Gemma 3's layout)")
  return "gemma2"


def _moe_type(cfg: ModelConfig) -> str:
  """The HF mixture a Llama-style mixture of experts exports as: with whole-projection q/k
  norms OLMoE, with a shared expert Qwen2-MoE, with q/k norms Qwen3-MoE, else Mixtral."""
  require_supported(cfg.router_scoring == "softmax" and cfg.router_scale == 1.0,
                    "export of a mixture needs router_scoring=softmax and router_scale=1 (every "
                    "HF layout jaxlm writes)")
  layout = (not (gemma_options(cfg) or cfg.bias) and cfg.rope_fraction == 1.0
            and cfg.mlp_act == "silu" and cfg.gated_mlp)
  if cfg.qk_norm_full:
    require_supported(layout and not (cfg.qkv_bias or cfg.sliding_window or cfg.shared_expert_dim)
                      and cfg.num_heads * cfg.head_size == cfg.embed_dim,
                      "export with qk_norm_full needs OLMoE's layout (SwiGLU experts, full "
                      "rotary, heads x head size = width, no biases, no sliding window, no "
                      "shared expert, no Gemma options)")
    return "olmoe"
  if cfg.shared_expert_dim:
    require_supported(layout and cfg.shared_expert_gate and not (cfg.qk_norm or cfg.sliding_window),
                      "export of a mixture with a shared expert needs Qwen2-MoE's layout "
                      "(shared_expert_gate, SwiGLU experts, full rotary, no qk_norm, no "
                      "sliding window, no Gemma options)")
    return "qwen2_moe"
  require_supported(
      layout and not cfg.qkv_bias and (cfg.qk_norm or cfg.moe_renormalize),
      "export of a mixture of experts needs Mixtral's layout (renormalised top-k weights) or, "
      "with qk_norm, Qwen3-MoE's (SwiGLU experts, full rotary, no biases, no Gemma options)")
  return "qwen3_moe" if cfg.qk_norm else "mixtral"


def _deepseek_type(cfg: ModelConfig) -> str:
  """deepseek_v3 (sigmoid scores and a router bias) or deepseek_v2 (softmax scores, not
  renormalised) for a latent-attention model, checked against HF's layout."""
  require_supported(
      cfg.moe and cfg.moe_every == 1 and not cfg.shared_expert_gate
      and cfg.shared_expert_dim % cfg.mlp_dim == 0 and cfg.mlp_act == "silu" and cfg.gated_mlp
      and cfg.rope_scaling in ("none", "yarn")
      and not (set(gemma_options(cfg)) - {"query_pre_attn_scalar"} or cfg.sliding_window),
      "export with multi-head latent attention needs DeepSeek-V2 / V3's layout (a mixture on "
      "every layer past moe_first_dense, an ungated shared expert a whole number of experts "
      "wide, SwiGLU, no sliding window, no Gemma options, RoPE unscaled or YaRN)")
  v3 = cfg.router_scoring == "sigmoid" and cfg.router_bias and cfg.router_group_top == 2
  v2 = (cfg.router_scoring == "softmax" and not cfg.router_bias and not cfg.moe_renormalize
        and (cfg.router_groups == 1 or cfg.router_group_top == 1))
  require_supported(v3 or v2, "export with multi-head latent attention needs DeepSeek-V3's "
                    "router (sigmoid scores, a router bias, groups scored by their best 2) or "
                    "DeepSeek-V2's (softmax scores not renormalised, groups by their best)")
  return "deepseek_v3" if v3 else "deepseek_v2"


def llama_model_type(cfg: ModelConfig, base: dict[str, Any] | None) -> str:
  """The HF model type a Llama-style jaxlm model exports as: its options decide (Mixtral's
  experts, with a shared expert Qwen2-MoE's, with whole-projection q/k norms OLMoE's, Gemma's,
  Qwen2's q/k/v biases, Qwen3's query / key norms, Mistral's sliding window), else the
  original's Llama or Mistral; multi-head latent attention DeepSeek-V3's."""
  if cfg.latent_attention:
    return _deepseek_type(cfg)
  if cfg.moe:
    kind = _moe_type(cfg)
    require_supported(cfg.moe_every == 1 or kind in QWEN_MOES,
                      "export with moe_every > 1 needs a Qwen mixture's layout (Qwen2-MoE's "
                      "shared expert or Qwen3-MoE's q/k norms: decoder_sparse_step)")
    return kind
  require_supported(not cfg.qk_norm_full, "export with qk_norm_full needs experts (OLMoE's layout)")
  if cfg.rope_fraction != 1.0:  # of the Llama family, only Phi-3 rotates part of each head
    require_supported(not (gemma_options(cfg) or cfg.qk_norm or cfg.qkv_bias or cfg.bias),
                      "export with partial rotary (rope_fraction < 1) needs Phi-3's layout (no "
                      "biases, no qk_norm, no Gemma options)")
    return "phi3"
  if gemma_options(cfg):
    return _gemma_type(cfg)
  require_supported(not (cfg.qk_norm and (cfg.bias or cfg.qkv_bias)),
           "export with qk_norm needs use_bias=false and qkv_bias=false (HF Qwen3's layout)")
  if cfg.sliding_window:
    require_supported(not (cfg.qk_norm or cfg.qkv_bias or cfg.bias),
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
  if kind == "longrope":
    out.update(original_max_position_embeddings=cfg.rope_original_max_len,
               short_factor=list(cfg.rope_short_factor), long_factor=list(cfg.rope_long_factor))
  if kind in ("yarn", "longrope") and cfg.rope_attention_factor:
    out["attention_factor"] = cfg.rope_attention_factor
  return out


def hf_rope_entries(cfg: ModelConfig, base: dict[str, Any]) -> dict[str, Any]:
  """RoPE entries of an HF config in both layouts: `rope_parameters` (transformers 5) and
  `rope_theta` + `rope_scaling` (transformers 4, which would otherwise read the default
  theta of 10,000)."""
  rope = hf_rope(cfg)
  scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
  out = dict(rope_parameters=dict(base.get("rope_parameters") or {}, **rope),
             rope_theta=cfg.rope_theta,
             rope_scaling=scaling if cfg.rope_scaling != "none" else None)
  if cfg.rope_scaling == "longrope":  # where transformers 4 reads LongRoPE's threshold
    out["original_max_position_embeddings"] = cfg.rope_original_max_len
  return out


def _number(x: float) -> int | float:
  """`x` as an int when it is whole (HF's configs type such fields int)."""
  return int(x) if float(x).is_integer() else x


def _gemma_entries(cfg: ModelConfig, kind: str, base: dict[str, Any]) -> dict[str, Any]:
  """The Gemma-specific entries of an HF config (activation, norms, softcaps, layer types,
  RoPE per layer type for Gemma 3)."""
  act = _hf_act(cfg, tanh_name="gelu_pytorch_tanh")
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


def model_type(cfg: ModelConfig, base: dict[str, Any] | None = None) -> str:
  """The HF model type a jaxlm model exports as (`base`: the original HF config, if any)."""
  if cfg.style == "llama":
    return llama_model_type(cfg, base)
  if cfg.style == "neox" and cfg.shared_norm:
    return "phi"
  if cfg.style == "t5" and base and model_type_of(base) == "mt5":  # T5 v1.1's layout, renamed
    return "mt5"
  if cfg.style == "gpt2" and base and model_type_of(base) == "opt":
    return "opt"
  return MODEL_TYPES[cfg.style]


def _deepseek_entries(cfg: ModelConfig, kind: str, base: dict[str, Any]) -> dict[str, Any]:
  """The DeepSeek-V2 / V3 entries of an HF config: MLA's sizes (V3's rotary pairs written as
  halves, rope_interleave false; V2's are always interleaved) and the mixture's. HF's
  head_dim is the rotary size."""
  p = cfg.qk_rope_head_dim
  rope = hf_rope_entries(cfg, base)
  if cfg.query_pre_attn_scalar:  # the softmax scale's YaRN mscale_all_dim, undone
    require_supported(cfg.rope_scaling == "yarn", "export of a latent-attention model with "
                      "query_pre_attn_scalar needs YaRN (DeepSeek's mscale_all_dim)")
    mscale = (cfg.head_size / cfg.query_pre_attn_scalar) ** 0.25
    mscale_all_dim = (mscale - 1) / (0.1 * math.log(cfg.rope_factor))
    for entry in ("rope_parameters", "rope_scaling"):  # both layouts, as hf_rope_entries
      rope[entry]["mscale_all_dim"] = mscale_all_dim
  out = dict(hidden_act="silu", attention_bias=False, num_key_value_heads=cfg.num_heads,
             head_dim=p, qk_rope_head_dim=p, qk_nope_head_dim=cfg.head_size - p,
             qk_head_dim=cfg.head_size, v_head_dim=cfg.value_size,
             kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank or None,
             intermediate_size=cfg.dense_mlp_dim, moe_intermediate_size=cfg.mlp_dim,
             n_routed_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token,
             n_shared_experts=cfg.shared_expert_dim // cfg.mlp_dim,
             routed_scaling_factor=cfg.router_scale, n_group=cfg.router_groups,
             topk_group=cfg.router_groups_per_token, norm_topk_prob=cfg.moe_renormalize,
             first_k_dense_replace=cfg.moe_first_dense, **rope)
  if kind == "deepseek_v3":
    return dict(out, rope_interleave=False)
  return dict(out, mlp_bias=False, aux_loss_alpha=cfg.router_aux_coef,
              topk_method="group_limited_greedy" if cfg.router_groups > 1 else "greedy")


def _partial_rope_entries(cfg: ModelConfig, base: dict[str, Any]) -> dict[str, Any]:
  """`hf_rope_entries` with the rotary fraction in rope_parameters (partial_rotary_factor)."""
  rope = hf_rope_entries(cfg, base)
  rope["rope_parameters"]["partial_rotary_factor"] = cfg.rope_fraction
  return rope


def _hf_act(cfg: ModelConfig, tanh_name: str = "gelu_new") -> str:
  """HF's name of the model's MLP non-linearity (tanh-GELU: `tanh_name`)."""
  names = {v: k for k, v in ACTIVATIONS.items()}
  return tanh_name if cfg.mlp_act == "gelu_tanh" else names[cfg.mlp_act]


def _t5_feed_forward_proj(cfg: ModelConfig) -> str:
  """HF T5's feed_forward_proj: "[gated-]ACT", T5 v1.1's gated tanh-GELU written "gated-gelu"."""
  if cfg.gated_mlp:
    return "gated-gelu" if cfg.mlp_act == "gelu_tanh" else f"gated-{_hf_act(cfg)}"
  return _hf_act(cfg)


def _neox_entries(cfg: ModelConfig, base: dict[str, Any]) -> dict[str, Any]:
  """The GPT-NeoX entries of an HF config, RoPE in both layouts (rope_parameters with its
  partial_rotary_factor; rotary_pct and rotary_emb_base as older files and transformers 4)."""
  d, n = cfg.embed_dim, cfg.num_heads
  require_supported(cfg.bias and cfg.kv_heads == n and cfg.head_size * n == d
           and not (cfg.qk_norm or cfg.sliding_window or cfg.embed_scale or cfg.head_bias),
           "GPT-NeoX export needs use_bias=true, num_kv_heads=0 and head_dim=0, and no qk_norm, "
           "sliding_window, embed_scale or head_bias (HF GPT-NeoX's layout)")
  return dict(hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=n,
              intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_seq_len,
              layer_norm_eps=cfg.norm_eps, hidden_act=_hf_act(cfg), attention_bias=True,
              use_parallel_residual=cfg.parallel_residual, tie_word_embeddings=cfg.tied,
              rotary_pct=cfg.rope_fraction, rotary_emb_base=cfg.rope_theta,
              **_partial_rope_entries(cfg, base))


def _opt_entries(cfg: ModelConfig) -> dict[str, Any]:
  """The OPT entries of an HF config (pre-norm, no projections around the blocks)."""
  d, n = cfg.embed_dim, cfg.num_heads
  require_supported(cfg.bias and cfg.norm_eps == 1e-5 and cfg.kv_heads == n
                    and cfg.head_size * n == d,
                    "OPT export needs use_bias=true, norm_eps=1e-5, num_kv_heads=0 and "
                    "head_dim=0 (HF OPT's layout)")
  return dict(hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=n,
              ffn_dim=cfg.mlp_dim, max_position_embeddings=cfg.max_seq_len,
              do_layer_norm_before=True, word_embed_proj_dim=d, activation_function=_hf_act(cfg),
              enable_bias=True, layer_norm_elementwise_affine=True, tie_word_embeddings=cfg.tied)


def _phi_entries(cfg: ModelConfig, base: dict[str, Any]) -> dict[str, Any]:
  """The Phi entries of an HF config (a neox-style model with shared_norm and head_bias)."""
  d, n = cfg.embed_dim, cfg.num_heads
  require_supported(cfg.bias and cfg.head_bias and cfg.head_size * n == d
           and not (cfg.sliding_window or cfg.embed_scale),
           "Phi export needs use_bias=true, head_bias=true and head_dim=0, and no "
           "sliding_window or embed_scale (HF Phi's layout)")
  return dict(hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=n,
              num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.mlp_dim,
              max_position_embeddings=cfg.max_seq_len, layer_norm_eps=cfg.norm_eps,
              hidden_act=_hf_act(cfg), qk_layernorm=cfg.qk_norm, tie_word_embeddings=False,
              partial_rotary_factor=cfg.rope_fraction, **_partial_rope_entries(cfg, base))


def hf_config(cfg: ModelConfig, base: dict[str, Any] | None = None,
              dtype: str = "float32") -> dict[str, Any]:
  """The HF config.json dict of a jaxlm model (updating `base`, the original, when given)."""
  out = dict(base or {})
  require_supported(not cfg.parallel_residual or cfg.style == "neox",
                    "export with parallel_residual needs the neox style (HF GPT-NeoX or Phi)")
  require_supported(cfg.gated_mlp == STYLE_MLPS[cfg.style][1] or cfg.style == "t5",
                    f"export with mlp_gated={cfg.mlp_gated} needs the t5 style (HF's other "
                    "layouts fix whether the MLP is gated)")
  kind = model_type(cfg, base)
  require_supported(not cfg.head_bias or kind == "phi",
                    "export with head_bias needs shared_norm (HF Phi's layout)")
  if base and model_type_of(base) != kind:  # e.g. Phi-3 written as Llama: not its own code
    out.pop("auto_map", None)
  arch = {v: k for k, v in ARCHITECTURES.items()}[kind]
  out.update(architectures=[arch], model_type=kind, vocab_size=cfg.vocab_size, dtype=dtype)
  d, n, h = cfg.embed_dim, cfg.num_heads, cfg.head_size
  if kind == "opt":
    out.update(_opt_entries(cfg))
  elif cfg.style == "gpt2":
    require_supported(cfg.bias, "GPT-2 export needs use_bias=true (HF GPT-2 always has biases)")
    require_supported(cfg.mlp_act == "gelu_tanh", "GPT-2 export needs the tanh-GELU MLP")
    out.update(n_embd=d, n_layer=cfg.num_layers, n_head=n, n_inner=cfg.mlp_dim,
               n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
               activation_function="gelu_new", tie_word_embeddings=cfg.tied)
  elif cfg.style == "llama":
    require_supported(kind in ("qwen2", "qwen2_moe") or not cfg.qkv_bias,
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
    elif kind in DEEPSEEKS:
      out.update(_deepseek_entries(cfg, kind, out))
    elif kind == "phi3":  # partial rotary (Phi-4-mini), in rope_parameters and at the top
      out.update(hidden_act="silu", sliding_window=cfg.sliding_window or None,
                 partial_rotary_factor=cfg.rope_fraction, **_partial_rope_entries(cfg, out))
    else:
      out.update(hidden_act="silu", **hf_rope_entries(cfg, out))
    if kind == "llama":
      out.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
    elif kind in ("mistral", "mixtral"):
      out.update(sliding_window=cfg.sliding_window or None)
    elif kind in ("qwen3", "qwen3_moe"):
      out.update(attention_bias=False)
    if kind in MOE_TYPES:
      out.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token,
                 router_aux_loss_coef=cfg.router_aux_coef)
    if kind == "olmoe":
      out.update(num_experts=cfg.num_experts, norm_topk_prob=cfg.moe_renormalize,
                 attention_bias=False, clip_qkv=None)
    if kind in QWEN_MOES:  # older transformers read its expert count as num_experts; its
      # intermediate_size is that of dense layers, which this model has none of
      dense = cfg.moe_dense_mlp_dim or (base or {}).get("intermediate_size", cfg.mlp_dim)
      out.update(num_experts=cfg.num_experts, moe_intermediate_size=cfg.mlp_dim,
                 intermediate_size=dense, norm_topk_prob=cfg.moe_renormalize,
                 decoder_sparse_step=cfg.moe_every, mlp_only_layers=[])
    if kind == "qwen2_moe":
      out.update(shared_expert_intermediate_size=cfg.shared_expert_dim, qkv_bias=cfg.qkv_bias,
                 use_sliding_window=False)
  elif kind == "phi":
    out.update(_phi_entries(cfg, out))
  elif cfg.style == "neox":
    out.update(_neox_entries(cfg, out))
  elif cfg.style == "bert":
    require_supported(cfg.post_norm and cfg.bias and cfg.mlp_act == "gelu",
             "BERT export needs post_norm=true, use_bias=true and the exact-GELU MLP (HF "
             "BERT's layout)")
    out.update(hidden_size=d, num_hidden_layers=cfg.num_layers, num_attention_heads=n,
               intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_seq_len,
               type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps,
               hidden_act="gelu", tie_word_embeddings=cfg.tied)
  else:
    require_supported(cfg.kv_heads == n and not cfg.bias,
             "T5 export needs num_kv_heads=0 and use_bias=false (HF T5's layout)")
    require_supported(kind == "t5" or not cfg.tied,
                      "mT5 export needs tie_embeddings=false (HF mT5 does not scale a tied head)")
    out.pop("scale_decoder_outputs", None)
    out.update(d_model=d, d_kv=h, d_ff=cfg.mlp_dim, num_layers=cfg.num_layers,
               num_decoder_layers=cfg.decoder_layers, num_heads=n,
               relative_attention_num_buckets=cfg.relative_buckets,
               relative_attention_max_distance=cfg.relative_max_distance,
               layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=_t5_feed_forward_proj(cfg),
               is_encoder_decoder=True, tie_word_embeddings=cfg.tied)
  return out
