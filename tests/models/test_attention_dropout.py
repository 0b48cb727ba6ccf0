"""Attention-probability dropout: the explicit XLA path equals jax.nn.dot_product_attention
when nothing is dropped, is unbiased in expectation, and is live (training only) in every
model family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.models import from_config, layers, registry
from jaxlm.models.factory import create as build_model

B, T, N, K, H = 2, 6, 4, 2, 8


def qkv(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (B, T, N, H)), jax.random.normal(keys[1], (B, T, K, H)),
          jax.random.normal(keys[2], (B, T, K, H)))


@pytest.mark.parametrize("causal,with_mask,with_bias,scale",
                         [(True, False, False, None), (False, True, True, 1.0),
                          (True, True, False, 0.5)])
def test_dropout_path_equals_fused_attention_when_nothing_is_dropped(causal, with_mask,
                                                                     with_bias, scale):
  q, k, v = qkv()
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)[:, None, None, :] if with_mask else None
  bias = jax.random.normal(jax.random.key(5), (1, N, T, T)) if with_bias else None
  kw = dict(causal=causal, impl="xla", bias_1xNxTxS=bias, scale=scale)
  want = layers.dot_product_attention(q, k, v, mask, **kw)
  # rate 1e-9: the explicit softmax path runs, and keeps every probability
  got = layers.dot_product_attention(q, k, v, mask, **kw, dropout_rate=1e-9,
                                     dropout_rng=jax.random.key(1))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_dropout_is_unbiased():
  q, k, v = qkv()
  want = layers.dot_product_attention(q, k, v, None, causal=True, impl="xla")
  draws = jax.vmap(lambda key: layers.dot_product_attention(
      q, k, v, None, causal=True, impl="xla", dropout_rate=0.3, dropout_rng=key))(
          jax.random.split(jax.random.key(2), 4000))
  assert not np.allclose(draws[0], want, atol=1e-2)
  np.testing.assert_allclose(draws.mean(0), want, atol=0.05)


@pytest.mark.parametrize("name,objective_inputs", [("gpt2-124m", 1), ("llama-tiny", 1),
                                                   ("bert-tiny", 1), ("t5-v1.1-small", 2)])
def test_attention_dropout_is_live_in_training_only(name, objective_inputs):
  small = dict(num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, max_seq_len=16)
  if name.startswith("t5"):
    small["head_dim"] = 8
  cfg = from_config(registry.model_config(name, **small, attention_dropout=0.5), vocab_size=64)
  model = build_model(cfg, nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(0), (2, 10), 1, 64)
  args = (tokens,) * objective_inputs
  plain = build_model(from_config(registry.model_config(name, **small), vocab_size=64),
                      nnx.Rngs(0))
  np.testing.assert_array_equal(model(*args), plain(*args))  # no key: no dropout
  a = model(*args, dropout_rng=jax.random.key(1))
  assert not np.allclose(a, model(*args), atol=1e-4)
  np.testing.assert_array_equal(a, model(*args, dropout_rng=jax.random.key(1)))
  # with only attention dropout on, the other dropout streams stay off
  np.testing.assert_array_equal(plain(*args, dropout_rng=jax.random.key(1)), plain(*args))


def test_rates_are_checked():
  with pytest.raises(ValueError, match="attention_dropout must be in"):
    from_config(registry.model_config("gpt2-124m", attention_dropout=1.0), vocab_size=64)
