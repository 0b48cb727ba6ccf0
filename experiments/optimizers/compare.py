"""Optimizers and schedules on nanoGPT's shakespeare_char CPU recipe, and warmup-stable-decay
cooldowns branched from one long run.

  python experiments/optimizers/compare.py [--out experiments/optimizers/runs] [--only NAME ...]

Every run is `configs/shakespeare_char.py:cpu` (4 layers, width 128, block 64, batch 12,
2000 steps) with the overrides below, evaluated on 50 validation batches. The `branch` runs
start from the step-800 checkpoint of `wsd_sqrt` (`train.branch_from`) and train on to
step 1000, so their last 200 steps are the cooldown of a 1000-step WSD run. Finished runs
are reused. Writes results.json next to the runs and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jaxlm import config as configlib
from jaxlm.scaling.sweep import metrics_summary
from jaxlm.train import loop

COMMON = ("train.progress=False", "train.eval_batches=50", "train.ckpt_every=400",
          "train.keep_checkpoints=10")
# name -> overrides of the recipe (AdamW lr 1e-3, cosine to 1e-4 after 100 warmup steps)
RUNS: dict[str, tuple[str, ...]] = {
    "adamw_1e-3": (),
    "adamw_2e-3": ("optim.lr=2e-3", "optim.min_lr=2e-4"),
    "adamw_4e-3": ("optim.lr=4e-3", "optim.min_lr=4e-4"),
    "adamw_8e-3": ("optim.lr=8e-3", "optim.min_lr=8e-4"),
    "lion_1e-4": ("optim.name=lion", "optim.lr=1e-4", "optim.min_lr=1e-5"),
    "lion_3e-4": ("optim.name=lion", "optim.lr=3e-4", "optim.min_lr=3e-5"),
    "lion_1e-3": ("optim.name=lion", "optim.lr=1e-3", "optim.min_lr=1e-4"),
    "lion_3e-3": ("optim.name=lion", "optim.lr=3e-3", "optim.min_lr=3e-4"),
    "adafactor_2e-2": ("optim.name=adafactor", "optim.lr=2e-2", "optim.min_lr=2e-3"),
    "adafactor_5e-2": ("optim.name=adafactor", "optim.lr=5e-2", "optim.min_lr=5e-3"),
    "adafactor_1e-1": ("optim.name=adafactor", "optim.lr=1e-1", "optim.min_lr=1e-2"),
    "muon_1e-3": ("optim.name=muon",),
    "muon_3e-3": ("optim.name=muon", "optim.lr=3e-3", "optim.min_lr=3e-4"),
    "muon_1e-2": ("optim.name=muon", "optim.lr=1e-2", "optim.min_lr=1e-3"),
    "muon_3e-2": ("optim.name=muon", "optim.lr=3e-2", "optim.min_lr=3e-3"),
    "wsd_linear": ("optim.schedule=wsd",),
    "wsd_sqrt": ("optim.schedule=wsd", "optim.cooldown_shape=sqrt"),
    "adamw_1e-3_1000": ("train.steps=1000",),
    "wsd_sqrt_1000": ("optim.schedule=wsd", "optim.cooldown_shape=sqrt", "train.steps=1000"),
}
# name -> (the run whose checkpoint it starts from, that checkpoint's step, its overrides)
BRANCHES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "wsd_sqrt_branch_800_to_1000": ("wsd_sqrt", 800, RUNS["wsd_sqrt_1000"]),
}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="experiments/optimizers/runs")
  names = [*RUNS, *BRANCHES]
  p.add_argument("--only", nargs="*", default=names, choices=names)
  args = p.parse_args()
  out = Path(args.out)
  results_path = out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.is_file() else {}
  for name in args.only:
    overrides = RUNS.get(name, ())
    if name in BRANCHES:
      source, step, overrides = BRANCHES[name]
      loop.train(configlib.load("configs/shakespeare_char.py:cpu", [*COMMON, *RUNS[source]]),
                 out / source)
      overrides = (*overrides, f"train.branch_from={out / source}:{step}")
    cfg = configlib.load("configs/shakespeare_char.py:cpu", [*COMMON, *overrides])
    done_before = loop.finished_step(out / name) == cfg.train.steps
    start = time.perf_counter()
    final = loop.train(cfg, out / name)
    wall_s = round(time.perf_counter() - start, 1)
    evals = metrics_summary(out / name)
    results[name] = {"overrides": list(overrides), "steps": cfg.train.steps,
                     "best_eval_loss": round(evals["best_eval_loss"], 4),
                     "final_eval_loss": round(evals["final_eval_loss"], 4),
                     "final_train_loss": final.get("train_loss"),
                     "wall_s": results.get(name, {}).get("wall_s") if done_before else wall_s}
    print(name, json.dumps(results[name]), flush=True)
    results_path.write_text(json.dumps(results, indent=2))
  print("| run | steps | final eval loss | best eval loss | wall s |\n|---|---|---|---|---|")
  for name, r in results.items():
    print(f"| {name} | {r['steps']} | {r['final_eval_loss']:.4f} | {r['best_eval_loss']:.4f} | "
          f"{r['wall_s']} |")


if __name__ == "__main__":
  main()
