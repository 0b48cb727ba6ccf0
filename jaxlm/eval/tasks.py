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


def qa_answers(graphdef: Any, params: Any, tokenizer: Any, prompts: Sequence[str], *,
               max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
  """Greedy completions of "Q: prompt\nA: " up to the end of the line: how a model
  pre-trained on the tasks' plain text (no chat template) answers."""
  cfg = sampling.SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
  newline = tokenizer.encode("\n")[-1]
  answers = []
  for start in range(0, len(prompts), batch_size):
    ids = [tokenizer.encode(f"Q: {p}\nA: ") for p in prompts[start:start + batch_size]]
    out = sampling.generate(graphdef, params, ids, cfg, jax.random.key(0), eos_id=newline,
                            pad_id=tokenizer.contract.pad_id)
    answers += [tokenizer.decode(o).split("\n")[0] for o in out]
  return answers


def exact_match(workdir: str | Path, examples: Sequence[tasks.Example], *,
                max_new_tokens: int = 24, plain_qa: bool = False) -> dict[str, float]:
  """Exact-match accuracy (overall and per task kind) of a run's greedy answers, prompted
  through its chat template (or as plain "Q: ... A: " text with `plain_qa`)."""
  cfg, tokenizer, graphdef, params = load_trained(workdir)
  prompts = [e.prompt for e in examples]
  if plain_qa:
    answers = qa_answers(graphdef, params, tokenizer, prompts, max_new_tokens=max_new_tokens)
  else:
    answers = greedy_answers(graphdef, params, tokenizer, chat.from_config(cfg.chat), prompts,
                             max_new_tokens=max_new_tokens)
  return tasks.score(answers, examples)
