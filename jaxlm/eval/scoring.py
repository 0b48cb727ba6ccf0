"""Log-likelihood of continuations given contexts: batched, jitted, length-bucketed.

One request is a pair of token-id lists (context, continuation). Its row is
`context + continuation[:-1]` as inputs and `context[1:] + continuation` as targets,
right-padded; the mask selects the continuation's targets. A context longer than the model
allows is cut from the left (the continuation is always scored whole, as in
lm-evaluation-harness). Rows are padded to the smallest bucket length that holds them
(powers of two from `MIN_BUCKET`, capped at the model context) and batches to a fixed
number of rows, so one compiled program serves every request of a bucket.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm import global_rows
from jaxlm.objectives.logprobs import masked_token_logprobs
from jaxlm.train.sharding import rows_sharding_of

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Score:
  """Log-likelihood of one continuation: its sum, token count and whether it is the
  greedy continuation (every token the argmax)."""

  logprob: float
  num_tokens: int
  is_greedy: bool


def bucket_length(length: int, context: int) -> int:
  """The smallest power of two >= `length` (at least MIN_BUCKET), capped at `context`."""
  bucket = MIN_BUCKET
  while bucket < length:
    bucket *= 2
  return min(bucket, context)


def bucketed_batches(lengths: Sequence[int], batch_size: int,
                     context: int) -> Iterator[tuple[list[int], int]]:
  """(row indices, padded width) of each batch: rows sorted longest first, so that a batch
  spans few lengths, each padded to its bucket (`bucket_length`)."""
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    yield chunk, bucket_length(max(lengths[i] for i in chunk), context)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score_rows(graphdef: nnx.GraphDef, params: Any, tokens_BxT: jax.Array,
                targets_BxT: jax.Array, mask_BxT: jax.Array,
                segments_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  model = nnx.merge(graphdef, params)
  b, t = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  logits_BxTxV = model(tokens_BxT, positions_BxT, segments_BxT)
  logp_BxT = masked_token_logprobs(logits_BxTxV, targets_BxT, mask_BxT)
  hit_BxT = (jnp.argmax(logits_BxTxV, -1) == targets_BxT) | ~mask_BxT.astype(bool)
  return logp_BxT.sum(-1), hit_BxT.all(-1)


def make_row(context: Sequence[int], continuation: Sequence[int],
             max_len: int) -> tuple[list[int], list[int], int]:
  """(inputs, targets, number of continuation targets) of one request, the context cut from
  the left so that the inputs fit `max_len` tokens."""
  if not continuation:
    raise ValueError("a continuation to score must have at least one token")
  if not context:
    raise ValueError("a context must have at least one token (start with EOS for none)")
  if len(continuation) > max_len:
    raise ValueError(f"continuation of {len(continuation)} tokens does not fit the model "
                     f"context of {max_len}")
  whole = (list(context) + list(continuation))[-(max_len + 1):]
  return whole[:-1], whole[1:], len(continuation)


def loglikelihoods(graphdef: nnx.GraphDef, params: Any,
                   requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                   batch_size: int = 32, pad_id: int = 0) -> list[Score]:
  """A `Score` for each (context ids, continuation ids) request, in request order. Batches
  are split over the devices that hold `params` (`batch_size` rounded up to fill them)."""
  model_cfg = nnx.merge(graphdef, params).cfg
  if model_cfg.family != "decoder":
    raise ValueError(f"log-likelihood scoring (perplexity, multiple choice) reads a decoder's "
                     f"next-token predictions; this is a {model_cfg.family} model "
                     f"({model_cfg.style})")
  context = model_cfg.max_seq_len
  rows_sharding = rows_sharding_of(params)
  batch_size = global_rows.padded_rows(batch_size, rows_sharding)
  rows = [make_row(c, x, context) for c, x in requests]
  results: list[Score | None] = [None] * len(rows)
  for chunk, width in bucketed_batches([len(r[0]) for r in rows], batch_size, context):
    tokens = np.full((batch_size, width), pad_id, np.int32)
    targets = np.full((batch_size, width), pad_id, np.int32)
    mask = np.zeros((batch_size, width), np.float32)
    segments = np.zeros((batch_size, width), np.int32)
    for r, i in enumerate(chunk):
      inputs, outs, n = rows[i]
      tokens[r, :len(inputs)], targets[r, :len(outs)] = inputs, outs
      mask[r, len(outs) - n:len(outs)] = 1.0
      segments[r, :len(inputs)] = 1
    sums, greedy = global_rows.fetch(_score_rows(
        graphdef, params, *global_rows.place((tokens, targets, mask, segments), rows_sharding)))
    for r, i in enumerate(chunk):
      results[i] = Score(float(sums[r]), rows[i][2], bool(greedy[r]))
  return results  # type: ignore[return-value]


def compile_count() -> int:
  """How many programs the scorer has compiled in this process (one per bucket and batch)."""
  return _score_rows._cache_size()
