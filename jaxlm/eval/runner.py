"""Runs one evaluation task on a trained run, writes W/eval/<name>.json, formats a table.

The JSON holds the task name and kind, the run folder and checkpoint step, the metrics,
the resolved task config and the per-question records (none for perplexity).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import ml_collections

from jaxlm import config as configlib
from jaxlm.data import formats, sources, tasks
from jaxlm.eval import generative, multiple_choice, perplexity, prompting, win_rate
from jaxlm.models.config import STYLES
from jaxlm.train.checkpoint import Checkpointer
from jaxlm.rl.trainer import load_run


def corpus_docs(cfg: ml_collections.ConfigDict, source: str) -> list[str]:
  """Documents of `cfg.split` of a corpus source."""
  if cfg.split not in ("train", "val"):
    raise ValueError(f"split must be 'train' or 'val', got {cfg.split!r}")
  corpus = sources.load_corpus(source, val_fraction=cfg.val_fraction, text_field=cfg.text_field,
                               task_cfg=cfg.task)
  docs = [d for d in getattr(corpus, cfg.split) if d]
  if not docs:
    raise ValueError(f"{source} has no {cfg.split} documents (check val_fraction)")
  return docs


def read_problems(path: str) -> list[generative.Problem]:
  """Problems of a JSONL file: `prompt`, `answer` (or `response`, as `tasks.write_sft_jsonl`
  writes), optional `kind`, `rationale` and `subquestions` (a list of strings)."""
  out = []
  for where, record in formats.iter_jsonl(path):
    answer = record.get("answer", record.get("response"))
    if not isinstance(record.get("prompt"), str) or not isinstance(answer, str):
      raise ValueError(f"{where}: needs string fields 'prompt' and 'answer' (or 'response')")
    subqs = record.get("subquestions", [])
    if not isinstance(subqs, list) or not all(isinstance(s, str) for s in subqs):
      raise ValueError(f"{where}: field 'subquestions' must be a list of strings")
    out.append(generative.Problem(record["prompt"], answer, str(record.get("kind", "")),
                                  str(record.get("rationale", "")), tuple(subqs)))
  return out


def problems_and_pool(cfg: ml_collections.ConfigDict) -> tuple[list, list | None]:
  """The problems to evaluate and the few-shot pool (None: the problems themselves)."""
  kind, _, arg = cfg.source.partition(":")
  if kind == "task":
    train, heldout = tasks.train_and_heldout(arg, cfg.task)
    as_problem = lambda e: generative.Problem(e.prompt, e.answer, e.kind)  # noqa: E731
    return [as_problem(e) for e in _limit(heldout, cfg)], [as_problem(e) for e in train]
  if kind == "jsonl":
    return _limit(read_problems(arg), cfg), None
  raise ValueError(f"a {cfg.kind} task reads task:KINDS or jsonl:PATH, got {cfg.source!r}")


def _limit(items: list, cfg: ml_collections.ConfigDict) -> list:
  return items[:cfg.limit] if cfg.limit else items


def prompting_of(cfg: ml_collections.ConfigDict) -> generative.Prompting:
  """The `Prompting` described by `cfg.prompt` (all fields but `format`)."""
  fields = {f.name for f in dataclasses.fields(generative.Prompting)}
  values = {k: v for k, v in cfg.prompt.items() if k in fields}
  return generative.Prompting(**values, seed=cfg.seed, batch_size=cfg.batch_size)


def _questions(cfg: ml_collections.ConfigDict) -> list[multiple_choice.Question]:
  kind, _, arg = cfg.source.partition(":")
  if kind == "jsonl":
    return _limit(multiple_choice.read_questions(arg), cfg)
  if kind != "cloze":
    raise ValueError(f"a multiple_choice task reads cloze:SOURCE or jsonl:PATH, got "
                     f"{cfg.source!r}")
  m = cfg.multiple_choice
  text = "\n".join(corpus_docs(cfg, arg))
  return multiple_choice.cloze_from_text(
      text, cfg.limit or m.num_questions, cfg.seed, num_choices=m.num_choices,
      context_lines=m.context_lines, min_chars=m.min_chars, max_chars=m.max_chars)


def evaluate(workdir: str | Path, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Metrics and records of task `cfg` on the newest checkpoint of `workdir`."""
  if cfg.kind == "win_rate":
    w = cfg.win_rate
    problems, pool = problems_and_pool(cfg)
    metrics, records = win_rate.compare_runs(
        workdir, w.reference, w.reward_model, problems, prompting_of(cfg), fmt=cfg.prompt.format,
        pool=pool, tie_tolerance=w.tie_tolerance, interval=w.interval, confidence=w.confidence,
        resamples=w.resamples, seed=cfg.seed)
    return {"metrics": metrics, "records": records}
  run_cfg, tokenizer, graphdef, params = load_run(workdir)
  if cfg.kind == "perplexity":
    docs = _limit(corpus_docs(cfg, cfg.source), cfg)
    metrics = perplexity.perplexity(graphdef, params, tokenizer, docs,
                                    stride=cfg.perplexity.stride,
                                    max_tokens=cfg.perplexity.max_tokens,
                                    batch_size=cfg.batch_size)
    return {"metrics": metrics, "records": []}
  if cfg.kind == "multiple_choice":
    m = cfg.multiple_choice
    metrics, records = multiple_choice.evaluate(
        graphdef, params, tokenizer, _questions(cfg), num_fewshot=m.num_fewshot, seed=cfg.seed,
        separator=m.separator, batch_size=cfg.batch_size)
    return {"metrics": metrics, "records": records}
  problems, pool = problems_and_pool(cfg)
  renderer = prompting.renderer(cfg.prompt.format, tokenizer, run_cfg.chat,
                                STYLES[run_cfg.model.style])
  records = generative.answer(graphdef, params, renderer, problems,
                              prompting_of(cfg).for_run(run_cfg), pool=pool)
  return {"metrics": generative.exact_match_metrics(records), "records": records}


def latest_step(workdir: str | Path) -> int | None:
  """The step of the newest checkpoint in `workdir`."""
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def run(workdir: str | Path, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Evaluates, writes `workdir/eval/<cfg.name>.json` and returns what it wrote (plus the
  file's path under "path")."""
  workdir = Path(workdir)
  start = time.perf_counter()
  out = evaluate(workdir, cfg)
  result = {"task": cfg.name, "kind": cfg.kind, "workdir": str(workdir),
            "step": latest_step(workdir), "metrics": out["metrics"],
            "wall_s": round(time.perf_counter() - start, 2),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": configlib.to_dict(cfg), "records": out["records"]}
  path = workdir / "eval" / f"{cfg.name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  return {**result, "path": str(path)}


def format_table(result: dict[str, Any]) -> str:
  """The metrics of a result as a two-column text table."""
  rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v))
          for k, v in result["metrics"].items()]
  width = max(len(k) for k, _ in rows + [("metric", "")])
  vwidth = max(len(v) for _, v in rows + [("", "value")])
  lines = [f"{result['task']} ({result['kind']}) on {result['workdir']} step {result['step']}",
           f"{'metric':<{width}}  {'value':>{vwidth}}", f"{'-' * width}  {'-' * vwidth}"]
  lines += [f"{k:<{width}}  {v:>{vwidth}}" for k, v in rows]
  return "\n".join(lines)
