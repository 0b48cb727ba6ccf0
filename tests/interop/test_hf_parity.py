"""Logits parity of imported and exported GPT-2, Llama-family, GPT-NeoX, Phi, BERT, T5 and mT5
checkpoints against transformers (torch CPU, fp32) on random inputs with padding; sharded
checkpoints; errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_testing import (DECODER_VARIANTS, VOCAB, hf_model, jitted, random_batch,  # noqa: F401
                        saved_models)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from jaxlm.interop import hf, hf_config, hf_config_export, hf_weights, safetensors_io
from jaxlm.models import factory, layers, matmul_param_count, param_count, registry
from jaxlm.models.config import ModelConfig

FAMILIES = ("gpt2", "llama", "bert", "t5")
AUTO = {"gpt2": transformers.AutoModelForCausalLM, "llama": transformers.AutoModelForCausalLM,
        "bert": transformers.AutoModelForMaskedLM, "t5": transformers.AutoModelForSeq2SeqLM}


# Variants an export writes in another layout of the same computation.
EXPORTED_AS = {"phi3": transformers.MistralForCausalLM,
               "phi3_longrope": transformers.LlamaForCausalLM}


def hf_logits(model, family: str, tokens, mask, dec=None, dec_mask=None) -> np.ndarray:
  """transformers' logits (B, T, V) as numpy."""
  with torch.no_grad():
    kwargs = dict(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
    if family == "t5":
      kwargs.update(decoder_input_ids=torch.tensor(dec),
                    decoder_attention_mask=torch.tensor(dec_mask))
    return model(**kwargs).logits.numpy()


def jaxlm_logits(model, family: str, tokens, mask, dec=None, dec_mask=None) -> np.ndarray:
  """jaxlm's logits; the attention mask becomes segment ids (0 = padding)."""
  tokens, mask, model = jnp.asarray(tokens), jnp.asarray(mask, jnp.int32), jitted(model)
  if family == "t5":
    return np.asarray(model(tokens, jnp.asarray(dec), mask, jnp.asarray(dec_mask, jnp.int32)))
  if family == "bert":
    return np.asarray(model(tokens, mask))
  return np.asarray(model(tokens, None, mask))


def both_logits(hf_model_, jax_model, family: str, seed: int = 0):
  """(transformers logits, jaxlm logits, valid-position mask) on one random padded batch."""
  tokens, mask = random_batch(VOCAB, seed)
  dec = dec_mask = None
  valid = mask.astype(bool)
  if family == "t5":
    dec, dec_mask = random_batch(VOCAB, seed + 1, length=7)
    valid = dec_mask.astype(bool)
  ref = hf_logits(hf_model_, family, tokens, mask, dec, dec_mask)
  ours = jaxlm_logits(jax_model, family, tokens, mask, dec, dec_mask)
  return ref, ours, valid


@pytest.mark.parametrize("family", FAMILIES)
def test_import_then_export_matches_transformers(family, saved_models, tmp_path):
  model, folder = saved_models[family]
  cfg, params, hf_cfg = hf.load_hf(folder)
  ref, ours, valid = both_logits(model, hf.build_model(cfg, params), family)
  assert ours.shape == ref.shape
  assert np.abs(ours - ref)[valid].max() < 1e-4
  assert np.abs(ref[valid]).max() > 0.1  # the comparison is not between near-zero logits

  hf.save_hf(tmp_path / "out", cfg, params, base_config=hf_cfg)
  reloaded = AUTO[family].from_pretrained(tmp_path / "out").eval()
  assert type(reloaded) is type(model)
  ref2, _, _ = both_logits(reloaded, hf.build_model(cfg, params), family)
  assert np.abs(ref2 - ref)[valid].max() < 1e-5


@pytest.mark.parametrize("variant", ("llama_tied", "bert_untied",
                                     *DECODER_VARIANTS))
def test_variants_import_and_export(variant, tmp_path):
  family = "bert" if variant == "bert_untied" else "llama"
  model = hf_model(variant)
  model.save_pretrained(tmp_path / "in")
  cfg, params, hf_cfg = hf.load_hf(tmp_path / "in")
  assert cfg.tied == model.config.tie_word_embeddings
  ref, ours, valid = both_logits(model, hf.build_model(cfg, params), family)
  assert np.abs(ours - ref)[valid].max() < 1e-4
  hf.save_hf(tmp_path / "out", cfg, params, base_config=hf_cfg)
  reloaded = AUTO[family].from_pretrained(tmp_path / "out").eval()
  assert type(reloaded) is EXPORTED_AS.get(variant, type(model))
  assert reloaded.config.max_position_embeddings == model.config.max_position_embeddings
  if variant == "llama3":  # the transformers 4 layout of the scaling too
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    scaling = {k: v for k, v in model.config.rope_parameters.items() if k != "rope_theta"}
    assert written["rope_scaling"] == scaling and written["rope_theta"] == 500.0
  ref2, _, _ = both_logits(reloaded, hf.build_model(cfg, params), family)
  assert np.abs(ref2 - ref)[valid].max() < 1e-5


def test_longrope_switches_factors_past_the_original_context_as_transformers_does(tmp_path):
  """LongRoPE (Phi-3.5-mini; Phi-4-mini's on half of each head): a forward pass within the
  original 8 positions uses the short factors, a longer one the long factors at every
  position, as transformers picks them. Phi-4-mini's partial rotary exports in Phi-3's own
  layout (the only Llama-family one that rotates part of each head), Phi-3.5's as Llama."""
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 12))
  for variant in ("phi3_longrope", "phi4_mini"):
    model = hf_model(variant)
    model.save_pretrained(tmp_path / variant)
    cfg, params, hf_cfg = hf.load_hf(tmp_path / variant)
    assert (cfg.rope_scaling, cfg.rope_original_max_len, cfg.rope_factor) == ("longrope", 8, 8.0)
    ours = hf.build_model(cfg, params)
    logits = {}
    for length in (8, 12):
      batch = (tokens[:, :length], np.ones((2, length), np.int64))
      logits[length] = hf_logits(model, "llama", *batch)
      assert np.abs(jaxlm_logits(ours, "llama", *batch) - logits[length]).max() < 1e-4
    assert np.abs(logits[12][:, :8] - logits[8]).max() > 1e-2  # the long factors apply to all
  assert cfg.rope_fraction == 0.5 and cfg.tied
  written = hf_config_export.hf_config(cfg, hf_cfg)
  assert written["architectures"] == ["Phi3ForCausalLM"] and written["partial_rotary_factor"] == 0.5
  with pytest.raises(hf_config.UnsupportedModelError, match="needs Phi-3's layout"):
    hf_config_export.hf_config(dataclasses.replace(cfg, qkv_bias=True), hf_cfg)


def test_phi3_exports_as_mistral_without_its_remote_code(tmp_path):
  """Phi-3's hub configs name their own modelling code (`auto_map`); the export is Mistral's
  layout, which that code would misread, so the entry is dropped."""
  hf_model("phi3").save_pretrained(tmp_path)
  cfg, _, hf_cfg = hf.load_hf(tmp_path)
  remote = {"AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}
  written = hf_config_export.hf_config(cfg, {**hf_cfg, "auto_map": remote})
  assert written["architectures"] == ["MistralForCausalLM"] and "auto_map" not in written
  assert hf_config_export.hf_config(cfg, {**hf_cfg, "architectures": ["MistralForCausalLM"],
                                          "auto_map": remote})["auto_map"] == remote


@pytest.mark.slow  # twelve tiny imports, each run twice: ~20-30 s
def test_variant_options_are_what_makes_the_logits_match(tmp_path):
  """Each Llama-family option changes the logits: without it the import would not match."""
  for variant, option, off, dropped in (
      ("llama3", "rope_scaling", "none", ()),
      ("qwen2", "qkv_bias", False, ("query/bias", "key/bias", "value/bias")),
      ("qwen3", "qk_norm", False, ("query_norm/scale", "key_norm/scale")),
      ("gemma", "embed_scale", False, ()),
      ("gemma2", "attn_softcap", 0.0, ()), ("gemma2", "sliding_global_every", 0, ()),
      ("gemma2", "query_pre_attn_scalar", 0.0, ()), ("gemma3", "rope_local_theta", 0.0, ()),
      ("qwen3_yarn", "rope_attention_factor", 1.0, ()), ("neox", "rope_fraction", 1.0, ()),
      ("neox", "parallel_residual", False, ()), ("phi", "head_bias", False, ("head/bias",)),
      ("phi3_longrope", "rope_long_factor", (1.0, 1.3, 1.7, 2.2), ()),  # = the short ones
      ("phi3_longrope", "rope_attention_factor", 1.0, ())):
    model = hf_model(variant)
    model.save_pretrained(tmp_path / variant)
    cfg, params, _ = hf.load_hf(tmp_path / variant)
    assert getattr(cfg, option) != off
    ref, ours, valid = both_logits(model, hf.build_model(cfg, params), "llama")
    plain = dataclasses.replace(cfg, **{option: off})
    flat = {k: v for k, v in hf.flatten(params).items() if not k.endswith(dropped)}
    template = nnx.to_pure_dict(hf.abstract_state(plain)[1])
    _, without, _ = both_logits(model, hf.build_model(plain, hf.unflatten_like(template, flat)),
                                "llama")
    assert np.abs(ours - ref)[valid].max() < 1e-4
    assert np.abs(without - ref)[valid].max() > 1e-2, (variant, option)


def test_sliding_windows_import_as_the_model_window_or_a_capped_context(tmp_path):
  """Mistral's window (every layer) becomes model.sliding_window; a window on some layers
  only (Qwen's max_window_layers) caps the context, where it equals full attention."""
  model = hf_model("mistral")
  model.save_pretrained(tmp_path / "in")
  cfg, params, hf_cfg = hf.load_hf(tmp_path / "in")
  assert (cfg.sliding_window, cfg.max_seq_len) == (4, 64)
  ref, ours, valid = both_logits(model, hf.build_model(cfg, params), "llama")
  _, full, _ = both_logits(model, hf.build_model(dataclasses.replace(cfg, sliding_window=0),
                                                 params), "llama")
  assert np.abs(ours - ref)[valid].max() < 1e-4 < np.abs(full - ref)[valid].max()
  qwen = {**hf_model("qwen2").config.to_dict(), "use_sliding_window": True, "sliding_window": 16,
          "layer_types": ["full_attention", "sliding_attention"]}
  fields = hf_config.model_fields(qwen)
  assert (fields["sliding_window"], fields["max_seq_len"]) == (0, 16)


@pytest.mark.parametrize("scaling", ("linear", "llama3", "yarn"))
def test_rope_frequencies_match_transformers(scaling):
  params = dict(rope_type=scaling, rope_theta=500000.0, factor=8.0)
  if scaling == "llama3":
    params.update(low_freq_factor=1.0, high_freq_factor=4.0,
                  original_max_position_embeddings=8192)
  if scaling == "yarn":  # Qwen's recipe for 4x its context
    params.update(factor=4.0, original_max_position_embeddings=32768)
  hf_cfg = transformers.LlamaConfig(hidden_size=4096, num_attention_heads=32,
                                    max_position_embeddings=131072,
                                    rope_parameters=params)
  ref, attention_factor = ROPE_INIT_FUNCTIONS[scaling](hf_cfg)
  cfg = ModelConfig(vocab_size=8, num_layers=1, num_heads=32, embed_dim=4096, mlp_dim=8,
                    max_seq_len=8, style="llama", **hf_config.rope_fields(hf_cfg.to_dict()))
  ours = layers.rope_frequencies(cfg)
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
  assert layers.rope_attention_factor(cfg) == pytest.approx(attention_factor, rel=1e-9)
  # The transformers 4 layout of the same settings (Llama 3.1's published config.json).
  legacy = {"rope_theta": params["rope_theta"],
            "rope_scaling": {k: v for k, v in params.items() if k != "rope_theta"}}
  assert hf_config.rope_fields(legacy) == hf_config.rope_fields(hf_cfg.to_dict())
  plain = layers.rope_frequencies(dataclasses.replace(cfg, rope_scaling="none"))
  assert (ours < plain).sum() >= 16 and (ours == plain).any() == (scaling != "linear")


def test_export_without_the_original_config(saved_models, tmp_path):
  """A model known only by its jaxlm config (no HF config to update) exports and reloads."""
  model, folder = saved_models["llama"]
  cfg, params, _ = hf.load_hf(folder)
  hf.save_hf(tmp_path / "fresh", cfg, params, dtype="bfloat16")
  written = json.loads((tmp_path / "fresh" / "config.json").read_text())
  assert written["architectures"] == ["LlamaForCausalLM"] and written["dtype"] == "bfloat16"
  # transformers 4 reads rope_theta / rope_scaling, 5 rope_parameters: both are written
  assert written["rope_theta"] == written["rope_parameters"]["rope_theta"] == 500.0
  assert written["rope_scaling"] is None
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "fresh", dtype=torch.float32).eval()
  tokens, mask = random_batch(VOCAB)
  ref, ours = hf_logits(model, "llama", tokens, mask), hf_logits(reloaded, "llama", tokens, mask)
  # bf16 weights: relative error ~ 2^-8 per weight
  assert np.abs(ref - ours)[mask.astype(bool)].max() < 0.05 * np.abs(ref).max()


def test_sharded_checkpoint_imports(saved_models, tmp_path):
  model, _ = saved_models["llama"]
  model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
  cfg, params, _ = hf.load_hf(tmp_path / "sharded")
  ref, ours, valid = both_logits(model, hf.build_model(cfg, params), "llama")
  assert np.abs(ours - ref)[valid].max() < 1e-4


@pytest.mark.parametrize("variant,mlp", [("t5_original", ("relu", False, "relu")),
                                         ("mt5", ("gelu_tanh", True, "gated-gelu"))])
def test_original_t5_and_mt5_import_and_export(variant, mlp, tmp_path):
  """The original T5 (t5-small / t5-base): ReLU MLP without a gate (`wi`, `wo`) and a tied
  head on d_model**-0.5-scaled outputs; mT5: T5 v1.1 under its own class. Imported and
  exported, the logits are transformers' and the class is the original's."""
  model = hf_model(variant)
  model.save_pretrained(tmp_path / "in")
  cfg, params, hf_cfg = hf.load_hf(tmp_path / "in")
  assert (cfg.mlp_act, cfg.gated_mlp) == mlp[:2]
  ref, ours, valid = both_logits(model, hf.build_model(cfg, params), "t5")
  assert np.abs(ours - ref)[valid].max() < 1e-4
  hf.save_hf(tmp_path / "out", cfg, params, base_config=hf_cfg)
  reloaded = AUTO["t5"].from_pretrained(tmp_path / "out").eval()
  assert type(reloaded) is type(model) and reloaded.config.feed_forward_proj == mlp[2]
  ref2, _, _ = both_logits(reloaded, hf.build_model(cfg, params), "t5")
  assert np.abs(ref2 - ref)[valid].max() < 1e-5
  if not cfg.gated_mlp:  # a gate the layout has no tensors for is refused, not dropped
    with pytest.raises(hf_config.UnsupportedModelError, match="mlp_gated=False needs the t5"):
      hf_config_export.hf_config(dataclasses.replace(cfg, style="llama", tie_embeddings=True))
  else:  # as is a tied head mT5 would not scale
    with pytest.raises(hf_config.UnsupportedModelError, match="mT5 export needs tie_emb"):
      hf_config_export.hf_config(dataclasses.replace(cfg, tie_embeddings=True), hf_cfg)


def test_unsupported_architecture_is_named(saved_models, tmp_path):
  config = json.loads((saved_models["gpt2"][1] / "config.json").read_text())
  with pytest.raises(hf_config.UnsupportedModelError, match="FalconForCausalLM"):
    hf_config.model_fields({**config, "architectures": ["FalconForCausalLM"]})
  t5 = json.loads((saved_models["t5"][1] / "config.json").read_text())
  with pytest.raises(hf_config.UnsupportedModelError, match="feed_forward_proj='gated-gelu_fast'"):
    hf_config.model_fields({**t5, "feed_forward_proj": "gated-gelu_fast"})
  llama = json.loads((saved_models["llama"][1] / "config.json").read_text())
  scaled = {**llama, "rope_parameters": {"rope_type": "longrope", "factor": 2.0,
                                          "rope_theta": 1e4}}
  with pytest.raises(hf_config.UnsupportedModelError, match="longrope scaling needs original_max"):
    hf_config.model_fields(scaled)  # LongRoPE without its factors
  legacy = {k: v for k, v in llama.items() if k != "rope_parameters"}  # transformers 4 layout
  legacy.update(rope_theta=1e4, rope_scaling={"type": "dynamic", "factor": 2.0})
  with pytest.raises(hf_config.UnsupportedModelError, match="rope_type='dynamic'"):
    hf_config.model_fields(legacy)
  # Qwen3-MoE with dense MLPs on listed layers; a mixture export in neither MoE layout
  qwen3_moe = {**llama, "architectures": ["Qwen3MoeForCausalLM"], "num_experts": 4,
               "num_experts_per_tok": 2, "moe_intermediate_size": 24, "mlp_only_layers": [1]}
  with pytest.raises(hf_config.UnsupportedModelError, match="mlp_only_layers"):
    hf_config.model_fields(qwen3_moe)
  fields = hf_config.model_fields({**qwen3_moe, "mlp_only_layers": []})
  assert (fields["num_experts"], fields["mlp_dim"], fields["moe_renormalize"]) == (4, 24, False)
  moe = ModelConfig(**{**fields, "qk_norm": False})  # Mixtral's layout, but not renormalised
  with pytest.raises(hf_config.UnsupportedModelError, match="Mixtral's layout"):
    hf_config_export.hf_config(moe)
  # A shared expert without Qwen2-MoE's sigmoid gate (DeepSeekMoE's) has no HF layout here.
  shared = ModelConfig(**{**fields, "qk_norm": False, "shared_expert_dim": 16})
  with pytest.raises(hf_config.UnsupportedModelError, match="Qwen2-MoE's layout"):
    hf_config_export.hf_config(shared)
  assert hf_config_export.hf_config(dataclasses.replace(shared, shared_expert_gate=True))[
      "architectures"] == ["Qwen2MoeForCausalLM"]
  # Whole-projection q/k norms: OLMoE's with experts; OLMo 2's dense blocks are post-norm.
  olmo = dataclasses.replace(shared, shared_expert_dim=0, qk_norm=True, qk_norm_full=True)
  assert hf_config_export.hf_config(olmo)["architectures"] == ["OlmoeForCausalLM"]
  with pytest.raises(hf_config.UnsupportedModelError, match="qk_norm_full needs experts"):
    hf_config_export.hf_config(dataclasses.replace(olmo, num_experts=0))
  with pytest.raises(hf_config.UnsupportedModelError, match="router_scoring=softmax and router_"):
    hf_config_export.hf_config(dataclasses.replace(olmo, router_scoring="sigmoid"))
  with pytest.raises(hf_config.UnsupportedModelError, match="moe_every > 1 needs a Qwen"):
    hf_config_export.hf_config(dataclasses.replace(olmo, moe_every=2))
  with pytest.raises(hf_config.UnsupportedModelError, match="clip_qkv is not supported"):
    hf_config.model_fields({**hf_config_export.hf_config(olmo), "clip_qkv": 8.0})


def test_shape_mismatch_and_missing_tensor_are_named(saved_models, tmp_path):
  folder = tmp_path / "bad"
  shutil.copytree(saved_models["llama"][1], folder)
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
  with pytest.raises(hf_weights.WeightMismatchError,
                     match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape \(64, 32\)"):
    hf.load_hf(folder)
  (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
  with pytest.raises(hf_weights.WeightMismatchError, match=r"model\.layers\.2\.input_layernorm"):
    hf.load_hf(folder)


def test_export_refuses_parameters_hf_has_no_place_for(saved_models, tmp_path):
  cfg, params, _ = hf.load_hf(saved_models["gpt2"][1])
  flat = {**hf.flatten(params), "value_head/proj/kernel": np.zeros((32, 1), np.float32)}
  with pytest.raises(hf_weights.WeightMismatchError, match="value_head/proj/kernel"):
    hf_weights.to_hf(cfg, flat)


# The published configs of the open-weight shapes in jaxlm's registry.
PUBLISHED = {
    "llama3.2-1b": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=8192))),
    "qwen2.5-0.5b": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen1.5-moe-a2.7b": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM, dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=8192,
        rms_norm_eps=1e-6, rope_theta=1e6, num_experts=60, num_experts_per_tok=4,
        moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
        norm_topk_prob=False, router_aux_loss_coef=0.001, tie_word_embeddings=False)),
    "olmoe-1b-7b": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM, dict(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, num_experts=64, num_experts_per_tok=8,
        norm_topk_prob=False, router_aux_loss_coef=0.01, tie_word_embeddings=False)),
    "qwen3-0.6b": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
        max_position_embeddings=40960, tie_word_embeddings=True, rope_theta=1e6)),
    "gemma2-2b": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM, dict(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
        max_position_embeddings=8192)),
    "gemma3-1b": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, dict(
        vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=512, max_position_embeddings=32768, rope_parameters=dict(
            full_attention=dict(rope_type="default", rope_theta=1e6),
            sliding_attention=dict(rope_type="default", rope_theta=10000.0)))),
}


def registry_shape_of(name: str, hf: dict) -> ModelConfig:
  """Registry size `name` at the vocabulary of HF config `hf`, asserted equal to its import."""
  ours = ModelConfig(**{**registry.model_config(name).to_dict(), "vocab_size": hf["vocab_size"]})
  resolved = dataclasses.replace(ours, use_bias=ours.bias, tie_embeddings=ours.tied)
  assert resolved == dataclasses.replace(resolved, **hf_config.model_fields(hf))
  return ours


@pytest.mark.parametrize("name", PUBLISHED)
def test_registry_open_weight_shapes_are_what_an_import_gives(name):
  """Each registry shape equals the import of its published config, and has transformers'
  parameter count (1,235,814,400 / 494,032,768 / 14,315,784,192 / 596,049,920 /
  2,614,341,888 / 999,885,952)."""
  config_class, model_class, values = PUBLISHED[name]
  hf_cfg = config_class(**values)
  ours = registry_shape_of(name, hf_cfg.to_dict())
  with torch.device("meta"):
    reference = sum(p.numel() for p in model_class(hf_cfg).parameters())
  _, state = nnx.split(nnx.eval_shape(lambda: factory.create(ours, nnx.Rngs(0))))
  assert param_count(nnx.to_pure_dict(state)) == reference


DEEPSEEK_YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, beta_fast=32,
                     beta_slow=1, original_max_position_embeddings=4096)
# name -> (config class, model class, published config, router biases (a buffer in
# transformers), total and active parameters in billions as their cards give them, and how
# far the active count may be from the card's: its rounding (V3's whole billions; V2-Lite's
# 2.4 is 2.45 here))
DEEPSEEKS = {
    "deepseek-v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM, dict(
        max_position_embeddings=163840,
        rope_parameters=dict(DEEPSEEK_YARN, mscale=1.0, mscale_all_dim=1.0)), 58 * 256, 671.0, 37,
        0.5),
    "deepseek-v2-lite": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM, dict(
        vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16,
        n_shared_experts=2, n_routed_experts=64, routed_scaling_factor=1.0, kv_lora_rank=512,
        q_lora_rank=None, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128,
        topk_method="greedy", n_group=1, topk_group=1, num_experts_per_tok=6,
        first_k_dense_replace=1, norm_topk_prob=False, aux_loss_alpha=0.001,
        max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_scaling=dict(DEEPSEEK_YARN, mscale=0.707, mscale_all_dim=0.707)), 0, 15.7, 2.4,
        0.06),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", DEEPSEEKS)
def test_deepseek_configs_import_as_the_registry_shapes_with_their_published_sizes(name):
  """DeepSeek-V3's and V2-Lite's published configs (YaRN to 160K with mscale pairs) import as
  the registry shapes: transformers' parameter count (plus V3's router biases), 671.0B and
  15.7B in all, and active per token (the matmul parameters: 8 of 256 experts, 6 of 64; the
  input table is a lookup) 36.6B, the card's 37B, and 2.45B, the card's 2.4B."""
  config_class, model_class, values, biases, total, active, tolerance = DEEPSEEKS[name]
  hf_cfg = config_class(**values)
  ours = registry_shape_of(name, hf_cfg.to_dict())
  with torch.device("meta"):
    reference = sum(p.numel() for p in model_class(hf_cfg).parameters())
  _, state = nnx.split(nnx.eval_shape(lambda: factory.create(ours, nnx.Rngs(0))))
  params = nnx.to_pure_dict(state)
  assert param_count(params) == reference + biases
  assert round(param_count(params) / 1e9, 1) == total
  assert abs(matmul_param_count(ours, params) / 1e9 - active) < tolerance


def test_qwen25_config_as_shipped_imports_as_the_registry_shape():
  """Qwen2.5-0.5B-Instruct's config.json as published (transformers 4.43 layout: top-level
  rope_theta, a sliding window that use_sliding_window=false turns off)."""
  shipped = {
      "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
      "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896,
      "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
      "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
      "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
      "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
      "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": True,
      "use_sliding_window": False, "vocab_size": 151936}
  registry_shape_of("qwen2.5-0.5b", shipped)


def test_gemma3_config_as_shipped_imports_as_the_registry_shape():
  """Gemma 3 1B's config.json in the transformers 4 layout: top-level rope_theta and
  rope_local_base_freq, a sliding_window_pattern instead of layer_types."""
  shipped = {
      "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
      "attn_logit_softcapping": None, "final_logit_softcapping": None, "head_dim": 256,
      "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "intermediate_size": 6912,
      "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
      "num_hidden_layers": 26, "num_key_value_heads": 1, "query_pre_attn_scalar": 256,
      "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
      "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
      "vocab_size": 262144}
  registry_shape_of("gemma3-1b", shipped)


# Pythia-160M's config.json as published (transformers 4.24: rotary_pct and rotary_emb_base).
PYTHIA_160M = {
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
    "hidden_act": "gelu", "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
    "model_type": "gpt_neox", "num_attention_heads": 12, "num_hidden_layers": 12,
    "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
    "use_parallel_residual": True, "vocab_size": 50304}


@pytest.mark.parametrize("size,params", (("70m", 70_426_624), ("160m", 162_322_944),
                                         ("410m", 405_334_016), ("1b", 1_011_781_632)))
def test_pythia_configs_as_shipped_import_as_the_registry_shapes(size, params):
  """Each Pythia size's published config imports as its registry shape, which has
  transformers' parameter count (the suite's published totals)."""
  d, layers, heads = {"70m": (512, 6, 8), "160m": (768, 12, 12), "410m": (1024, 24, 16),
                      "1b": (2048, 16, 8)}[size]
  shipped = dict(PYTHIA_160M, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=layers,
                 num_attention_heads=heads)
  ours = registry_shape_of(f"pythia-{size}", shipped)
  with torch.device("meta"):
    reference = sum(p.numel() for p in transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(**shipped)).parameters())
  _, state = nnx.split(nnx.eval_shape(lambda: factory.create(ours, nnx.Rngs(0))))
  assert param_count(nnx.to_pure_dict(state)) == reference == params


# Phi-2's config.json as published (transformers 4.37: top-level rope_theta and
# partial_rotary_factor).
PHI_2 = {
    "architectures": ["PhiForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 50256,
    "embd_pdrop": 0.0, "eos_token_id": 50256, "hidden_act": "gelu_new", "hidden_size": 2560,
    "initializer_range": 0.02, "intermediate_size": 10240, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048, "model_type": "phi", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "partial_rotary_factor": 0.4,
    "qk_layernorm": False, "resid_pdrop": 0.1, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.37.0",
    "use_cache": True, "vocab_size": 51200}


@pytest.mark.parametrize("name,params", (("phi-1", 1_418_270_720), ("phi-1.5", 1_418_270_720),
                                         ("phi-2", 2_779_683_840)))
def test_phi_configs_as_shipped_import_as_the_registry_shapes(name, params):
  """Phi 1 / 1.5 (hidden 2048, 24 layers, half rotary) and Phi-2 import as their registry
  shapes, with transformers' parameter counts (the published 1.42B and 2.78B)."""
  d, layers, fraction = (2560, 32, 0.4) if name == "phi-2" else (2048, 24, 0.5)
  shipped = dict(PHI_2, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=layers,
                 num_key_value_heads=None, partial_rotary_factor=fraction)
  ours = registry_shape_of(name, shipped)
  with torch.device("meta"):
    reference = sum(p.numel() for p in transformers.PhiForCausalLM(
        transformers.PhiConfig(**shipped)).parameters())
  _, state = nnx.split(nnx.eval_shape(lambda: factory.create(ours, nnx.Rngs(0))))
  assert param_count(nnx.to_pure_dict(state)) == reference == params


def test_phi_options_that_hf_layouts_cannot_take_are_refused():
  """A tied Phi (its head has a bias) does not import; head_bias or a parallel residual
  outside Phi / GPT-NeoX does not export, rather than dropping them."""
  with pytest.raises(hf_config.UnsupportedModelError, match="tie_word_embeddings"):
    hf_config.model_fields(dict(PHI_2, tie_word_embeddings=True))
  with pytest.raises(hf_config.UnsupportedModelError, match="hidden_act"):
    hf_config.model_fields(dict(PHI_2, hidden_act="gelu_fast"))
  fields = hf_config.model_fields(PHI_2)
  assert hf_config_export.hf_config(ModelConfig(**fields))["architectures"] == ["PhiForCausalLM"]
  for bad, match in ((dict(shared_norm=False), "head_bias needs shared_norm"),
                     (dict(style="llama", shared_norm=False, head_bias=False, use_bias=False),
                      "parallel_residual needs the neox style")):
    with pytest.raises(hf_config.UnsupportedModelError, match=match):
      hf_config_export.hf_config(ModelConfig(**{**fields, **bad}))


def test_older_gpt_neox_checkpoint_with_buffers_imports(tmp_path):
  """A GPT-NeoX folder as Pythia's older revisions ship it: RoPE as rotary_pct /
  rotary_emb_base only, and the attention mask and rotary buffers among the tensors."""
  model = hf_model("neox")
  model.save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  rope = config.pop("rope_parameters")
  config.update(rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"])
  (tmp_path / "config.json").write_text(json.dumps(config))
  tensors = safetensors_io.read_tensors(tmp_path)
  for i in range(2):
    prefix = f"gpt_neox.layers.{i}.attention"
    tensors.update({f"{prefix}.bias": np.tril(np.ones((1, 1, 64, 64), bool)),
                    f"{prefix}.masked_bias": np.array(-1e9, np.float32),
                    f"{prefix}.rotary_emb.inv_freq": np.ones(2, np.float32)})
  cfg, params, hf_cfg = hf.load_hf(tmp_path)
  assert (cfg.rope_fraction, cfg.rope_theta, cfg.parallel_residual) == (0.25, 500.0, True)
  assert hf.params_from_tensors(cfg, tensors, hf_cfg)[1] == []  # buffers are not "unused"
  ref, ours, valid = both_logits(model, hf.build_model(cfg, params), "llama")
  assert np.abs(ours - ref)[valid].max() < 1e-4


def test_gpt_neox_fused_qkv_rows_run_head_by_head():
  """The `heads` rule reads query_key_value's rows as (head, q/k/v, head size) and writes
  them back unchanged; a wrong width is named."""
  heads, size, d = 2, 3, 4
  rows = np.arange(heads * 3 * size * d, dtype=np.float32).reshape(heads * 3 * size, d)
  rule = hf_weights.Rule("qkv.weight", ("q", "k", "v"), "heads", heads=heads)
  q, k, v = rule.to_jaxlm(rows)
  assert q.shape == (d, heads * size)
  np.testing.assert_array_equal(k[:, size:], rows[4 * size:5 * size].T)  # head 1's keys
  np.testing.assert_array_equal(rule.to_hf([q, k, v]), rows)
  bias = np.arange(heads * 3 * size, dtype=np.float32)
  np.testing.assert_array_equal(rule.to_hf(rule.to_jaxlm(bias)), bias)
  cfg = ModelConfig(vocab_size=8, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=16,
                    max_seq_len=8, style="neox", rope_fraction=0.5)
  template = nnx.to_pure_dict(hf.abstract_state(cfg)[1])
  shapes = {k: tuple(v.shape) for k, v in hf.flatten(template).items()}
  tensors = hf_weights.to_hf(cfg, {k: np.zeros(v, np.float32) for k, v in shapes.items()})
  tensors["gpt_neox.layers.0.attention.query_key_value.weight"] = np.zeros((20, 8), np.float32)
  with pytest.raises(hf_weights.WeightMismatchError, match="query_key_value.weight.*head by head"):
    hf_weights.to_jaxlm(cfg, tensors, shapes)


def test_gemma_layer_patterns_jaxlm_cannot_express_are_refused():
  """Sliding layers must be all but every n-th; anything else is named, not approximated."""
  assert hf_config.global_every(["sliding_attention"] * 5 + ["full_attention"]) == 6
  assert hf_config.global_every(["sliding_attention"] * 3) == 0
  odd = {**hf_model("gemma2").config.to_dict(),
         "layer_types": ["full_attention", "sliding_attention"]}
  with pytest.raises(hf_config.UnsupportedModelError, match="layer_types"):
    hf_config.model_fields(odd)


def test_gemma2_logit_softcap_is_tanh_of_the_uncapped_logits(tmp_path):
  """The final cap is exactly cap * tanh(logits / cap) of the same model without it."""
  model = hf_model("gemma2")
  model.save_pretrained(tmp_path / "in")
  cfg, params, _ = hf.load_hf(tmp_path / "in")
  tokens, mask = random_batch(VOCAB)
  capped = jaxlm_logits(hf.build_model(cfg, params), "llama", tokens, mask)
  free = jaxlm_logits(hf.build_model(dataclasses.replace(cfg, logit_softcap=0.0), params),
                      "llama", tokens, mask)
  np.testing.assert_allclose(capped, 3.0 * np.tanh(free / 3.0), rtol=1e-5, atol=1e-6)
  assert np.abs(capped).max() < 3.0


def test_gemma3_image_text_checkpoint_imports_its_language_model(tmp_path):
  """A Gemma 3 4B+ style checkpoint (Gemma3ForConditionalGeneration): the language model
  imports with text logits equal to the image-text model's, the vision tower is reported
  unused, and the export is the text-only Gemma3ForCausalLM."""
  model = hf_model("gemma3_vision")
  model.save_pretrained(tmp_path / "in")
  cfg, params, hf_cfg = hf.load_hf(tmp_path / "in")
  text = hf_model("gemma3")
  text.save_pretrained(tmp_path / "text")
  assert cfg == hf.load_hf(tmp_path / "text")[0]
  _, unused = hf.params_from_tensors(cfg, safetensors_io.read_tensors(tmp_path / "in"), hf_cfg)
  assert [u.split(".*")[0] for u in unused] == ["multi_modal_projector", "vision_tower"]
  ref, ours, valid = both_logits(model, hf.build_model(cfg, params), "llama")
  assert np.abs(ours - ref)[valid].max() < 1e-4
  hf.save_hf(tmp_path / "out", cfg, params, base_config=hf_cfg)
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert type(exported) is transformers.Gemma3ForCausalLM
  ref2, _, _ = both_logits(exported, hf.build_model(cfg, params), "llama")
  assert np.abs(ref2 - ref)[valid].max() < 1e-5


def test_gemma3_text_defaults_are_transformers_and_fill_a_shipped_4b_config():
  """The Gemma 3 text defaults equal Gemma3TextConfig's, and fill the 4B config.json's short
  text_config (which lists only what differs) into the 4B shape."""
  reference = transformers.Gemma3TextConfig()
  moved = {"rope_theta", "rope_local_base_freq", "sliding_window_pattern"}
  for key, value in hf_config.GEMMA3_TEXT_DEFAULTS.items():
    if key not in moved:
      assert getattr(reference, key) == value, key
  assert reference.rope_parameters["full_attention"]["rope_theta"] == 1e6
  assert reference.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
  assert reference._sliding_window_pattern == 6
  shipped = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
             "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                             "model_type": "gemma3_text", "num_hidden_layers": 34,
                             "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                             "sliding_window": 1024}}
  fields = hf_config.model_fields(hf_config.language_model_config(shipped))
  assert {k: fields[k] for k in ("num_heads", "num_kv_heads", "head_dim", "embed_dim",
                                 "num_layers", "vocab_size", "sliding_window",
                                 "sliding_global_every", "rope_scaling", "rope_factor",
                                 "rope_theta", "rope_local_theta", "qk_norm")} == dict(
      num_heads=8, num_kv_heads=4, head_dim=256, embed_dim=2560, num_layers=34,
      vocab_size=262208, sliding_window=1024, sliding_global_every=6, rope_scaling="linear",
      rope_factor=8.0, rope_theta=1e6, rope_local_theta=1e4, qk_norm=True)


def test_yarn_attention_factor_from_deepseek_mscales():
  """DeepSeek writes YaRN's attention factor as an mscale pair; transformers' reading of it."""
  hf_cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters=dict(
      rope_type="yarn", rope_theta=1e4, factor=40.0, original_max_position_embeddings=4096,
      mscale=1.0, mscale_all_dim=0.707, beta_fast=32, beta_slow=1),
      max_position_embeddings=163840)
  ref, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg)
  cfg = ModelConfig(vocab_size=8, num_layers=1, num_heads=4, embed_dim=64, mlp_dim=8,
                    max_seq_len=8, style="llama", **hf_config.rope_fields(hf_cfg.to_dict()))
  np.testing.assert_allclose(layers.rope_frequencies(cfg), ref.numpy(), rtol=1e-6)
  assert layers.rope_attention_factor(cfg) == pytest.approx(attention_factor, rel=1e-9)
