"""Running a sweep: each run an ordinary `train` in ROOT/<run name>, resumable, one table.

A finished run leaves ROOT/<run>/sweep_result.json (its table row) and is skipped when the
sweep runs again; an interrupted run has a checkpoint and `train` resumes it. Runs go one
after another here, or `commands()` gives one `jaxlm train` line per run for a scheduler
(e.g. a SLURM array); rerunning the sweep afterwards collects their rows into the table.
"""

from __future__ import annotations

import json
import shlex
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import ml_collections

from jaxlm import config as configlib
from jaxlm.scaling import plan as plan_lib
from jaxlm.scaling import table as table_lib
from jaxlm.train import metrics as metrics_lib

RESULT_FILE = "sweep_result.json"
WALL_FILE = "sweep_wall.json"


def prepare(sweep: ml_collections.ConfigDict, root: Path) -> tuple[list[plan_lib.Run], list[str]]:
  """The sweep's runs, each pinned to the shared tokenizer saved under ROOT."""
  tokenizer, path = plan_lib.sweep_tokenizer(sweep, root)
  return plan_lib.plan(sweep, tokenizer.vocab_size, [f"data.tokenizer.path={path.resolve()}"])


def commands(sweep: ml_collections.ConfigDict, root: str | Path) -> list[str]:
  """One `jaxlm train` command per run (shell-quoted), for a cluster scheduler."""
  if sweep.cooldown_fraction:
    raise ValueError("a cooldown sweep's runs start from each other's checkpoints, so they "
                     "cannot be independent jobs: run it with `jaxlm sweep` (no --print-commands)")
  root = Path(root)
  runs, _ = prepare(sweep, root)
  return [" ".join(["jaxlm", "train", "--config", shlex.quote(sweep.train_config), "--workdir",
                    shlex.quote(str(root / r.name)),
                    *(shlex.quote(f"--config.{o}") for o in r.overrides)]) for r in runs]


def metrics_summary(workdir: Path) -> dict[str, float]:
  """Final and best eval loss, last train loss and steady tokens/s from a run's metrics.jsonl."""
  records = metrics_lib.read_log(workdir)
  evals = [r for r in records if r.get("split") == "eval"]
  trains = [r for r in records if r.get("split") == "train"]
  if not evals:
    raise ValueError(f"{workdir} has no eval metrics; the run did not finish")
  speeds = [r["tokens_per_sec"] for r in trains if "tokens_per_sec" in r]
  steady = speeds[1:] if len(speeds) > 1 else speeds  # the first window includes compilation
  return dict(final_eval_loss=evals[-1]["loss"], best_eval_loss=min(r["loss"] for r in evals),
              final_train_loss=trains[-1]["loss"] if trains else float("nan"),
              tokens_per_sec=statistics.median(steady) if steady else float("nan"))


def _row(run: plan_lib.Run, workdir: Path, config_hash: str) -> dict[str, Any]:
  wall = _read_wall(workdir)
  return dict(run=run.name, compute_budget=run.budget if run.kind == "isoflop" else float("nan"),
              params_total=run.params_total,
              params_nonembed=run.params_nonembed, tokens=run.tokens, steps=run.steps,
              compute=run.compute, **metrics_summary(workdir),
              wall_s=wall if wall else float("nan"), config_hash=config_hash)


def _read_wall(workdir: Path) -> float:
  path = workdir / WALL_FILE
  return json.loads(path.read_text())["wall_s"] if path.is_file() else 0.0


def _finished_row(workdir: Path, resolved: dict, name: str) -> dict[str, Any] | None:
  """The stored row of a run the sweep finished; an error if its config has changed since."""
  path = workdir / RESULT_FILE
  if not path.is_file():
    return None
  stored = json.loads(path.read_text())
  diffs = plan_lib.config_differences(stored["config"], resolved)
  if diffs:
    raise ValueError(f"run {name} in {workdir} finished with another config ("
                     + "; ".join(diffs[:5]) + "); use a new sweep folder")
  return stored["row"]


def _finished_elsewhere(workdir: Path, run: plan_lib.Run, resolved: dict) -> bool:
  """Whether `jaxlm train` (e.g. a scheduler's job) completed this run outside the sweep:
  its saved config is the planned one and it logged the final evaluation."""
  config_file = workdir / "config.json"
  if not config_file.is_file():
    return False
  if plan_lib.config_differences(json.loads(config_file.read_text()), resolved):
    return False
  return any(r.get("split") == "eval" and r.get("step") == run.steps
             for r in metrics_lib.read_log(workdir))


def _record(workdir: Path, row: dict[str, Any], resolved: dict) -> None:
  (workdir / RESULT_FILE).write_text(json.dumps({"row": row, "config": resolved}))


def _timed_train(cfg: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  """`train(cfg, workdir)`, its wall time added to the workdir's (interrupted or not)."""
  from jaxlm.train.loop import train
  start = time.perf_counter()
  try:
    return train(cfg, workdir)
  finally:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / WALL_FILE).write_text(json.dumps(
        {"wall_s": _read_wall(workdir) + time.perf_counter() - start}))


def _seed_branch(sweep: ml_collections.ConfigDict, run: plan_lib.Run, trunk: plan_lib.Run,
                 root: Path, log: Callable[[str], None]) -> tuple[str | None, bool]:
  """Puts the trunk's checkpoint at `run.branch_step` into the branch's workdir, first training
  the trunk up to that step when it is not there yet. Returns (the signal that interrupted the
  trunk, if one did; whether the branch trains in full: when the trunk has passed that step
  without keeping its checkpoint, the branch is left to train from scratch, the same run at
  full cost)."""
  from jaxlm.train.checkpoint import checkpoint_steps, copy_checkpoint
  workdir, trunk_dir, step = root / run.name, root / trunk.name, run.branch_step
  if checkpoint_steps(workdir):
    return None, False  # seeded before, or resuming
  have = checkpoint_steps(trunk_dir)
  if not have or max(have) < step:
    log(f"  trunk {trunk.name}: training to step {step}, where {run.name} cools down")
    result = _timed_train(configlib.load(sweep.train_config,
                                         [*trunk.overrides, f"train.steps={step}"]), trunk_dir)
    if "stopped_by" in result:
      return result["stopped_by"], False
    have = checkpoint_steps(trunk_dir)
  if step not in have:
    log(f"  trunk {trunk.name} kept no checkpoint at step {step}: {run.name} trains in full")
    return None, True
  copy_checkpoint(trunk_dir, step, workdir)
  return None, False


def run_sweep(sweep: ml_collections.ConfigDict, root: str | Path, *, limit: int | None = None,
              log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], str | None]:
  """Runs the sweep's unfinished runs in order (at most `limit` of them) and writes the table.

  Returns (table rows of finished runs, why it stopped early: None, "limit" or the signal
  that interrupted a run).
  """
  root = Path(root)
  runs, notes = prepare(sweep, root)
  by_name = {r.name: r for r in runs}
  for note in notes:
    log(note)
  rows, trained, stopped, in_full = [], 0, None, set()
  for i, run in enumerate(runs):
    workdir = root / run.name
    cfg = plan_lib.run_config(sweep, run)
    resolved = configlib.to_dict(cfg)
    config_hash = plan_lib.config_hash(cfg)
    row = _finished_row(workdir, resolved, run.name)
    if row is None and _finished_elsewhere(workdir, run, resolved):
      row = _row(run, workdir, config_hash)
      _record(workdir, row, resolved)
    if row is not None:
      log(f"[{i + 1}/{len(runs)}] {run.name}: finished, skipped")
      rows.append(row)
      continue
    if limit is not None and trained >= limit:  # keep scanning for runs finished elsewhere
      stopped = "limit"
      continue
    log(f"[{i + 1}/{len(runs)}] {run.name}: N={run.params_total:,} D={run.tokens:,} "
        f"C={run.compute:.3g} ({run.steps} steps"
        + (f", from {run.trunk}'s step {run.branch_step})" if run.trunk else ")"))
    stopped, full = (_seed_branch(sweep, run, by_name[run.trunk], root, log) if run.trunk
                     else (None, False))
    if full:
      in_full.add(run.name)
    result = {"stopped_by": stopped} if stopped else _timed_train(cfg, workdir)
    trained += 1
    if "stopped_by" in result:
      stopped = result["stopped_by"]
      log(f"{stopped}: {run.name} interrupted; rerun the sweep to resume it")
      break
    row = _row(run, workdir, config_hash)
    _record(workdir, row, resolved)
    rows.append(row)
    table_lib.write_table(rows, root)
  if sweep.cooldown_fraction:
    steps = sum(r.steps if r.name in in_full else r.trained_steps for r in runs)
    log(f"cooldown sweep: {steps:,} steps trained for the {sum(r.steps for r in runs):,} of "
        f"separate runs")
  if stopped == "limit":
    log(f"stopped after {trained} runs (limit); rerun to continue")
  if rows:
    csv_path, _ = table_lib.write_table(rows, root)
    log(f"table: {csv_path} ({len(rows)} of {len(runs)} runs finished)")
  return rows, stopped
