"""Beam search over any one-token-at-a-time decoder, as transformers' `generate(num_beams=K)`.

Each step extends every live beam of a row by every token, keeps the 2K best extensions by
summed log-probability, moves those of the first K that end in EOS (or reach the length
limit) into the row's K finished hypotheses, scored `sum_logprob / new_tokens **
length_penalty`, and continues with the K best that did not end. `early_stopping` decides
when a row stops, with transformers' meanings:

- `True`: as soon as it holds K finished hypotheses;
- `False`: once its best live beam, scored at its current length, cannot beat the worst
  finished one (a heuristic: with `length_penalty` > 0 a longer beam could);
- `"never"`: once no live beam could beat it at any length up to the limit (exact: the
  result is that of searching to the limit).

The search is one `lax.while_loop`; the caller's state (a KV cache) is repeated per beam and
reordered with the beams at each step.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

EARLY_STOPPING = (False, True, "never")


def _pick(x_BxMx: jax.Array, index_BxK: jax.Array) -> jax.Array:
  """Rows `index` of each batch row's candidates (axis 1)."""
  return jnp.take_along_axis(x_BxMx, index_BxK.reshape(*index_BxK.shape, *(
      [1] * (x_BxMx.ndim - 2))), axis=1)


def search(step: Callable[[jax.Array, Any], tuple[jax.Array, Any]], logits_BxV: jax.Array,
           state: Any, *, num_beams: int, max_new_tokens: int, length_penalty: float,
           early_stopping: bool | str, eos_id: int, pad_id: int) -> tuple[jax.Array, jax.Array]:
  """The K finished hypotheses of each row, best first: tokens (B, K, N), padded with
  `pad_id` after EOS, and their scores (B, K). The first token is picked from `logits_BxV`
  (one row per sequence); `step(token_BK, state) -> (logits_BKxV, state)` scores the next one
  for B*K beams (beam k of row b at b*K + k). Every array of `state` with a leading axis is
  repeated per beam and gathered by beam as the beams move."""
  if early_stopping not in EARLY_STOPPING:
    raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}")
  b, v = logits_BxV.shape
  k, n = num_beams, max_new_tokens
  neg = jnp.float32(-jnp.inf)
  state = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, state)
  best_len = n if early_stopping == "never" and length_penalty > 0 else None
  in_first_k_2K = jnp.arange(2 * k) < k

  def body(carry):
    i, _, logits_BKxV, state, run_BxKxN, run_BxK, fin_BxKxN, fin_BxK, done_BxK, open_B = carry
    logp_BxKxV = jax.nn.log_softmax(logits_BKxV.astype(jnp.float32)).reshape(b, k, v)
    # Only the first beam is live at the start, so the K beams do not repeat one another.
    top_Bx2K, index_Bx2K = jax.lax.top_k((logp_BxKxV + run_BxK[:, :, None]).reshape(b, k * v),
                                         2 * k)
    parent_Bx2K, token_Bx2K = index_Bx2K // v, index_Bx2K % v
    cand_Bx2KxN = _pick(run_BxKxN, parent_Bx2K).at[:, :, i].set(token_Bx2K)
    ends_Bx2K = (token_Bx2K == eos_id) | (i == n - 1)

    live_Bx2K = jnp.where(ends_Bx2K, neg, top_Bx2K)
    keep_BxK = jax.lax.top_k(live_Bx2K, k)[1]
    run_BxKxN, run_BxK = _pick(cand_Bx2KxN, keep_BxK), _pick(live_Bx2K, keep_BxK)
    rows_BK = (jnp.arange(b)[:, None] * k + _pick(parent_Bx2K, keep_BxK)).reshape(-1)
    state = jax.tree.map(lambda x: x[rows_BK] if x.ndim else x, state)

    closed_B = ~open_B | (done_BxK.all(-1) if early_stopping is True else False)
    new_done_Bx2K = ends_Bx2K & in_first_k_2K & ~closed_B[:, None]
    new_Bx2K = jnp.where(new_done_Bx2K, top_Bx2K / (i + 1.0) ** length_penalty, neg)
    best_BxK = jax.lax.top_k(jnp.concatenate([fin_BxK, new_Bx2K], axis=1), k)[1]
    fin_BxKxN = _pick(jnp.concatenate([fin_BxKxN, cand_Bx2KxN], axis=1), best_BxK)
    fin_BxK = _pick(jnp.concatenate([fin_BxK, new_Bx2K], axis=1), best_BxK)
    done_BxK = _pick(jnp.concatenate([done_BxK, new_done_Bx2K], axis=1), best_BxK)

    # Can a live beam still beat the worst finished hypothesis (any slot still empty: yes)?
    length = best_len if best_len is not None else i + 1.0
    best_possible_Bx1 = run_BxK[:, :1] / length ** length_penalty
    worst_BxK = jnp.where(done_BxK, fin_BxK.min(-1, keepdims=True), neg)
    open_B = open_B & jnp.any(best_possible_Bx1 > worst_BxK, axis=-1)
    go = (i + 1 < n) & jnp.any(open_B) & ~jnp.all(ends_Bx2K)
    if early_stopping is True:
      go &= ~jnp.all(done_BxK)
    logits_BKxV, state = jax.lax.cond(go, step, lambda _, s: (logits_BKxV, s),
                                      run_BxKxN[:, :, i].reshape(-1), state)
    return i + 1, go, logits_BKxV, state, run_BxKxN, run_BxK, fin_BxKxN, fin_BxK, done_BxK, open_B

  run_BxK = jnp.where(jnp.arange(k) == 0, 0.0, neg) * jnp.ones((b, 1), jnp.float32)
  tokens_BxKxN = jnp.full((b, k, n), pad_id, jnp.int32)
  carry = (jnp.zeros((), jnp.int32), jnp.array(True), jnp.repeat(logits_BxV, k, axis=0), state,
           tokens_BxKxN, run_BxK, tokens_BxKxN, jnp.full((b, k), neg), jnp.zeros((b, k), bool),
           jnp.ones((b,), bool))
  out = jax.lax.while_loop(lambda c: c[1], body, carry)
  return out[6], out[7]
