"""Multi-head latent attention (MLA; DeepSeek-V2, DeepSeek-AI 2024; DeepSeek-V3).

Each position is projected to a latent c of `kv_lora_rank` dimensions (RMS-normed) and one
rotary key k_r of `qk_rope_head_dim` dimensions that every head shares. Head n's key is
[k_r ; c W_uk,n] and its value c W_uv,n (`kv_up` holds both expansions, per head
[key part ; value part]); its query is [q_r,n ; q_c,n], from x directly or through a normed
query latent (`q_lora_rank`). Only c and k_r depend on the position's history, so they are
all the KV cache keeps: kv_lora_rank + qk_rope_head_dim numbers per position and layer
instead of 2 x heads x head size.

Two ways to compute the same attention. Training (no cache) expands every position's keys
and values and runs ordinary attention (cuDNN's where it applies). Decoding absorbs the
expansions: q_c,n . (c W_uk,n) = (q_c,n W_uk,n^T) . c and sum_s p_s c_s W_uv,n =
(sum_s p_s c_s) W_uv,n, so each head's query moves into the latent space and all heads attend
to the one cached row [k_r ; c] per position (multi-query attention over the latent), the
value expansion applied once to the output.

Per-head layout here: the rotary dimensions first, then the others (HF's DeepSeek puts the
rotary ones last; the import reorders them).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import attention, layers
from jaxlm.models.config import ModelConfig


class LatentAttention(nnx.Module):
  """Causal multi-head latent attention with RoPE and a latent KV cache (see the module
  docstring); takes and returns what `decoder.Attention` does, so blocks use either."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, window: int = 0):
    d, n, h, dt = cfg.embed_dim, cfg.num_heads, cfg.head_size, cfg.compute_dtype
    r, rq = cfg.kv_lora_rank, cfg.q_lora_rank
    self.cfg, self.window = cfg, window
    if rq:
      self.query_down = layers.dense(d, rq, ("embed", None), bias=False, dtype=dt, rngs=rngs)
      self.query_down_norm = layers.norm(cfg.style, rq, cfg.norm_eps, dt, rngs, axis=None)
      self.query_up = layers.dense(rq, n * h, (None, "heads"), bias=False, dtype=dt, rngs=rngs)
    else:
      self.query = layers.dense(d, n * h, ("embed", "heads"), bias=False, dtype=dt, rngs=rngs)
    self.kv_down = layers.dense(d, r + cfg.qk_rope_head_dim, ("embed", None), bias=False,
                                dtype=dt, rngs=rngs)
    self.kv_down_norm = layers.norm(cfg.style, r, cfg.norm_eps, dt, rngs, axis=None)
    self.kv_up = layers.dense(r, n * (self.key_part + cfg.value_size), (None, "heads"),
                              bias=False, dtype=dt, rngs=rngs)
    self.out = layers.dense(n * cfg.value_size, d, ("heads", "embed"), bias=False, dtype=dt,
                            rngs=rngs, std=0.02 / math.sqrt(2 * cfg.num_layers))

  @property
  def key_part(self) -> int:
    """Each head's key dimensions expanded from the latent (those RoPE leaves alone)."""
    return self.cfg.head_size - self.cfg.qk_rope_head_dim

  @property
  def scale(self) -> float:
    """The softmax scale: 1 / sqrt(query / key head size), or Gemma-style `query_pre_attn_scalar`
    (an import's YaRN mscale lives there)."""
    return (self.cfg.query_pre_attn_scalar or self.cfg.head_size) ** -0.5

  def queries(self, x_BxTxD: jax.Array, rotate: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Per-head queries (B, T, N, H), their rotary dimensions rotated by `rotate`."""
    b, t, _ = x_BxTxD.shape
    if self.cfg.q_lora_rank:
      q = self.query_up(self.query_down_norm(self.query_down(x_BxTxD)))
    else:
      q = self.query(x_BxTxD)
    q_BxTxNxH = q.reshape(b, t, self.cfg.num_heads, self.cfg.head_size)
    return rotate(q_BxTxNxH)

  def latent(self, x_BxTxD: jax.Array, rotate: Callable[[jax.Array], jax.Array]
             ) -> tuple[jax.Array, jax.Array]:
    """(the normed latent (B, T, 1, kv_lora_rank), the shared key (B, T, 1, rope dim) rotated by
    `rotate`)."""
    r = self.cfg.kv_lora_rank
    down_BxTxF = self.kv_down(x_BxTxD)
    latent_BxTxR = self.kv_down_norm(down_BxTxF[..., :r])
    return latent_BxTxR[:, :, None], rotate(down_BxTxF[..., None, r:])

  def expansions(self) -> tuple[jax.Array, jax.Array]:
    """(W_uk (R, N, key part), W_uv (R, N, value size)): `kv_up` as matrices (with a PEFT
    adapter folded in)."""
    w_RxF = layers.linear_kernel(self.kv_up)
    w_RxNxF = w_RxF.reshape(self.cfg.kv_lora_rank, self.cfg.num_heads, -1).astype(
        self.cfg.compute_dtype)
    return w_RxNxF[..., :self.key_part], w_RxNxF[..., self.key_part:]

  def expanded_attention(self, q_BxTxNxH: jax.Array, latent_BxSx1xR: jax.Array,
                         rope_BxSx1xP: jax.Array, mask_Bx1xTxS: jax.Array | None, *,
                         causal: bool, impl: str | None, dropout_rng: jax.Array | None
                         ) -> jax.Array:
    """Attention over every position's expanded keys and values: (B, T, N, value size)."""
    cfg = self.cfg
    b, s = latent_BxSx1xR.shape[:2]
    n, h, dv = cfg.num_heads, cfg.head_size, cfg.value_size
    kv_BxSxNxF = self.kv_up(latent_BxSx1xR[:, :, 0]).reshape(b, s, n, -1)
    k_BxSxNxH = jnp.concatenate(
        [jnp.broadcast_to(rope_BxSx1xP, (b, s, n, cfg.qk_rope_head_dim)).astype(
            kv_BxSxNxF.dtype), kv_BxSxNxF[..., :self.key_part]], axis=-1)
    v_BxSxNxV = kv_BxSxNxF[..., self.key_part:]
    # Context parallelism: every device gathers every position's keys and values (as
    # decoder.Attention does; nothing moves on a mesh without a sequence axis).
    k_BxSxNxH, v_BxSxNxV = (layers.constrain(x, "batch", None, "act_heads", None)
                            for x in (k_BxSxNxH, v_BxSxNxV))
    width = max(h, dv)  # jax's attention takes one head size for queries, keys and values
    q, k, v = (_pad_heads(x, width) for x in (q_BxTxNxH, k_BxSxNxH, v_BxSxNxV))
    if impl is None:
      impl = layers.pick_attention_impl(cfg.attention_impl, q.dtype, width)
    out_BxTxNxW = layers.dot_product_attention(
        q, k.astype(q.dtype), v.astype(q.dtype), mask_Bx1xTxS, causal=causal, impl=impl,
        scale=self.scale, dropout_rate=cfg.attention_dropout, dropout_rng=dropout_rng,
        window=self.window, softcap=cfg.attn_softcap)
    return out_BxTxNxW[..., :dv]

  def absorbed_attention(self, q_BxTxNxH: jax.Array, latent_BxSx1xR: jax.Array,
                         rope_BxSx1xP: jax.Array, mask_Bx1xTxS: jax.Array,
                         dropout_rng: jax.Array | None) -> jax.Array:
    """The same attention in the latent space (decoding): each head's query becomes
    [q_r ; q_c W_uk^T] and attends to the rows [k_r ; c], one per position and shared by
    every head; their mix times W_uv is the head's output (B, T, N, value size)."""
    p = self.cfg.qk_rope_head_dim
    w_uk_RxNxK, w_uv_RxNxV = self.expansions()
    dt = q_BxTxNxH.dtype
    q_latent_BxTxNxR = jnp.einsum("btnk,rnk->btnr", q_BxTxNxH[..., p:], w_uk_RxNxK.astype(dt))
    q_BxTxNxF = jnp.concatenate([q_BxTxNxH[..., :p], q_latent_BxTxNxR], axis=-1)
    rows_BxSx1xF = jnp.concatenate([rope_BxSx1xP, latent_BxSx1xR], axis=-1).astype(dt)
    mixed_BxTxNxF = layers.dot_product_attention(
        q_BxTxNxF, rows_BxSx1xF, rows_BxSx1xF, mask_Bx1xTxS, causal=False, impl="xla",
        scale=self.scale, dropout_rate=self.cfg.attention_dropout, dropout_rng=dropout_rng,
        softcap=self.cfg.attn_softcap)
    return jnp.einsum("btnr,rnv->btnv", mixed_BxTxNxF[..., p:], w_uv_RxNxV.astype(dt))

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array | None,
               layer_cache: tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None,
               prefix_BxT: jax.Array | None = None, dropout_rng: jax.Array | None = None):
    b, t, _ = x_BxTxD.shape
    rotate = layers.rotary(self.cfg, positions_BxT, self.window > 0)
    q_BxTxNxH = self.queries(x_BxTxD, rotate)
    latent_BxTx1xR, rope_BxTx1xP = self.latent(x_BxTxD, rotate)
    if layer_cache is None:
      q_BxTxNxH = layers.constrain(q_BxTxNxH, "batch", "act_seq", "act_heads", None)
      mask, causal = attention.self_attention_mask(segment_ids_BxT, prefix_BxT, t)
      out_BxTxNxV = self.expanded_attention(q_BxTxNxH, latent_BxTx1xR, rope_BxTx1xP, mask,
                                            causal=causal, impl=None, dropout_rng=dropout_rng)
      return self.out(out_BxTxNxV.reshape(b, t, -1)), None
    latent_cache, rope_cache, cache_segments_BxS, index = layer_cache
    latent_cache = layers.write_cache(latent_cache, latent_BxTx1xR, index)
    rope_cache = layers.write_cache(rope_cache, rope_BxTx1xP, index)
    mask = attention.cached_attention_mask(segment_ids_BxT, cache_segments_BxS, index,
                                           self.window, prefix_BxT)
    out_BxTxNxV = self.absorbed_attention(q_BxTxNxH, latent_cache, rope_cache, mask, dropout_rng)
    return self.out(out_BxTxNxV.reshape(b, t, -1)), (latent_cache, rope_cache)


def _pad_heads(x_BxTxNxH: jax.Array, width: int) -> jax.Array:
  """`x` with zeros appended to each head up to `width` dimensions (no change to q . k)."""
  extra = width - x_BxTxNxH.shape[-1]
  return x_BxTxNxH if not extra else jnp.pad(x_BxTxNxH, ((0, 0),) * 3 + ((0, extra),))
