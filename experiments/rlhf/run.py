"""PPO and GRPO from the task chain's SFT run on the shipped verifiable tasks, measured.

  python experiments/rlhf/run.py --sft runs/task_sft [--preset cpu] [--out runs/rlhf]

For the SFT start and after each RL run: greedy exact match on the held-out prompts (overall
and per kind) and the mean verifier reward of temperature-1 samples on them. Training curves
(rollout reward per iteration and its 5-iteration mean, greedy held-out reward every
`rl.eval_every` iterations) go to experiments/rlhf/curves.png; the numbers to
<out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlm import config as configlib  # noqa: E402
from jaxlm.data import chat, tasks  # noqa: E402
from jaxlm.eval.tasks import greedy_answers  # noqa: E402
from jaxlm.rl import trainer  # noqa: E402
from jaxlm.rl.rewards import verifier_reward  # noqa: E402
from jaxlm.train.loop import load_trained  # noqa: E402
from jaxlm.train.metrics import read_log  # noqa: E402

ALGORITHMS = ("ppo", "grpo")
SMOOTH = 5


def measure(cfg, tokenizer, graphdef, params, heldout) -> dict:
  """Greedy exact match (tasks.score) and mean sampled reward at the rollout temperature."""
  template = chat.from_config(cfg.chat)
  answers = greedy_answers(graphdef, params, tokenizer, template, [e.prompt for e in heldout],
                           max_new_tokens=cfg.rl.max_new_tokens)
  sampled = trainer.evaluate(cfg, tokenizer, graphdef, params, heldout,
                             verifier_reward(tokenizer, template),
                             temperature=cfg.rl.temperature, seed=1)
  return {"exact_match": tasks.score(answers, heldout), "sampled_reward": sampled["reward"]}


def curves(runs: dict[str, Path], path: Path) -> None:
  """Rollout reward and greedy held-out reward against iteration, one colour per algorithm."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for (name, workdir), color in zip(runs.items(), ("C0", "C1")):
    rows = read_log(workdir)
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    steps, reward = [r["step"] for r in train], np.array([r["reward"] for r in train])
    axes[0].plot(steps, reward, color=color, alpha=0.3)
    smooth = np.convolve(reward, np.ones(SMOOTH) / SMOOTH, mode="valid")
    axes[0].plot(steps[SMOOTH - 1:], smooth, color=color,
                 label=f"{name.upper()} ({SMOOTH}-iteration mean)")
    axes[1].plot([r["step"] for r in evals], [r["reward"] for r in evals], "o-", color=color,
                 label=name.upper())
  axes[0].set(xlabel="iteration", ylabel="mean reward (rollouts, T=1)",
              title="training rollouts")
  axes[1].set(xlabel="iteration", ylabel="exact match (greedy)", title="held-out prompts")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sft", default="runs/task_sft", help="the task chain's SFT run")
  p.add_argument("--preset", default="cpu")
  p.add_argument("--out", default="runs/rlhf")
  p.add_argument("--plot", default="experiments/rlhf/curves.png")
  p.add_argument("overrides", nargs="*", help="config overrides key=value for both runs")
  args = p.parse_args()
  out = Path(args.out)
  results: dict = {"preset": args.preset, "sft": args.sft}
  runs = {}
  for name in ALGORITHMS:
    spec = f"configs/task_chain.py:{name}" + (f",{args.preset}" if args.preset else "")
    cfg = configlib.load(spec, [f"init_from={args.sft}", "train.progress=False",
                                *args.overrides])
    start = time.perf_counter()
    final = trainer.train(cfg, out / name)
    results[f"{name}_wall_s"] = round(time.perf_counter() - start, 1)
    results[f"{name}_last_iteration"] = {k: final[k] for k in (
        "reward", "kl", "entropy", "response_length", "rollout_tokens_per_sec",
        "time_rollout_s", "time_scoring_s", "time_update_s") if k in final}
    runs[name] = out / name
  _, heldout = tasks.train_and_heldout(cfg.data.source.partition(":")[2], cfg.task)
  results["heldout_prompts"] = len(heldout)
  sft_cfg, tokenizer, graphdef, params = load_trained(args.sft)
  results["sft"] = measure(cfg, tokenizer, graphdef, params, heldout)
  for name, workdir in runs.items():
    run_cfg, tokenizer, graphdef, params = trainer.load_policy(workdir)
    results[name] = measure(run_cfg, tokenizer, graphdef, params, heldout)
  curves(runs, Path(args.plot))
  (out / "results.json").write_text(json.dumps(results, indent=2))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
