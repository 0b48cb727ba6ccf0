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

from jaxlm import config as configlib
from jaxlm.data import tasks
from jaxlm.eval.tasks import exact_match
from jaxlm.train import loop

STAGES = ("pretrain", "sft", "reward", "dpo")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="cpu", help="extra preset of configs/task_chain.py ('' for none)")
  p.add_argument("--out", default="experiments/post_training/runs")
  args = p.parse_args()
  out = Path(args.out)
  results: dict = {"preset": args.preset}
  finals = {}
  for name in STAGES:
    spec = f"configs/task_chain.py:{name}" + (f",{args.preset}" if args.preset else "")
    init = {"sft": "pretrain", "reward": "sft", "dpo": "sft"}.get(name)
    overrides = ["train.progress=False"] + ([f"init_from={out / init}"] if init else [])
    cfg = configlib.load(spec, overrides)
    start = time.perf_counter()
    finals[name] = loop.train(cfg, out / name)
    results[f"{name}_wall_s"] = round(time.perf_counter() - start, 1)
  task_cfg = configlib.load(f"configs/task_chain.py:sft,{args.preset}" if args.preset
                            else "configs/task_chain.py:sft").task
  _, heldout = tasks.train_and_heldout("all", task_cfg)
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
