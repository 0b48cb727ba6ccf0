"""BERT-style encoder: bidirectional attention and segment isolation by gradient, padding,
norm placement, token types, sizes and logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.models import Encoder, from_config, param_count, registry


def tiny(**kw):
  """A 2-layer BERT-style config (post-norm, two token types) with a 64-token vocabulary."""
  base = dict(num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64, max_seq_len=32)
  return from_config(registry.model_config("bert-tiny", **{**base, **kw}), vocab_size=64)


class FixedEmbed:
  """Stands in for `model.embed`: returns the given embeddings for exactly the given token
  arrays (so gradients reach them), the table's lookup for others, and attends with the table."""

  def __init__(self, embed, fixed):
    self.embed, self.fixed = embed, fixed

  def __call__(self, tokens):
    for fixed_tokens, e in self.fixed:
      if fixed_tokens is tokens:
        return e
    return self.embed(tokens)

  def attend(self, x):
    return self.embed.attend(x)


def embedding_jacobians(model, run, *token_arrays):
  """Per row b, |d run(model)[b, t] / d embed(tokens)[b, s]| summed over features: a (B, T, S)
  numpy array for each of `token_arrays`. `run(m)` returns (B, T, V) outputs."""
  embs = [model.embed(tokens) for tokens in token_arrays]

  def outputs(*es):
    model_copy = nnx.merge(*nnx.split(model))
    model_copy.embed = FixedEmbed(model.embed, list(zip(token_arrays, es)))
    return run(model_copy).sum(-1)

  # one compile for all of them: on CPU much faster than differentiating op by op
  jacs = jax.jit(jax.jacrev(outputs, argnums=tuple(range(len(embs)))))(*embs)  # (B, T, B, S, D)
  return [np.stack([np.abs(np.asarray(j[b, :, b])).sum(-1) for b in range(j.shape[0])])
          for j in jacs]


@pytest.mark.parametrize("post_norm", [True, False])
def test_bidirectional_within_segment_by_gradient(post_norm):
  model = Encoder(tiny(post_norm=post_norm), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 64)
  segments = jnp.array([[1] * 8, [1, 1, 1, 2, 2, 2, 0, 0]])
  (jac,) = embedding_jacobians(model, lambda m: m(tokens, segments), tokens)
  assert np.all(jac[0] > 0.0)  # one segment: every position sees every position
  same = np.asarray(segments[1][:, None] == segments[1][None, :])
  real = np.asarray(segments[1] > 0)
  assert np.all(jac[1][same] > 0.0)  # both directions, future included
  assert np.all(jac[1][~same] == 0.0)  # never other segments or padding
  assert np.all(jac[1][real][:, ~real] == 0.0)


def test_padding_tokens_do_not_change_real_logits():
  model = Encoder(tiny(), nnx.Rngs(0))
  tokens = jnp.array([[5, 6, 7, 8, 9, 0, 0, 0]])
  segments = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0]])
  logits = model(tokens, segments)
  other_pad = model(tokens.at[0, 5:].set(jnp.array([3, 40, 63])), segments)
  np.testing.assert_allclose(logits[0, :5], other_pad[0, :5], atol=1e-6)
  other_real = model(tokens.at[0, 4].set(10), segments)
  assert not np.allclose(logits[0, :4], other_real[0, :4], atol=1e-4)


def test_packed_row_equals_separate_rows():
  model = Encoder(tiny(post_norm=False), nnx.Rngs(0))
  packed = model(jnp.array([[11, 12, 13, 14, 15, 21, 22, 23]]),
                 jnp.array([[1] * 5 + [2] * 3]), jnp.array([[0, 1, 2, 3, 4, 0, 1, 2]]))
  a_alone = model(jnp.array([[11, 12, 13, 14, 15, 0, 0, 0]]),
                  jnp.array([[1] * 5 + [0] * 3]))
  b_alone = model(jnp.array([[21, 22, 23, 0, 0, 0, 0, 0]]),
                  jnp.array([[1] * 3 + [0] * 5]))
  np.testing.assert_allclose(packed[0, :5], a_alone[0, :5], atol=1e-5)
  np.testing.assert_allclose(packed[0, 5:], b_alone[0, :3], atol=1e-5)


def test_pre_and_post_norm_both_run_and_differ():
  tokens = jax.random.randint(jax.random.key(3), (1, 8), 0, 64)
  post = Encoder(tiny(post_norm=True), nnx.Rngs(0))
  pre = Encoder(tiny(post_norm=False), nnx.Rngs(0))
  assert not hasattr(post, "final_norm") and isinstance(pre.final_norm, nnx.LayerNorm)
  out_post, out_pre = post(tokens), pre(tokens)
  assert out_post.dtype == jnp.float32 and out_post.shape == (1, 8, 64)
  assert np.all(np.isfinite(out_post)) and np.all(np.isfinite(out_pre))
  assert not np.allclose(out_post, out_pre, atol=1e-4)
  assert pre.encode(tokens).shape == (1, 8, 32)


def test_token_types():
  model = Encoder(tiny(), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(4), (1, 8), 0, 64)
  zeros, ones = jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32)
  logits = model(tokens)
  np.testing.assert_array_equal(logits, model(tokens, token_types_BxT=zeros))
  assert not np.allclose(logits, model(tokens, token_types_BxT=ones), atol=1e-4)
  untyped = Encoder(tiny(type_vocab_size=0), nnx.Rngs(0))
  assert not hasattr(untyped, "type_embed")
  with pytest.raises(ValueError, match="type_vocab_size"):
    untyped(tokens, token_types_BxT=zeros)


def test_dropout_uses_the_key():
  model = Encoder(tiny(dropout=0.1), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(5), (1, 8), 0, 64)
  a = model(tokens, dropout_rng=jax.random.key(0))
  np.testing.assert_array_equal(a, model(tokens, dropout_rng=jax.random.key(0)))
  assert not np.allclose(a, model(tokens, dropout_rng=jax.random.key(1)))
  assert not np.allclose(a, model(tokens))


def test_mlm_head_tied_or_separate():
  tied = Encoder(tiny(), nnx.Rngs(0))
  assert tied.mlm_bias[...].shape == (64,) and not hasattr(tied, "head")
  untied = Encoder(tiny(tie_embeddings=False), nnx.Rngs(0))
  assert untied.head.kernel[...].shape == (32, 64) and not hasattr(untied, "mlm_bias")
  assert untied(jnp.ones((1, 8), jnp.int32)).shape == (1, 8, 64)
  with pytest.raises(ValueError, match="encoder style"):
    Encoder(from_config(registry.model_config("gpt2-124m", num_layers=1), vocab_size=64),
            nnx.Rngs(0))


def abstract_state(cfg):
  """The model's nnx.State with shapes only (nothing allocated)."""
  return nnx.split(nnx.eval_shape(lambda: Encoder(cfg, nnx.Rngs(0))))[1]


def test_bert_base_matches_hf_parameter_count():
  # HF BertForMaskedLM(bert-base-uncased) = 109,514,298: BertModel without pooler
  # (add_pooling_layer=False) 108,891,648 + MLM head (transform 590,592, LayerNorm 1,536,
  # output bias 30,522; decoder weight tied to the word embeddings).
  cfg = from_config(registry.model_config("bert-base"), vocab_size=30522)
  assert param_count(nnx.to_pure_dict(abstract_state(cfg))) == 109_514_298


@pytest.mark.parametrize("tie", [True, False])
def test_every_parameter_has_logical_axes(tie):
  state = abstract_state(tiny(post_norm=False, tie_embeddings=tie))
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for v in leaves:
    names = v.get_metadata().get("out_sharding")
    assert names is not None and len(names) == v.get_value().ndim, v
