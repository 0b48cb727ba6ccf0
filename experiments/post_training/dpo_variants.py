"""DPO-family variants (and KTO) from one SFT run: which keep the SFT policy's exact match?

  python experiments/post_training/dpo_variants.py [--preset cpu] [--out experiments/post_training/runs]

Trains (or reuses) the chain's pretrain and SFT stages in `--out`, then one preference run
per variant below from the same SFT run, on the same preference pairs and steps, and measures
greedy exact match on held-out prompts and the held-out implicit-reward accuracy. Writes
variants.json next to the runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from run import chain_parser, heldout_prompts, train_stage

from jaxlm.eval.tasks import exact_match
from jaxlm.train.metrics import read_log

# name -> dpo.* overrides of the chain's dpo stage (sigmoid DPO, beta 0.1).
VARIANTS: dict[str, tuple[str, ...]] = {
    "dpo_beta0.5": ("dpo.beta=0.5",),
    "rpo_beta0.5_alpha1": ("dpo.beta=0.5", "dpo.rpo_alpha=1.0"),
    "dpop_beta0.5_lambda50": ("dpo.loss=dpop", "dpo.beta=0.5", "dpo.dpop_lambda=50.0"),
    "ipo_beta0.5": ("dpo.loss=ipo", "dpo.beta=0.5"),
    "orpo_beta0.1": ("dpo.loss=orpo", "dpo.beta=0.1"),
    "simpo_beta2_gamma0.5": ("dpo.loss=simpo", "dpo.beta=2.0", "dpo.simpo_gamma=0.5"),
    # control: ORPO without its odds-ratio term is SFT on the chosen answers alone
    "chosen_nll_only": ("dpo.loss=orpo", "dpo.beta=0.0"),
    # the pairs as unpaired replies (a batch of 32 replies: 16 pairs' worth)
    "kto_beta0.1": ("objective=kto", "kto.beta=0.1"),
    "kto_beta0.5": ("objective=kto", "kto.beta=0.5"),
}


def last_eval(workdir: Path) -> dict:
  """The last held-out evaluation a run wrote to its metrics.jsonl."""
  return next((r for r in reversed(read_log(workdir)) if r["split"] == "eval"), {})


def main() -> None:
  p = chain_parser(__doc__, VARIANTS)
  p.add_argument("--seeds", nargs="*", type=int, default=[0],
                 help="preference-run seeds (the order of the pairs; the SFT start is shared)")
  args = p.parse_args()
  out = Path(args.out)
  for stage in ("pretrain", "sft"):
    train_stage(stage, args.preset, out)
  heldout = heldout_prompts(args.preset)
  results = {"preset": args.preset, "heldout_prompts": len(heldout),
             "sft": {"exact_match": exact_match(out / "sft", heldout)}}
  for name, seed in ((n, s) for s in args.seeds for n in args.only):
    run = f"{name}_seed{seed}"
    overrides = (*VARIANTS[name], f"seed={seed}")
    _, wall_s = train_stage("dpo", args.preset, out, overrides, run_name=run)
    held = last_eval(out / run)  # also there when the run was already complete
    results[run] = {
        "overrides": list(overrides), "wall_s": wall_s,
        "exact_match": exact_match(out / run, heldout),
        "heldout_implicit_reward_accuracy": held.get("rewards/accuracies"),
        "heldout_loss": held.get("loss"), "heldout_log_odds_ratio": held.get("log_odds_ratio"),
        "heldout_chosen_logp": held.get("logps/chosen"),
        "heldout_rejected_logp": held.get("logps/rejected")}
    print(run, json.dumps(results[run]), flush=True)
  (out / f"variants_seeds{'_'.join(map(str, args.seeds))}.json").write_text(json.dumps(results, indent=2))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
