"""Stacked, scanned layers (`model.scan_layers`) against per-layer models (decoders, BERT, T5):
same initial weights, loss, gradients, KV-cache logits and samples; the layouts convert both
ways (init_from, HF import / export); a scanned run trains like the per-layer one; the scanned
backward pass keeps matmul outputs only."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from conftest import tiny_config
from jaxlm import peft, sampling
from jaxlm.interop import hf
from jaxlm.models import decoder, from_config, registry, stacking
from jaxlm.models.config import ModelConfig
from jaxlm.models.factory import create as build_model
from jaxlm.train import loop, optim, sharding

CASES = {
    # GPT-2 with dropout and full rematerialisation inside the scanned body (and sampled)
    "gpt2": dict(style="gpt2", dropout=0.1, remat="full"),
    # Gemma 2 layout: a sliding window on every other layer, so the scan runs over (local,
    # global) pairs; grouped-query attention, sandwich norms, scaled embeddings
    "gemma": dict(style="llama", num_kv_heads=2, sliding_window=4, sliding_global_every=2,
                  sandwich_norm=True, embed_scale=True, mlp_activation="gelu_tanh"),
    # Mixtral layout: 4 experts, 2 per token, in every block
    "moe": dict(style="llama", num_kv_heads=2, num_experts=4, experts_per_token=2),
    # Switch's: the experts in every other block, 48-wide dense MLPs between (the scan runs
    # over (dense, mixture) pairs)
    "moe_every": dict(style="llama", num_kv_heads=2, num_experts=4, experts_per_token=2,
                      moe_every=2, moe_dense_mlp_dim=48),
    # Multi-head latent attention (values narrower than keys) with attention dropout: the
    # stacked caches hold each layer's latent and rotary key
    "mla": dict(style="llama", kv_lora_rank=8, qk_rope_head_dim=4, v_head_dim=6,
                attention_dropout=0.1),
}


def pair(case: str, num_layers: int = 4) -> tuple[decoder.Decoder, decoder.Decoder]:
  """(per-layer, scanned) decoders built from the same seed."""
  cfg = ModelConfig(vocab_size=64, num_layers=num_layers, num_heads=4, embed_dim=32, mlp_dim=64,
                    max_seq_len=32, dtype="float32", **CASES[case])
  return (decoder.Decoder(cfg, nnx.Rngs(0)),
          decoder.Decoder(dataclasses.replace(cfg, scan_layers=True), nnx.Rngs(0)))


def flat(tree) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in stacking.flatten(nnx.to_pure_dict(tree)).items()}


def matmuls(fn, *args) -> int:
  """How many matmuls the traced program of `fn(*args)` holds (a scanned block's once)."""
  return str(jax.make_jaxpr(fn)(*args)).count("dot_general")


def assert_same_model(per_layer: nnx.Module, scanned: nnx.Module, *args, **kwargs):
  """The same initial weights, and the same loss and gradients of `model(*args, **kwargs)`
  (the scanned model's unstacked); returns both (graphdef, params) pairs."""
  (g0, p0), (g1, p1) = nnx.split(per_layer), nnx.split(scanned)
  want, got = flat(p0), stacking.unstacked(flat(p1))
  assert got.keys() == want.keys() and len(flat(p1)) < len(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  def loss(params, graphdef):
    logits = nnx.merge(graphdef, params)(*args, **kwargs)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  (l0, grad0), (l1, grad1) = value_and_grad(p0, g0), value_and_grad(p1, g1)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  want, got = flat(grad0), stacking.unstacked(flat(grad1))
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-7, err_msg=k)
  return (g0, p0), (g1, p1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_scanned_decoder_is_the_per_layer_decoder(case):
  per_layer, scanned = pair(case)
  period = scanned.cfg.layer_period
  assert len(scanned.stack) == period
  assert scanned.stack[0].attn.query.kernel.shape == (4 // period, 32, 32)
  # Layer i = g * period + j is stack[j][g]; dropout on.
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  segments = jnp.array([[1] * 10 + [2] * 6, [1] * 16])
  (g0, p0), (g1, p1) = assert_same_model(per_layer, scanned, tokens, None, segments,
                                         dropout_rng=jax.random.key(3))

  # KV-cache decoding, the stacked caches scanned with their layers, and sampling (unstacked
  # once): a prefill, then one more token.
  forward = nnx.jit(lambda model, t, cache: model(t, cache=cache))  # eager: an XLA program an op
  prefill0, cache0 = forward(per_layer, tokens, per_layer.init_cache(2, 24))
  prefill1, cache1 = forward(scanned, tokens, scanned.init_cache(2, 24))
  np.testing.assert_allclose(prefill1, prefill0, rtol=1e-5, atol=1e-6)
  step0, cache0 = forward(per_layer, tokens[:, :1], cache0)
  step1, cache1 = forward(scanned, tokens[:, :1], cache1)
  np.testing.assert_allclose(step1, step0, rtol=1e-5, atol=1e-6)
  for k1, k0 in zip(cache1["k"], cache0["k"]):
    np.testing.assert_allclose(k1, k0, rtol=1e-5, atol=1e-6)
  assert matmuls(lambda t: scanned(t, cache=scanned.init_cache(2, 24)), tokens) < matmuls(
      lambda t: per_layer(t, cache=per_layer.init_cache(2, 24)), tokens)
  cfg = sampling.SamplingConfig(temperature=1.0, max_new_tokens=12)
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
  assert (sampling.generate(g1, p1, prompts, cfg, jax.random.key(5), eos_id=63)
          == sampling.generate(g0, p0, prompts, cfg, jax.random.key(5), eos_id=63))


def test_stacked_parameters_carry_a_layers_axis_and_decay_as_their_layer():
  _, scanned = pair("gpt2")
  specs = stacking.flatten(sharding.param_specs(nnx.state(scanned)))
  assert specs["stack/0/attn/query/kernel"] == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert specs["stack/0/mlp_norm/scale"] == jax.sharding.PartitionSpec(None, "fsdp")
  decays = stacking.flatten(optim.decay_mask(nnx.to_pure_dict(nnx.state(scanned))))
  assert decays["stack/0/attn/query/kernel"] and decays["embed/embedding"]
  assert not decays["stack/0/mlp_norm/scale"] and not decays["stack/0/attn/query/bias"]


@pytest.mark.parametrize("style,mlp_matmuls", [("gpt2", 1), ("llama", 2)])
def test_a_scanned_block_keeps_matmul_outputs_and_recomputes_the_rest(style, mlp_matmuls,
                                                                      capsys):
  # With remat "none" the scan's per-layer residuals are matmul outputs: one (B, T, mlp) array
  # per input projection of the MLP (the GELU's own intermediates, five more, are recomputed)
  # and one (T, T) score array per head (not the softmax's too).
  cfg = ModelConfig(vocab_size=64, num_layers=4, num_heads=4, embed_dim=32, mlp_dim=64,
                    max_seq_len=32, dtype="float32", style=style, scan_layers=True)
  graphdef, params = nnx.split(decoder.Decoder(cfg, nnx.Rngs(0)))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)

  def loss(params):
    return jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, params)(tokens))[..., 0])

  print_saved_residuals(loss, params)
  stacked = [line.split()[0] for line in capsys.readouterr().out.splitlines()
             if "output of scan" in line]
  assert stacked.count("f32[4,2,16,64]") == mlp_matmuls
  assert sum(s.endswith(",16,1,16]") or s.endswith(",16,16]") for s in stacked) == 1
  assert len(stacked) <= 8 + mlp_matmuls


def test_a_scanned_block_runs_the_cudnn_attention_forward_once(monkeypatch):
  # The policy keeps the fused kernel's output and softmax statistics, so the backward pass
  # does not run the kernel's forward again (remat="save_dots" does). Traced, not run: the
  # version checks that need a GPU are stubbed.
  from jax._src.cudnn import fused_attention_stablehlo as cudnn
  monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(cudnn, "check_compute_capability", lambda capability: True)
  for remat, forwards in (("none", 1), ("save_dots", 2)):
    cfg = ModelConfig(vocab_size=64, num_layers=4, num_heads=4, embed_dim=64, mlp_dim=128,
                      max_seq_len=32, dtype="bfloat16", attention_impl="cudnn", remat=remat,
                      scan_layers=True)
    graphdef, params = nnx.split(decoder.Decoder(cfg, nnx.Rngs(0)))
    grad = jax.grad(lambda p: nnx.merge(graphdef, p)(jnp.zeros((2, 16), jnp.int32)).mean())
    jaxpr = str(jax.make_jaxpr(grad)(params))
    assert jaxpr.count("dot_product_attention_fwd_wrapper[") == forwards, remat
    assert jaxpr.count("dot_product_attention_bwd_wrapper[") == 1


def test_layouts_convert_both_ways_and_export_the_same_hf_checkpoint(tmp_path):
  per_layer, scanned = pair("gemma")
  p0, p1 = flat(nnx.state(per_layer)), flat(nnx.state(scanned))
  there = stacking.in_layout_of(p0, p1)
  assert there.keys() == p1.keys()
  back = stacking.in_layout_of(p1, p0)
  assert back.keys() == p0.keys()
  for k in p1:
    np.testing.assert_array_equal(there[k], p1[k], err_msg=k)
  hf.save_hf(tmp_path / "a", per_layer.cfg, nnx.to_pure_dict(nnx.state(per_layer)))
  hf.save_hf(tmp_path / "b", scanned.cfg, nnx.to_pure_dict(nnx.state(scanned)))
  assert ((tmp_path / "a" / "model.safetensors").read_bytes()
          == (tmp_path / "b" / "model.safetensors").read_bytes())
  # A layout HF cannot hold (GPT-2 without biases) is named before anything is written.
  no_bias = dataclasses.replace(pair("gpt2")[1].cfg, use_bias=False)
  with pytest.raises(ValueError, match="GPT-2 export needs use_bias=true"):
    hf.save_hf(tmp_path / "c", no_bias, nnx.to_pure_dict(nnx.state(
        decoder.Decoder(no_bias, nnx.Rngs(0)))))
  assert not (tmp_path / "c").exists()
  cfg, params, _ = hf.load_hf(tmp_path / "a", scan_layers=True)
  assert cfg.scan_layers
  loaded = stacking.flatten(params)
  assert loaded.keys() == p1.keys()
  for k in p1:
    np.testing.assert_allclose(loaded[k], p1[k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", ["bert-tiny", "t5-v1.1-small"])
def test_encoders_and_encoder_decoders_scan_too(name, tmp_path):
  small = dict(num_layers=4, num_heads=4, embed_dim=32, mlp_dim=64, max_seq_len=16, dropout=0.1,
               attention_dropout=0.1, **({"head_dim": 8} if name.startswith("t5") else {}))
  cfg = from_config(registry.model_config(name, **small), vocab_size=64)
  per_layer = build_model(cfg, nnx.Rngs(0))
  scanned = build_model(dataclasses.replace(cfg, scan_layers=True), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 64)
  args = (tokens,) * (2 if name.startswith("t5") else 1)  # T5: encoder and decoder inputs
  (g0, p0), (g1, p1) = assert_same_model(per_layer, scanned, *args,
                                         dropout_rng=jax.random.key(3))

  hf.save_hf(tmp_path / "a", per_layer.cfg, nnx.to_pure_dict(p0))
  hf.save_hf(tmp_path / "b", scanned.cfg, nnx.to_pure_dict(p1))
  assert ((tmp_path / "a" / "model.safetensors").read_bytes()
          == (tmp_path / "b" / "model.safetensors").read_bytes())
  if name.startswith("t5"):  # cached decoding, the stacked decoder scanned, then sampling
    steps = []
    prefill = nnx.jit(lambda m, t: m.decode_step(t[:, :3], m.init_cache(m.encode(t), None, 8)))
    step = nnx.jit(lambda m, t, cache: m.decode_step(t, cache)[0])
    for model in (per_layer, scanned):
      logits, cache = prefill(model, tokens)
      steps.append((logits, step(model, tokens[:, 3:4], cache)))
    for got, want in zip(steps[1], steps[0]):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    sample = sampling.SamplingConfig(temperature=1.0, max_new_tokens=8)
    inputs = [[5, 6, 7], [8, 9, 10, 11, 12]]
    assert (sampling.generate_seq2seq(g1, p1, inputs, sample, jax.random.key(5), eos_id=1)
            == sampling.generate_seq2seq(g0, p0, inputs, sample, jax.random.key(5), eos_id=1))


PEFT = {"lora": {"targets": "(query|value|up)$", "rank": 2, "alpha": 4.0, "dropout": 0.2},
        "adapter": {"adapter_size": 4, "adapter_placement": "both"},
        "prefix": {"prefix_len": 3, "prefix_hidden": 8},
        "prompt": {"prompt_len": 3, "prompt_hidden": 0}}


@pytest.mark.parametrize("method", sorted(PEFT))
def test_peft_on_stacked_layers_is_peft_on_each_layer(method):
  # LoRA factors and adapters get the `layers` axis too (prefixes and virtual tokens are the
  # model's own). With the same weights (zero-initialised ones made random, so every update
  # is live), dropout (LoRA's too) and full remat, the scanned model's loss and gradients are
  # the per-layer model's.
  spec = {"method": method, **PEFT[method]}
  per_layer, scanned = (peft.wrap(m, spec, nnx.Rngs(1)) for m in pair("gpt2"))
  if method == "lora":
    a = scanned.stack[0].attn.query.lora_a
    assert a.shape == (4, 32, 2) and a.get_metadata()["out_sharding"] == ("layers", "embed", None)
  if method == "adapter":
    assert scanned.stack[0].mlp_adapter.up.get_metadata()["out_sharding"] == ("layers", None,
                                                                               "embed")
  state0, state1 = nnx.state(per_layer), nnx.state(scanned)
  live = ("lora_b", "_adapter/up", "_adapter/up_bias")
  weights = {k: (np.asarray(jax.random.normal(jax.random.key(len(k)), v.shape)) * 0.1
                 if k.endswith(live) else v) for k, v in flat(state0).items()}
  for state, model in ((state0, per_layer), (state1, scanned)):
    pure = nnx.to_pure_dict(state)
    layout = stacking.in_layout_of(weights, stacking.flatten(pure))
    nnx.replace_by_pure_dict(state, stacking.unflatten_like(pure, layout))
    nnx.update(model, state)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  assert_same_model(per_layer, scanned, tokens, dropout_rng=jax.random.key(3))
  # Prefixes and virtual tokens too run the blocks by `lax.scan` (through the KV cache they
  # fill), so the program holds one block's matmuls, not one copy per layer.
  assert matmuls(scanned, tokens) < matmuls(per_layer, tokens)


def test_scan_layers_needs_layers_that_repeat_evenly():
  base = dict(vocab_size=64, num_heads=4, embed_dim=32, mlp_dim=64, max_seq_len=32,
              scan_layers=True)
  with pytest.raises(ValueError, match="5 layers in a pattern of 2"):
    ModelConfig(style="llama", num_layers=5, sliding_window=4, sliding_global_every=2, **base)


def train_losses(workdir) -> list[float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if r["split"] == "train"]


def test_a_scanned_run_trains_like_the_per_layer_run_and_starts_from_one(trained_run, tmp_path,
                                                                         capsys):
  common = {"train.steps": 6, "train.log_every": 1}
  loop.train(tiny_config(**common), tmp_path / "per_layer")
  result = loop.train(tiny_config(**common, **{"model.scan_layers": True,
                                               "sample.num_samples": 1}), tmp_path / "scanned")
  np.testing.assert_allclose(train_losses(tmp_path / "scanned"),
                             train_losses(tmp_path / "per_layer"), rtol=1e-5)
  assert result["samples"] and result["samples"][0]  # sampled through the unstacked model
  # A per-layer run's weights start a scanned run: every tensor is loaded, none is fresh.
  base, _ = trained_run
  loop.train(tiny_config(**{"train.steps": 1, "init_from": str(base), "model.scan_layers": True}),
             tmp_path / "from_base")
  report = [line for line in capsys.readouterr().out.splitlines() if "tensors loaded" in line]
  assert report and "newly initialised" not in report[-1] and "not used" not in report[-1]
