"""Scoring (prompt, response) pairs with a trained reward model."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.data import chat
from jaxlm.data.pipeline import positions_in_segment
from jaxlm.models.reward import RewardModel
from jaxlm.train.loop import load_trained


def score_texts(workdir: str | Path, prompts: Sequence[str],
                responses: Sequence[str]) -> list[float]:
  """Reward of each response to its prompt, rendered with the run's chat template."""
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
  width = max(map(len, rows))
  tokens = np.full((len(rows), width), tokenizer.contract.pad_id, np.int32)
  segments = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)], segments[i, :len(r)] = r, 1
  scores = nnx.jit(lambda m, t, p, s: m.score(t, p, s))(
      model, jnp.asarray(tokens), jnp.asarray(positions_in_segment(segments)), jnp.asarray(segments))
  return [float(x) for x in np.asarray(scores)]
