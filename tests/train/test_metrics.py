"""Flops per token and MFU against published figures, and a PEFT step's flops."""

import numpy as np
import pytest
from flax import nnx

from jaxlm.models import Decoder, from_config, matmul_param_count, registry
from jaxlm.train import metrics

H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("model,tokens_per_s,mfu_percent", [
    # nanoGPT on the H100 (../shared/references.md): 6N + 12 L H Q T, 989 TFLOP/s, seq 1024
    ("gpt2-124m", 464_213, 40.1), ("gpt2-124m", 481_399, 41.6), ("gpt2-350m", 181_681, 44.5),
    ("gpt2-774m", 80_866, 42.5)])
def test_mfu_reproduces_the_published_nanogpt_figures(model, tokens_per_s, mfu_percent):
  cfg = from_config(registry.model_config(model), vocab_size=50304)
  params = nnx.state(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))))
  flops = metrics.flops_per_token(matmul_param_count(cfg, params), cfg.num_layers,
                                  cfg.num_heads, cfg.head_size, 1024)
  assert 100 * metrics.mfu(tokens_per_s, flops, H100, 1) == pytest.approx(mfu_percent, abs=0.05)
  # Two devices at the same tokens/s each do half the work; a device of unknown peak has none.
  assert metrics.mfu(tokens_per_s, flops, H100, 2) == pytest.approx(
      metrics.mfu(tokens_per_s, flops, H100, 1) / 2)
  assert metrics.mfu(tokens_per_s, flops, "cpu", 1) is None


def test_a_frozen_weight_costs_four_flops_a_token_not_six():
  n, attention = 1_000_000, 12 * 2 * 4 * 16 * 32
  full = metrics.flops_per_token(n, 2, 4, 16, 32)
  assert full == 6 * n + attention
  assert metrics.flops_per_token(n, 2, 4, 16, 32, trained_params=n) == full
  assert metrics.flops_per_token(n, 2, 4, 16, 32, trained_params=1000) == 4 * n + 2000 + attention
  assert metrics.flops_per_token(n, 2, 4, 16, 32, causal_halved=True) == 6 * n + attention / 2


def test_latent_attention_counts_its_query_key_and_value_sizes_apart():
  """DeepSeek-V3's heads: q . k over 192 dimensions, the value mix over 128; per token and
  layer 2 x 2 x T x 128 heads x (192 + 128) / 2 forward flops, 3x that to train."""
  cfg = from_config(registry.model_config("deepseek-v3"), vocab_size=129280)
  assert cfg.attention_flops_dim == 160
  attention = metrics.flops_per_token(0, 1, 128, cfg.attention_flops_dim, 4096)
  assert attention == 3 * (2 * 4096 * 128 * 192 + 2 * 4096 * 128 * 128)


def test_metrics_of_several_batches_are_per_token():
  """Eval batches with different token counts combine as one batch would: per token."""
  history = [{"loss": 2.0, "accuracy": 0.5, "tokens": 10.0},
             {"loss": 4.0, "accuracy": 0.0, "tokens": 30.0}]
  assert metrics.token_weighted_mean(history) == {"loss": 3.5, "accuracy": 0.125, "tokens": 40.0}
  no_tokens = [{"loss": 1.0}, {"loss": 3.0}]  # e.g. DPO: a mean per pair
  assert metrics.token_weighted_mean(no_tokens) == {"loss": 2.0}
  # A batch that leaves a metric undefined (NaN) does not count toward its mean.
  nan = float("nan")
  logged = metrics.mean_metrics([{"loss": 1.0, "r": nan}, {"loss": 3.0, "r": 4.0}])
  assert logged == {"loss": 2.0, "r": 4.0}
  weighted = metrics.token_weighted_mean([{"loss": 2.0, "r": nan, "tokens": 10.0},
                                          {"loss": 4.0, "r": 1.0, "tokens": 30.0}])
  assert weighted == {"loss": 3.5, "r": 1.0, "tokens": 40.0}
  assert np.isnan(metrics.mean_metrics([{"r": nan}, {"r": nan}])["r"])
