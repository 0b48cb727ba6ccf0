"""T5-style encoder-decoder: relative position buckets against T5's formula, causality and
padding/segment isolation by gradient, the shared bias tables, sizes and logical axes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_encoder import embedding_jacobians

from jaxlm.models import EncoderDecoder, from_config, param_count, registry
from jaxlm.models.relative import relative_position_bucket

S, T = 8, 6  # encoder and decoder lengths


def tiny(**kw):
  """A 2+2-layer T5 v1.1-style config with a 64-token vocabulary."""
  base = dict(num_layers=2, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64, max_seq_len=32)
  return from_config(registry.model_config("t5-v1.1-small", **{**base, **kw}), vocab_size=64)


def t5_bucket(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
  """T5's `_relative_position_bucket` (Mesh TensorFlow, HF T5Attention) for one position."""
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket += num_buckets if rel > 0 else 0
    n = abs(rel)
  else:
    n = max(-rel, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return bucket + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance",
                         [(True, 32, 128), (False, 32, 128), (True, 16, 64), (False, 8, 20)])
def test_relative_position_bucket_matches_t5(bidirectional, num_buckets, max_distance):
  rel = np.arange(-300, 301)
  got = relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                 num_buckets=num_buckets, max_distance=max_distance)
  want = [t5_bucket(int(r), bidirectional, num_buckets, max_distance) for r in rel]
  np.testing.assert_array_equal(np.asarray(got), want)
  assert np.asarray(got).min() == 0 and np.asarray(got).max() == num_buckets - 1


def test_relative_position_bucket_known_values():
  def bucket(rel, bidirectional):
    return int(relative_position_bucket(jnp.array(rel), bidirectional=bidirectional,
                                        num_buckets=32, max_distance=128))
  # rel = memory_position - query_position; encoder: 16 buckets per direction, 8 exact.
  assert [bucket(r, True) for r in (0, 1, -1, 7, 8, 200, -200)] == [0, 17, 1, 23, 24, 31, 15]
  # decoder: keys after the query share bucket 0; 16 exact buckets for the past.
  assert [bucket(r, False) for r in (-1, 0, 3, -15, -16, -1000)] == [1, 0, 0, 15, 16, 31]


@nnx.jit
def apply(model, *args, **kwargs):
  """`model(*args, **kwargs)` under jit: on CPU one compile beats a first run op by op."""
  return model(*args, **kwargs)


def random_tokens(seed, length):
  return jax.random.randint(jax.random.key(seed), (1, length), 1, 64)


# row 0: encoder padding, one decoder segment; row 1: two packed examples and padding
ENC_SEG = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 2, 2, 2, 0, 0]])
DEC_SEG = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 0]])


@pytest.fixture(scope="module")
def jacobians():
  """(d logits / d encoder embeddings (B, T, S), d logits / d decoder embeddings (B, T, T))."""
  model = EncoderDecoder(tiny(), nnx.Rngs(0))
  inputs = jax.random.randint(jax.random.key(1), (2, S), 1, 64)
  targets = jax.random.randint(jax.random.key(2), (2, T), 1, 64)
  return embedding_jacobians(model, lambda m: m(inputs, targets, ENC_SEG, DEC_SEG),
                             inputs, targets)


def test_decoder_is_causal_by_gradient(jacobians):
  jac_dec = jacobians[1][0]
  future = np.triu(np.ones((T, T), bool), k=1)
  assert np.all(jac_dec[future] == 0.0)
  assert np.all(jac_dec[~future] > 0.0)


def test_decoder_ignores_encoder_padding_and_sees_the_rest(jacobians):
  jac_enc = jacobians[0][0]
  assert np.all(jac_enc[:, :5] > 0.0)  # cross-attention is live
  assert np.all(jac_enc[:, 5:] == 0.0)


def test_packed_examples_stay_apart(jacobians):
  jac_enc, jac_dec = jacobians[0][1], jacobians[1][1]
  enc_seg, dec_seg = np.asarray(ENC_SEG[1]), np.asarray(DEC_SEG[1])
  real = dec_seg > 0
  same_enc = dec_seg[:, None] == enc_seg[None, :]
  assert np.all(jac_enc[real][same_enc[real]] > 0.0)
  assert np.all(jac_enc[real][~same_enc[real]] == 0.0)
  causal_same = (dec_seg[:, None] == dec_seg[None, :]) & np.tril(np.ones((T, T), bool))
  assert np.all(jac_dec[causal_same] > 0.0)
  assert np.all(jac_dec[~causal_same] == 0.0)


@pytest.fixture(scope="module")
def model():
  """A tiny T5 (not to be modified)."""
  return EncoderDecoder(tiny(), nnx.Rngs(0))


def test_padded_encoder_token_ids_do_not_matter(model):
  inputs, targets = random_tokens(3, S), random_tokens(4, T)
  logits = apply(model, inputs, targets, ENC_SEG[:1])
  other_pad = apply(model, inputs.at[0, 5:].set(jnp.array([2, 30, 63])), targets, ENC_SEG[:1])
  np.testing.assert_allclose(logits, other_pad, atol=1e-6)


def test_attention_is_unscaled_with_relative_bias(model):
  attn = model.encoder.blocks[0].attn
  x = jax.random.normal(jax.random.key(7), (1, S, 32))
  bias = model.encoder.relative_bias(S, S)  # (1, N, S, S)
  q, k, v = (f(x).reshape(1, S, 4, 8) for f in (attn.query, attn.key, attn.value))
  logits = jnp.einsum("bqnh,bknh->bnqk", q, k) + bias  # no 1/sqrt(head_dim)
  out = jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(logits, -1), v).reshape(1, S, 32)
  np.testing.assert_allclose(attn(x, x, None, bias_1xNxTxS=bias), attn.out(out), atol=1e-5)


def test_relative_bias_is_one_table_per_stack():
  model = EncoderDecoder(tiny(), nnx.Rngs(0))
  paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
  relative = [p for p in paths if "relative" in p]
  assert relative == ["decoder/relative_bias/table/embedding",
                      "encoder/relative_bias/table/embedding"]
  assert model.encoder.relative_bias.table.embedding[...].shape == (32, 4)
  assert model.encoder.relative_bias.bidirectional and not model.decoder.relative_bias.bidirectional
  # the table is live: zeroing it changes the output
  inputs, targets = random_tokens(8, S), random_tokens(9, T)
  logits = apply(model, inputs, targets)
  table = model.encoder.relative_bias.table.embedding
  table[...] = jnp.zeros_like(table[...])
  assert not np.allclose(logits, apply(model, inputs, targets), atol=1e-5)


def test_tied_head_and_dropout():
  inputs, targets = random_tokens(10, S), random_tokens(11, T)
  tied = EncoderDecoder(tiny(tie_embeddings=True, dropout=0.1), nnx.Rngs(0))
  assert not hasattr(tied, "head")
  a = apply(tied, inputs, targets, dropout_rng=jax.random.key(0))
  assert a.shape == (1, T, 64) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, apply(tied, inputs, targets, dropout_rng=jax.random.key(0)))
  assert not np.allclose(a, apply(tied, inputs, targets, dropout_rng=jax.random.key(1)))
  with pytest.raises(ValueError, match="encoder-decoder style"):
    EncoderDecoder(from_config(registry.model_config("bert-tiny"), vocab_size=64), nnx.Rngs(0))


def abstract_state(cfg):
  """The model's nnx.State with shapes only (nothing allocated)."""
  return nnx.split(nnx.eval_shape(lambda: EncoderDecoder(cfg, nnx.Rngs(0))))[1]


def test_t5_v11_small_matches_hf_parameter_count():
  # HF google/t5-v1_1-small: 76,961,152 (shared table counted once, untied lm_head).
  cfg = from_config(registry.model_config("t5-v1.1-small"), vocab_size=32128)
  assert param_count(nnx.to_pure_dict(abstract_state(cfg))) == 76_961_152
  tied = from_config(registry.model_config("t5-v1.1-small", tie_embeddings=True), vocab_size=32128)
  assert param_count(nnx.to_pure_dict(abstract_state(tied))) == 76_961_152 - 32128 * 512


@pytest.mark.parametrize("name,count", [("t5-small", 60_506_624), ("t5-base", 222_903_552)])
def test_original_t5_matches_hf_parameter_count(name, count):
  # HF t5-small / t5-base: a two-projection ReLU MLP and the head tied to `shared`.
  cfg = from_config(registry.model_config(name), vocab_size=32128)
  assert param_count(nnx.to_pure_dict(abstract_state(cfg))) == count


def test_every_parameter_has_logical_axes():
  state = abstract_state(tiny())
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for v in leaves:
    names = v.get_metadata().get("out_sharding")
    assert names is not None and len(names) == v.get_value().ndim, v


def test_decoding_past_the_kv_cache_is_an_error(model):
  tokens = random_tokens(0, 4)
  _, cache = model.decode_step(tokens[:, :3], model.init_cache(model.encode(tokens), None, 4))
  with pytest.raises(ValueError, match="4 slots; writing 2 tokens at slot 3"):
    model.decode_step(tokens[:, :2], cache)
