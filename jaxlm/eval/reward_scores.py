"""Scoring (prompt, response) pairs with a trained reward model."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from jaxlm import global_rows
from jaxlm.data import chat
from jaxlm.data.pipeline import positions_in_segment
from jaxlm.eval.scoring import bucketed_batches
from jaxlm.models.reward import RewardModel
from jaxlm.train.loop import load_trained
from jaxlm.train.sharding import rows_sharding_of


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _scores(graphdef: nnx.GraphDef, params: Any, tokens_BxT: jax.Array, positions_BxT: jax.Array,
            segments_BxT: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, params).score(tokens_BxT, positions_BxT, segments_BxT)


def score_texts(workdir: str | Path, prompts: Sequence[str], responses: Sequence[str], *,
                batch_size: int = 32) -> list[float]:
  """Reward of each response to its prompt, rendered with the run's chat template; scored in
  fixed-size, length-bucketed batches (one compiled program per bucket), split over the
  devices that hold the reward model."""
  cfg, tokenizer, graphdef, params = load_trained(workdir)
  model = nnx.merge(graphdef, params)
  if not isinstance(model, RewardModel):
    raise ValueError(f"{workdir} is a {cfg.objective!r} run, not a reward model")
  if len(prompts) != len(responses):
    raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
  template = chat.from_config(cfg.chat)
  rows = [template.prompt_ids([{"role": "user", "content": p}], tokenizer)
          + template.response_ids(r, tokenizer) for p, r in zip(prompts, responses)]
  context = model.cfg.max_seq_len
  too_long = [i for i, r in enumerate(rows) if len(r) > context]
  if too_long:
    raise ValueError(f"texts {too_long} are longer than the model context of {context} tokens")
  scores = [0.0] * len(rows)
  rows_sharding = rows_sharding_of(params)
  batch_size = global_rows.padded_rows(batch_size, rows_sharding)
  for chunk, width in bucketed_batches([len(r) for r in rows], batch_size, context):
    tokens = np.full((batch_size, width), tokenizer.contract.pad_id, np.int32)
    segments = np.zeros((batch_size, width), np.int32)
    for b, i in enumerate(chunk):
      tokens[b, :len(rows[i])], segments[b, :len(rows[i])] = rows[i], 1
    out = global_rows.fetch(_scores(graphdef, params, *global_rows.place(
        (tokens, positions_in_segment(segments), segments), rows_sharding)))
    for b, i in enumerate(chunk):
      scores[i] = float(out[b])
  return scores
