"""Mixtures of experts against dense MLPs on nanoGPT's shakespeare_char CPU recipe.

  python experiments/moe/compare.py [--out experiments/moe/runs] [--only NAME ...]

Every run is `configs/shakespeare_char.py:cpu` (4 layers, width 128, block 64, batch 12,
2000 steps, AdamW lr 1e-3 cosine) with the overrides below, evaluated on 50 validation
batches. The mixtures keep the recipe's other settings; their router losses take the
defaults (balance 0.01, z 0) unless named. Finished runs are reused. Writes results.json next
to the runs (with each mixture's last logged balance loss, dropped share and MaxVio) and
prints a markdown table.
"""

from __future__ import annotations

import json

from jaxlm.models import moe
from jaxlm.scaling import variants
from jaxlm.train import metrics

COMMON = ("train.progress=False", "train.eval_batches=50")
EXPERTS = ("model.num_experts=8",)
# Switch's top-1: the expert's output weighted by its raw probability (renormalised over one
# pick it would be 1, and the router would learn from the balance loss alone).
TOP1 = ("model.experts_per_token=1", "model.moe_renormalize=False")
# name -> overrides. Per token, "dense" and "top1_8x512" run one 512-wide MLP (the mixture's
# 8x the MLP parameters); "top2_8x256" runs two 256-wide experts (the same work, 4x the MLP
# parameters); "top2_8x512" and "dense_1024" both run 1024 hidden units.
RUNS: dict[str, tuple[str, ...]] = {
    "dense": (),
    "top1_8x512": (*EXPERTS, *TOP1),
    "top2_8x256": (*EXPERTS, "model.experts_per_token=2", "model.mlp_dim=256"),
    "top2_8x512": (*EXPERTS, "model.experts_per_token=2"),
    "dense_1024": ("model.mlp_dim=1024",),
    # With a capacity of 1.25x an expert's even share (Switch's setting): batched matmuls
    # instead of grouped ones, some assignments dropped.
    "top1_8x512_cf1.25": (*EXPERTS, *TOP1, "model.moe_capacity_factor=1.25"),
    "top2_8x256_cf1.25": (*EXPERTS, "model.experts_per_token=2", "model.mlp_dim=256",
                          "model.moe_capacity_factor=1.25"),
    # A 256-wide shared expert every token runs through, plus 1 of 8 256-wide routed ones:
    # top2_8x256's work per token (DeepSeekMoE's shared-expert isolation), and with
    # Qwen2-MoE's sigmoid gate on the shared expert.
    "shared256_top1_8x256": (*EXPERTS, *TOP1, "model.mlp_dim=256",
                             "model.shared_expert_dim=256"),
    "shared256g_top1_8x256": (*EXPERTS, *TOP1, "model.mlp_dim=256",
                              "model.shared_expert_dim=256", "model.shared_expert_gate=True"),
    # Switch / GShard's layout: top2_8x256 in every other block only, the recipe's 512-wide
    # dense MLP in the others (the same work per token).
    "top2_8x256_every2": (*EXPERTS, "model.experts_per_token=2", "model.mlp_dim=256",
                          "model.moe_every=2", "model.moe_dense_mlp_dim=512"),
    # top2_8x256_cf1.25 without the balance loss, and without it but with DeepSeek-V3's
    # auxiliary-loss-free router bias (its rate, 1e-3 a step).
    "top2_8x256_cf1.25_noaux": (*EXPERTS, "model.experts_per_token=2", "model.mlp_dim=256",
                                "model.moe_capacity_factor=1.25", "model.router_aux_coef=0"),
    "top2_8x256_cf1.25_auxfree": (*EXPERTS, "model.experts_per_token=2", "model.mlp_dim=256",
                                  "model.moe_capacity_factor=1.25", "model.router_aux_coef=0",
                                  "model.router_bias=True", "optim.router_bias_rate=1e-3"),
}


def main() -> None:
  out, only = variants.parse_args(__doc__, "experiments/moe/runs", RUNS)
  results = variants.train_variants("configs/shakespeare_char.py:cpu", RUNS, out,
                                    common=COMMON, only=only)
  for name in only:
    trains = [r for r in metrics.read_log(out / name) if r.get("split") == "train"]
    for key in (moe.BALANCE, moe.DROPPED, moe.MAX_VIOLATION):  # the last logged window's
      if key in trains[-1]:
        results[name][f"final_{key}"] = round(trains[-1][key], 4)
  (out / "results.json").write_text(json.dumps(results, indent=2))
  print(variants.markdown_table(results))
  for name, r in results.items():
    if f"final_{moe.BALANCE}" in r:
      print(f"{name}: balance loss {r[f'final_{moe.BALANCE}']} (k when balanced), dropped "
            f"{r.get(f'final_{moe.DROPPED}', 0.0)}, MaxVio {r.get(f'final_{moe.MAX_VIOLATION}')}")


if __name__ == "__main__":
  main()
