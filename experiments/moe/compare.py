"""Mixtures of experts against dense MLPs on nanoGPT's shakespeare_char CPU recipe.

  python experiments/moe/compare.py [--out experiments/moe/runs] [--only NAME ...]

Every run is `configs/shakespeare_char.py:cpu` (4 layers, width 128, block 64, batch 12,
2000 steps, AdamW lr 1e-3 cosine) with the overrides below, evaluated on 50 validation
batches. The mixtures keep the recipe's other settings; their router losses take the
defaults (balance 0.01, z 0). Finished runs are reused. Writes results.json next to the runs
(with each run's last logged balance loss) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxlm.models import moe
from jaxlm.scaling import variants
from jaxlm.train import metrics

COMMON = ("train.progress=False", "train.eval_batches=50")
EXPERTS = ("model.num_experts=8",)
# name -> overrides. Per token, "dense" and "top1_8x512" run one 512-wide MLP (the mixture's
# 8x the MLP parameters); "top2_8x256" runs two 256-wide experts (the same work, 4x the MLP
# parameters); "top2_8x512" and "dense_1024" both run 1024 hidden units.
RUNS: dict[str, tuple[str, ...]] = {
    "dense": (),
    "top1_8x512": (*EXPERTS, "model.experts_per_token=1"),
    "top2_8x256": (*EXPERTS, "model.experts_per_token=2", "model.mlp_dim=256"),
    "top2_8x512": (*EXPERTS, "model.experts_per_token=2"),
    "dense_1024": ("model.mlp_dim=1024",),
}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="experiments/moe/runs")
  p.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS))
  args = p.parse_args()
  out = Path(args.out)
  results = variants.train_variants("configs/shakespeare_char.py:cpu", RUNS, out,
                                    common=COMMON, only=args.only)
  for name in args.only:
    trains = [r for r in metrics.read_log(out / name) if r.get("split") == "train"]
    if moe.BALANCE in trains[-1]:
      results[name]["final_balance_loss"] = round(trains[-1][moe.BALANCE], 4)
  (out / "results.json").write_text(json.dumps(results, indent=2))
  print(variants.markdown_table(results))
  for name, r in results.items():
    if "final_balance_loss" in r:
      print(f"{name}: balance loss {r['final_balance_loss']} (k when balanced)")


if __name__ == "__main__":
  main()
