"""PPO iteration time split (rollout / scoring / update) at the rollout benchmark's shape.

A GPT-2 124M-shaped policy (vocab 50304, random weights, so no reply stops early) runs a few
PPO iterations on the shipped tasks' prompts with a synthetic reward: 64 prompts per
iteration, 256 new tokens at temperature 1, two epochs of minibatches of 16. The figures are
medians over the iterations after the first (which compiles), from the run's metrics.

  python benchmarks/ppo_iteration.py            # the GPU shape
  python benchmarks/ppo_iteration.py --tiny     # a CPU-sized shape (2 layers, 16 new tokens)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import jax

from jaxlm import config as configlib
from jaxlm.rl import trainer
from jaxlm.train.metrics import read_log

SHAPE = ["objective=ppo", "data.source=task:all", "data.tokenizer.kind=char",
         "data.tokenizer.vocab_size=0", "data.tokenizer.num_sentinels=0",
         "model.vocab_size=50304", "rl.reward=token_count", "rl.reward_token=1",
         "rl.prompt_len=64", "rl.eval_every=0", "train.progress=False", "train.ckpt_every=0",
         "train.async_checkpoints=False"]
FULL = ["rl.prompts_per_iter=64", "rl.minibatch_size=16", "rl.epochs=2",
        "rl.max_new_tokens=256"]
TINY = ["rl.prompts_per_iter=8", "rl.minibatch_size=4", "rl.epochs=2", "rl.max_new_tokens=16"]
SPLIT = ("time_rollout_s", "time_scoring_s", "time_update_s", "time_iteration_s")


def measure(tiny: bool, iterations: int) -> dict:
  """Runs the iterations in a temporary workdir; returns the median split and context."""
  preset = "configs/gpt2_124m.py:cpu" if tiny else "configs/gpt2_124m.py"
  cfg = configlib.load(preset, SHAPE + (TINY if tiny else FULL) + [f"train.steps={iterations}"])
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train(cfg, workdir)
    rows = read_log(workdir)
  timed = [r for r in rows if r["split"] == "train"][1:]
  out = {k: round(statistics.median(r[k] for r in timed), 3) for k in SPLIT}
  out.update(rollout_tokens_per_sec=round(statistics.median(r["rollout_tokens_per_sec"]
                                                            for r in timed)),
             response_length=timed[-1]["response_length"], iterations_timed=len(timed),
             device=jax.devices()[0].device_kind, shape="tiny" if tiny else "gpt2-124m")
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tiny", action="store_true", help="the 2-layer :cpu model, 16 new tokens")
  p.add_argument("--iterations", type=int, default=5)
  args = p.parse_args()
  if args.iterations < 2:
    raise SystemExit("--iterations must be >= 2 (the first one compiles and is not timed)")
  print(measure(args.tiny, args.iterations))


if __name__ == "__main__":
  main()
