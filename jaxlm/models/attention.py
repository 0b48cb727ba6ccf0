"""Pieces shared by the encoder (BERT) and the encoder-decoder (T5): self- or cross-attention
over a memory sequence with a boolean mask and an optional additive bias, and segment masks;
and the decoder's causal masks (with and without a KV cache), which its two attentions
(`decoder.Attention`, `latent_attention.LatentAttention`) share.

The decoder-only model keeps its own cached attention (`decoder.Attention`); the T5 decoder
caches through `project` + `attend` (see `encdec.Block.step`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers
from jaxlm.models.config import ModelConfig


GLOBAL_SEGMENT = -1  # cache slots of PEFT prefixes / virtual tokens: seen by every real query


def segment_mask(q_segment_BxT: jax.Array, k_segment_BxS: jax.Array) -> jax.Array:
  """Boolean (B, 1, T, S) mask: a query of segment s sees only keys of segment s (0 = padding)."""
  return (q_segment_BxT[:, :, None] == k_segment_BxS[:, None, :])[:, None]


def self_attention_mask(segment_ids_BxT: jax.Array | None, prefix_BxT: jax.Array | None,
                        t: int) -> tuple[jax.Array | None, bool]:
  """(mask (B, 1, T, T) or None, whether to add the causal triangle) of a decoder's uncached
  self-attention: packed documents kept apart by `segment_ids`, and with `prefix_BxT` (prefix
  LM) the marked positions attending to each other both ways."""
  mask = None if segment_ids_BxT is None else segment_mask(segment_ids_BxT, segment_ids_BxT)
  if prefix_BxT is None:
    return mask, True
  allowed_BxTxT = jnp.tril(jnp.ones((t, t), bool))[None] | (
      prefix_BxT[:, :, None] & prefix_BxT[:, None, :])
  return (allowed_BxTxT[:, None] if mask is None else mask & allowed_BxTxT[:, None]), False


def cached_attention_mask(segment_ids_BxT: jax.Array, cache_segments_BxS: jax.Array,
                          index: jax.Array, window: int,
                          prefix_BxT: jax.Array | None) -> jax.Array:
  """The (B, 1, T, S) mask of `T` new tokens written at cache slot `index`: each sees the
  earlier slots of its segment (within `window` when > 0) and every PEFT prefix slot
  (`GLOBAL_SEGMENT`); with `prefix_BxT` (a prefix LM's prompt) the marked new tokens also
  see each other both ways."""
  t, s = segment_ids_BxT.shape[1], cache_segments_BxS.shape[1]
  mask = layers.attention_mask(segment_ids_BxT, cache_segments_BxS, index + jnp.arange(t),
                               jnp.arange(s), window)
  sees_global_BxTxS = ((segment_ids_BxT != GLOBAL_SEGMENT)[:, :, None]
                       & (cache_segments_BxS == GLOBAL_SEGMENT)[:, None, :])
  mask = mask | sees_global_BxTxS[:, None]
  if prefix_BxT is not None:
    prefix_BxS = jax.lax.dynamic_update_slice(jnp.zeros(cache_segments_BxS.shape, bool),
                                              prefix_BxT, (0, index))
    pair_BxTxS = prefix_BxT[:, :, None] & prefix_BxS[:, None, :]
    if window:  # as in training: no further back than the window, any distance ahead
      pair_BxTxS &= (jnp.arange(s)[None, :] > (index + jnp.arange(t))[:, None] - window)
    mask = mask | pair_BxTxS[:, None]
  return mask


class Attention(nnx.Module):
  """Multi-head (or grouped-query) attention of queries `x` over keys/values from `memory`.

  `scale=None` scales q.k by 1/sqrt(head_size); T5 passes 1.0 (its scaling lives in the query
  initialiser, `query_std`). Parameter names `query`, `key`, `value`, `out` as in the decoder.
  """

  def __init__(self, cfg: ModelConfig, *, out_std: float, rngs: nnx.Rngs,
               query_std: float = 0.02, scale: float | None = None):
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, cfg.head_size
    dt, qkv_bias = cfg.compute_dtype, cfg.attention_qkv_bias
    self.cfg = cfg
    self.scale = scale
    self.query = layers.dense(d, n * h, ("embed", "heads"), bias=qkv_bias, dtype=dt, rngs=rngs,
                              std=query_std)
    self.key = layers.dense(d, k * h, ("embed", "kv"), bias=qkv_bias, dtype=dt, rngs=rngs)
    self.value = layers.dense(d, k * h, ("embed", "kv"), bias=qkv_bias, dtype=dt, rngs=rngs)
    self.out = layers.dense(n * h, d, ("heads", "embed"), bias=cfg.bias, dtype=dt, rngs=rngs,
                            std=out_std)
    if cfg.qk_norm_full:  # over each whole projection, split as its heads are (OLMoE)
      self.query_norm = layers.norm(cfg.style, n * h, cfg.norm_eps, dt, rngs, axis="heads")
      self.key_norm = layers.norm(cfg.style, k * h, cfg.norm_eps, dt, rngs, axis="kv")
    elif cfg.qk_norm:  # one scale over the head size, shared by every head (as Qwen3)
      self.query_norm = layers.norm(cfg.style, h, cfg.norm_eps, dt, rngs, axis=None)
      self.key_norm = layers.norm(cfg.style, h, cfg.norm_eps, dt, rngs, axis=None)

  def __call__(self, x_BxTxD: jax.Array, memory_BxSxD: jax.Array,
               mask_Bx1xTxS: jax.Array | None, *, bias_1xNxTxS: jax.Array | None = None,
               causal: bool = False, dropout_rng: jax.Array | None = None) -> jax.Array:
    """Attends each query position to the memory positions allowed by `mask` (and `causal`)."""
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH = self.project(x_BxTxD, memory_BxSxD)
    return self.attend(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_Bx1xTxS, bias_1xNxTxS=bias_1xNxTxS,
                       causal=causal, dropout_rng=dropout_rng)

  def attend(self, q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array,
             mask_Bx1xTxS: jax.Array | None, *, bias_1xNxTxS: jax.Array | None = None,
             causal: bool = False, impl: str | None = None,
             dropout_rng: jax.Array | None = None, window: int = 0) -> jax.Array:
    """Attention of projected queries over projected keys / values, then the output projection.

    `impl=None` picks cuDNN or XLA from the config (cached decoding passes "xla");
    `dropout_rng` (training) drops out attention probabilities at `attention_dropout`;
    `window` > 0: sliding-window self-attention (see `layers.dot_product_attention`).
    """
    dt = q_BxTxNxH.dtype
    if impl is None:
      impl = layers.pick_attention_impl(self.cfg.attention_impl, dt, self.cfg.head_size)
    out_BxTxNxH = layers.dot_product_attention(
        q_BxTxNxH, k_BxSxKxH.astype(dt), v_BxSxKxH.astype(dt), mask_Bx1xTxS, causal=causal,
        impl=impl, bias_1xNxTxS=None if bias_1xNxTxS is None else bias_1xNxTxS.astype(dt),
        scale=self.scale, dropout_rate=self.cfg.attention_dropout, dropout_rng=dropout_rng,
        window=window, softcap=self.cfg.attn_softcap)
    return self.merge_heads(out_BxTxNxH)

  def project(self, x_BxTxD: jax.Array,
              memory_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-head queries (from `x`) and keys / values (from `memory`)."""
    return self.queries(x_BxTxD), *self.keys_values(memory_BxSxD)

  def normed_heads(self, x_BxTxF: jax.Array, norm_name: str, heads: int) -> jax.Array:
    """A projection's output (B, T, heads x H) split into heads, through its `qk_norm` norm
    (`norm_name`) over each head or, with `qk_norm_full`, over the whole projection first."""
    b, t, _ = x_BxTxF.shape
    norm = getattr(self, norm_name) if self.cfg.qk_norm else None
    if norm is not None and self.cfg.qk_norm_full:
      x_BxTxF = norm(x_BxTxF)
    x_BxTxNxH = x_BxTxF.reshape(b, t, heads, self.cfg.head_size)
    return x_BxTxNxH if norm is None or self.cfg.qk_norm_full else norm(x_BxTxNxH)

  def queries(self, x_BxTxD: jax.Array) -> jax.Array:
    """Per-head queries (B, T, N, H)."""
    return self.normed_heads(self.query(x_BxTxD), "query_norm", self.cfg.num_heads)

  def keys_values(self, memory_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-head keys and values (B, S, K, H) of `memory`."""
    b, s, _ = memory_BxSxD.shape
    k_BxSxKxH = self.normed_heads(self.key(memory_BxSxD), "key_norm", self.cfg.kv_heads)
    v_BxSxKxH = self.value(memory_BxSxD).reshape(b, s, self.cfg.kv_heads, self.cfg.head_size)
    return k_BxSxKxH, v_BxSxKxH

  def merge_heads(self, out_BxTxNxH: jax.Array) -> jax.Array:
    """The output projection of the concatenated heads."""
    b, t, n, h = out_BxTxNxH.shape
    return self.out(out_BxTxNxH.reshape(b, t, n * h))


def dropout_keys(rng: jax.Array | None, n: int, cfg: ModelConfig) -> list[jax.Array | None]:
  """`n` independent dropout keys (one per layer, ...), or `n` Nones when dropout is off."""
  if rng is None or (cfg.dropout == 0.0 and cfg.attention_dropout == 0.0):
    return [None] * n
  return list(jax.random.split(rng, n))


def probs_key(rng: jax.Array | None, cfg: ModelConfig) -> jax.Array | None:
  """The attention-probability dropout key derived from a sublayer's key (None when off)."""
  if rng is None or cfg.attention_dropout == 0.0:
    return None
  return jax.random.fold_in(rng, 3)
