"""Multiple-choice tasks scored by log-likelihood, with k-shot prompts.

Each choice is scored as a continuation of the (k-shot) prompt. `acc` picks the choice with
the highest log-likelihood; `acc_norm` the highest log-likelihood divided by the choice's
length in characters (Python `len` of the continuation string, leading space included):
lm-evaluation-harness's `acc_norm`. Ties go to the lowest index (numpy argmax).

Questions come from a JSONL file, one `{"context": str, "choices": [str, ...], "gold": int}`
per line (each choice is appended to the context as is, so put any separating space in the
choices), or are built deterministically from a text (`cloze_from_text`): pick the true next
line after a few lines of context among lines drawn from elsewhere in the text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from flax import nnx

from jaxlm.data.formats import iter_jsonl
from jaxlm.eval.prompting import pick_shots
from jaxlm.eval.scoring import loglikelihoods


@dataclasses.dataclass(frozen=True)
class Question:
  """A context, its candidate continuations and the index of the right one."""

  context: str
  choices: tuple[str, ...]
  gold: int


def read_questions(path: str) -> list[Question]:
  """Questions of a JSONL file (schema in the module docstring); bad lines name file:line."""
  out = []
  for where, record in iter_jsonl(path):
    context, choices, gold = record.get("context"), record.get("choices"), record.get("gold")
    if not isinstance(context, str):
      raise ValueError(f"{where}: field 'context' must be a string")
    if (not isinstance(choices, list) or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)):
      raise ValueError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
      raise ValueError(f"{where}: field 'gold' must be an index into 'choices' "
                       f"(0..{len(choices) - 1}), got {gold!r}")
    out.append(Question(context, tuple(choices), gold))
  return out


def cloze_from_text(text: str, n: int, seed: int, *, num_choices: int = 4, context_lines: int = 2,
                    min_chars: int = 16, max_chars: int = 48) -> list[Question]:
  """`n` next-line questions from `text`, a pure function of the arguments.

  The true line has `min_chars`..`max_chars` characters and follows `context_lines` lines
  (the context, each ending in a newline); the distractors are other distinct lines of the
  same length range.
  """
  if num_choices < 2:
    raise ValueError(f"a cloze question needs at least 2 choices, got {num_choices}")
  lines = text.split("\n")
  fits = [i for i, line in enumerate(lines)
          if i >= context_lines and min_chars <= len(line.strip()) and len(line) <= max_chars]
  pool = sorted({lines[i] for i in fits})
  if len(pool) < num_choices or len(fits) < n:
    raise ValueError(f"the text has {len(fits)} lines of {min_chars}..{max_chars} characters "
                     f"({len(pool)} distinct): too few for {n} questions of {num_choices} choices")
  rng = np.random.default_rng(seed)
  out = []
  for i in rng.choice(fits, size=n, replace=False):
    true = lines[i]
    others = [pool[j] for j in rng.permutation(len(pool)) if pool[j] != true][:num_choices - 1]
    choices = [true, *others]
    order = rng.permutation(num_choices)
    out.append(Question("".join(line + "\n" for line in lines[i - context_lines:i]),
                        tuple(choices[j] for j in order), int(np.argmax(order == 0))))
  return out


def fewshot_prompt(questions: Sequence[Question], index: int, num_fewshot: int, seed: int,
                   separator: str = "\n\n") -> str:
  """Question `index`'s context after `num_fewshot` other solved questions (drawn by a seeded
  permutation, never the question itself), each followed by `separator`."""
  shots = pick_shots(len(questions), index, num_fewshot, seed, exclude_index=True)
  prefix = "".join(questions[j].context + questions[j].choices[questions[j].gold] + separator
                   for j in shots)
  return prefix + questions[index].context


def choice_metrics(logprobs: Sequence[Sequence[float]],
                   questions: Sequence[Question]) -> dict[str, float]:
  """`acc` and `acc_norm` (log-likelihood per character) from each question's per-choice
  log-likelihoods."""
  if len(logprobs) != len(questions):
    raise ValueError(f"{len(logprobs)} score lists for {len(questions)} questions")
  acc, acc_norm = [], []
  for lls, q in zip(logprobs, questions):
    lls = np.asarray(lls, np.float64)
    chars = np.array([len(c) for c in q.choices], np.float64)
    acc.append(int(np.argmax(lls)) == q.gold)
    acc_norm.append(int(np.argmax(lls / chars)) == q.gold)
  return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)),
          "questions": len(questions)}


def continuation_requests(tokenizer: Any, pairs: Sequence[tuple[str, str]]
                          ) -> list[tuple[list[int], list[int]]]:
  """(context ids, continuation ids) of each (context, continuation) text pair, cut from the
  ids of the joined text: tokenizers that open every separately encoded text with a word
  boundary (Llama-2, Mistral) would otherwise score the continuation as a new word. The
  context opens as a document does (BOS for Llama, Gemma; an empty one is that start token)."""
  wholes = tokenizer.encode_batch([c + x for c, x in pairs])
  contexts = tokenizer.encode_batch([c for c, _ in pairs])
  requests = []
  for whole, ctx, (_, text) in zip(wholes, contexts, pairs):
    # A join that merged tokens across the boundary leaves no clean cut: encode them apart.
    cut = whole[:len(ctx)] == ctx and len(whole) > len(ctx)
    cont = whole[len(ctx):] if cut else tokenizer.encode(text)
    requests.append((tokenizer.contract.opening + ctx or [tokenizer.contract.start_id], cont))
  return requests


def evaluate(graphdef: nnx.GraphDef, params: Any, tokenizer: Any, questions: Sequence[Question],
             *, num_fewshot: int = 0, seed: int = 0, separator: str = "\n\n",
             batch_size: int = 32) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Metrics and per-question records (prompt, log-likelihoods, picks) of `questions`."""
  if not questions:
    raise ValueError("no questions to evaluate")
  prompts = [fewshot_prompt(questions, i, num_fewshot, seed, separator) if num_fewshot
             else q.context for i, q in enumerate(questions)]
  requests = continuation_requests(tokenizer, [(p, c) for p, q in zip(prompts, questions)
                                               for c in q.choices])
  scores = loglikelihoods(graphdef, params, requests, batch_size=batch_size,
                          pad_id=tokenizer.contract.pad_id)
  logprobs, k = [], 0
  for q in questions:
    logprobs.append([s.logprob for s in scores[k:k + len(q.choices)]])
    k += len(q.choices)
  records = [{"prompt": p, "choices": list(q.choices), "gold": q.gold, "logprobs": lls,
              "pick": int(np.argmax(lls))} for p, q, lls in zip(prompts, questions, logprobs)]
  return choice_metrics(logprobs, questions), records
