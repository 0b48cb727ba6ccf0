"""Exact-match evaluation of greedy chat answers on the shipped verifiable tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax

from jaxlm import sampling
from jaxlm.data import chat, tasks
from jaxlm.train.loop import load_trained


def greedy_answers(graphdef: Any, params: Any, tokenizer: Any, template: chat.ChatTemplate,
                   prompts: Sequence[str], *, max_new_tokens: int = 24,
                   batch_size: int = 64) -> list[str]:
  """Greedy replies to user `prompts` rendered with the chat template, cut at the end token."""
  cfg = sampling.SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
  answers = []
  for start in range(0, len(prompts), batch_size):
    ids = [template.prompt_ids([{"role": "user", "content": p}], tokenizer)
           for p in prompts[start:start + batch_size]]
    out = sampling.generate(graphdef, params, ids, cfg, jax.random.key(0),
                            eos_id=template.stop_id(tokenizer), pad_id=tokenizer.contract.pad_id)
    answers += [template.response_text(o, tokenizer) for o in out]
  return answers


def exact_match(workdir: str | Path, examples: Sequence[tasks.Example], *,
                max_new_tokens: int = 24) -> dict[str, float]:
  """Exact-match accuracy (overall and per task kind) of a run's greedy answers."""
  cfg, tokenizer, graphdef, params = load_trained(workdir)
  answers = greedy_answers(graphdef, params, tokenizer, chat.from_config(cfg.chat),
                           [e.prompt for e in examples], max_new_tokens=max_new_tokens)
  return tasks.score(answers, examples)
