"""Named variants of one recipe, trained side by side and tabulated: an experiment's runs.

`train_variants(recipe, runs, out)` trains every named override set of the config `recipe`
(a `configs/...py[:preset]` spec) in `out/NAME`, reusing finished runs, and keeps each run's
final and best eval loss, final train loss, steady tokens/s, parameter counts and wall time
in `out/results.json`. A branch starts from another variant's checkpoint
(`train.branch_from`), e.g. a WSD cooldown from a long run's stable phase.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Mapping, Sequence

from jaxlm import config as configlib
from jaxlm.scaling.sweep import metrics_summary
from jaxlm.train import loop

# name -> (the variant whose checkpoint it starts from, that checkpoint's step, its overrides)
Branches = Mapping[str, tuple[str, int, Sequence[str]]]


def parse_args(doc: str, default_out: str, names: Sequence[str]) -> tuple[Path, list[str]]:
  """(--out, --only) of an experiment script whose usage is `doc`: where its runs go and which
  of the variants `names` to train (default: all)."""
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=default_out)
  p.add_argument("--only", nargs="*", default=list(names), choices=list(names))
  args = p.parse_args()
  return Path(args.out), args.only


def train_variants(recipe: str, runs: Mapping[str, Sequence[str]], out: Path, *,
                   common: Sequence[str] = (), branches: Branches | None = None,
                   only: Sequence[str] | None = None) -> dict[str, dict]:
  """Trains the variants named in `only` (default: every run, then every branch) of
  `recipe` with `common` + their own overrides; returns results.json's content."""
  branches = branches or {}
  results_path = out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.is_file() else {}
  for name in only if only is not None else [*runs, *branches]:
    overrides = list(runs.get(name, ()))
    if name in branches:
      source, step, overrides = branches[name]
      loop.train(configlib.load(recipe, [*common, *runs[source]]), out / source)
      overrides = [*overrides, f"train.branch_from={out / source}:{step}"]
    cfg = configlib.load(recipe, [*common, *overrides])
    done_before = loop.finished_step(out / name) == cfg.train.steps
    start = time.perf_counter()
    final = loop.train(cfg, out / name)
    wall_s = round(time.perf_counter() - start, 1)
    summary = metrics_summary(out / name)
    results[name] = {"overrides": overrides, "steps": cfg.train.steps,
                     "best_eval_loss": round(summary["best_eval_loss"], 4),
                     "final_eval_loss": round(summary["final_eval_loss"], 4),
                     "final_train_loss": final.get("train_loss"),
                     "tokens_per_sec": round(summary["tokens_per_sec"]),
                     "wall_s": results.get(name, {}).get("wall_s") if done_before else wall_s}
    print(name, json.dumps(results[name]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2))
  return results


def markdown_table(results: Mapping[str, dict]) -> str:
  """One row per variant: steps, final and best eval loss, tokens/s, wall time."""
  lines = ["| run | steps | final eval loss | best eval loss | tokens/s | wall s |",
           "|---|---|---|---|---|---|"]
  lines += [f"| {name} | {r['steps']} | {r['final_eval_loss']:.4f} | {r['best_eval_loss']:.4f} "
            f"| {r.get('tokens_per_sec', '')} | {r['wall_s']} |" for name, r in results.items()]
  return "\n".join(lines)
