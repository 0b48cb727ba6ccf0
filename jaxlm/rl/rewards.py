"""Where rewards come from: a task verifier, a trained reward model, or a synthetic count.

A reward function maps a scored rollout to one number per response:
`fn(batch, examples, responses) -> (B,) float array`, where `batch` holds the full sequences
(`tokens`, `positions`, `segment_ids`, left-padded prompt then response), `examples` the
prompts' `tasks.Example`s and `responses` the response ids up to and including the stop
token. `rl.reward` picks one: `verifier` (1 for an exact-match answer, else 0), `model`
(the score of the reward-model run `rl.reward_model`) or `token_count` (how often the
single token `rl.reward_token` occurs in the response: a synthetic reward for tests).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx

from jaxlm import global_rows
from jaxlm.data import tasks
from jaxlm.data.chat import ChatTemplate
from jaxlm.data.tokenizer import Tokenizer

RewardFn = Callable[[dict, Sequence[tasks.Example], Sequence[Sequence[int]]], np.ndarray]
REWARDS = ("verifier", "model", "token_count")


def verifier_reward(tokenizer: Tokenizer, template: ChatTemplate) -> RewardFn:
  """1.0 where the decoded reply equals the example's answer (`tasks.exact_match`), else 0."""
  def fn(batch, examples, responses):
    return np.array([float(tasks.exact_match(template.response_text(r, tokenizer), e.answer))
                     for r, e in zip(responses, examples, strict=True)], np.float32)
  return fn


def token_count_reward(token_id: int) -> RewardFn:
  """The number of times `token_id` occurs in each response."""
  def fn(batch, examples, responses):
    return np.array([sum(int(t) == token_id for t in r) for r in responses], np.float32)
  return fn


def model_reward(graphdef: nnx.GraphDef, params: Any, batch_sharding: Any = None) -> RewardFn:
  """A reward model's score of each full (prompt + response) sequence, read at its last real
  token (left padding is segment 0, so it is skipped by position and attention alike). With
  `batch_sharding`, each device scores only its share of the rows."""
  @jax.jit
  def score(params, tokens, positions, segments):
    return nnx.merge(graphdef, params).score(tokens, positions, segments)

  def fn(batch, examples, responses):
    columns = [np.stack(global_rows.fill_rows(batch[k], batch_sharding))
               for k in ("tokens", "positions", "segment_ids")]
    out = score(params, *global_rows.place(columns, batch_sharding))
    return global_rows.fetch(out)[:len(batch["tokens"])]
  return fn


def make_reward(rl: Any, tokenizer: Tokenizer, template: ChatTemplate,
                load_run: Callable[[str], tuple], batch_sharding: Any = None) -> RewardFn:
  """The reward function `rl.reward` names; `load_run(workdir) -> (cfg, tokenizer, graphdef,
  params)` loads a reward-model run, which scores each device's share of the rows under
  `batch_sharding`."""
  if rl.reward == "verifier":
    return verifier_reward(tokenizer, template)
  if rl.reward == "token_count":
    ids = tokenizer.encode(rl.reward_token)
    if len(ids) != 1:
      raise ValueError(f"rl.reward_token={rl.reward_token!r} must encode to exactly one token, "
                       f"got {len(ids)}")
    return token_count_reward(ids[0])
  if rl.reward == "model":
    if not rl.reward_model:
      raise ValueError("rl.reward=model needs rl.reward_model, the workdir of a reward-model run")
    cfg, rm_tokenizer, graphdef, params = load_run(rl.reward_model)
    if cfg.objective != "reward":
      raise ValueError(f"rl.reward_model={rl.reward_model} is a {cfg.objective!r} run, not a "
                       "reward model")
    if rm_tokenizer.vocab_size != tokenizer.vocab_size:
      raise ValueError(f"the reward model has a vocabulary of {rm_tokenizer.vocab_size}, the "
                       f"policy {tokenizer.vocab_size}: they must share a tokenizer")
    return model_reward(graphdef, params, batch_sharding)
  raise ValueError(f"rl.reward must be one of {REWARDS}, got {rl.reward!r}")


def overlong_penalty(lengths_B: np.ndarray, max_new_tokens: int, buffer: int,
                     penalty: float) -> np.ndarray:
  """DAPO's soft overlong punishment (Yu et al. 2025), >= 0, to subtract from the reward:
  0 up to `max_new_tokens - buffer` tokens, then rising linearly to `penalty` at
  `max_new_tokens` (`buffer` 0: no penalty)."""
  if buffer <= 0:
    return np.zeros(len(lengths_B), np.float32)
  over = np.asarray(lengths_B, np.float32) - (max_new_tokens - buffer)
  return (penalty * np.clip(over / buffer, 0.0, 1.0)).astype(np.float32)
