"""Generative tasks scored by exact match, with four ways of prompting.

  direct         the question (after k solved examples), the reply is the answer
  cot            chain of thought, two stages (Kojima et al. 2022): the reply starts with
                 `cot_trigger` ("Let's think step by step.") and the model reasons; then
                 `answer_trigger` ("Therefore, the answer is") is appended and the model
                 answers. Few-shot examples show `cot_trigger rationale answer_trigger
                 answer.` (their `rationale` field, when they have one).
  least_to_most  (Zhou et al. 2022) the model first decomposes the question (reply started
                 with `decompose_trigger`, sub-questions split at `subquestion_separator`),
                 then answers the sub-questions in turn, each answer joining the context,
                 then the question itself. Few-shot examples with `subquestions` are shown
                 in the decomposition stage; all are shown directly answered in the others.
  self-consistency  any method with `samples` > 1 and a temperature > 0 (Wang et al. 2022):
                 each question is answered `samples` times and the answers extracted from
                 the replies are put to a majority vote (`prompting.majority_vote`).

Exact match is `jaxlm.data.tasks.exact_match` (equal after stripping whitespace).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from jaxlm import sampling
from jaxlm.data import tasks
from jaxlm.eval.prompting import (EncoderRenderer, Renderer, extract_answer, majority_vote,
                                  pick_shots)
from jaxlm.train.sharding import rows_sharding_of

METHODS = ("direct", "cot", "least_to_most")
AnyRenderer = Renderer | EncoderRenderer


@dataclasses.dataclass(frozen=True)
class Problem:
  """A question with its one right answer; optional kind (for a per-kind breakdown), worked
  rationale and sub-questions (shown when the problem is a few-shot example)."""

  prompt: str
  answer: str
  kind: str = ""
  rationale: str = ""
  subquestions: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Prompting:
  """How questions are asked and answers read (see the module docstring)."""

  method: str = "direct"
  num_fewshot: int = 0
  samples: int = 1
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  max_new_tokens: int = 24
  reasoning_tokens: int = 64
  cot_trigger: str = "Let's think step by step."
  answer_trigger: str = "Therefore, the answer is"
  decompose_trigger: str = "To solve this, we first answer:"
  subquestion_separator: str = ";"
  max_subquestions: int = 3
  answer_regex: str = ""
  seed: int = 0
  batch_size: int = 64
  prefix_lm: bool = False  # decoders trained as prefix LMs: the prompt attends both ways
  num_beams: int = 1  # > 1: beam search (deterministic) in place of greedy / sampling
  length_penalty: float = 1.0  # beam scores: sum log p / new_tokens ** length_penalty

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"prompting method must be one of {METHODS}, got {self.method!r}")
    if self.samples < 1:
      raise ValueError(f"samples must be >= 1, got {self.samples}")
    if self.samples > 1 and self.temperature == 0.0:
      raise ValueError("self-consistency (samples > 1) needs a temperature > 0: greedy samples "
                       "are all the same")
    if self.samples > 1 and self.num_beams > 1:
      raise ValueError("self-consistency (samples > 1) samples; beam search (num_beams > 1) "
                       "gives the same reply every time")

  def for_run(self, run_cfg: Any) -> "Prompting":
    """These settings for the model of a run with config `run_cfg`: the prompts of a
    prefix-LM run attend to themselves both ways, as its prefixes did in training."""
    return dataclasses.replace(self, prefix_lm=run_cfg.objective == "prefix_lm")


class _Generator:
  """Batched generation of reply texts for prompt ids, at the settings of a `Prompting`.
  A prompt longer than the model context keeps its last `max_seq_len` tokens (with beams, a
  decoder's keeps `max_seq_len - max_new` so that the reply fits beside it). Decoders
  continue their prompts; encoder-decoders (with an `EncoderRenderer`) encode them."""

  def __init__(self, graphdef: nnx.GraphDef, params: Any, renderer: AnyRenderer, p: Prompting):
    self.graphdef, self.params, self.renderer, self.p = graphdef, params, renderer, p
    model_cfg = nnx.merge(graphdef, params).cfg
    self.seq2seq = model_cfg.family == "encdec"
    if self.seq2seq != isinstance(renderer, EncoderRenderer) or model_cfg.family == "encoder":
      raise ValueError(f"a {type(renderer).__name__} cannot prompt a {model_cfg.family} model "
                       "(see jaxlm.eval.prompting.renderer)")
    self.rows_sharding = rows_sharding_of(params)  # each device generates its share
    self.context = model_cfg.max_seq_len
    self.rng = jax.random.key(p.seed)

  def __call__(self, prompts: Sequence[list[int]], *, multiline: bool, max_new: int) -> list[str]:
    cfg = sampling.SamplingConfig(temperature=self.p.temperature, top_k=self.p.top_k,
                                  top_p=self.p.top_p, min_p=self.p.min_p, max_new_tokens=max_new,
                                  prefix_lm=self.p.prefix_lm, num_beams=self.p.num_beams,
                                  length_penalty=self.p.length_penalty)
    pad = self.renderer.tokenizer.contract.pad_id
    # Beams keep their KV caches: a decoder's prompt leaves room for the reply.
    keep = self.context - max_new if self.p.num_beams > 1 and not self.seq2seq else self.context
    if keep < 1:
      raise ValueError(f"beam search: max_new_tokens ({max_new}) leaves no room for a prompt in "
                       f"the model context of {self.context}")
    out = []
    for start in range(0, len(prompts), self.p.batch_size):
      self.rng, key = jax.random.split(self.rng)
      ids = [p[-keep:] for p in prompts[start:start + self.p.batch_size]]
      generate = sampling.generate_seq2seq if self.seq2seq else sampling.generate
      gen = generate(self.graphdef, self.params, ids, cfg, key,
                     eos_id=self.renderer.stop_id(multiline), pad_id=pad,
                     batch_sharding=self.rows_sharding)
      out += [self.renderer.reply_text(g) for g in gen]
    return out


def replies(graphdef: nnx.GraphDef, params: Any, renderer: AnyRenderer, prompts: Sequence[str],
            p: Prompting = Prompting()) -> list[str]:
  """Zero-shot reply texts to `prompts` as they come (nothing extracted), at `p`'s sampling
  settings (greedy by default)."""
  gen = _Generator(graphdef, params, renderer, p)
  return gen([renderer.prompt_ids([], q) for q in prompts], multiline=False,
             max_new=p.max_new_tokens)


def _shot_turns(pool: Sequence[Problem], shots: Sequence[int], p: Prompting,
                stage: str) -> list[tuple[str, str]]:
  """Few-shot (question, reply) turns of one stage: "direct", "cot" or "decompose"."""
  turns = []
  for j in shots:
    e = pool[j]
    if stage == "direct":
      turns.append((e.prompt, e.answer))
    elif stage == "cot":
      reasoning = f" {e.rationale}" if e.rationale else ""
      turns.append((e.prompt, f"{p.cot_trigger}{reasoning} {p.answer_trigger} {e.answer}."))
    elif e.subquestions:
      sep = f"{p.subquestion_separator} "
      turns.append((e.prompt, f"{p.decompose_trigger} {sep.join(e.subquestions)}"))
  return turns


def _cut_reasoning(text: str, p: Prompting) -> str:
  return text.split(p.answer_trigger)[0].rstrip()


def answer(graphdef: nnx.GraphDef, params: Any, renderer: AnyRenderer, problems: Sequence[Problem],
           p: Prompting, *, pool: Sequence[Problem] | None = None) -> list[dict[str, Any]]:
  """One record per problem: the voted `prediction`, the `samples` replies and answers.

  Few-shot examples come from `pool` (default: the problems themselves, never a problem as
  its own example).
  """
  own = pool is None
  pool = problems if pool is None else pool
  gen = _Generator(graphdef, params, renderer, p)
  shots = [pick_shots(len(pool), i, p.num_fewshot, p.seed, exclude_index=own)
           for i in range(len(problems))]
  items = [i for i in range(len(problems)) for _ in range(p.samples)]  # question of each sample
  direct = [_shot_turns(pool, shots[i], p, "direct") for i in items]
  questions = [problems[i].prompt for i in items]
  notes: list[dict[str, Any]] = [{} for _ in items]

  if p.method == "cot":
    turns = [_shot_turns(pool, shots[i], p, "cot") for i in items]
    thoughts = gen([renderer.prompt_ids(t, q, p.cot_trigger) for t, q in zip(turns, questions)],
                   multiline=True, max_new=p.reasoning_tokens)
    prefixes = [f"{p.cot_trigger}{_cut_reasoning(r, p)} {p.answer_trigger}" for r in thoughts]
    replies = gen([renderer.prompt_ids(t, q, pre) for t, q, pre in zip(turns, questions, prefixes)],
                  multiline=False, max_new=p.max_new_tokens)
    for note, pre, r in zip(notes, prefixes, replies):
      note["reply"] = f"{pre} {r.lstrip(' ')}"  # the prefix ends at "the answer is"
  else:
    if p.method == "least_to_most":
      direct = _least_to_most(gen, renderer, items, problems, pool, shots, direct, notes, p)
    replies = gen([renderer.prompt_ids(t, q) for t, q in zip(direct, questions)],
                  multiline=False, max_new=p.max_new_tokens)
    for note, r in zip(notes, replies):
      note["reply"] = r

  extracted = [extract_answer(r, p.answer_regex) for r in replies]
  records = []
  for i, problem in enumerate(problems):
    mine = range(i * p.samples, (i + 1) * p.samples)
    votes = [extracted[k] for k in mine]
    prediction, count = majority_vote(votes)
    records.append({"prompt": problem.prompt, "answer": problem.answer, "kind": problem.kind,
                    "prediction": prediction, "agreement": count / len(mine),
                    "samples": [{**notes[k], "answer": extracted[k]} for k in mine]})
  return records


def _least_to_most(gen: _Generator, renderer: AnyRenderer, items: Sequence[int],
                   problems: Sequence[Problem], pool: Sequence[Problem],
                   shots: Sequence[list[int]], direct: list[list[tuple[str, str]]],
                   notes: list[dict[str, Any]], p: Prompting) -> list[list[tuple[str, str]]]:
  """Decomposes each sampled question, answers its sub-questions in turn and returns the
  turns (few-shot examples, then the solved sub-questions) that precede the question."""
  decompose = [_shot_turns(pool, shots[i], p, "decompose") for i in items]
  plans = gen([renderer.prompt_ids(t, problems[i].prompt, p.decompose_trigger)
               for t, i in zip(decompose, items)], multiline=False, max_new=p.reasoning_tokens)
  subqs = [[s.strip() for s in plan.split(p.subquestion_separator) if s.strip()]
           [:p.max_subquestions] for plan in plans]
  solved: list[list[tuple[str, str]]] = [[] for _ in items]
  for step in range(p.max_subquestions):
    todo = [k for k, s in enumerate(subqs) if len(s) > step]
    if not todo:
      break
    asks = [subqs[k][step] if step else f"{problems[items[k]].prompt}\n{subqs[k][0]}"
            for k in todo]
    replies = gen([renderer.prompt_ids(direct[k] + solved[k], q) for k, q in zip(todo, asks)],
                  multiline=False, max_new=p.max_new_tokens)
    for k, q, r in zip(todo, asks, replies):
      solved[k].append((q, r.strip()))
  for note, s in zip(notes, solved):
    note["subquestions"] = [list(turn) for turn in s]
  return [d + s for d, s in zip(direct, solved)]


def exact_match_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
  """Exact match overall and per kind present, and the mean vote agreement."""
  hits = np.array([tasks.exact_match(r["prediction"], r["answer"]) for r in records], float)
  kinds = np.array([r.get("kind", "") for r in records])
  out = {"exact_match": float(hits.mean()) if len(hits) else 0.0}
  for kind in sorted(set(kinds) - {""}):
    out[f"exact_match/{kind}"] = float(hits[kinds == kind].mean())
  out["agreement"] = float(np.mean([r["agreement"] for r in records])) if records else 0.0
  out["questions"] = len(records)
  return out
