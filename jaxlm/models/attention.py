"""Pieces shared by the encoder (BERT) and the encoder-decoder (T5): self- or cross-attention
over a memory sequence with a boolean mask and an optional additive bias, segment masks and
embedding tables.

The decoder keeps its own cached attention (`decoder.Attention`); this one needs no KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers
from jaxlm.models.config import ModelConfig


def segment_mask(q_segment_BxT: jax.Array, k_segment_BxS: jax.Array) -> jax.Array:
  """Boolean (B, 1, T, S) mask: a query of segment s sees only keys of segment s (0 = padding)."""
  return (q_segment_BxT[:, :, None] == k_segment_BxS[:, None, :])[:, None]


class Attention(nnx.Module):
  """Multi-head (or grouped-query) attention of queries `x` over keys/values from `memory`.

  `scale=None` scales q.k by 1/sqrt(head_size); T5 passes 1.0 (its scaling lives in the query
  initialiser, `query_std`). Parameter names `query`, `key`, `value`, `out` as in the decoder.
  """

  def __init__(self, cfg: ModelConfig, *, out_std: float, rngs: nnx.Rngs,
               query_std: float = 0.02, scale: float | None = None):
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_size
    dt, bias = cfg.compute_dtype, cfg.bias
    self.cfg = cfg
    self.scale = scale
    self.query = layers.dense(d, n * h, ("embed", "heads"), bias=bias, dtype=dt, rngs=rngs,
                              std=query_std)
    self.key = layers.dense(d, k * h, ("embed", "kv"), bias=bias, dtype=dt, rngs=rngs)
    self.value = layers.dense(d, k * h, ("embed", "kv"), bias=bias, dtype=dt, rngs=rngs)
    self.out = layers.dense(n * h, d, ("heads", "embed"), bias=bias, dtype=dt, rngs=rngs,
                            std=out_std)

  def __call__(self, x_BxTxD: jax.Array, memory_BxSxD: jax.Array,
               mask_Bx1xTxS: jax.Array | None, *, bias_1xNxTxS: jax.Array | None = None,
               causal: bool = False) -> jax.Array:
    """Attends each query position to the memory positions allowed by `mask` (and `causal`)."""
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH = self.project(x_BxTxD, memory_BxSxD)
    impl = layers.pick_attention_impl(self.cfg.attention_impl, q_BxTxNxH.dtype, self.cfg.head_size)
    if bias_1xNxTxS is not None:
      bias_1xNxTxS = bias_1xNxTxS.astype(q_BxTxNxH.dtype)
    out_BxTxNxH = jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, bias=bias_1xNxTxS, mask=mask_Bx1xTxS, scale=self.scale,
        is_causal=causal, implementation=impl)
    return self.merge_heads(out_BxTxNxH)

  def project(self, x_BxTxD: jax.Array,
              memory_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-head queries (from `x`) and keys / values (from `memory`)."""
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    s, h = memory_BxSxD.shape[1], cfg.head_size
    return (self.query(x_BxTxD).reshape(b, t, cfg.num_heads, h),
            self.key(memory_BxSxD).reshape(b, s, cfg.kv_heads, h),
            self.value(memory_BxSxD).reshape(b, s, cfg.kv_heads, h))

  def merge_heads(self, out_BxTxNxH: jax.Array) -> jax.Array:
    """The output projection of the concatenated heads."""
    b, t, n, h = out_BxTxNxH.shape
    return self.out(out_BxTxNxH.reshape(b, t, n * h))


def embedding(num: int, dim: int, names: tuple[str | None, str | None], dtype: jnp.dtype,
              rngs: nnx.Rngs, std: float = 0.02) -> nnx.Embed:
  """An `nnx.Embed` table (num, dim) with normal(std) init and logical axis `names`."""
  return nnx.Embed(num, dim, dtype=dtype,
                   embedding_init=layers.named(nnx.initializers.normal(std), *names), rngs=rngs)


def dropout_keys(rng: jax.Array | None, n: int, rate: float) -> list[jax.Array | None]:
  """`n` independent dropout keys (one per layer, ...), or `n` Nones when dropout is off."""
  if rng is None or rate == 0.0:
    return [None] * n
  return list(jax.random.split(rng, n))
