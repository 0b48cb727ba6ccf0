"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model
proposes `gamma` tokens, the target scores all of them in one forward pass, and a rejection
step keeps the target's own distribution exactly.

Each round the draft, fed the row's last token, samples d_1..d_gamma from q (its filtered,
tempered distribution); the target reads [last, d_1..d_gamma] at once and gives p at every
place. d_i is kept with probability min(1, p_i(d_i) / q_i(d_i)) while all before it were
kept; at the first rejection the token is drawn from norm(max(0, p_i - q_i)) instead, and
when all are kept one more is drawn from p_{gamma+1}: every round adds 1 to gamma + 1 tokens,
each distributed as the target's own sampling would draw it. At temperature 0 a drafted
token is kept when it is the target's argmax, and the output is the target's greedy output.

Rows keep different numbers of tokens each round, at fixed shapes: both KV caches take
gamma + 1 slots a round at one shared write index, and the slots of rejected tokens are
masked out (segment 0, as padding is), so the caches hold prompt + max_new_tokens *
(gamma + 1) slots. Sliding-window layers count slots, not positions, so such models are
refused, as are prefix-LM prompts and beams.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm import sampling


def _probs(logits_BxxV: jax.Array, cfg: sampling.SamplingConfig) -> jax.Array:
  """The distribution `sampling.next_token` draws from (temperature > 0), over the last axis
  of logits of any shape."""
  logits_NxV = logits_BxxV.reshape(-1, logits_BxxV.shape[-1])
  filtered_NxV = sampling.filter_logits(logits_NxV / cfg.temperature, cfg.top_k, cfg.top_p,
                                        cfg.min_p)
  return jax.nn.softmax(filtered_NxV, axis=-1).reshape(logits_BxxV.shape)


def _mask_rejected(cache: dict, start: jax.Array, kept_BxG1: jax.Array) -> dict:
  """`cache` with the round's slots start..start+gamma of rejected tokens set to segment 0."""
  b, g1 = kept_BxG1.shape
  segments_BxG1 = jax.lax.dynamic_slice(cache["segment_ids"], (0, start), (b, g1))
  segments_BxG1 = jnp.where(kept_BxG1, segments_BxG1, 0)
  return {**cache, "segment_ids": jax.lax.dynamic_update_slice(cache["segment_ids"],
                                                              segments_BxG1, (0, start))}


@functools.partial(jax.jit, static_argnames=("graphdef", "draft_graphdef", "cfg", "gamma",
                                             "eos_id", "pad_id"))
def _speculate(graphdef: nnx.GraphDef, params: Any, draft_graphdef: nnx.GraphDef,
               draft_params: Any, tokens_BxP: jax.Array, segment_ids_BxP: jax.Array,
               rng: jax.Array, *, cfg: sampling.SamplingConfig, gamma: int, eos_id: int,
               pad_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """New tokens (B, max_new_tokens + gamma + 1; past max_new_tokens and after EOS: cut by
  the caller), drafted tokens proposed and kept (per row)."""
  target = sampling.decode_model(graphdef, params)
  draft = sampling.decode_model(draft_graphdef, draft_params)
  b, p = tokens_BxP.shape
  n, g = cfg.max_new_tokens, gamma
  greedy = cfg.temperature == 0.0
  slots = p + n * (g + 1)
  positions_BxP = jnp.maximum(jnp.cumsum(segment_ids_BxP, axis=1) - 1, 0)
  logits_BxPxV, t_cache = target(tokens_BxP, positions_BxP, segment_ids_BxP,
                                 cache=target.init_cache(b, slots))
  _, d_cache = draft(tokens_BxP, positions_BxP, segment_ids_BxP, cache=draft.init_cache(b, slots))
  rng, key = jax.random.split(rng)
  first_B = sampling.next_token(logits_BxPxV[:, -1], key, cfg)
  out_BxW = jnp.full((b, n + g + 1), pad_id, jnp.int32).at[:, 0].set(first_B)
  steps_G1 = jnp.arange(g + 1)

  def draft_step(carry, i):  # feeds the token drafted by the step before (first: the last kept)
    token_B, position_B, d_cache, rng = carry
    logits_Bx1xV, d_cache = draft(token_B[:, None], (position_B + i)[:, None], cache=d_cache)
    rng, key = jax.random.split(rng)
    new_B = sampling.next_token(logits_Bx1xV[:, 0], key, cfg)
    q_BxV = None if greedy else _probs(logits_Bx1xV[:, 0], cfg)
    return (new_B, position_B, d_cache, rng), (new_B, q_BxV)

  def body(carry):
    rnd, last_B, position_B, t_cache, d_cache, out_BxW, count_B, done_B, stats_B2, rng = carry
    t_start, d_start = t_cache["index"], d_cache["index"]
    # Draft: gamma + 1 steps (the last only writes d_gamma into the draft cache).
    rng, key = jax.random.split(rng)
    (_, _, d_cache, _), (drafts_G1xB, q_G1xBxV) = jax.lax.scan(
        draft_step, (last_B, position_B, d_cache, key), steps_G1)
    drafts_BxG = drafts_G1xB[:g].T
    fed_BxG1 = jnp.concatenate([last_B[:, None], drafts_BxG], axis=1)
    logits_BxG1xV, t_cache = target(fed_BxG1, position_B[:, None] + steps_G1[None],
                                    cache=t_cache)
    rng, accept_key, pick_key = jax.random.split(rng, 3)
    if greedy:
      best_BxG1 = jnp.argmax(logits_BxG1xV, axis=-1).astype(jnp.int32)
      accept_BxG = drafts_BxG == best_BxG1[:, :g]
    else:
      p_BxG1xV = _probs(logits_BxG1xV, cfg)
      q_BxGxV = jnp.moveaxis(q_G1xBxV[:g], 0, 1)
      p_drafts_BxG = jnp.take_along_axis(p_BxG1xV[:, :g], drafts_BxG[..., None], -1)[..., 0]
      q_drafts_BxG = jnp.take_along_axis(q_BxGxV, drafts_BxG[..., None], -1)[..., 0]
      u_BxG = jax.random.uniform(accept_key, (b, g))
      accept_BxG = u_BxG * q_drafts_BxG < p_drafts_BxG
    kept_B = jnp.sum(jnp.cumprod(accept_BxG, axis=1), axis=1).astype(jnp.int32)  # leading ones
    if greedy:
      fix_B = jnp.take_along_axis(best_BxG1, kept_B[:, None], 1)[:, 0]
    else:  # the residual max(0, p - q) after a rejection; p itself after gamma acceptances
      p_BxV = jnp.take_along_axis(p_BxG1xV, kept_B[:, None, None], 1)[:, 0]
      q_pad_BxG1xV = jnp.concatenate([q_BxGxV, jnp.zeros_like(q_BxGxV[:, :1])], axis=1)
      q_BxV = jnp.take_along_axis(q_pad_BxG1xV, kept_B[:, None, None], 1)[:, 0]
      residual_BxV = jnp.maximum(p_BxV - q_BxV, 0.0)
      residual_BxV = jnp.where(residual_BxV.sum(-1, keepdims=True) > 0, residual_BxV, p_BxV)
      fix_B = jax.random.categorical(pick_key, jnp.log(residual_BxV), axis=-1).astype(jnp.int32)
    new_BxG1 = jnp.where(steps_G1[None] < kept_B[:, None],
                         jnp.concatenate([drafts_BxG, drafts_BxG[:, :1]], axis=1), fix_B[:, None])
    live_B = ~done_B
    writes_BxG1 = (steps_G1[None] <= kept_B[:, None]) & live_B[:, None]
    columns_BxG1 = jnp.where(writes_BxG1, count_B[:, None] + steps_G1[None], n + g + 1)
    out_BxW = out_BxW.at[jnp.arange(b)[:, None], columns_BxG1].set(new_BxG1, mode="drop")
    ended_B = jnp.any(writes_BxG1 & (new_BxG1 == eos_id), axis=1)
    count_B = count_B + jnp.where(live_B, kept_B + 1, 0)
    # the slots of [last, d_1..d_kept] stay; a finished row's new ones are masked too
    t_cache = _mask_rejected(t_cache, t_start, writes_BxG1)
    d_cache = _mask_rejected(d_cache, d_start, writes_BxG1)
    stats_B2 = stats_B2 + jnp.stack([live_B * g, live_B * kept_B], axis=1)
    return (rnd + 1, jnp.where(live_B, fix_B, last_B), position_B + kept_B + 1, t_cache,
            d_cache, out_BxW, count_B, done_B | ended_B | (count_B >= n), stats_B2, rng)

  def cond(carry):
    return (carry[0] < n) & ~jnp.all(carry[7])

  carry = (jnp.zeros((), jnp.int32), first_B, positions_BxP[:, -1] + 1, t_cache, d_cache,
           out_BxW, jnp.ones((b,), jnp.int32), (first_B == eos_id) | (n <= 1),
           jnp.zeros((b, 2), jnp.int32), rng)
  out = jax.lax.while_loop(cond, body, carry)
  return out[5], out[8][:, 0], out[8][:, 1]


def check_pair(target_cfg: Any, draft_cfg: Any) -> None:
  """ValueError when a draft cannot propose for a target: another vocabulary, or a model
  with sliding windows (whose masks count cache slots)."""
  if target_cfg.vocab_size != draft_cfg.vocab_size:
    raise ValueError(f"the draft's vocabulary ({draft_cfg.vocab_size}) differs from the "
                     f"target's ({target_cfg.vocab_size}): speculative decoding compares their "
                     "distributions token by token")
  for name, c in (("target", target_cfg), ("draft", draft_cfg)):
    if c.family != "decoder":
      raise ValueError(f"speculative decoding needs decoder models; the {name} is {c.family}")
    if c.sliding_window:
      raise ValueError(f"speculative decoding masks rejected cache slots, which sliding-window "
                       f"attention would count; the {name} has sliding_window="
                       f"{c.sliding_window}")


def generate(graphdef: nnx.GraphDef, params: Any, draft_graphdef: nnx.GraphDef,
             draft_params: Any, prompts: Sequence[Sequence[int]],
             cfg: sampling.SamplingConfig, rng: jax.Array, *, gamma: int = 4, eos_id: int,
             pad_id: int = 0) -> tuple[list[list[int]], dict[str, float]]:
  """New tokens for each prompt (cut after the first EOS, which is kept), drawn from the
  target as `sampling.generate` draws them, with `gamma` tokens drafted a round; and the
  drafts' statistics: proposed, accepted, acceptance rate and tokens per target pass.
  ValueError for settings speculative decoding cannot keep exact (see the module docstring)
  and for prompts plus `max_new_tokens` beyond either model's context."""
  if gamma < 1:
    raise ValueError(f"gamma (tokens drafted per round) must be >= 1, got {gamma}")
  if cfg.num_beams > 1 or cfg.prefix_lm:
    raise ValueError("speculative decoding samples or decodes greedily from a causal prompt: "
                     "no beams, no prefix-LM prompts")
  target_cfg = nnx.merge(graphdef, params).cfg
  draft_cfg = nnx.merge(draft_graphdef, draft_params).cfg
  check_pair(target_cfg, draft_cfg)
  tokens, segments = sampling.cached_prompt_rows([target_cfg, draft_cfg], prompts,
                                                 cfg.max_new_tokens, pad_id,
                                                 "speculative decoding")
  out, proposed, accepted = jax.device_get(_speculate(
      graphdef, params, draft_graphdef, draft_params, tokens, segments, rng, cfg=cfg,
      gamma=gamma, eos_id=eos_id, pad_id=pad_id))
  texts = sampling.cut_after_eos(np.asarray(out)[:, :cfg.max_new_tokens], eos_id)
  proposed, accepted = int(np.sum(proposed)), int(np.sum(accepted))
  rounds = proposed / gamma
  stats = {"proposed": proposed, "accepted": accepted,
           "acceptance": accepted / proposed if proposed else 0.0,
           "tokens_per_target_pass": (accepted + rounds) / rounds if rounds else 0.0}
  return texts, stats
