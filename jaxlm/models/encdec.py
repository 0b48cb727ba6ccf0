"""Encoder-decoder transformer, T5 style (Raffel et al. 2020; v1.1 by default).

`EncoderDecoder(inputs, decoder_inputs, inputs_segment_ids, decoder_segment_ids,
dropout_rng=...)` returns fp32 logits; `encode` and `decode` run the two halves, and
`init_cache` + `decode_step` decode one token at a time with a KV cache (generation).
One token table (`embed`, HF `shared`) feeds both stacks; there are no position embeddings:
each stack learns one relative position bias table, computed once and added in every
self-attention layer. Attention does not scale q.k by 1/sqrt(head_size) (the scale lives in
the query initialiser, as in Mesh TensorFlow / t5x). RMSNorm pre-norm blocks, gated-GELU MLP
(the original T5: ReLU, no gate, `mlp.{up,down}` = DenseReluDense.{wi,wo}).
HF T5 names: `encoder.blocks[i].attn.{query,key,value,out}` (layer.0.SelfAttention.{q,k,v,o}),
`attn_norm`, `decoder.blocks[i].cross_attn` / `cross_norm` (layer.1.EncDecAttention),
`mlp.{gate,up,down}` (DenseReluDense.{wi_0,wi_1,wo}), `mlp_norm`,
`{encoder,decoder}.relative_bias.table` (block.0...relative_attention_bias), `final_norm`, `head`.
A prompt-tuned model (`soft_prompt`, added by `jaxlm.peft`) puts its virtual tokens in front of
every encoder row, in the row's segment, as Lester et al. prompt-tune T5: rows must then hold
one example each (the virtual tokens join the row's last segment).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers, stacking
from jaxlm.models.attention import Attention, dropout_keys, probs_key, segment_mask
from jaxlm.models.config import ModelConfig
from jaxlm.models.relative import RelativeBias


class Block(nnx.Module):
  """Pre-norm T5 block: self-attention (+ relative bias), [cross-attention], gated-GELU MLP."""

  def __init__(self, cfg: ModelConfig, *, cross: bool, out_std: float, rngs: nnx.Rngs):
    dt = cfg.compute_dtype

    def attention() -> Attention:
      return Attention(cfg, out_std=out_std, query_std=0.02 / math.sqrt(cfg.head_size),
                       scale=1.0, rngs=rngs)

    def norm() -> nnx.Module:
      return layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)

    self.cfg = cfg
    self.attn_norm = norm()
    self.attn = attention()
    if cross:
      self.cross_norm = norm()
      self.cross_attn = attention()
    self.mlp_norm = norm()
    self.mlp = layers.mlp(cfg, out_std, rngs)

  def __call__(self, x_BxTxD: jax.Array, mask_Bx1xTxT: jax.Array | None,
               bias_1xNxTxT: jax.Array, encoded_BxSxD: jax.Array | None = None,
               cross_mask_Bx1xTxS: jax.Array | None = None, *, causal: bool,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """The block applied to `x`; cross-attends to `encoded` when the block has cross-attention."""
    rate = self.cfg.dropout
    rng_attn, rng_cross, rng_mlp = dropout_keys(dropout_rng, 3, self.cfg)
    h_BxTxD = self.attn_norm(x_BxTxD)
    attn_BxTxD = self.attn(h_BxTxD, h_BxTxD, mask_Bx1xTxT, bias_1xNxTxS=bias_1xNxTxT,
                           causal=causal, dropout_rng=probs_key(rng_attn, self.cfg))
    x_BxTxD = x_BxTxD + layers.dropout(layers.adapted(self, "attn", attn_BxTxD), rate, rng_attn)
    if encoded_BxSxD is not None:
      cross_BxTxD = self.cross_attn(self.cross_norm(x_BxTxD), encoded_BxSxD, cross_mask_Bx1xTxS,
                                    dropout_rng=probs_key(rng_cross, self.cfg))
      x_BxTxD = x_BxTxD + layers.dropout(cross_BxTxD, rate, rng_cross)
    mlp_BxTxD = layers.adapted(self, "mlp", self.mlp(self.mlp_norm(x_BxTxD)))
    return x_BxTxD + layers.dropout(mlp_BxTxD, rate, rng_mlp)

  def step(self, x_BxTxD: jax.Array, mask_1x1xTxS: jax.Array, bias_1xNxTxS: jax.Array,
           layer_cache: tuple[jax.Array, jax.Array, jax.Array],
           cross_kv: tuple[jax.Array, jax.Array],
           cross_mask_Bx1x1xS: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Cached decoding of a decoder block: the new tokens' keys / values are written at the
    cache index, self-attention runs over the cache, cross-attention over the encoder keys /
    values computed once (`EncoderDecoder.init_cache`). Returns x and the layer's new cache."""
    k_cache, v_cache, index = layer_cache
    h_BxTxD = self.attn_norm(x_BxTxD)
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = self.attn.project(h_BxTxD, h_BxTxD)
    k_cache = layers.write_cache(k_cache, k_BxTxKxH, index)
    v_cache = layers.write_cache(v_cache, v_BxTxKxH, index)
    x_BxTxD = x_BxTxD + layers.adapted(self, "attn", self.attn.attend(
        q_BxTxNxH, k_cache, v_cache, mask_1x1xTxS, bias_1xNxTxS=bias_1xNxTxS, impl="xla"))
    q_BxTxNxH = self.cross_attn.queries(self.cross_norm(x_BxTxD))
    x_BxTxD = x_BxTxD + self.cross_attn.attend(q_BxTxNxH, *cross_kv, cross_mask_Bx1x1xS,
                                               impl="xla")
    x_BxTxD = x_BxTxD + layers.adapted(self, "mlp", self.mlp(self.mlp_norm(x_BxTxD)))
    return x_BxTxD, (k_cache, v_cache)


class Stack(stacking.Layered, nnx.Module):
  """The encoder (bidirectional) or decoder (causal, cross-attending) stack of T5."""

  def __init__(self, cfg: ModelConfig, num_layers: int, *, decoder: bool, rngs: nnx.Rngs):
    out_std = 0.02 / math.sqrt(2 * num_layers)
    self.cfg = cfg
    self.is_decoder = decoder
    self.relative_bias = RelativeBias(cfg, bidirectional=not decoder, rngs=rngs)
    self.set_layers([Block(cfg, cross=decoder, out_std=out_std, rngs=rngs)
                     for _ in range(num_layers)])
    self.final_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, cfg.compute_dtype, rngs)

  def __call__(self, x_BxTxD: jax.Array, mask_Bx1xTxT: jax.Array | None,
               encoded_BxSxD: jax.Array | None = None,
               cross_mask_Bx1xTxS: jax.Array | None = None, *,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """Embedded inputs -> normalised outputs (B, T, D); dropout on both ends as in T5."""
    cfg = self.cfg
    keys = dropout_keys(dropout_rng, self.num_blocks() + 2, cfg)
    x_BxTxD = layers.dropout(x_BxTxD, cfg.dropout, keys[-2])
    t = x_BxTxD.shape[1]
    bias_1xNxTxT = self.relative_bias(t, t)

    def run(block, x_BxTxD, key, scanned):
      x_BxTxD = layers.run_block(block, cfg.remat, x_BxTxD, mask_Bx1xTxT, bias_1xNxTxT,
                                 encoded_BxSxD, cross_mask_Bx1xTxS, dropout_rng=key,
                                 static={"causal": self.is_decoder}, scanned=scanned)
      return layers.constrain(x_BxTxD, "batch", "act_seq", "act_embed")

    x_BxTxD = self.run_layers(run, x_BxTxD, keys[:-2])
    return layers.dropout(self.final_norm(x_BxTxD), cfg.dropout, keys[-1])

  def step(self, x_BxTxD: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    """Cached decoding (decoder stack only): normalised outputs of the new tokens and the
    updated cache. New tokens sit at cache positions index..index+T-1 and see every earlier
    slot; the relative bias is that of their absolute positions."""
    t, s, index = x_BxTxD.shape[1], cache["k"][0].shape[1], cache["index"]
    layers.check_cache_room(index, t, s)
    query_positions_T = index + jnp.arange(t)
    mask_1x1xTxS = (jnp.arange(s)[None, :] <= query_positions_T[:, None])[None, None]
    bias_1xNxTxS = self.relative_bias(t, s, q_offset=index)

    def run(block, x_BxTxD, xs, scanned):
      k, v, cross_k, cross_v = xs
      return block.step(x_BxTxD, mask_1x1xTxS, bias_1xNxTxS, (k, v, index), (cross_k, cross_v),
                        cache["cross_mask"])

    per_layer = list(zip(cache["k"], cache["v"], cache["cross_k"], cache["cross_v"]))
    x_BxTxD, kvs = self.run_layers_with_outputs(run, x_BxTxD, per_layer)
    return self.final_norm(x_BxTxD), {**cache, "k": [k for k, _ in kvs],
                                      "v": [v for _, v in kvs], "index": index + t}


class EncoderDecoder(nnx.Module):
  """Shared token table, encoder and decoder stacks, and the (untied or tied) output head."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    if cfg.family != "encdec":
      raise ValueError(f"EncoderDecoder needs an encoder-decoder style (t5), got {cfg.style!r}")
    self.cfg = cfg
    self.embed = layers.embedding(cfg.vocab_size, cfg.embed_dim, ("vocab", "embed"),
                                  cfg.compute_dtype, rngs)
    self.encoder = Stack(cfg, cfg.num_layers, decoder=False, rngs=rngs)
    self.decoder = Stack(cfg, cfg.decoder_layers, decoder=True, rngs=rngs)
    if not cfg.tied:
      self.head = layers.dense(cfg.embed_dim, cfg.vocab_size, ("embed", "vocab"), bias=False,
                               dtype=cfg.compute_dtype, rngs=rngs)

  def encoded_segments(self, inputs_segment_ids_BxS: jax.Array | None, batch: int,
                       encoded_len: int) -> jax.Array | None:
    """Segment ids of the encoder's output positions: the inputs' (None: all one), behind
    the virtual tokens' (each in its row's segment) when the model is prompt-tuned."""
    prompt = getattr(self, "soft_prompt", None)
    if prompt is None:
      return inputs_segment_ids_BxS
    if inputs_segment_ids_BxS is None:
      return jnp.ones((batch, encoded_len), jnp.int32)
    row_Bx1 = jnp.max(inputs_segment_ids_BxS, axis=1, keepdims=True)
    return jnp.concatenate([jnp.broadcast_to(row_Bx1, (batch, prompt.length)),
                            inputs_segment_ids_BxS], axis=1)

  def encode(self, inputs_BxS: jax.Array, inputs_segment_ids_BxS: jax.Array | None = None,
             dropout_rng: jax.Array | None = None) -> jax.Array:
    """Encoder output (B, S, D), or (B, V + S, D) after V virtual tokens when prompt-tuned;
    segment ids (0 = padding; None: all ones) keep packs apart."""
    x_BxSxD = self.embed(inputs_BxS)
    b = x_BxSxD.shape[0]
    prompt = getattr(self, "soft_prompt", None)
    if prompt is not None:
      p_1xVxD = prompt()[None].astype(x_BxSxD.dtype)
      x_BxSxD = jnp.concatenate([jnp.broadcast_to(p_1xVxD, (b, *p_1xVxD.shape[1:])), x_BxSxD], 1)
    segments_BxS = self.encoded_segments(inputs_segment_ids_BxS, b, x_BxSxD.shape[1])
    mask_Bx1xSxS = None if segments_BxS is None else segment_mask(segments_BxS, segments_BxS)
    return self.encoder(x_BxSxD, mask_Bx1xSxS, dropout_rng=dropout_rng)

  def decode(self, encoded_BxSxD: jax.Array, inputs_segment_ids_BxS: jax.Array | None,
             decoder_inputs_BxT: jax.Array, decoder_segment_ids_BxT: jax.Array | None = None,
             dropout_rng: jax.Array | None = None) -> jax.Array:
    """Logits (B, T, V) in float32 of the decoder over `encoded`.

    Self-attention is causal within a decoder segment; a decoder token of segment s
    cross-attends only to encoder tokens of segment s (decoder padding, segment 0, sees all
    encoder tokens so that its softmax is never empty; its logits are meaningless anyway).
    """
    b, t = decoder_inputs_BxT.shape
    s = encoded_BxSxD.shape[1]
    inputs_segment_ids_BxS = self.encoded_segments(inputs_segment_ids_BxS, b, s)
    self_mask_Bx1xTxT = cross_mask_Bx1xTxS = None
    if decoder_segment_ids_BxT is not None or inputs_segment_ids_BxS is not None:
      dec_BxT = (jnp.ones((b, t), jnp.int32) if decoder_segment_ids_BxT is None
                 else decoder_segment_ids_BxT)
      enc_BxS = (jnp.ones((b, s), jnp.int32) if inputs_segment_ids_BxS is None
                 else inputs_segment_ids_BxS)
      self_mask_Bx1xTxT = segment_mask(dec_BxT, dec_BxT)
      cross_mask_Bx1xTxS = segment_mask(dec_BxT, enc_BxS) | (dec_BxT == 0)[:, None, :, None]
    x_BxTxD = self.decoder(self.embed(decoder_inputs_BxT), self_mask_Bx1xTxT, encoded_BxSxD,
                           cross_mask_Bx1xTxS, dropout_rng=dropout_rng)
    return self.logits(x_BxTxD)

  def logits(self, x_BxTxD: jax.Array) -> jax.Array:
    """fp32 vocabulary logits of the decoder's final hidden states (tied: scaled as T5)."""
    if self.cfg.tied:
      logits_BxTxV = self.embed.attend(x_BxTxD * self.cfg.embed_dim ** -0.5)
    else:
      logits_BxTxV = self.head(x_BxTxD)
    return logits_BxTxV.astype(jnp.float32)

  def init_cache(self, encoded_BxSxD: jax.Array, inputs_segment_ids_BxS: jax.Array | None,
                 length: int) -> dict:
    """A decoding cache: decoder self-attention keys / values for `length` tokens, and every
    decoder layer's cross-attention keys / values of `encoded`, computed once here.
    Encoder padding (segment 0) is masked out of cross-attention."""
    cfg = self.cfg
    b, s, _ = encoded_BxSxD.shape
    cache = layers.init_kv_cache(b, length, cfg.decoder_layers, cfg.kv_heads, cfg.head_size,
                                 cfg.head_size, cfg.compute_dtype)
    del cache["segment_ids"]  # one sequence per row: the causal mask is all the decoder needs
    cross = [self.decoder.layer(i).cross_attn.keys_values(encoded_BxSxD)
             for i in range(self.decoder.num_blocks())]
    inputs_segment_ids_BxS = self.encoded_segments(inputs_segment_ids_BxS, b, s)
    real_BxS = (jnp.ones((b, s), bool) if inputs_segment_ids_BxS is None
                else inputs_segment_ids_BxS != 0)
    return {**cache, "cross_k": [k for k, _ in cross], "cross_v": [v for _, v in cross],
            "cross_mask": real_BxS[:, None, None, :]}

  def decode_step(self, decoder_inputs_BxT: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    """fp32 logits (B, T, V) of the next decoder tokens and the updated cache."""
    x_BxTxD, cache = self.decoder.step(self.embed(decoder_inputs_BxT), cache)
    return self.logits(x_BxTxD), cache

  def __call__(self, inputs_BxS: jax.Array, decoder_inputs_BxT: jax.Array,
               inputs_segment_ids_BxS: jax.Array | None = None,
               decoder_segment_ids_BxT: jax.Array | None = None, *,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """Decoder logits (B, T, V) in float32 given the encoder inputs; teacher forcing."""
    rng_enc, rng_dec = dropout_keys(dropout_rng, 2, self.cfg)
    encoded_BxSxD = self.encode(inputs_BxS, inputs_segment_ids_BxS, rng_enc)
    return self.decode(encoded_BxSxD, inputs_segment_ids_BxS, decoder_inputs_BxT,
                       decoder_segment_ids_BxT, rng_dec)
