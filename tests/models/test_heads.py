"""Scalar head, last-real-token index and gather on right-padded rows."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.models.heads import ScalarHead, gather_last, last_token_index, sequence_scores

# right-padded rows: 0 = padding (segment ids may be > 1)
SEGMENTS = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [2, 2, 2, 2, 0]])
WANT_IDX = np.array([2, 4, 0, 3])


def test_last_token_index_on_segments_and_masks():
  np.testing.assert_array_equal(np.asarray(last_token_index(jnp.asarray(SEGMENTS))), WANT_IDX)
  np.testing.assert_array_equal(np.asarray(last_token_index(jnp.asarray(SEGMENTS > 0))), WANT_IDX)
  mask = (SEGMENTS > 0).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(jax.jit(last_token_index)(jnp.asarray(mask))), WANT_IDX)
  # right padding: also equals (number of real tokens - 1)
  np.testing.assert_array_equal(WANT_IDX, (SEGMENTS > 0).sum(-1) - 1)


def test_gather_last_reads_the_last_real_token_only():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(4, 5, 6)).astype(np.float32)
  idx = last_token_index(jnp.asarray(SEGMENTS))
  got = np.asarray(gather_last(jnp.asarray(hidden), idx))
  np.testing.assert_array_equal(got, hidden[np.arange(4), WANT_IDX])
  noisy = hidden.copy()
  noisy[SEGMENTS == 0] = 1e6
  np.testing.assert_array_equal(np.asarray(gather_last(jnp.asarray(noisy), idx)), got)


def test_scalar_head_scores_and_init():
  head = ScalarHead(6, rngs=nnx.Rngs(0))
  hidden = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32))
  assert head(hidden).shape == (4, 5) and head(hidden[:, 0]).shape == (4,)
  np.testing.assert_array_equal(np.asarray(head(hidden)), 0.0)  # zero init
  head = ScalarHead(6, rngs=nnx.Rngs(0), std=0.02, dtype=jnp.bfloat16)
  w = np.asarray(head.proj.kernel[...], np.float64)[:, 0]
  b = float(head.proj.bias[...][0])
  assert 0 < np.abs(w).max() < 0.2
  scores = sequence_scores(head, hidden, jnp.asarray(SEGMENTS))
  assert scores.shape == (4,) and scores.dtype == jnp.float32
  want = np.asarray(hidden, np.float64)[np.arange(4), WANT_IDX] @ w + b
  np.testing.assert_allclose(np.asarray(scores), want, rtol=2e-2, atol=2e-3)


def test_scalar_head_params_carry_logical_axes():
  head = nnx.eval_shape(lambda: ScalarHead(32, rngs=nnx.Rngs(0)))
  state = nnx.state(head, nnx.Param)
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  names = {v.get_value().ndim: v.get_metadata().get("out_sharding") for v in leaves}
  assert names == {2: ("embed", None), 1: (None,)}
