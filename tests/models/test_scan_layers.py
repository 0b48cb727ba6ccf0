"""Stacked, scanned decoder layers (`model.scan_layers`) against the per-layer decoder: same
initial weights, loss, gradients, KV-cache logits and samples; the layouts convert both ways
(init_from, HF import / export); a scanned run trains like the per-layer one."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from jaxlm import peft, sampling
from jaxlm.interop import hf
from jaxlm.models import decoder, stacking
from jaxlm.models.config import ModelConfig
from jaxlm.train import loop, optim, sharding

CASES = {
    # GPT-2 with dropout and full rematerialisation inside the scanned body (and sampled)
    "gpt2": dict(style="gpt2", dropout=0.1, remat="full"),
    # Gemma 2 layout: a sliding window on every other layer, so the scan runs over (local,
    # global) pairs; grouped-query attention, sandwich norms, scaled embeddings
    "gemma": dict(style="llama", num_kv_heads=2, sliding_window=4, sliding_global_every=2,
                  sandwich_norm=True, embed_scale=True, mlp_activation="gelu_tanh"),
}


def pair(case: str, num_layers: int = 4) -> tuple[decoder.Decoder, decoder.Decoder]:
  """(per-layer, scanned) decoders built from the same seed."""
  cfg = ModelConfig(vocab_size=64, num_layers=num_layers, num_heads=4, embed_dim=32, mlp_dim=64,
                    max_seq_len=32, dtype="float32", **CASES[case])
  return (decoder.Decoder(cfg, nnx.Rngs(0)),
          decoder.Decoder(dataclasses.replace(cfg, scan_layers=True), nnx.Rngs(0)))


def flat(tree) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in stacking.flatten(nnx.to_pure_dict(tree)).items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scanned_decoder_is_the_per_layer_decoder(case):
  per_layer, scanned = pair(case)
  (g0, p0), (g1, p1) = nnx.split(per_layer), nnx.split(scanned)
  period = scanned.cfg.layer_period
  assert len(scanned.stack) == period
  assert scanned.stack[0].attn.query.kernel.shape == (4 // period, 32, 32)
  # The same initial weights: layer i = g * period + j is stack[j][g].
  want, got = flat(p0), stacking.unstacked(flat(p1))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  segments = jnp.array([[1] * 10 + [2] * 6, [1] * 16])

  def loss(params, graphdef):
    logits = nnx.merge(graphdef, params)(tokens, None, segments, dropout_rng=jax.random.key(3))
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  l0, grad0 = value_and_grad(p0, g0)
  l1, grad1 = value_and_grad(p1, g1)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  want, got = flat(grad0), stacking.unstacked(flat(grad1))
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-7, err_msg=k)

  # KV-cache decoding (the layers sliced from their stacks) and sampling (unstacked once).
  prefill0, _ = per_layer(tokens, cache=per_layer.init_cache(2, 24))
  prefill1, _ = scanned(tokens, cache=scanned.init_cache(2, 24))
  np.testing.assert_allclose(prefill1, prefill0, rtol=1e-5, atol=1e-6)
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


def test_scan_layers_needs_a_decoder_whose_layers_repeat_evenly():
  base = dict(vocab_size=64, num_heads=4, embed_dim=32, mlp_dim=64, max_seq_len=32,
              scan_layers=True)
  with pytest.raises(ValueError, match="scan_layers is for decoders"):
    ModelConfig(style="bert", num_layers=2, **base)
  with pytest.raises(ValueError, match="5 layers in a pattern of 2"):
    ModelConfig(style="llama", num_layers=5, sliding_window=4, sliding_global_every=2, **base)
  _, scanned = pair("gpt2")
  with pytest.raises(ValueError, match="peft.method='lora' edits each layer's block"):
    peft.wrap(scanned, {"method": "lora", "targets": "query", "rank": 2, "alpha": 4.0},
              nnx.Rngs(0))


def train_losses(workdir) -> list[float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if r["split"] == "train"]


def test_a_scanned_run_trains_like_the_per_layer_run_and_starts_from_one(trained_run, tmp_path,
                                                                         capsys):
  common = {"train.steps": 6, "train.log_every": 1}
  loop.train(tiny_config(**common, **{"sample.num_samples": 0}), tmp_path / "per_layer")
  result = loop.train(tiny_config(**common, **{"model.scan_layers": True}), tmp_path / "scanned")
  np.testing.assert_allclose(train_losses(tmp_path / "scanned"),
                             train_losses(tmp_path / "per_layer"), rtol=1e-5)
  assert result["samples"] and result["samples"][0]  # sampled through the unstacked model
  # A per-layer run's weights start a scanned run: every tensor is loaded, none is fresh.
  base, _ = trained_run
  loop.train(tiny_config(**{"train.steps": 1, "init_from": str(base), "model.scan_layers": True,
                            "sample.num_samples": 0}), tmp_path / "from_base")
  report = [line for line in capsys.readouterr().out.splitlines() if "tensors loaded" in line]
  assert report and "newly initialised" not in report[-1] and "not used" not in report[-1]
