"""Bidirectional encoder, BERT style (Devlin et al. 2019), with its masked-LM head.

`Encoder(tokens, segment_ids, positions, token_types, dropout_rng=...)` returns fp32 logits;
`Encoder.encode(...)` the final hidden states (for classification or reward heads).
Parameter names follow HF BERT: `embed` (word_embeddings), `pos_embed`, `type_embed`,
`embed_norm`, `blocks[i].attn.{query,key,value,out}`, `attn_norm` (attention.output.LayerNorm),
`mlp.{up,down}`, `mlp_norm` (output.LayerNorm), `mlm_transform`, `mlm_norm`, `mlm_bias`.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers, stacking
from jaxlm.models.attention import Attention, dropout_keys, probs_key, segment_mask
from jaxlm.models.config import ModelConfig


class Block(nnx.Module):
  """Self-attention and MLP, post-norm `norm(x + f(x))` or pre-norm `x + f(norm(x))`."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    # BERT's post-norm blocks use a plain 0.02 init; pre-norm scales residual outputs as GPT-2.
    out_std = 0.02 if cfg.post_norm else 0.02 / math.sqrt(2 * cfg.num_layers)
    self.cfg = cfg
    self.attn = Attention(cfg, out_std=out_std, rngs=rngs)
    self.attn_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)
    self.mlp = layers.mlp(cfg, out_std, rngs)
    self.mlp_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)

  def _residual(self, x_BxTxD: jax.Array, norm: nnx.Module,
                fn: Callable[[jax.Array], jax.Array], rng: jax.Array | None) -> jax.Array:
    """One residual sub-layer, post- or pre-norm by config, with dropout on its output."""
    if self.cfg.post_norm:
      return norm(x_BxTxD + layers.dropout(fn(x_BxTxD), self.cfg.dropout, rng))
    return x_BxTxD + layers.dropout(fn(norm(x_BxTxD)), self.cfg.dropout, rng)

  def __call__(self, x_BxTxD: jax.Array, mask_Bx1xTxT: jax.Array | None,
               dropout_rng: jax.Array | None) -> jax.Array:
    """The block applied to `x`; `mask` limits which keys each query sees."""
    rng_attn, rng_mlp = dropout_keys(dropout_rng, 2, self.cfg)
    attn_prob_rng = probs_key(rng_attn, self.cfg)
    x_BxTxD = self._residual(
        x_BxTxD, self.attn_norm,
        lambda h: layers.adapted(self, "attn", self.attn(h, h, mask_Bx1xTxT,
                                                         dropout_rng=attn_prob_rng)), rng_attn)
    return self._residual(x_BxTxD, self.mlp_norm,
                          lambda h: layers.adapted(self, "mlp", self.mlp(h)), rng_mlp)


class Encoder(stacking.Layered, nnx.Module):
  """Embeddings (token + position + optional token type, LayerNorm), blocks and the MLM head."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    if cfg.family != "encoder":
      raise ValueError(f"Encoder needs an encoder style (bert), got {cfg.style!r}")
    d, v, dt = cfg.embed_dim, cfg.vocab_size, cfg.compute_dtype
    self.cfg = cfg
    self.embed = layers.embedding(v, d, ("vocab", "embed"), dt, rngs)
    self.pos_embed = layers.embedding(cfg.max_seq_len, d, (None, "embed"), dt, rngs)
    if cfg.type_vocab_size:
      self.type_embed = layers.embedding(cfg.type_vocab_size, d, (None, "embed"), dt, rngs)
    self.embed_norm = layers.norm(cfg.style, d, cfg.norm_eps, dt, rngs)
    self.set_layers([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    if not cfg.post_norm:
      self.final_norm = layers.norm(cfg.style, d, cfg.norm_eps, dt, rngs)
    self.mlm_transform = layers.dense(d, d, ("embed", None), bias=cfg.bias, dtype=dt, rngs=rngs)
    self.mlm_norm = layers.norm(cfg.style, d, cfg.norm_eps, dt, rngs)
    if not cfg.tied:
      self.head = layers.dense(d, v, ("embed", "vocab"), bias=cfg.bias, dtype=dt, rngs=rngs)
    elif cfg.bias:
      init = layers.named(nnx.initializers.zeros_init(), "vocab")
      self.mlm_bias = nnx.Param(init(rngs.params(), (v,), jnp.float32))

  def encode(self, tokens_BxT: jax.Array, segment_ids_BxT: jax.Array | None = None,
             positions_BxT: jax.Array | None = None, token_types_BxT: jax.Array | None = None,
             *, dropout_rng: jax.Array | None = None) -> jax.Array:
    """Final hidden states (B, T, D).

    `segment_ids` (0 = padding; None: all ones) keep packed sequences apart: a token attends
    only to keys of its own segment. `positions` default to 0..T-1, `token_types` to 0.
    """
    cfg = self.cfg
    b, t = tokens_BxT.shape
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(t), (b, t))
    x_BxTxD = self.embed(tokens_BxT) + self.pos_embed(positions_BxT)
    if cfg.type_vocab_size:
      if token_types_BxT is None:
        token_types_BxT = jnp.zeros((b, t), jnp.int32)
      x_BxTxD = x_BxTxD + self.type_embed(token_types_BxT)
    elif token_types_BxT is not None:
      raise ValueError("token types given but model.type_vocab_size is 0")
    keys = dropout_keys(dropout_rng, cfg.num_layers + 1, cfg)
    x_BxTxD = layers.dropout(self.embed_norm(x_BxTxD), cfg.dropout, keys[-1])

    mask_Bx1xTxT = None
    if segment_ids_BxT is not None:
      mask_Bx1xTxT = segment_mask(segment_ids_BxT, segment_ids_BxT)

    def run(block, x_BxTxD, key, scanned):
      x_BxTxD = layers.run_block(block, cfg.remat, x_BxTxD, mask_Bx1xTxT, key, scanned=scanned)
      return layers.constrain(x_BxTxD, "batch", "act_seq", "act_embed")

    x_BxTxD = self.run_layers(run, x_BxTxD, keys[:-1])
    return x_BxTxD if cfg.post_norm else self.final_norm(x_BxTxD)

  def mlm_logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """BERT's MLM head: dense + GELU + LayerNorm, then the tied table (+ bias) or a head; fp32."""
    h_BxTxD = self.mlm_norm(layers.activation(self.cfg.mlp_act,
                                              self.mlm_transform(hidden_BxTxD)))
    if not self.cfg.tied:
      return self.head(h_BxTxD).astype(jnp.float32)
    logits_BxTxV = self.embed.attend(h_BxTxD).astype(jnp.float32)
    if self.cfg.bias:
      logits_BxTxV = logits_BxTxV + self.mlm_bias[...]
    return logits_BxTxV

  def __call__(self, tokens_BxT: jax.Array, segment_ids_BxT: jax.Array | None = None,
               positions_BxT: jax.Array | None = None, token_types_BxT: jax.Array | None = None,
               *, dropout_rng: jax.Array | None = None) -> jax.Array:
    """Masked-LM logits (B, T, V) in float32; arguments as `encode`."""
    hidden_BxTxD = self.encode(tokens_BxT, segment_ids_BxT, positions_BxT, token_types_BxT,
                               dropout_rng=dropout_rng)
    return self.mlm_logits(hidden_BxTxD)
