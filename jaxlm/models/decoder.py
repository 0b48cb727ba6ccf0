"""Decoder-only transformer, GPT-2 or Llama style by config (one implementation).

`Decoder(tokens, positions, segment_ids, cache=..., dropout_rng=...)` returns fp32 logits
and, when a KV cache is passed, the updated cache. The cache is an explicit pytree
(see `layers.init_kv_cache`), never module state, so the model stays a pure function.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import attention, layers
from jaxlm.models.config import ModelConfig


class Attention(attention.Attention):
  """Causal self-attention with optional RoPE, prefix-LM mask and KV cache."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    super().__init__(cfg, out_std=0.02 / math.sqrt(2 * cfg.num_layers), rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
               layer_cache: tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None,
               prefix_BxT: jax.Array | None = None):
    cfg = self.cfg
    t, h = x_BxTxD.shape[1], cfg.head_size
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = self.project(x_BxTxD, x_BxTxD)
    if cfg.style == "llama":
      q_BxTxNxH = layers.apply_rope(q_BxTxNxH, positions_BxT, cfg.rope_theta)
      k_BxTxKxH = layers.apply_rope(k_BxTxKxH, positions_BxT, cfg.rope_theta)

    new_kv = None
    if layer_cache is None:
      impl = layers.pick_attention_impl(cfg.attention_impl, q_BxTxNxH.dtype, h)
      mask, causal = None, True
      if segment_ids_BxT is not None:
        mask = attention.segment_mask(segment_ids_BxT, segment_ids_BxT)
      if prefix_BxT is not None:  # prefix LM: the prefix attends to itself both ways
        allowed_BxTxT = jnp.tril(jnp.ones((t, t), bool))[None] | (
            prefix_BxT[:, :, None] & prefix_BxT[:, None, :])
        mask = allowed_BxTxT[:, None] if mask is None else mask & allowed_BxTxT[:, None]
        causal = False
      out_BxTxNxH = layers.dot_product_attention(
          q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask, causal=causal, impl=impl)
    else:
      k_cache, v_cache, cache_segments_BxS, index = layer_cache
      k_cache = layers.write_cache(k_cache, k_BxTxKxH, index)
      v_cache = layers.write_cache(v_cache, v_BxTxKxH, index)
      s = k_cache.shape[1]
      mask = layers.attention_mask(segment_ids_BxT, cache_segments_BxS,
                                   index + jnp.arange(t), jnp.arange(s))
      out_BxTxNxH = layers.dot_product_attention(
          q_BxTxNxH, k_cache.astype(q_BxTxNxH.dtype), v_cache.astype(q_BxTxNxH.dtype), mask,
          causal=False, impl="xla")
      new_kv = (k_cache, v_cache)
    return self.merge_heads(out_BxTxNxH), new_kv


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.cfg = cfg
    self.attn_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)
    self.mlp = layers.MLP(cfg.style, cfg.embed_dim, cfg.mlp_dim, bias=cfg.bias, dtype=dt,
                          out_std=0.02 / math.sqrt(2 * cfg.num_layers), rngs=rngs)

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, layer_cache, dropout_rng,
               prefix_BxT=None):
    rate = self.cfg.dropout
    rng_attn, rng_mlp = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    attn_BxTxD, new_kv = self.attn(self.attn_norm(x_BxTxD), positions_BxT, segment_ids_BxT,
                                   layer_cache, prefix_BxT)
    x_BxTxD = x_BxTxD + layers.dropout(attn_BxTxD, rate, rng_attn)
    x_BxTxD = x_BxTxD + layers.dropout(self.mlp(self.mlp_norm(x_BxTxD)), rate, rng_mlp)
    return x_BxTxD, new_kv


class Decoder(nnx.Module):
  """Token embedding, a stack of blocks, final norm and the (tied or separate) output head."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.cfg = cfg
    self.embed = nnx.Embed(
        cfg.vocab_size, cfg.embed_dim, dtype=dt,
        embedding_init=layers.named(nnx.initializers.normal(0.02), "vocab", "embed"), rngs=rngs)
    if cfg.style == "gpt2":
      self.pos_embed = nnx.Embed(
          cfg.max_seq_len, cfg.embed_dim, dtype=dt,
          embedding_init=layers.named(nnx.initializers.normal(0.02), None, "embed"), rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)
    if not cfg.tied:
      self.head = layers.dense(cfg.embed_dim, cfg.vocab_size, ("embed", "vocab"), bias=False,
                               dtype=dt, rngs=rngs)

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None, *, cache: dict | None = None,
               dropout_rng: jax.Array | None = None, prefix_BxT: jax.Array | None = None):
    """Returns fp32 logits (B, T, V), and the updated cache when `cache` is given.

    Training: `segment_ids` (0 = padding) keep packed documents apart; attention is causal,
    except among positions where the boolean `prefix_BxT` is set (prefix LM: bidirectional).
    Decoding: `cache` from `layers.init_kv_cache`; the new tokens are written at
    `cache["index"]` and attend to every earlier slot of their own segment.
    """
    x_BxTxD, new_cache = self.hidden(tokens_BxT, positions_BxT, segment_ids_BxT, cache=cache,
                                     dropout_rng=dropout_rng, prefix_BxT=prefix_BxT)
    logits_BxTxV = self.logits(x_BxTxD)
    return logits_BxTxV if cache is None else (logits_BxTxV, new_cache)

  def logits(self, x_BxTxD: jax.Array) -> jax.Array:
    """fp32 vocabulary logits of final hidden states (tied table or separate head)."""
    logits_BxTxV = self.embed.attend(x_BxTxD) if self.cfg.tied else self.head(x_BxTxD)
    return logits_BxTxV.astype(jnp.float32)

  def hidden(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
             segment_ids_BxT: jax.Array | None = None, *, cache: dict | None = None,
             dropout_rng: jax.Array | None = None,
             prefix_BxT: jax.Array | None = None) -> tuple[jax.Array, dict | None]:
    """Final-norm hidden states (B, T, D) and the updated cache (None without a cache)."""
    cfg = self.cfg
    b, t = tokens_BxT.shape
    if positions_BxT is None:
      start = 0 if cache is None else cache["index"]
      positions_BxT = jnp.broadcast_to(start + jnp.arange(t), (b, t))
    if cache is not None and segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones((b, t), jnp.int32)

    x_BxTxD = self.embed(tokens_BxT)
    if cfg.style == "gpt2":
      x_BxTxD = x_BxTxD + self.pos_embed(positions_BxT)
    keys = [None] * (cfg.num_layers + 1)
    if dropout_rng is not None and cfg.dropout > 0:
      keys = list(jax.random.split(dropout_rng, cfg.num_layers + 1))
    x_BxTxD = layers.dropout(x_BxTxD, cfg.dropout, keys[-1])

    new_cache = None
    if cache is not None:
      cache_segments_BxS = jax.lax.dynamic_update_slice(
          cache["segment_ids"], segment_ids_BxT.astype(jnp.int32), (0, cache["index"]))
      new_cache = {"k": [], "v": [], "segment_ids": cache_segments_BxS,
                   "index": cache["index"] + t}
    for i, block in enumerate(self.blocks):
      layer_cache = None
      if cache is not None:
        layer_cache = (cache["k"][i], cache["v"][i], cache_segments_BxS, cache["index"])
      x_BxTxD, new_kv = block(x_BxTxD, positions_BxT, segment_ids_BxT, layer_cache, keys[i],
                              prefix_BxT)
      if new_kv is not None:
        new_cache["k"].append(new_kv[0])
        new_cache["v"].append(new_kv[1])

    return self.final_norm(x_BxTxD), new_cache


def param_count(params) -> int:
  """Total number of parameters in a params pytree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))


def matmul_param_count(cfg: ModelConfig, params) -> int:
  """Parameters that take part in matmuls (N of the 6N flops rule).

  Excludes the learned position table and, when untied, the input embedding table (a lookup,
  not a matmul); a tied table counts once, as the output head. Same convention as nanoGPT.
  """
  n = param_count(params)
  if cfg.style in ("gpt2", "bert"):  # learned position (and token-type) tables are lookups
    n -= (cfg.max_seq_len + cfg.type_vocab_size) * cfg.embed_dim
  if not cfg.tied:
    n -= cfg.vocab_size * cfg.embed_dim
  return n
