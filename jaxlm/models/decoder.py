"""Decoder-only transformer, GPT-2, Llama or GPT-NeoX / Phi style by config (one implementation).

`Decoder(tokens, positions, segment_ids, cache=..., dropout_rng=...)` returns fp32 logits
and, when a KV cache is passed, the updated cache. The cache is an explicit pytree
(see `Decoder.init_cache`), never module state, so the model stays a pure function.
With `cfg.scan_layers` the blocks live stacked in `Decoder.stack` and run under `lax.scan`
(`jaxlm.models.stacking`); KV-cache decoding takes them one layer at a time.

PEFT hooks (added by `jaxlm.peft` surgery, absent otherwise): `Block.attn_adapter` /
`Block.mlp_adapter` (bottleneck adapters on the sublayer outputs, `layers.adapted`; the
encoder and encoder-decoder blocks have the same two), `Decoder.prefix` (per-layer
key/value prefixes) and `Decoder.soft_prompt` (virtual input tokens). Prefixes and virtual
tokens live in the first cache slots under segment id `GLOBAL_SEGMENT`, which every real
query attends to; without a cache such a model runs as a prefill into a fresh one. Sublayers
with a positive `keyed_dropout` (LoRA dropout) take an explicit `rng=` key.
"""

from __future__ import annotations

import functools
import inspect
import math
import zlib

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import attention, latent_attention, layers, moe, stacking
from jaxlm.models.config import ModelConfig

GLOBAL_SEGMENT = attention.GLOBAL_SEGMENT


class _KeyedCalls:
  """`module` seen with a dropout key bound to each sublayer whose `keyed_dropout` is positive.

  Such a sublayer is called with `rng=` a key folded from its attribute name; the module's
  own methods run with this view as `self`, so nested calls (`project`, `merge_heads`) reach
  the keyed sublayers too. Other attributes pass through unchanged.
  """

  def __init__(self, module: nnx.Module, rng: jax.Array):
    self._module, self._rng = module, rng

  def __getattr__(self, name: str):
    value = getattr(self._module, name)
    if getattr(value, "keyed_dropout", 0.0) > 0:
      return functools.partial(value, rng=jax.random.fold_in(self._rng, zlib.crc32(name.encode())))
    if inspect.ismethod(value) and value.__self__ is self._module:
      return functools.partial(value.__func__, self)
    return value

  def __call__(self, *args, **kwargs):
    return type(self._module).__call__(self, *args, **kwargs)


class Attention(attention.Attention):
  """Causal self-attention with optional RoPE, prefix-LM mask and KV cache; `window` > 0
  (this layer's sliding window) sees only keys fewer than that many positions back."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, window: int = 0):
    scale = cfg.query_pre_attn_scalar ** -0.5 if cfg.query_pre_attn_scalar else None
    super().__init__(cfg, out_std=0.02 / math.sqrt(2 * cfg.num_layers), rngs=rngs, scale=scale)
    self.window = window

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
               layer_cache: tuple[jax.Array, jax.Array, jax.Array, jax.Array] | None,
               prefix_BxT: jax.Array | None = None, dropout_rng: jax.Array | None = None):
    cfg = self.cfg
    t = x_BxTxD.shape[1]
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH = self.project(x_BxTxD, x_BxTxD)
    if cfg.rope:
      rotate = layers.rotary(cfg, positions_BxT, self.window > 0)
      q_BxTxNxH, k_BxTxKxH = rotate(q_BxTxNxH), rotate(k_BxTxKxH)

    if layer_cache is None:
      # Context parallelism (a `sequence` mesh axis): each device keeps its share of the
      # queries and gathers every key and value (nothing moves on a mesh without the axis).
      q_BxTxNxH = layers.constrain(q_BxTxNxH, "batch", "act_seq", "act_heads", None)
      k_BxTxKxH, v_BxTxKxH = (layers.constrain(x, "batch", None, "act_heads", None)
                              for x in (k_BxTxKxH, v_BxTxKxH))
      mask, causal = attention.self_attention_mask(segment_ids_BxT, prefix_BxT, t)
      return self.attend(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask, causal=causal,
                         dropout_rng=dropout_rng, window=self.window), None
    k_cache, v_cache, cache_segments_BxS, index = layer_cache
    k_cache = layers.write_cache(k_cache, k_BxTxKxH, index)
    v_cache = layers.write_cache(v_cache, v_BxTxKxH, index)
    mask = attention.cached_attention_mask(segment_ids_BxT, cache_segments_BxS, index,
                                           self.window, prefix_BxT)
    out_BxTxD = self.attend(q_BxTxNxH, k_cache, v_cache, mask, impl="xla",
                            dropout_rng=dropout_rng)
    return out_BxTxD, (k_cache, v_cache)


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); with
  `sandwich_norm` the sublayer outputs are normalised too: x + norm(attn(norm(x))), ...;
  with `parallel_residual` both sublayers read the block's input: x + attn(n1(x)) + mlp(n2(x)),
  and with `shared_norm` also one norm: x + attn(n(x)) + mlp(n(x)) (no `mlp_norm`)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, window: int = 0, routed: bool = False):
    dt = cfg.compute_dtype
    self.cfg = cfg
    self.routed = routed  # a mixture of experts in place of the MLP
    self.attn_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)
    attention_kind = latent_attention.LatentAttention if cfg.latent_attention else Attention
    self.attn = attention_kind(cfg, rngs, window)
    if not cfg.shared_norm:
      self.mlp_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)
    out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
    self.mlp = moe.MoE(cfg, out_std, rngs) if routed else layers.mlp(cfg, out_std, rngs)
    if cfg.sandwich_norm:
      self.attn_post_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)
      self.mlp_post_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)

  def output(self, where: str, out_BxTxD: jax.Array) -> jax.Array:
    """A sublayer's output as it joins the residual: normalised (sandwich norm), then
    through its PEFT adapter when there is one."""
    if self.cfg.sandwich_norm:
      out_BxTxD = getattr(self, f"{where}_post_norm")(out_BxTxD)
    return layers.adapted(self, where, out_BxTxD)

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, layer_cache, dropout_rng,
               prefix_BxT=None):
    rate = self.cfg.dropout
    rng_attn, rng_mlp = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    attn, mlp = self.attn, self.mlp
    if dropout_rng is not None:  # LoRA sublayers with dropout draw their own keys
      attn = _KeyedCalls(attn, jax.random.fold_in(dropout_rng, 1))
      mlp = _KeyedCalls(mlp, jax.random.fold_in(dropout_rng, 2))
    attn_in_BxTxD = self.attn_norm(x_BxTxD)
    attn_BxTxD, new_kv = attn(attn_in_BxTxD, positions_BxT, segment_ids_BxT,
                              layer_cache, prefix_BxT,
                              dropout_rng=attention.probs_key(dropout_rng, self.cfg))
    block_in_BxTxD = x_BxTxD
    x_BxTxD = x_BxTxD + layers.dropout(self.output("attn", attn_BxTxD), rate, rng_attn)
    if self.cfg.shared_norm:
      mlp_in_BxTxD = attn_in_BxTxD
    else:
      mlp_in_BxTxD = self.mlp_norm(block_in_BxTxD if self.cfg.parallel_residual else x_BxTxD)
    router_stats = {}
    if self.routed:
      mlp_BxTxD, router_stats = mlp(mlp_in_BxTxD, segment_ids_BxT,
                                    dropless=layer_cache is not None)
    else:
      mlp_BxTxD = mlp(mlp_in_BxTxD)
    x_BxTxD = x_BxTxD + layers.dropout(self.output("mlp", mlp_BxTxD), rate, rng_mlp)
    return x_BxTxD, new_kv, router_stats


class Decoder(stacking.Layered, nnx.Module):
  """Token embedding, a stack of blocks, final norm and the (tied or separate) output head."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.cfg = cfg
    self.embed = layers.embedding(cfg.vocab_size, cfg.embed_dim, ("vocab", "embed"), dt, rngs)
    if cfg.style == "gpt2":
      self.pos_embed = layers.embedding(cfg.max_seq_len, cfg.embed_dim, (None, "embed"), dt, rngs)
    self.set_layers([Block(cfg, rngs, cfg.layer_window(i), cfg.layer_routed(i))
                     for i in range(cfg.num_layers)], cfg.layer_period)
    self.final_norm = layers.norm(cfg.style, cfg.embed_dim, cfg.norm_eps, dt, rngs)
    if not cfg.tied:
      self.head = layers.dense(cfg.embed_dim, cfg.vocab_size, ("embed", "vocab"),
                               bias=cfg.head_bias, dtype=dt, rngs=rngs)

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None, *, cache: dict | None = None,
               dropout_rng: jax.Array | None = None, prefix_BxT: jax.Array | None = None,
               router_stats: bool = False):
    """Returns fp32 logits (B, T, V), and the updated cache when `cache` is given, or with
    `router_stats` (no cache) the router statistics of a mixture of experts ({} for a dense
    model; see `hidden_and_router_stats`).

    Training: `segment_ids` (0 = padding) keep packed documents apart; attention is causal,
    except among positions where the boolean `prefix_BxT` is set (prefix LM: bidirectional).
    Decoding: `cache` from `init_cache`; the new tokens are written at `cache["index"]` and
    attend to every earlier slot of their own segment (and to PEFT prefix slots); with
    `prefix_BxT` (a prefix LM's prompt), the marked new tokens also attend to each other.
    """
    x_BxTxD, new_cache, stats = self.hidden_and_router_stats(
        tokens_BxT, positions_BxT, segment_ids_BxT, cache=cache, dropout_rng=dropout_rng,
        prefix_BxT=prefix_BxT)
    logits_BxTxV = self.logits(x_BxTxD)
    if router_stats:
      return logits_BxTxV, stats
    return logits_BxTxV if cache is None else (logits_BxTxV, new_cache)

  def logits(self, x_BxTxD: jax.Array) -> jax.Array:
    """fp32 vocabulary logits of final hidden states (tied table or separate head), capped
    at +-`logit_softcap` when set."""
    logits_BxTxV = self.embed.attend(x_BxTxD) if self.cfg.tied else self.head(x_BxTxD)
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    if self.cfg.logit_softcap:
      logits_BxTxV = layers.softcapped(logits_BxTxV, self.cfg.logit_softcap)
    return layers.constrain(logits_BxTxV, "batch", "act_seq", "act_vocab")

  def global_slots(self) -> int:
    """Cache slots taken by PEFT prefixes and virtual tokens (0 for a plain model)."""
    prefix, prompt = getattr(self, "prefix", None), getattr(self, "soft_prompt", None)
    return (prefix.length if prefix is not None else 0) + (
        prompt.length if prompt is not None else 0)

  def init_cache(self, batch: int, length: int) -> dict:
    """A KV cache with room for `length` tokens; a PEFT model's prefix key/values (and its
    virtual tokens' key/values, computed once) fill the first `global_slots()` slots."""
    cfg = self.cfg
    g = self.global_slots()
    if cfg.latent_attention:  # "k": each position's latent, "v": its rotary key
      heads, sizes = 1, (cfg.kv_lora_rank, cfg.qk_rope_head_dim)
    else:
      heads, sizes = cfg.kv_heads, (cfg.head_size, cfg.head_size)
    cache = layers.init_kv_cache(1 if g else batch, g + length, cfg.num_layers, heads, *sizes,
                                 cfg.compute_dtype)
    if not g:
      return cache
    prefix, prompt = getattr(self, "prefix", None), getattr(self, "soft_prompt", None)
    if prefix is not None:
      k_LxPxKxH, v_LxPxKxH = prefix()
      p = prefix.length
      cache = {"k": [layers.write_cache(c, k[None], 0) for c, k in zip(cache["k"], k_LxPxKxH)],
               "v": [layers.write_cache(c, v[None], 0) for c, v in zip(cache["v"], v_LxPxKxH)],
               "segment_ids": cache["segment_ids"].at[:, :p].set(GLOBAL_SEGMENT),
               "index": cache["index"] + p}
    if prompt is not None:  # virtual tokens precede the text: positions -V..-1, one row
      v = prompt.length
      _, cache = self.hidden(None, jnp.arange(-v, 0)[None], jnp.full((1, v), GLOBAL_SEGMENT),
                             cache=cache, embeds_BxTxD=prompt()[None].astype(cfg.compute_dtype))
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *x.shape[1:])) if x.ndim else x,
                        cache)

  def hidden(self, tokens_BxT: jax.Array | None, positions_BxT: jax.Array | None = None,
             segment_ids_BxT: jax.Array | None = None, *, cache: dict | None = None,
             dropout_rng: jax.Array | None = None, prefix_BxT: jax.Array | None = None,
             embeds_BxTxD: jax.Array | None = None) -> tuple[jax.Array, dict | None]:
    """Final-norm hidden states (B, T, D) and the updated cache (None without a cache).

    `embeds_BxTxD` replaces the token (and position) embeddings of `tokens_BxT` (None).
    """
    x_BxTxD, new_cache, _ = self.hidden_and_router_stats(
        tokens_BxT, positions_BxT, segment_ids_BxT, cache=cache, dropout_rng=dropout_rng,
        prefix_BxT=prefix_BxT, embeds_BxTxD=embeds_BxTxD)
    return x_BxTxD, new_cache

  def hidden_and_router_stats(
      self, tokens_BxT: jax.Array | None, positions_BxT: jax.Array | None = None,
      segment_ids_BxT: jax.Array | None = None, *, cache: dict | None = None,
      dropout_rng: jax.Array | None = None, prefix_BxT: jax.Array | None = None,
      embeds_BxTxD: jax.Array | None = None) -> tuple[jax.Array, dict | None, dict]:
    """`hidden`, and the mean over layers of a mixture of experts' router statistics
    (`moe.router_losses`; {} for a dense model or with a cache, but for the prefix or soft
    prompt of PEFT, which are held in a cache of the forward pass's own)."""
    cfg = self.cfg
    b, t = tokens_BxT.shape if embeds_BxTxD is None else embeds_BxTxD.shape[:2]
    if positions_BxT is None:
      start = 0 if cache is None else cache["index"] - self.global_slots()
      positions_BxT = jnp.broadcast_to(start + jnp.arange(t), (b, t))
    own_cache = cache is None and self.global_slots() > 0
    if own_cache:  # prefix / prompt tuning: a prefill into a fresh cache holding the prefix
      if prefix_BxT is not None:
        raise ValueError("prefix-LM masks (prefix_BxT) do not combine with PEFT prefixes or "
                         "soft prompts")
      cache = self.init_cache(b, t)
    if cache is not None and segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones((b, t), jnp.int32)

    if embeds_BxTxD is None:
      x_BxTxD = self.embed(tokens_BxT)
      if cfg.embed_scale:  # Gemma: sqrt(d) rounded to the compute dtype, as HF does
        x_BxTxD = x_BxTxD * jnp.asarray(math.sqrt(cfg.embed_dim), x_BxTxD.dtype)
      if cfg.style == "gpt2":
        x_BxTxD = x_BxTxD + self.pos_embed(positions_BxT)
    else:
      x_BxTxD = embeds_BxTxD
    keys = None
    if dropout_rng is not None and (cfg.dropout > 0 or cfg.attention_dropout > 0
                                    or getattr(self, "keyed_dropout", 0.0) > 0):
      keys = jax.random.split(dropout_rng, cfg.num_layers + 1)
    x_BxTxD = layers.dropout(x_BxTxD, cfg.dropout, None if keys is None else keys[-1])

    def run(block, x_BxTxD, key, layer_cache=None, scanned=False):
      x_BxTxD, new_kv, stats = layers.run_block(block, cfg.remat, x_BxTxD, positions_BxT,
                                                segment_ids_BxT, layer_cache, key, prefix_BxT,
                                                scanned=scanned)
      return layers.constrain(x_BxTxD, "batch", "act_seq", "act_embed"), new_kv, stats

    layer_keys = [None] * cfg.num_layers if keys is None else list(keys[:-1])
    def run_uncached(block, x_BxTxD, key, scanned):
      x_BxTxD, _, stats = run(block, x_BxTxD, key, scanned=scanned)
      return x_BxTxD, stats

    def layer_mean(stats: list[dict]) -> dict:  # over the layers with experts
      routed = [s for s in stats if s]
      return jax.tree.map(lambda *s: jnp.mean(jnp.stack(s)), *routed) if routed else {}

    if cache is None:
      x_BxTxD, stats = self.run_layers_with_outputs(run_uncached, x_BxTxD, layer_keys)
      return self.final_norm(x_BxTxD), None, layer_mean(stats)

    layers.check_cache_room(cache["index"], t, cache["segment_ids"].shape[1])
    cache_segments_BxS = jax.lax.dynamic_update_slice(
        cache["segment_ids"], segment_ids_BxT.astype(jnp.int32), (0, cache["index"]))

    def run_cached(block, x_BxTxD, xs, scanned):
      key, k, v = xs
      x_BxTxD, new_kv, stats = run(block, x_BxTxD, key,
                                   (k, v, cache_segments_BxS, cache["index"]), scanned)
      return x_BxTxD, (new_kv, stats)

    x_BxTxD, outputs = self.run_layers_with_outputs(
        run_cached, x_BxTxD, list(zip(layer_keys, cache["k"], cache["v"])))
    kvs = [kv for kv, _ in outputs]
    new_cache = {"k": [k for k, _ in kvs], "v": [v for _, v in kvs],
                 "segment_ids": cache_segments_BxS, "index": cache["index"] + t}
    if own_cache:  # a PEFT prefix or soft prompt: a training forward, routed dropless
      return self.final_norm(x_BxTxD), None, layer_mean([stats for _, stats in outputs])
    return self.final_norm(x_BxTxD), new_cache, {}


def param_count(params) -> int:
  """Total number of parameters in a params pytree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))


def matmul_param_count(cfg: ModelConfig, params) -> int:
  """Parameters that take part in matmuls (N of the 6N flops rule).

  Excludes the learned position table and, when untied, the input embedding table (a lookup,
  not a matmul); a tied table counts once, as the output head. Same convention as nanoGPT.
  A mixture of experts counts the `experts_per_token` experts each token runs through, not
  all of them (the parameters its flops are made of).
  """
  n = param_count(params)
  if cfg.moe:
    projections = 3 if cfg.gated_mlp else 2
    routed = sum(cfg.layer_routed(i) for i in range(cfg.num_layers))
    n -= (routed * projections * (cfg.num_experts - cfg.experts_per_token)
          * cfg.embed_dim * cfg.mlp_dim)
  if cfg.style in ("gpt2", "bert"):  # learned position (and token-type) tables are lookups
    n -= (cfg.max_seq_len + cfg.type_vocab_size) * cfg.embed_dim
  if not cfg.tied:
    n -= cfg.vocab_size * cfg.embed_dim
  return n
