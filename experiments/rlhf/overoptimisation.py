"""PPO against the task chain's learned reward model: the proxy reward against the verifier.

  python experiments/rlhf/overoptimisation.py --run runs/rlhf/ppo_model --sft runs/rlhf/sft \
      --reward-model runs/rlhf/reward

Reads the run's held-out evaluations (reward-model score and verifier exact match of greedy
replies, every `rl.eval_every` iterations) and its training KL, plots both rewards against
iteration and KL (experiments/rlhf/overoptimisation.png), and measures the final policy with
`jaxlm eval`: exact match, and the win rate against the SFT run judged by the reward model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlm.eval import runner, task_config  # noqa: E402
from jaxlm.train.metrics import read_log  # noqa: E402


def curves(rows: list[dict], path: Path) -> None:
  """Held-out reward-model score and exact match against iteration and against KL to SFT."""
  evals = [r for r in rows if r["split"] == "eval"]
  kl = {r["step"]: r["kl"] for r in rows if r["split"] == "train"}
  steps = [r["step"] for r in evals]
  proxy, gold = [r["reward"] for r in evals], [r["exact_match"] for r in evals]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  # per-iteration KL is noisy, so the KL panel shows points, not a path
  for ax, x, label, line in ((axes[0], steps, "PPO iteration", "-"),
                             (axes[1], [kl.get(s, 0.0) for s in steps],
                              "KL to SFT (k1, nats/response, that iteration's rollouts)", "")):
    ax.plot(x, proxy, "o" + line, color="C0", label="reward-model score (proxy)")
    ax.set(xlabel=label, ylabel="reward-model score")
    twin = ax.twinx()
    twin.plot(x, gold, "s" + line, color="C3", label="verifier exact match (true)")
    twin.set(ylabel="exact match", ylim=(0, 1))
    ax.grid(alpha=0.3)
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower left")
  fig.suptitle("held-out prompts, greedy replies")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", default="runs/rlhf/ppo_model")
  p.add_argument("--sft", default="runs/rlhf/sft")
  p.add_argument("--reward-model", default="runs/rlhf/reward")
  p.add_argument("--plot", default="experiments/rlhf/overoptimisation.png")
  args = p.parse_args()
  run = Path(args.run)
  rows = read_log(run)
  curves(rows, Path(args.plot))
  train = [r for r in rows if r["split"] == "train"]
  results = {"evals": [{k: r[k] for k in ("step", "reward", "exact_match")}
                       for r in rows if r["split"] == "eval"],
             "rollout_reward_first5": float(np.mean([r["reward"] for r in train[:5]])),
             "rollout_reward_last5": float(np.mean([r["reward"] for r in train[-5:]])),
             "kl_last5": float(np.mean([r["kl"] for r in train[-5:]]))}
  for name, workdir in (("sft", args.sft), ("ppo", run)):
    results[f"{name}_exact_match"] = runner.run(
        workdir, task_config.load("task_exact_match", []))["metrics"]
  results["win_rate_vs_sft"] = runner.run(run, task_config.load("task_win_rate", [
      f"win_rate.reference={args.sft}", f"win_rate.reward_model={args.reward_model}"]))["metrics"]
  (run / "overoptimisation.json").write_text(json.dumps(results, indent=2))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
