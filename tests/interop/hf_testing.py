"""Helpers for the interop tests: tiny randomly initialised transformers models (2 layers,
hidden 32) saved to disk, tiny byte-level BPE tokenizers, and random padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 256
# Decoder variants (Llama family, GPT-NeoX, Phi): (config class, model class, options beyond the
# small shape).
LONGROPE = dict(rope_type="longrope", rope_theta=500.0, short_factor=[1.0, 1.3, 1.7, 2.2],
                long_factor=[1.5, 3.0, 6.0, 12.0])
DECODER_VARIANTS = {
    "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=500.0, factor=4.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=32))),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(sliding_window=4, rope_theta=500.0)),
    # Mistral with 4 experts, 2 per token, in place of each MLP.
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(sliding_window=4, rope_theta=500.0, num_local_experts=4,
                     num_experts_per_tok=2)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(rope_theta=500.0, tie_word_embeddings=False)),
    # Qwen2 with 4 experts of width 24, 3 per token (not renormalised), and a gated shared
    # expert of width 40.
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(rope_theta=500.0, num_experts=4, num_experts_per_tok=3,
                       moe_intermediate_size=24, shared_expert_intermediate_size=40,
                       norm_topk_prob=False)),
    # Qwen3 with 4 experts of width 24, 2 per token, their weights not renormalised.
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  dict(head_dim=8, rope_theta=500.0, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=24, norm_topk_prob=False)),
    # The same with experts on every 2nd layer only (layer 0 a 64-wide dense MLP).
    "qwen3_moe_sparse": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                         dict(head_dim=8, rope_theta=500.0, num_experts=4, num_experts_per_tok=2,
                              moe_intermediate_size=24, norm_topk_prob=False,
                              decoder_sparse_step=2)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(head_dim=8, rope_theta=500.0, tie_word_embeddings=True)),
    # Llama with 4 experts, 2 per token (not renormalised), and RMSNorms over the whole query
    # and key projections.
    "olmoe": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM,
              dict(rope_theta=500.0, num_experts=4, num_experts_per_tok=2)),
    # YaRN at 4x a 16-token context, as Qwen3 extends its own.
    "qwen3_yarn": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(
        head_dim=8, tie_word_embeddings=True, rope_parameters=dict(
            rope_type="yarn", rope_theta=500.0, factor=4.0, original_max_position_embeddings=16))),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM,
              dict(head_dim=16, rope_theta=500.0, hidden_act="gelu_pytorch_tanh")),
    # Layer 0 slides (window 4), layer 1 attends to everything; caps small enough to bite.
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM, dict(
        head_dim=8, rope_theta=500.0, sliding_window=4, query_pre_attn_scalar=16,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
        layer_types=["sliding_attention", "full_attention"])),
    # Sliding layer 0 with its own RoPE theta; full layer 1 with linear RoPE scaling.
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, dict(
        head_dim=8, sliding_window=4, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"], rope_parameters=dict(
            full_attention=dict(rope_type="linear", factor=2.0, rope_theta=500.0),
            sliding_attention=dict(rope_type="default", rope_theta=50.0)))),
    # GPT-NeoX (Pythia's layout, written as older files are): a quarter of each 16-wide head
    # rotary, parallel residual; then sequential, half rotary, tanh GELU, tied head.
    "neox": (transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM, dict(
        num_attention_heads=2, rotary_pct=0.25, rotary_emb_base=500, use_parallel_residual=True)),
    "neox_sequential": (transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM, dict(
        num_attention_heads=2, rope_parameters=dict(rope_type="default", rope_theta=500.0,
                                                    partial_rotary_factor=0.5),
        use_parallel_residual=False, hidden_act="gelu_new", tie_word_embeddings=True)),
    # Phi 2's layout (a 0.4 share of each 16-wide head rotary: 6 dimensions, tanh GELU); then
    # Phi with qk_layernorm, grouped-query attention and exact GELU.
    "phi": (transformers.PhiConfig, transformers.PhiForCausalLM, dict(
        num_attention_heads=2, rope_parameters=dict(rope_type="default", rope_theta=500.0,
                                                    partial_rotary_factor=0.4))),
    # OPT: GPT-2's style with a ReLU MLP and positions two rows into their table.
    "opt": (transformers.OPTConfig, transformers.OPTForCausalLM, dict(ffn_dim=64)),
    # Phi-3's fused qkv_proj / gate_up_proj around Mistral's window (exports as Mistral).
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM,
             dict(sliding_window=4, rope_theta=500.0, pad_token_id=0)),
    # Phi-3.5-mini's LongRoPE: short factors up to 8 positions, long ones past them, sqrt(2)
    # as the attention factor (64 / 8 the context ratio); exports as Llama.
    "phi3_longrope": (transformers.Phi3Config, transformers.Phi3ForCausalLM, dict(
        original_max_position_embeddings=8, pad_token_id=0, rope_parameters=LONGROPE)),
    # Phi-4-mini's layout: LongRoPE on half of each head (partial rotary), tied head.
    "phi4_mini": (transformers.Phi3Config, transformers.Phi3ForCausalLM, dict(
        original_max_position_embeddings=8, pad_token_id=0, tie_word_embeddings=True,
        rope_parameters={**LONGROPE, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.5], "long_factor": [2.0, 9.0]})),
    # DeepSeek-V3: MLA with a query latent and interleaved rotary pairs (values narrower than
    # keys); layer 0 a dense MLP, layer 1 8 experts of width 16 in 4 groups, 3 per token from
    # the best 2 groups, sigmoid scores plus a bias, scaled by 2.5, and a shared expert.
    "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM, dict(
        num_key_value_heads=4, rope_theta=500.0, kv_lora_rank=12, q_lora_rank=16,
        qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6, first_k_dense_replace=1,
        n_routed_experts=8, moe_intermediate_size=16, n_shared_experts=1, n_group=4,
        topk_group=2, num_experts_per_tok=3, routed_scaling_factor=2.5)),
    # The same without the query latent, its rotary pairs as halves, and YaRN at 4x a
    # 16-token context with DeepSeek's mscale pair (an attention factor and a softmax scale).
    "deepseek_v3_yarn": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM, dict(
        num_key_value_heads=4, kv_lora_rank=12, q_lora_rank=None, qk_rope_head_dim=4,
        qk_nope_head_dim=8, v_head_dim=10, first_k_dense_replace=1, n_routed_experts=4,
        moe_intermediate_size=16, n_shared_experts=2, n_group=1, topk_group=1,
        num_experts_per_tok=2, rope_interleave=False, rope_parameters=dict(
            rope_type="yarn", rope_theta=500.0, factor=4.0, original_max_position_embeddings=16,
            mscale=1.0, mscale_all_dim=0.8))),
    # DeepSeek-V2: MLA (always interleaved rotary pairs) with a query latent; layer 0 dense,
    # layer 1 8 softmax-scored experts in 4 groups, 3 per token from the best 2 groups (each
    # scored by its best expert), not renormalised, scaled by 1.5; YaRN with its mscale pair.
    "deepseek_v2": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM, dict(
        num_key_value_heads=4, kv_lora_rank=12, q_lora_rank=16, qk_rope_head_dim=4,
        qk_nope_head_dim=8, v_head_dim=6, first_k_dense_replace=1, n_routed_experts=8,
        moe_intermediate_size=16, n_shared_experts=1, n_group=4, topk_group=2,
        topk_method="group_limited_greedy", num_experts_per_tok=3, routed_scaling_factor=1.5,
        rope_parameters=dict(rope_type="yarn", rope_theta=500.0, factor=4.0,
                             original_max_position_embeddings=16, mscale=0.9,
                             mscale_all_dim=0.7))),
    "phi_qk": (transformers.PhiConfig, transformers.PhiForCausalLM, dict(
        qk_layernorm=True, hidden_act="gelu", rope_parameters=dict(
            rope_type="default", rope_theta=500.0, partial_rotary_factor=0.5))),
}
NEOX = ("neox", "neox_sequential")

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


def byte_bpe(vocab: int, specials: tuple[str, ...] = ("<|endoftext|>",)) -> RustTokenizer:
  """A GPT-2-style byte-level BPE with special tokens `specials`, trained on a few lines."""
  tok = RustTokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([TEXT] * 4, trainers.BpeTrainer(
      vocab_size=vocab, special_tokens=list(specials),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tok


def hf_model(family: str, vocab: int = VOCAB, seed: int = 0):
  """A tiny transformers model of `family` in eval mode (fp32, CPU).

  Variants: "llama_tied" (tied head, one KV head, head_dim 16 != hidden / heads, biases),
  "bert_untied" (separate MLM decoder with its own bias, three token types), "llama3"
  (Llama 3.1 RoPE scaling: of the 4 frequencies one is kept, one blended, two divided),
  "mistral" (a sliding window of 4 positions), "mixtral" (Mistral with 4 experts), "qwen2"
  (q/k/v biases), "qwen2_moe" (Qwen2 with 4 experts and a gated shared expert), "qwen3"
  (per-head query / key RMSNorm, tied head), "qwen3_moe" (Qwen3 with 4 experts),
  "qwen3_moe_sparse" (the experts on every 2nd layer),
  "olmoe" (4 experts, whole-projection q/k norms), "qwen3_yarn" (YaRN RoPE scaling), "gemma" /
  "gemma2" / "gemma3", "neox" / "neox_sequential", "phi" / "phi_qk", "phi3", "opt" (see DECODER_VARIANTS),
  "gemma3_vision" (a Gemma 3 image-text model around the "gemma3" language model),
  "t5_original" (the original T5's ReLU MLP and scaled tied head), "mt5" (T5 v1.1's layout
  under mT5's names).
  """
  torch.manual_seed(seed)
  small = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  if family in DECODER_VARIANTS:
    config_class, model_class, extra = DECODER_VARIANTS[family]
    if family in NEOX + ("opt",):  # no grouped-query attention
      small.pop("num_key_value_heads")
    if family == "opt":
      small.pop("intermediate_size")
    model = model_class(config_class(**{**small, **extra}))
  elif family == "gemma3_vision":  # Gemma 3 4B+'s layout: "gemma3" as the language model
    _, _, extra = DECODER_VARIANTS["gemma3"]
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=28, patch_size=14)
    model = transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config={**small, **extra}, vision_config=vision, mm_tokens_per_image=4,
        boi_token_index=vocab - 3, eoi_token_index=vocab - 2, image_token_index=vocab - 1))
  elif family == "llama_tied":
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, attention_bias=True,
        mlp_bias=True, tie_word_embeddings=True, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg)
  elif family == "bert_untied":
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, type_vocab_size=3,
                                  max_position_embeddings=64, tie_word_embeddings=False)
    model = transformers.BertForMaskedLM(cfg)
  elif family == "gpt2":
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2,
                                  n_head=4, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
  elif family == "llama":
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=2,
        eos_token_id=3, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg)
  elif family == "bert":
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=64)
    model = transformers.BertForMaskedLM(cfg)
  else:  # T5 v1.1 and mT5: gated GELU, separate output head, no output scaling;
    # "t5_original": ReLU MLP, head tied to the scaled outputs
    v11 = family != "t5_original"
    mt5 = family == "mt5"
    cfg = (transformers.MT5Config if mt5 else transformers.T5Config)(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu" if v11 else "relu", tie_word_embeddings=not v11,
        decoder_start_token_id=0)
    model = (transformers.MT5ForConditionalGeneration if mt5
             else transformers.T5ForConditionalGeneration)(cfg)
  with torch.no_grad():  # HF zero-initialises biases and sets norms to 1: randomise them
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name.lower():
        p.add_(0.1 * torch.randn_like(p))
      # Sharp attention, so that positions (RoPE and its scaling) show in the logits, and
      # a sharp router, so that no two experts' probabilities are within rounding.
      sharpened = family in DECODER_VARIANTS or family == "gemma3_vision"
      projections = ("q_proj.weight", "k_proj.weight", "query_key_value.weight",
                     "qkv_proj.weight", "gate.weight", "q_b_proj.weight",
                     "kv_a_proj_with_mqa.weight")
      if sharpened and name.endswith(projections) and "vision" not in name:
        p.mul_(10.0)
    for name, b in model.named_buffers():  # DeepSeek-V3's router bias: of the scores' size
      if name.endswith("e_score_correction_bias"):
        b.add_(0.3 * torch.rand_like(b))
  return model.eval()


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
  """family -> (transformers model, folder it was saved to), built once per session."""
  root = tmp_path_factory.mktemp("hf_models")
  out = {}
  for family in ("gpt2", "llama", "bert", "t5"):
    model = hf_model(family)
    model.save_pretrained(root / family)
    out[family] = (model, root / family)
  return out


def random_batch(vocab: int, seed: int = 0, batch: int = 3, length: int = 12):
  """Random token ids and a 0/1 attention mask with right padding in rows 1 and 2."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, length))
  mask = np.ones((batch, length), np.int64)
  mask[1, length // 2:] = 0
  mask[2, length - 2:] = 0
  return tokens, mask


def jitted(model):
  """`model(*args)` as one compiled program (much faster than eager op-by-op on CPU)."""
  import jax
  from flax import nnx
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, *args: nnx.merge(graphdef, s)(*args))
  return lambda *args: fn(state, *args)
