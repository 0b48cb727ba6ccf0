"""Named model sizes. `model_config("gpt2-124m")` returns a ConfigDict for `config.model`."""

from __future__ import annotations

import math

import ml_collections

_BASE = dict(
    style="gpt2", vocab_size=0, num_layers=12, num_heads=12, num_kv_heads=0, head_dim=0,
    embed_dim=768, mlp_dim=3072, max_seq_len=1024, dropout=0.0, attention_dropout=0.0,
    dtype="auto",
    rope_theta=10000.0, rope_scaling="none", rope_factor=1.0, rope_low_freq_factor=1.0,
    rope_high_freq_factor=4.0, rope_original_max_len=8192, rope_beta_fast=32.0,
    rope_beta_slow=1.0, rope_attention_factor=0.0, rope_truncate=True, rope_fraction=1.0,
    rope_short_factor=(), rope_long_factor=(),
    parallel_residual=False, shared_norm=False, head_bias=False, norm_eps=1e-5,
    use_bias=None,
    tie_embeddings=None, qkv_bias=False, qk_norm=False, qk_norm_full=False,
    kv_lora_rank=0, q_lora_rank=0, qk_rope_head_dim=0, v_head_dim=0, sliding_window=0,
    sliding_global_every=0, rope_local_theta=0.0, mlp_activation="", mlp_gated=None,
    embed_scale=False,
    sandwich_norm=False, attn_softcap=0.0, logit_softcap=0.0, query_pre_attn_scalar=0.0,
    attention_impl="auto", remat="none", scan_layers=False,
    type_vocab_size=0, post_norm=False, num_decoder_layers=0, relative_buckets=32,
    relative_max_distance=128, num_experts=0, experts_per_token=2, moe_renormalize=True,
    router_aux_coef=0.01, router_z_coef=0.0, moe_capacity_factor=0.0, router_scoring="softmax",
    router_scale=1.0, moe_every=1, moe_dense_mlp_dim=0, shared_expert_dim=0,
    shared_expert_gate=False, router_bias=False, router_groups=1,
    router_groups_per_token=1, router_group_top=2, moe_first_dense=0)

SIZES: dict[str, dict] = {
    # GPT-2 family (Radford et al. 2019), vocab from the tokenizer (50304 for GPT-2 BPE).
    "gpt2-124m": dict(num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072),
    "gpt2-350m": dict(num_layers=24, num_heads=16, embed_dim=1024, mlp_dim=4096),
    "gpt2-774m": dict(num_layers=36, num_heads=20, embed_dim=1280, mlp_dim=5120),
    "gpt2-1.5b": dict(num_layers=48, num_heads=25, embed_dim=1600, mlp_dim=6400),
    # Llama-style small sizes: RoPE, RMSNorm, SwiGLU (mlp ~ 8/3 d), grouped-query attention.
    "llama-tiny": dict(style="llama", num_layers=4, num_heads=4, num_kv_heads=2, embed_dim=128,
                       mlp_dim=352, max_seq_len=512),
    # llama-tiny with 8 experts, 2 per token (Mixtral's routing): 8x the MLP parameters, 2x
    # the MLP work per token.
    "llama-moe-tiny": dict(style="llama", num_layers=4, num_heads=4, num_kv_heads=2,
                           embed_dim=128, mlp_dim=352, max_seq_len=512, num_experts=8,
                           experts_per_token=2),
    "llama-60m": dict(style="llama", num_layers=8, num_heads=8, num_kv_heads=4, embed_dim=512,
                      mlp_dim=1376, max_seq_len=1024),
    "llama-150m": dict(style="llama", num_layers=12, num_heads=12, num_kv_heads=4, embed_dim=768,
                       mlp_dim=2048, max_seq_len=2048),
    "llama-400m": dict(style="llama", num_layers=24, num_heads=16, num_kv_heads=8, embed_dim=1024,
                       mlp_dim=2816, max_seq_len=2048),
    # Open-weight shapes (the published configs; vocab 128256 / 151936 / 256000 / 262144 with
    # their tokenizers),
    # for training from scratch or benchmarking at the size of a `jaxlm convert` import.
    "llama3.2-1b": dict(style="llama", num_layers=16, num_heads=32, num_kv_heads=8,
                        embed_dim=2048, mlp_dim=8192, max_seq_len=131072, rope_theta=500000.0,
                        rope_scaling="llama3", rope_factor=32.0, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_original_max_len=8192,
                        tie_embeddings=True),
    "qwen2.5-0.5b": dict(style="llama", num_layers=24, num_heads=14, num_kv_heads=2,
                         embed_dim=896, mlp_dim=4864, max_seq_len=32768, rope_theta=1e6,
                         norm_eps=1e-6, qkv_bias=True, tie_embeddings=True),
    # Qwen1.5-MoE-A2.7B: 60 experts of width 1408, 4 per token, and a gated shared expert of
    # width 5632 on every layer (14.3B parameters, 2.7B of them active).
    "qwen1.5-moe-a2.7b": dict(style="llama", num_layers=24, num_heads=16, num_kv_heads=16,
                              embed_dim=2048,
                              mlp_dim=1408, max_seq_len=8192, rope_theta=1e6, norm_eps=1e-6,
                              qkv_bias=True, num_experts=60, experts_per_token=4,
                              moe_renormalize=False, router_aux_coef=0.001,
                              shared_expert_dim=5632, shared_expert_gate=True),
    # OLMoE-1B-7B: 64 experts of width 1024, 8 per token, whole-projection q/k norms (6.9B
    # parameters, 1.3B of them active).
    "olmoe-1b-7b": dict(style="llama", num_layers=16, num_heads=16, num_kv_heads=16,
                        embed_dim=2048, mlp_dim=1024, max_seq_len=4096, qk_norm=True,
                        qk_norm_full=True, num_experts=64, experts_per_token=8,
                        moe_renormalize=False),
    # DeepSeek-V3: multi-head latent attention (a 512-wide KV latent, 64 rotary dimensions per
    # head, a 1536-wide query latent), 256 experts of width 2048 in 8 groups, 8 per token from
    # the best 4 groups, scored by sigmoids plus a bias, and a shared expert; the first 3
    # layers dense; YaRN to 160K positions, its mscale in the softmax scale (671B parameters,
    # 37B of them active).
    "deepseek-v3": dict(style="llama", num_layers=61, num_heads=128, head_dim=192,
                        embed_dim=7168, mlp_dim=2048, max_seq_len=163840, norm_eps=1e-6,
                        rope_scaling="yarn", rope_factor=40.0, rope_original_max_len=4096,
                        rope_attention_factor=1.0,
                        query_pre_attn_scalar=192 / (0.1 * math.log(40.0) + 1.0) ** 4,
                        kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
                        v_head_dim=128, num_experts=256, experts_per_token=8,
                        router_aux_coef=0.0, router_scoring="sigmoid", router_scale=2.5,
                        router_bias=True, router_groups=8, router_groups_per_token=4,
                        moe_first_dense=3, moe_dense_mlp_dim=18432, shared_expert_dim=2048),
    # DeepSeek-V2-Lite: MLA without a query latent, 64 softmax-scored experts of width 1408, 6
    # per token (not renormalised), two experts' width of shared expert, the first layer
    # dense (15.7B parameters, 2.4B of them active).
    "deepseek-v2-lite": dict(style="llama", num_layers=27, num_heads=16, head_dim=192,
                             embed_dim=2048, mlp_dim=1408, max_seq_len=163840, norm_eps=1e-6,
                             rope_scaling="yarn", rope_factor=40.0, rope_original_max_len=4096,
                             rope_attention_factor=1.0,
                             query_pre_attn_scalar=192 / (0.1 * 0.707 * math.log(40.0) + 1.0) ** 4,
                             kv_lora_rank=512, qk_rope_head_dim=64, v_head_dim=128,
                             num_experts=64, experts_per_token=6, moe_renormalize=False,
                             router_aux_coef=0.001, router_group_top=1, moe_first_dense=1,
                             moe_dense_mlp_dim=10944, shared_expert_dim=2816),
    "qwen3-0.6b": dict(style="llama", num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
                       embed_dim=1024, mlp_dim=3072, max_seq_len=40960, rope_theta=1e6,
                       norm_eps=1e-6, qk_norm=True, tie_embeddings=True),
    "gemma2-2b": dict(style="llama", num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256,
                      embed_dim=2304, mlp_dim=9216, max_seq_len=8192, norm_eps=1e-6,
                      tie_embeddings=True, mlp_activation="gelu_tanh", embed_scale=True,
                      sandwich_norm=True, attn_softcap=50.0, logit_softcap=30.0,
                      query_pre_attn_scalar=256.0, sliding_window=4096, sliding_global_every=2),
    "gemma3-1b": dict(style="llama", num_layers=26, num_heads=4, num_kv_heads=1, head_dim=256,
                      embed_dim=1152, mlp_dim=6912, max_seq_len=32768, rope_theta=1e6,
                      rope_local_theta=10000.0, norm_eps=1e-6, tie_embeddings=True,
                      mlp_activation="gelu_tanh", embed_scale=True, sandwich_norm=True,
                      qk_norm=True, query_pre_attn_scalar=256.0, sliding_window=512,
                      sliding_global_every=6),
    # Pythia (Biderman et al. 2023; GPT-NeoX layout, vocab 50304 with its tokenizer): a quarter
    # of each head rotary, parallel attention and MLP, untied head, context 2048.
    **{f"pythia-{size}": dict(style="neox", num_layers=layers, num_heads=heads, embed_dim=d,
                              mlp_dim=4 * d, max_seq_len=2048, rope_fraction=0.25,
                              parallel_residual=True)
       for size, layers, heads, d in (("70m", 6, 8, 512), ("160m", 12, 12, 768),
                                      ("410m", 24, 16, 1024), ("1b", 16, 8, 2048))},
    # Phi 1 / 1.5 / 2 (Gunasekar et al. 2023, Li et al. 2023; vocab 51200 with their tokenizer,
    # context 2048): one LayerNorm feeding attention and MLP side by side, tanh GELU, partial
    # rotary, a biased untied head.
    **{name: dict(style="neox", num_layers=layers, num_heads=32, embed_dim=d, mlp_dim=4 * d,
                  max_seq_len=2048, rope_fraction=fraction, parallel_residual=True,
                  shared_norm=True, head_bias=True, mlp_activation="gelu_tanh")
       for name, layers, d, fraction in (("phi-1", 24, 2048, 0.5), ("phi-1.5", 24, 2048, 0.5),
                                         ("phi-2", 32, 2560, 0.4))},
    # BERT (Devlin et al. 2019): post-LayerNorm, exact GELU, two token types, context 512.
    "bert-tiny": dict(style="bert", num_layers=2, num_heads=2, embed_dim=128, mlp_dim=512,
                      max_seq_len=512, type_vocab_size=2, post_norm=True, norm_eps=1e-12),
    "bert-base": dict(style="bert", num_layers=12, num_heads=12, embed_dim=768, mlp_dim=3072,
                      max_seq_len=512, type_vocab_size=2, post_norm=True, norm_eps=1e-12),
    # T5 v1.1 (Raffel et al. 2020; gated GELU, untied head): num_layers per stack.
    "t5-v1.1-small": dict(style="t5", num_layers=8, num_heads=6, head_dim=64, embed_dim=512,
                          mlp_dim=1024, max_seq_len=512, norm_eps=1e-6),
    "t5-v1.1-base": dict(style="t5", num_layers=12, num_heads=12, head_dim=64, embed_dim=768,
                         mlp_dim=2048, max_seq_len=512, norm_eps=1e-6),
    # The original T5: ReLU MLP without a gate, head tied to the d**-0.5-scaled outputs.
    "t5-small": dict(style="t5", num_layers=6, num_heads=8, head_dim=64, embed_dim=512,
                     mlp_dim=2048, max_seq_len=512, norm_eps=1e-6, mlp_activation="relu",
                     mlp_gated=False, tie_embeddings=True),
    "t5-base": dict(style="t5", num_layers=12, num_heads=12, head_dim=64, embed_dim=768,
                    mlp_dim=3072, max_seq_len=512, norm_eps=1e-6, mlp_activation="relu",
                    mlp_gated=False, tie_embeddings=True),
}


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """The full `config.model` block for a named size, with `overrides` applied."""
  if name not in SIZES:
    raise KeyError(f"unknown model size {name!r}; known: {', '.join(sorted(SIZES))}")
  fields = {**_BASE, **SIZES[name], **overrides}
  unknown = set(fields) - set(_BASE)
  if unknown:
    raise KeyError(f"unknown model fields {sorted(unknown)}")
  # None-valued fields need a declared type so CLI overrides (--config.model.use_bias=false) work.
  cfg = ml_collections.ConfigDict(
      {k: ml_collections.FieldReference(v, field_type=bool) if k in ("use_bias", "tie_embeddings")
       else v for k, v in fields.items()})
  return cfg
