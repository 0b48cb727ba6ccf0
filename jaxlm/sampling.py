"""Batched generation with a fixed-size KV cache: greedy, temperature, top-k, top-p, EOS stop.

Prompts are left-padded into one batch (padding is segment 0, which no real token attends
to, and positions count real tokens only), prefilled in one pass, then decoded one token
per step in a `lax.while_loop` that ends when every row has produced EOS (with `prefix_lm`,
the prefill attends both ways among the prompt's tokens, as a prefix LM trained). Output
longer than the context continues with a sliding window. One compiled program per (batch, padded
prompt length, max_new_tokens, sampling settings). A prefix- or prompt-tuned model brings its
prefix along: `Decoder.init_cache` puts it in the first cache slots. Encoder-decoder models
(T5) generate with `generate_seq2seq`: encode once, then decode with a KV cache. With
`num_beams` > 1 both run beam search instead (`jaxlm.beam_search`; `ranked_beams` gives every
beam's hypothesis and score).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm import beam_search, global_rows
from jaxlm.models.stacking import unrolled

PROMPT_BUCKET = 16  # pad prompt length up to a multiple of this to limit recompilation


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick each next token. temperature 0 is greedy; top_k 0 / top_p 1 / min_p 0
  disable those filters (min_p: drop tokens less likely than min_p times the likeliest, Nguyen
  et al. 2024; applied after top-k and top-p, as transformers orders them).
  `prefix_lm`: the prompt attends to itself both ways, as the prefix of a model trained with
  the prefix-LM objective did (decoders; the new tokens stay causal). `num_beams` > 1: beam
  search (deterministic; `length_penalty` and `early_stopping` as in transformers, see
  `jaxlm.beam_search`), which leaves temperature, top_k and top_p at their defaults."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  max_new_tokens: int = 100
  prefix_lm: bool = False
  num_beams: int = 1
  length_penalty: float = 1.0
  early_stopping: bool | str = False

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if not 0.0 <= self.min_p <= 1.0:
      raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.num_beams < 1:
      raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
    if self.early_stopping not in beam_search.EARLY_STOPPING:
      raise ValueError(f"early_stopping must be one of {beam_search.EARLY_STOPPING}, got "
                       f"{self.early_stopping!r}")
    if self.num_beams > 1 and (self.temperature not in (0.0, 1.0) or self.top_k
                               or self.top_p < 1.0 or self.min_p):
      raise ValueError("beam search ranks by log-probability; temperature, top_k, top_p and "
                       "min_p apply to sampling only (num_beams=1)")


def filter_logits(logits_BxV: jax.Array, top_k: int, top_p: float,
                  min_p: float = 0.0) -> jax.Array:
  """Sets logits outside the top-k, outside the top-p nucleus, and (of what is left) below
  min_p times the likeliest token's probability to -inf."""
  neg = jnp.finfo(logits_BxV.dtype).min
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, min(top_k, logits_BxV.shape[-1]))[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Keep a token while the mass strictly before it is below top_p (the top token always stays).
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept_BxV = jnp.where(mass_before_BxV < top_p, sorted_BxV, jnp.inf)
    threshold_Bx1 = jnp.min(kept_BxV, axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, neg, logits_BxV)
  if min_p > 0.0:
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
    floor_Bx1 = min_p * jnp.max(probs_BxV, axis=-1, keepdims=True)
    logits_BxV = jnp.where(probs_BxV < floor_Bx1, neg, logits_BxV)
  return logits_BxV


def next_token(logits_BxV: jax.Array, rng: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Greedy at temperature 0, else a sample from the filtered, tempered distribution."""
  if cfg.temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = filter_logits(logits_BxV / cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
  return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def decode_model(graphdef: nnx.GraphDef, params: Any) -> nnx.Module:
  """The model with its floating parameters cast to the compute dtype once, ahead of the
  decode loop. Every layer casts its weights to that dtype before use, so the outputs are the
  same bit for bit; cast inside the loop instead, each step would read the fp32 weights and
  write and read a bf16 copy (4x the weight traffic of reading bf16 once per step). Stacked
  blocks (`model.scan_layers`) are sliced into per-layer ones here too, once per call."""
  dtype = nnx.merge(graphdef, params).cfg.compute_dtype
  return unrolled(nnx.merge(graphdef, jax.tree.map(
      lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)))


def _decode_loop(step: Callable[[jax.Array, Any], tuple[jax.Array, Any]], logits_BxV: jax.Array,
                 state: Any, rng: jax.Array, *, cfg: SamplingConfig, eos_id: int,
                 pad_id: int) -> jax.Array | tuple[jax.Array, jax.Array]:
  """New tokens (B, max_new_tokens): the first picked from `logits`, each next one from
  `step(token_B, state) -> (logits_BxV, state)`, in a `lax.while_loop` that stops once every
  row has produced EOS (rows that are done get `pad_id`). With beams: every beam's tokens
  (B, K, max_new_tokens) and scores (B, K), best first (`beam_search.search`)."""
  if cfg.num_beams > 1:
    return beam_search.search(step, logits_BxV, state, num_beams=cfg.num_beams,
                              max_new_tokens=cfg.max_new_tokens,
                              length_penalty=cfg.length_penalty,
                              early_stopping=cfg.early_stopping, eos_id=eos_id, pad_id=pad_id)
  b = logits_BxV.shape[0]
  rng, key = jax.random.split(rng)
  token_B = next_token(logits_BxV, key, cfg)
  out_BxN = jnp.full((b, cfg.max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token_B)

  def cond(carry):
    i, _, done_B, _, _, _ = carry
    return (i < cfg.max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, token_B, done_B, state, out_BxN, rng = carry
    logits_BxV, state = step(token_B, state)
    rng, key = jax.random.split(rng)
    new_B = jnp.where(done_B, pad_id, next_token(logits_BxV, key, cfg))
    return (i + 1, new_B, done_B | (new_B == eos_id), state, out_BxN.at[:, i].set(new_B), rng)

  carry = (jnp.ones((), jnp.int32), token_B, token_B == eos_id, state, out_BxN, rng)
  return jax.lax.while_loop(cond, body, carry)[4]


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "eos_id", "pad_id"))
def _generate(graphdef: nnx.GraphDef, params: Any, tokens_BxP: jax.Array, segment_ids_BxP: jax.Array,
              rng: jax.Array, *, cfg: SamplingConfig, eos_id: int, pad_id: int) -> jax.Array:
  model = decode_model(graphdef, params)
  b, p = tokens_BxP.shape
  cache = model.init_cache(b, p + cfg.max_new_tokens)  # PEFT prefixes fill the first slots
  positions_BxP = jnp.maximum(jnp.cumsum(segment_ids_BxP, axis=1) - 1, 0)
  logits_BxPxV, cache = model(tokens_BxP, positions_BxP, segment_ids_BxP, cache=cache,
                              prefix_BxT=segment_ids_BxP > 0 if cfg.prefix_lm else None)

  def step(token_B, state):
    cache, position_B = state
    logits_Bx1xV, cache = model(token_B[:, None], position_B[:, None], cache=cache)
    return logits_Bx1xV[:, 0], (cache, position_B + 1)

  return _decode_loop(step, logits_BxPxV[:, -1], (cache, positions_BxP[:, -1] + 1), rng,
                      cfg=cfg, eos_id=eos_id, pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "eos_id", "pad_id", "start_id"))
def _generate_seq2seq(graphdef: nnx.GraphDef, params: Any, inputs_BxS: jax.Array,
                      segment_ids_BxS: jax.Array, rng: jax.Array, *, cfg: SamplingConfig,
                      eos_id: int, pad_id: int, start_id: int) -> jax.Array:
  model = decode_model(graphdef, params)
  encoded_BxSxD = model.encode(inputs_BxS, segment_ids_BxS)
  cache = model.init_cache(encoded_BxSxD, segment_ids_BxS, cfg.max_new_tokens)
  start_Bx1 = jnp.full((inputs_BxS.shape[0], 1), start_id, jnp.int32)
  logits_Bx1xV, cache = model.decode_step(start_Bx1, cache)

  def step(token_B, cache):
    logits_Bx1xV, cache = model.decode_step(token_B[:, None], cache)
    return logits_Bx1xV[:, 0], cache

  return _decode_loop(step, logits_Bx1xV[:, 0], cache, rng, cfg=cfg, eos_id=eos_id,
                      pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "eos_id", "pad_id"))
def _slide(graphdef: nnx.GraphDef, params: Any, window_BxC: jax.Array, segments_BxC: jax.Array,
           prompt_BxC: jax.Array, done_B: jax.Array, rng: jax.Array, *, cfg: SamplingConfig,
           eos_id: int, pad_id: int) -> jax.Array:
  """Past the context: each new token recomputes the full forward over the last C tokens
  (absolute positions shift, so no cache can be reused), as nanoGPT's generate does. With
  `prefix_lm`, the prompt's tokens still in the window (`prompt_BxC`) are its prefix."""
  model = decode_model(graphdef, params)
  b = window_BxC.shape[0]
  out_BxN = jnp.full((b, cfg.max_new_tokens), pad_id, jnp.int32)

  def cond(carry):
    i, _, _, _, done_B, _, _ = carry
    return (i < cfg.max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    i, window_BxC, segments_BxC, prompt_BxC, done_B, out_BxN, rng = carry
    positions_BxC = jnp.maximum(jnp.cumsum(segments_BxC, axis=1) - 1, 0)
    logits_BxCxV = model(window_BxC, positions_BxC, segments_BxC,
                         prefix_BxT=prompt_BxC if cfg.prefix_lm else None)
    rng, key = jax.random.split(rng)
    new_B = jnp.where(done_B, pad_id, next_token(logits_BxCxV[:, -1], key, cfg))

    def shift(x_BxC, new_B):
      return jnp.concatenate([x_BxC[:, 1:], new_B[:, None].astype(x_BxC.dtype)], axis=1)

    return (i + 1, shift(window_BxC, new_B), shift(segments_BxC, jnp.ones(b, jnp.int32)),
            shift(prompt_BxC, jnp.zeros(b, bool)), done_B | (new_B == eos_id),
            out_BxN.at[:, i].set(new_B), rng)

  carry = (jnp.zeros((), jnp.int32), window_BxC, segments_BxC, prompt_BxC, done_B, out_BxN, rng)
  return jax.lax.while_loop(cond, body, carry)[5]


def longrope_recache_after(model_cfg: Any, longest: int) -> int:
  """How many new tokens a LongRoPE model decodes from the cache of a `longest`-token prompt
  before its positions pass `rope_original_max_len` and the cache is rebuilt (0: never)."""
  if model_cfg.rope_scaling != "longrope" or longest > model_cfg.rope_original_max_len:
    return 0
  return model_cfg.rope_original_max_len - longest + 1


def left_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-aligned tokens (B, width) and segment ids (1 = real token, 0 = padding)."""
  tokens = np.full((len(rows), width), pad_id, np.int32)
  segments = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    if len(row):
      tokens[i, width - len(row):] = row
      segments[i, width - len(row):] = 1
  return tokens, segments


def generate(graphdef: nnx.GraphDef, params: Any, prompts: Sequence[Sequence[int]],
             cfg: SamplingConfig, rng: jax.Array, *, eos_id: int, pad_id: int = 0,
             batch_sharding: jax.sharding.Sharding | None = None) -> list[list[int]]:
  """New tokens for each prompt, cut after the first EOS (which is kept).

  Uses the KV cache while prompt + output fits the model's context (`max_seq_len`); beyond
  it, continues with a sliding window of the last `max_seq_len` tokens. With
  `batch_sharding` (every process passing the same prompts), each device decodes only its
  share of the rows. Raises ValueError for an empty prompt or one longer than the context.
  """
  if cfg.num_beams > 1:
    return [beams[0][0] for beams in ranked_beams(graphdef, params, prompts, cfg, eos_id=eos_id,
                                                  pad_id=pad_id, batch_sharding=batch_sharding)]
  model_cfg = nnx.merge(graphdef, params).cfg
  context = model_cfg.max_seq_len
  longest = check_prompts(prompts, context)
  n = len(prompts)
  # Filler rows make the batch split evenly over the shards; under JAX's partitionable PRNG
  # (the default) they leave the real rows' draws unchanged.
  prompts = global_rows.fill_rows(prompts, batch_sharding)
  place = functools.partial(global_rows.place, batch_sharding=batch_sharding)
  cached_new = min(cfg.max_new_tokens, context - longest)
  out = np.full((len(prompts), 0), pad_id, np.int32)
  rng, key = jax.random.split(rng)
  # LongRoPE: once a position passes the original context, transformers' Phi-3 recomputes
  # the cache with the long factors (its keys so far were rotated by the short ones), so the
  # prompt and the tokens up to there are prefilled again.
  switch = longrope_recache_after(model_cfg, longest)
  for part_new in ([switch, cached_new - switch] if 0 < switch < cached_new else [cached_new]):
    if part_new <= 0:
      break
    rows = [list(p) + o.tolist() for p, o in zip(prompts, out)]
    width = bucketed(longest + out.shape[1], context)
    tokens, segments = place(left_pad(rows, width, pad_id))
    part_key = jax.random.fold_in(key, out.shape[1]) if out.shape[1] else key
    out = np.concatenate([out, global_rows.fetch(_generate(
        graphdef, params, tokens, segments, part_key, eos_id=eos_id, pad_id=pad_id,
        cfg=dataclasses.replace(cfg, max_new_tokens=part_new)))], axis=1)
  rest = cfg.max_new_tokens - out.shape[1]
  done = (out == eos_id).any(axis=1)
  if rest > 0 and not done.all():
    rows = [list(p) + o.tolist() for p, o in zip(prompts, out)]
    window, segments = left_pad([r[-context:] for r in rows], context, pad_id)
    in_prompt = [[1] * len(p) + [0] * out.shape[1] for p in prompts]
    prompt_part = left_pad([r[-context:] for r in in_prompt], context, 0)[0].astype(bool)
    more = global_rows.fetch(_slide(
        graphdef, params, *place((window, segments, prompt_part, done)), rng, eos_id=eos_id,
        pad_id=pad_id, cfg=dataclasses.replace(cfg, max_new_tokens=rest)))
    out = np.concatenate([out, more], axis=1)
  return cut_after_eos(out[:n], eos_id)


def generate_seq2seq(graphdef: nnx.GraphDef, params: Any, inputs: Sequence[Sequence[int]],
                     cfg: SamplingConfig, rng: jax.Array, *, eos_id: int, pad_id: int = 0,
                     start_id: int | None = None,
                     batch_sharding: jax.sharding.Sharding | None = None) -> list[list[int]]:
  """Decoder tokens an encoder-decoder model (T5) generates for each encoder input, cut after
  the first EOS (which is kept). The decoder starts from `start_id` (default `pad_id`, as T5).

  Inputs are right-padded (segment 0) into one batch and encoded once; the decoder then runs
  one token per step with a KV cache and cross-attention keys / values computed once. With
  `batch_sharding`, each device decodes only its share of the rows. Raises ValueError for an
  empty input or one longer than the model's `max_seq_len`.
  """
  if cfg.num_beams > 1:
    return [beams[0][0] for beams in ranked_beams(
        graphdef, params, inputs, cfg, eos_id=eos_id, pad_id=pad_id, start_id=start_id,
        batch_sharding=batch_sharding)]
  out = _generate_seq2seq(graphdef, params, *_encoder_batch(graphdef, params, inputs, pad_id,
                                                            batch_sharding),
                          rng, cfg=cfg, eos_id=eos_id, pad_id=pad_id,
                          start_id=pad_id if start_id is None else start_id)
  return cut_after_eos(global_rows.fetch(out)[:len(inputs)], eos_id)


def _encoder_batch(graphdef: nnx.GraphDef, params: Any, inputs: Sequence[Sequence[int]],
                   pad_id: int, batch_sharding: jax.sharding.Sharding | None
                   ) -> tuple[jax.Array, jax.Array]:
  """Encoder inputs right-padded (segment 0) into tokens and segment ids, placed on devices
  (filler rows make them split evenly over `batch_sharding`)."""
  context = nnx.merge(graphdef, params).cfg.max_seq_len
  longest = check_prompts(inputs, context)
  inputs = global_rows.fill_rows(inputs, batch_sharding)
  width = bucketed(longest, context)
  tokens = np.full((len(inputs), width), pad_id, np.int32)
  segments = np.zeros((len(inputs), width), np.int32)
  for i, row in enumerate(inputs):
    tokens[i, :len(row)] = row
    segments[i, :len(row)] = 1
  return global_rows.place((tokens, segments), batch_sharding)


def ranked_beams(graphdef: nnx.GraphDef, params: Any, prompts: Sequence[Sequence[int]],
                 cfg: SamplingConfig, *, eos_id: int, pad_id: int = 0, start_id: int | None = None,
                 batch_sharding: jax.sharding.Sharding | None = None
                 ) -> list[list[tuple[list[int], float]]]:
  """Beam search (`cfg.num_beams` beams): for each prompt, the `num_beams` finished hypotheses
  as (new tokens cut after EOS, score), best first. A decoder continues its prompts; an
  encoder-decoder (T5) encodes them and decodes from `start_id` (default `pad_id`).

  Every beam keeps its KV cache, so a decoder's prompt plus `max_new_tokens` must fit the
  context (no sliding window); ValueError otherwise, as for an empty or too long prompt.
  """
  if cfg.num_beams < 2:
    raise ValueError(f"beam search needs num_beams >= 2, got {cfg.num_beams}")
  model_cfg = nnx.merge(graphdef, params).cfg
  if model_cfg.family == "encdec":
    tokens, scores = _generate_seq2seq(
        graphdef, params, *_encoder_batch(graphdef, params, prompts, pad_id, batch_sharding),
        jax.random.key(0), cfg=cfg, eos_id=eos_id, pad_id=pad_id,
        start_id=pad_id if start_id is None else start_id)
  else:
    rows = cached_prompt_rows([model_cfg], global_rows.fill_rows(prompts, batch_sharding),
                              cfg.max_new_tokens, pad_id, "beam search")
    tokens, scores = _generate(graphdef, params, *global_rows.place(rows, batch_sharding),
                               jax.random.key(0), cfg=cfg, eos_id=eos_id, pad_id=pad_id)
  tokens, scores = global_rows.fetch(tokens)[:len(prompts)], global_rows.fetch(scores)
  return [list(zip(cut_after_eos(row, eos_id), map(float, row_scores)))
          for row, row_scores in zip(tokens, scores)]


def bucketed(length: int, cap: int) -> int:
  """`length` rounded up to a multiple of PROMPT_BUCKET (fewer compiled shapes), at most `cap`."""
  return min(-(-length // PROMPT_BUCKET) * PROMPT_BUCKET, cap)


def cached_prompt_rows(model_cfgs: Sequence[Any], prompts: Sequence[Sequence[int]],
                       max_new_tokens: int, pad_id: int,
                       what: str) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded prompts (`left_pad`) for decoders that keep every new token in their KV
  caches (no sliding window past the context, no LongRoPE re-prefill): ValueError, naming
  `what`, when a prompt plus `max_new_tokens` does not fit every model's context."""
  context = min(c.max_seq_len for c in model_cfgs)
  longest = check_prompts(prompts, context)
  if longest + max_new_tokens > context:
    where = (f"the model context of {context}" if len(model_cfgs) == 1
             else f"the context of both models ({context})")
    raise ValueError(f"{what} keeps every token in the KV cache: the longest prompt ({longest} "
                     f"tokens) plus max_new_tokens ({max_new_tokens}) must fit {where}")
  for c in model_cfgs:
    if 0 < longrope_recache_after(c, longest) < max_new_tokens:
      raise ValueError(f"{what} past a LongRoPE model's original context "
                       f"({c.rope_original_max_len} tokens) is not supported")
  return left_pad(prompts, bucketed(longest, context - max_new_tokens), pad_id)


def check_prompts(prompts: Sequence[Sequence[int]], context: int) -> int:
  """The longest prompt's length; ValueError for no prompts, an empty one or a too long one."""
  if not prompts:
    raise ValueError("no prompts given")
  for i, prompt in enumerate(prompts):
    if not len(prompt):
      raise ValueError(f"prompt {i} is empty")
    if len(prompt) > context:
      raise ValueError(f"prompt {i} has {len(prompt)} tokens, longer than the model context of "
                       f"{context}")
  return max(len(p) for p in prompts)


def cut_after_eos(out_BxN: np.ndarray, eos_id: int) -> list[list[int]]:
  """Each row up to and including its first EOS (the whole row when it has none)."""
  return [row[:row.index(eos_id) + 1] if eos_id in row else row for row in out_BxN.tolist()]


def sample_text(graphdef: nnx.GraphDef, params: Any, tokenizer: Any, prompts: Sequence[str],
                cfg: SamplingConfig, rng: jax.Array,
                batch_sharding: jax.sharding.Sharding | None = None) -> list[str]:
  """Continuations (text) of text prompts; `tokenizer` has encode, decode and a contract.

  A prompt opens with BOS when the tokenizer's texts do (Llama, Gemma); an empty one starts
  from the token that precedes every document in training (that BOS, else EOS).
  """
  contract = tokenizer.contract
  out = generate(graphdef, params, prompt_ids(tokenizer, prompts), cfg, rng,
                 eos_id=contract.eos_id, pad_id=contract.pad_id, batch_sharding=batch_sharding)
  return [tokenizer.decode(o) for o in out]


def prompt_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
  """Token ids of text prompts as `sample_text` continues them (see there)."""
  contract = tokenizer.contract
  return [contract.opening + tokenizer.encode(p) or [contract.start_id] for p in prompts]


def infill_text(graphdef: nnx.GraphDef, params: Any, tokenizer: Any, inputs: Sequence[str],
                cfg: SamplingConfig, rng: jax.Array,
                batch_sharding: jax.sharding.Sharding | None = None) -> list[str]:
  """What an encoder-decoder model writes for each text input (each ends with EOS, as span
  corruption's inputs do); pass `jaxlm.data.sentinels.Markup(tokenizer)` so that
  `<extra_id_k>` in the inputs and outputs stands for T5's sentinels."""
  contract = tokenizer.contract
  ids = [tokenizer.encode(text) + [contract.eos_id] for text in inputs]
  out = generate_seq2seq(graphdef, params, ids, cfg, rng, eos_id=contract.eos_id,
                         pad_id=contract.pad_id, batch_sharding=batch_sharding)
  return [tokenizer.decode(o) for o in out]
