"""SFT with full fine-tuning, LoRA and DoRA from one pretrained model: which gets closest?

  python experiments/post_training/peft_variants.py [--preset cpu] [--out experiments/post_training/runs]

Trains (or reuses) the chain's pretrain stage in `--out`, then one SFT run per variant below
from it, on the same data, steps and seed, with held-out SFT loss evaluated at the end, and
measures greedy exact match on held-out prompts. Writes peft_variants.json next to the runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpo_variants import last_eval
from run import chain_parser, heldout_prompts, train_stage

from jaxlm.eval.tasks import exact_match
from jaxlm.models.stacking import flatten
from jaxlm.peft import lora
from jaxlm.train import loop

ALL_LINEARS = r"attn/(query|key|value|out)$|mlp/(up|down)$"
# name -> overrides of the chain's sft stage (full fine-tuning at lr 9e-4 on the cpu preset).
VARIANTS: dict[str, tuple[str, ...]] = {
    "full_ft": (),
    **{f"{kind}_r{rank}": ("peft.method=lora", f"peft.rank={rank}", f"peft.alpha={2 * rank}",
                           f"peft.targets={ALL_LINEARS}", f"peft.use_dora={kind == 'dora'}",
                           "optim.lr=3e-3")
       for rank in (2, 8) for kind in ("lora", "dora")},
}


def trainable_count(workdir: Path) -> int:
  """Parameters the run trained: its LoRA / DoRA leaves, or all of them (full fine-tuning)."""
  params = flatten(loop.load_trained(workdir)[3])
  added = [x.size for k, x in params.items() if k.rsplit("/", 1)[-1] in lora.LEAVES]
  return sum(added) if added else sum(x.size for x in params.values())


def main() -> None:
  p = chain_parser(__doc__, VARIANTS)
  args = p.parse_args()
  out = Path(args.out)
  train_stage("pretrain", args.preset, out)
  heldout = heldout_prompts(args.preset)
  results = {"preset": args.preset, "heldout_prompts": len(heldout)}
  for name in args.only:
    run = f"sft_{name}"
    overrides = (*VARIANTS[name], "train.eval_every=500")
    _, wall_s = train_stage("sft", args.preset, out, overrides, run_name=run)
    results[run] = {"overrides": list(overrides), "wall_s": wall_s,
                    "trainable_params": trainable_count(out / run),
                    "heldout_loss": last_eval(out / run).get("loss"),
                    "exact_match": exact_match(out / run, heldout)}
    print(run, json.dumps(results[run]), flush=True)
  (out / "peft_variants.json").write_text(json.dumps(results, indent=2))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
