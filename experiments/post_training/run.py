"""Runs the post-training chain on the shipped tasks and measures each stage.

  python experiments/post_training/run.py [--preset cpu] [--out experiments/post_training/runs]

Stages (configs/task_chain.py): pretrain -> SFT -> reward model -> DPO. Measures greedy
exact match on held-out prompts after pretraining (plain "Q: ... A:" prompts), after SFT and
after DPO (chat prompts), the reward model's held-out pair accuracy, and DPO's held-out
implicit-reward accuracy. Writes results.json next to the runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from jaxlm import config as configlib
from jaxlm.data import tasks
from jaxlm.eval.tasks import exact_match
from jaxlm.train import loop

STAGES = ("pretrain", "sft", "reward", "dpo")
INIT = {"sft": "pretrain", "reward": "sft", "dpo": "sft"}


def train_stage(name: str, preset: str, out: Path, overrides: tuple[str, ...] = (),
                run_name: str | None = None) -> tuple[dict, float]:
  """Trains (or resumes) stage `name` of configs/task_chain.py into out / (run_name or name),
  starting from the stage before it in `out`: (final metrics, wall seconds)."""
  spec = f"configs/task_chain.py:{name}" + (f",{preset}" if preset else "")
  init = INIT.get(name)
  start_from = [f"init_from={out / init}"] if init else []
  cfg = configlib.load(spec, ["train.progress=False", *start_from, *overrides])
  start = time.perf_counter()
  final = loop.train(cfg, out / (run_name or name))
  return final, round(time.perf_counter() - start, 1)


def heldout_prompts(preset: str) -> list:
  """The held-out task examples of the chain's task settings (never trained on)."""
  task_cfg = configlib.load("configs/task_chain.py:sft" + (f",{preset}" if preset else "")).task
  return tasks.train_and_heldout("all", task_cfg)[1]


def chain_parser(doc: str, variants: Sequence[str] = ()) -> argparse.ArgumentParser:
  """The command line of a script over the chain's runs: --preset, --out, and --only (a
  subset of `variants`, when it has some)."""
  p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="cpu", help="extra preset of configs/task_chain.py ('' for none)")
  p.add_argument("--out", default="experiments/post_training/runs")
  if variants:
    p.add_argument("--only", nargs="*", default=list(variants), choices=list(variants))
  return p


def main() -> None:
  args = chain_parser(__doc__).parse_args()
  out = Path(args.out)
  results: dict = {"preset": args.preset}
  finals = {}
  for name in STAGES:
    finals[name], results[f"{name}_wall_s"] = train_stage(name, args.preset, out)
  heldout = heldout_prompts(args.preset)
  results["heldout_prompts"] = len(heldout)
  results["exact_match_pretrain_plain_qa"] = exact_match(out / "pretrain", heldout, plain_qa=True)
  results["exact_match_sft"] = exact_match(out / "sft", heldout)
  results["exact_match_dpo"] = exact_match(out / "dpo", heldout)
  results["reward_heldout_accuracy"] = finals["reward"].get("eval_accuracy")
  results["dpo_heldout_implicit_reward_accuracy"] = finals["dpo"].get("eval_rewards/accuracies")
  results["dpo_heldout_loss"] = finals["dpo"].get("eval_loss")
  (out / "results.json").write_text(json.dumps(results, indent=2))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
