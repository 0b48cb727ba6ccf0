"""Hugging Face `config.json` -> jaxlm `config.model` fields, for GPT-2, OPT, the Llama family
(Llama 1-3, Mistral, Qwen2 / 2.5, Qwen3, Gemma 1-3 text and the language model of image-text
Gemma 3, Phi-3 / Phi-3.5 / Phi-4 with LongRoPE), GPT-NeoX (Pythia), Phi 1 / 1.5 / 2, BERT and
T5 (original, v1.1, mT5).

Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) are here; DeepSeek-V2 / V3 in
`hf_deepseek`, the RoPE settings every family shares in `hf_rope`.

`model_fields(hf)` returns the jaxlm model fields of an HF config and raises
`UnsupportedModelError` naming the architecture or option jaxlm does not implement
(e.g. dynamic RoPE scaling, GPT-2 attention without scaling).
The inverse, `hf_config_export.hf_config(cfg, base)`, writes a jaxlm model's config.json.
"""

from __future__ import annotations

from typing import Any

from jaxlm.interop.hf_deepseek import DEEPSEEKS, deepseek_fields
from jaxlm.interop.hf_rope import rope_fields
from jaxlm.interop.hf_support import UnsupportedModelError, require_supported
from jaxlm.models.config import STYLE_MLPS

# HF architecture -> HF model type; the model_type is accepted when `architectures` is absent.
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "OPTForCausalLM": "opt", "LlamaForCausalLM": "llama",
                 "MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral",
                 "Qwen2ForCausalLM": "qwen2", "Qwen2MoeForCausalLM": "qwen2_moe",
                 "Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3_moe",
                 "OlmoeForCausalLM": "olmoe", "DeepseekV2ForCausalLM": "deepseek_v2",
                 "DeepseekV3ForCausalLM": "deepseek_v3",
                 "GemmaForCausalLM": "gemma",
                 "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text",
                 "Phi3ForCausalLM": "phi3", "GPTNeoXForCausalLM": "gpt_neox",
                 "PhiForCausalLM": "phi",
                 "BertForMaskedLM": "bert", "T5ForConditionalGeneration": "t5",
                 "MT5ForConditionalGeneration": "mt5"}
# HF model type -> jaxlm style: OPT is a GPT-2-style decoder with a ReLU MLP; Mistral, Mixtral
# (Mistral with experts), Qwen (Qwen2-MoE: Qwen2 with experts and a gated shared expert;
# Qwen3-MoE: Qwen3 with experts; OLMoE: Llama with experts and whole-projection q/k norms),
# DeepSeek-V2 / V3 (multi-head latent attention, a router with expert groups (V3's: sigmoid
# scores and a bias), a shared expert, dense first layers), Gemma and Phi-3 are
# Llama-style decoders with options (Phi-3 with fused projections), Phi 1 / 1.5 / 2 a
# GPT-NeoX-style one.
STYLES = {"gpt2": "gpt2", "opt": "gpt2", "llama": "llama", "mistral": "llama",
          "mixtral": "llama", "qwen2": "llama", "qwen2_moe": "llama", "olmoe": "llama",
          "phi3": "llama", "qwen3": "llama", "qwen3_moe": "llama", "gemma": "llama", "gemma2": "llama",
          "gemma3_text": "llama", "deepseek_v2": "llama", "deepseek_v3": "llama",
          "gpt_neox": "neox", "phi": "neox", "bert": "bert", "t5": "t5", "mt5": "t5"}
# jaxlm style -> HF model type, where one style is one HF type (neox: unless shared_norm, Phi).
MODEL_TYPES = {"gpt2": "gpt2", "neox": "gpt_neox", "bert": "bert", "t5": "t5"}
GEMMAS = ("gemma", "gemma2", "gemma3_text")
# HF activation name -> jaxlm model.mlp_activation
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu",
               "silu": "silu", "relu": "relu"}
T5_MAX_SEQ_LEN = 512  # T5 has no position limit; jaxlm needs one for data.seq_len checks


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


MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")

QWEN_MOES = ("qwen2_moe", "qwen3_moe")  # experts `moe_intermediate_size` wide


def _moe_fields(hf: dict[str, Any], kind: str) -> dict[str, Any]:
  """The mixture-of-experts fields of a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE config (none
  for the dense types); Qwen2-MoE's gated shared expert is `shared_expert_intermediate_size`
  wide."""
  if kind not in MOE_TYPES:
    return {}
  fields = dict(num_experts=hf.get("num_local_experts") or hf["num_experts"],
                experts_per_token=hf["num_experts_per_tok"], moe_renormalize=True,
                router_aux_coef=hf.get("router_aux_loss_coef", 0.001))
  if kind != "mixtral":  # Mixtral always renormalises; the others by norm_topk_prob
    fields.update(moe_renormalize=bool(hf.get("norm_topk_prob", False)))
  if kind in QWEN_MOES:  # experts on every decoder_sparse_step-th layer, dense MLPs between
    require_supported(not hf.get("mlp_only_layers"),
                      f"{kind} with mlp_only_layers is not supported (dense layers only every "
                      "decoder_sparse_step-th apart)")
    step = hf.get("decoder_sparse_step") or 1
    if step > 1:
      fields.update(moe_every=step, moe_dense_mlp_dim=hf["intermediate_size"])
  if kind == "qwen2_moe":
    fields.update(shared_expert_dim=hf["shared_expert_intermediate_size"],
                  shared_expert_gate=True)
  return fields


def _llama_fields(hf: dict[str, Any], kind: str) -> dict[str, Any]:
  """Fields of a Llama, Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE, OLMoE or Phi-3
  config (`kind`, the HF model type)."""
  require_supported(hf.get("hidden_act", "silu") == "silu",
           f"{kind} hidden_act={hf.get('hidden_act')!r} is not supported (silu only)")
  bias = bool(hf.get("attention_bias", False)) if kind == "llama" else False
  require_supported(bias == bool(hf.get("mlp_bias", False)),
           "Llama attention_bias != mlp_bias is not supported (one use_bias for both)")
  qwen3 = kind in ("qwen3", "qwen3_moe")
  require_supported(not (qwen3 or kind == "olmoe") or not hf.get("attention_bias"),
           f"{kind} attention_bias=true is not supported")
  require_supported(hf.get("clip_qkv") is None, f"{kind} clip_qkv is not supported")
  d, n = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or d // n
  window, everywhere = sliding_window(hf)
  max_len = hf["max_position_embeddings"]
  if window and not everywhere:  # within the window, some layers' sliding attention is full
    max_len = min(window, max_len)  # attention: jaxlm has one window for all, so cap there
  return dict(style="llama", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
              num_heads=n, num_kv_heads=hf.get("num_key_value_heads") or n,
              head_dim=0 if head_dim * n == d else head_dim, embed_dim=d,
              mlp_dim=hf["moe_intermediate_size" if kind in QWEN_MOES else "intermediate_size"],
              max_seq_len=max_len,
              norm_eps=hf.get("rms_norm_eps", 1e-6), use_bias=bias,
              **rope_fields(hf, partial_rotary=kind == "phi3"),
              qkv_bias=kind == "qwen2" or kind == "qwen2_moe" and hf.get("qkv_bias", True),
              qk_norm=qwen3 or kind == "olmoe", qk_norm_full=kind == "olmoe",
              sliding_window=window if everywhere else 0,
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **_moe_fields(hf, kind))


def _parallel_fields(hf: dict[str, Any], kind: str, act: str, rope: dict[str, Any],
                     **options: Any) -> dict[str, Any]:
  """Fields of a GPT-NeoX-layout config (LayerNorm, biases, GELU MLP, partial rotary `rope`
  parameters), HF model type `kind`, with its own `options`."""
  require_supported(act in ACTIVATIONS, f"{kind} hidden_act={act!r} is not supported (jaxlm has "
                    f"{', '.join(ACTIVATIONS)})")
  return dict(style="neox", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
              num_heads=hf["num_attention_heads"], embed_dim=hf["hidden_size"],
              mlp_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
              norm_eps=hf.get("layer_norm_eps", 1e-5), use_bias=True,
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
              mlp_activation="" if ACTIVATIONS[act] == "gelu" else ACTIVATIONS[act],
              **rope_fields({"rope_parameters": rope}, partial_rotary=True), **options)


def _neox_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """Fields of a GPT-NeoX (Pythia) config: its rotary_pct and rotary_emb_base (older files)
  or rope_parameters, parallel residual, exact-GELU MLP."""
  require_supported(hf.get("attention_bias", True), "GPT-NeoX attention_bias=false is not supported")
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  params.setdefault("rope_theta", hf.get("rotary_emb_base", hf.get("rope_theta", 10000.0)))
  params.setdefault("partial_rotary_factor", hf.get("rotary_pct", 0.25))  # HF's default
  return _parallel_fields(hf, "GPT-NeoX", hf.get("hidden_act", "gelu"), params,
                          parallel_residual=bool(hf.get("use_parallel_residual", True)))


def _phi_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """Fields of a Phi 1 / 1.5 / 2 config: one LayerNorm feeding attention and MLP side by
  side, tanh-GELU MLP, partial rotary (half by default), a biased output head, optional
  per-head query / key LayerNorms (qk_layernorm) and grouped-query attention."""
  require_supported(not hf.get("tie_word_embeddings"),
                    "Phi tie_word_embeddings=true is not supported (its head has a bias)")
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
  params.setdefault("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))  # HF's
  n = hf["num_attention_heads"]
  kv = hf.get("num_key_value_heads") or n
  require_supported(hf.get("head_dim") in (None, hf["hidden_size"] // n),
                    "Phi head_dim != hidden_size / num_attention_heads is not supported")
  return _parallel_fields(hf, "Phi", hf.get("hidden_act", "gelu_new"), params,
                          num_kv_heads=0 if kv == n else kv, parallel_residual=True,
                          shared_norm=True, head_bias=True,
                          qk_norm=bool(hf.get("qk_layernorm", False)))


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
  require_supported(act in ACTIVATIONS, f"{kind} {act_key}={act!r} is not supported")
  require_supported(not hf.get("attention_bias"), f"{kind} attention_bias=true is not supported")
  require_supported(not hf.get("use_bidirectional_attention"),
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
    require_supported((local.get("rope_type") or "default") == "default",
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
  require_supported(every is not None, f"layer_types={types} is not supported (jaxlm's sliding layers "
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


def _opt_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """Fields of an OPT config: GPT-2's style (pre-LayerNorm, learned positions, biases, tied
  head) with OPT's MLP activation (ReLU); OPT-350m's post-norm and projections are refused."""
  d, act = hf["hidden_size"], hf.get("activation_function", "relu")
  require_supported(act in ACTIVATIONS, f"OPT activation_function={act!r} is not supported")
  require_supported(hf.get("do_layer_norm_before", True) and not hf.get("_remove_final_layer_norm")
                    and (hf.get("word_embed_proj_dim") or d) == d,
                    "OPT do_layer_norm_before=false, _remove_final_layer_norm or "
                    "word_embed_proj_dim != hidden_size (OPT-350m's layout) is not supported")
  require_supported(hf.get("enable_bias", True) and hf.get("layer_norm_elementwise_affine", True),
                    "OPT enable_bias=false or layer_norm_elementwise_affine=false is not supported")
  return dict(style="gpt2", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
              num_heads=hf["num_attention_heads"], embed_dim=d, mlp_dim=hf["ffn_dim"],
              max_seq_len=hf["max_position_embeddings"], norm_eps=1e-5, use_bias=True,
              mlp_activation=ACTIVATIONS[act], tie_embeddings=hf.get("tie_word_embeddings", True))


def model_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """jaxlm `config.model` fields (style included) for an HF config dict."""
  style = style_of(hf)
  if model_type_of(hf) == "opt":
    return _opt_fields(hf)
  if style == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    require_supported(act in ("gelu_new", "gelu_pytorch_tanh"),
             f"GPT-2 activation_function={act!r} is not supported (tanh GELU only)")
    require_supported(hf.get("scale_attn_weights", True), "GPT-2 scale_attn_weights=false is not supported")
    require_supported(not hf.get("scale_attn_by_inverse_layer_idx"),
             "GPT-2 scale_attn_by_inverse_layer_idx=true is not supported")
    require_supported(not hf.get("add_cross_attention"), "GPT-2 add_cross_attention is not supported")
    d = hf["n_embd"]
    return dict(style=style, vocab_size=hf["vocab_size"], num_layers=hf["n_layer"],
                num_heads=hf["n_head"], embed_dim=d, mlp_dim=hf.get("n_inner") or 4 * d,
                max_seq_len=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                use_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True))
  if style == "llama":
    kind = model_type_of(hf)
    if kind in DEEPSEEKS:
      return deepseek_fields(hf, kind)
    return _gemma_fields(hf, kind) if kind in GEMMAS else _llama_fields(hf, kind)
  if style == "neox":
    return _phi_fields(hf) if model_type_of(hf) == "phi" else _neox_fields(hf)
  if style == "bert":
    require_supported(hf.get("hidden_act", "gelu") == "gelu",
             f"BERT hidden_act={hf.get('hidden_act')!r} is not supported (exact gelu only)")
    pos = hf.get("position_embedding_type", "absolute")
    require_supported(pos == "absolute", f"BERT position_embedding_type={pos!r} is not supported")
    require_supported(not hf.get("is_decoder"), "BERT as a decoder (is_decoder=true) is not supported")
    return dict(style=style, vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], embed_dim=hf["hidden_size"],
                mlp_dim=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
                type_vocab_size=hf.get("type_vocab_size", 2), post_norm=True,
                norm_eps=hf.get("layer_norm_eps", 1e-12), use_bias=True,
                tie_embeddings=hf.get("tie_word_embeddings", True))
  act, gated = t5_mlp(hf.get("feed_forward_proj", "relu"))
  style_act, style_gated = STYLE_MLPS["t5"]
  d, n, h = hf["d_model"], hf["num_heads"], hf["d_kv"]
  # The output head is always imported untied (see hf_weights): HF may tie it to `shared`
  # without the d_model**-0.5 scale that a tied jaxlm T5 applies.
  return dict(style=style, vocab_size=hf["vocab_size"], num_layers=hf["num_layers"],
              num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
              num_heads=n, head_dim=0 if h * n == d else h, embed_dim=d, mlp_dim=hf["d_ff"],
              max_seq_len=hf.get("n_positions") or T5_MAX_SEQ_LEN,
              norm_eps=hf.get("layer_norm_epsilon", 1e-6), use_bias=False,
              tie_embeddings=False,
              mlp_activation="" if act == style_act else act,
              mlp_gated=None if gated == style_gated else gated,
              relative_buckets=hf.get("relative_attention_num_buckets", 32),
              relative_max_distance=hf.get("relative_attention_max_distance", 128))


def t5_mlp(feed_forward_proj: str) -> tuple[str, bool]:
  """(jaxlm mlp_activation, gated) of HF T5's `feed_forward_proj`, "[gated-]ACT" ("relu": the
  original T5; "gated-gelu", which HF reads as tanh-GELU: T5 v1.1, Flan-T5)."""
  gated, act = feed_forward_proj.startswith("gated-"), feed_forward_proj.split("-")[-1]
  act = "gelu_new" if feed_forward_proj == "gated-gelu" else act
  require_supported(act in ACTIVATIONS and feed_forward_proj.count("-") <= int(gated),
           f"T5 feed_forward_proj={feed_forward_proj!r} is not supported (jaxlm has "
           f"[gated-]{{{', '.join(ACTIVATIONS)}}})")
  return ACTIVATIONS[act], gated


def t5_scales_output(hf: dict[str, Any]) -> bool:
  """Whether HF T5 multiplies decoder outputs by d_model**-0.5 before its (tied) head (mT5
  never does: its checkpoints are untied and transformers 5's MT5 has no scaling)."""
  if model_type_of(hf) == "mt5":
    return False
  if "scale_decoder_outputs" in hf:
    return bool(hf["scale_decoder_outputs"])
  return hf.get("tie_word_embeddings", True) is not False
