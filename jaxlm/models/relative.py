"""T5 relative position bias: bucketed `memory_position - query_position`, one learned scalar
per (bucket, head), computed once per stack and added to every layer's attention logits."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.config import ModelConfig
from jaxlm.models.layers import embedding


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's bucket in [0, num_buckets) of `relative_position = memory_position - query_position`.

  As Mesh TensorFlow / HF `T5Attention._relative_position_bucket`: bidirectional splits the
  buckets between keys before and after the query; unidirectional (decoder) maps every key
  after the query to bucket 0. Half of the buckets hold exact distances, the rest grow
  logarithmically up to `max_distance`, beyond which all distances share the last bucket.
  """
  rel = jnp.asarray(relative_position, jnp.int32)
  bucket = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (rel > 0).astype(jnp.int32) * num_buckets
    rel = jnp.abs(rel)
  else:
    rel = -jnp.minimum(rel, 0)
  max_exact = num_buckets // 2
  # rel >= max_exact >= 1 wherever the log branch is used; the max only avoids log(0).
  log_ratio = jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact)
  large = max_exact + (log_ratio / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(rel < max_exact, rel, large)


class RelativeBias(nnx.Module):
  """The (buckets, heads) bias table of one T5 stack; called once, shared by all its layers."""

  def __init__(self, cfg: ModelConfig, *, bidirectional: bool, rngs: nnx.Rngs):
    self.bidirectional = bidirectional
    self.num_buckets = cfg.relative_buckets
    self.max_distance = cfg.relative_max_distance
    # tiny table: replicated (heads need not divide the tensor axis)
    self.table = embedding(cfg.relative_buckets, cfg.num_heads, (None, None), cfg.compute_dtype,
                           rngs)

  def __call__(self, q_len: int, k_len: int, q_offset: jax.Array | int = 0) -> jax.Array:
    """Additive attention bias (1, N, T, S) for queries at q_offset + 0..T-1 and keys at
    0..S-1 (a cached decoder's queries start at its cache index)."""
    rel_TxS = jnp.arange(k_len)[None, :] - (q_offset + jnp.arange(q_len))[:, None]
    bucket_TxS = relative_position_bucket(rel_TxS, bidirectional=self.bidirectional,
                                          num_buckets=self.num_buckets,
                                          max_distance=self.max_distance)
    bias_TxSxN = self.table(bucket_TxS)
    return jnp.transpose(bias_TxSxN, (2, 0, 1))[None]
