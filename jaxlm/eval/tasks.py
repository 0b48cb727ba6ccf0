"""Exact-match evaluation of greedy answers on the shipped verifiable tasks (decoder runs
through their chat template or as plain Q/A text; seq2seq runs answer from the encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from jaxlm.data import chat, tasks
from jaxlm.eval import generative
from jaxlm.eval.prompting import EncoderRenderer, Renderer
from jaxlm.rl.trainer import load_run


def _greedy(max_new_tokens: int, batch_size: int) -> generative.Prompting:
  return generative.Prompting(max_new_tokens=max_new_tokens, batch_size=batch_size)


def greedy_answers(graphdef: Any, params: Any, tokenizer: Any, template: chat.ChatTemplate,
                   prompts: Sequence[str], *, max_new_tokens: int = 24,
                   batch_size: int = 64) -> list[str]:
  """Greedy replies to user `prompts` rendered with the chat template, cut at the end token."""
  return generative.replies(graphdef, params, Renderer(tokenizer, template), prompts,
                            _greedy(max_new_tokens, batch_size))


def qa_answers(graphdef: Any, params: Any, tokenizer: Any, prompts: Sequence[str], *,
               max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
  """Greedy completions of "Q: prompt\\nA:" up to the end of the line: how a model
  pre-trained on the tasks' plain text (no chat template) answers."""
  return generative.replies(graphdef, params, Renderer(tokenizer), prompts,
                            _greedy(max_new_tokens, batch_size))


def seq2seq_answers(graphdef: Any, params: Any, tokenizer: Any, prompts: Sequence[str], *,
                    max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
  """Greedy decoder replies of an encoder-decoder run to `prompts` (each the encoder's
  input, as `objective=seq2seq` trains)."""
  return generative.replies(graphdef, params, EncoderRenderer(tokenizer), prompts,
                            _greedy(max_new_tokens, batch_size))


def exact_match(workdir: str | Path, examples: Sequence[tasks.Example], *,
                max_new_tokens: int = 24, plain_qa: bool = False) -> dict[str, float]:
  """Exact-match accuracy (overall and per task kind) of a run's greedy answers, prompted
  through its chat template (or as plain "Q: ... A: " text with `plain_qa`)."""
  cfg, tokenizer, graphdef, params = load_run(workdir)
  prompts = [e.prompt for e in examples]
  if cfg.objective == "seq2seq":
    answers = seq2seq_answers(graphdef, params, tokenizer, prompts, max_new_tokens=max_new_tokens)
  elif plain_qa:
    answers = qa_answers(graphdef, params, tokenizer, prompts, max_new_tokens=max_new_tokens)
  else:
    answers = greedy_answers(graphdef, params, tokenizer, chat.from_config(cfg.chat), prompts,
                             max_new_tokens=max_new_tokens)
  return tasks.score(answers, examples)
