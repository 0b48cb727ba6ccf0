"""SFT with full fine-tuning, LoRA and DoRA from one pretrained model: which gets closest?

  python experiments/post_training/peft_variants.py [--preset cpu] [--out experiments/post_training/runs]

Trains (or reuses) the chain's pretrain stage in `--out`, then one SFT run per variant below
from it, on the same data, steps and seed, with held-out SFT loss evaluated at the end, and
measures greedy exact match on held-out prompts. Writes peft_variants.json next to the runs
(keeping the variants measured before that this call does not name).
"""

from __future__ import annotations

import json
from pathlib import Path

from dpo_variants import last_eval
from run import chain_parser, heldout_prompts, train_stage

from jaxlm.eval.tasks import exact_match
from jaxlm import peft
from jaxlm.train import loop, sharding

ALL_LINEARS = r"attn/(query|key|value|out)$|mlp/(up|down)$"
# name -> overrides of the chain's sft stage (full fine-tuning at lr 9e-4 on the cpu preset).
VARIANTS: dict[str, tuple[str, ...]] = {
    "full_ft": (),
    **{f"{kind}_r{rank}": ("peft.method=lora", f"peft.rank={rank}", f"peft.alpha={2 * rank}",
                           f"peft.targets={ALL_LINEARS}", f"peft.use_dora={kind == 'dora'}",
                           "optim.lr=3e-3")
       for rank in (2, 8) for kind in ("lora", "dora")},
}
# The same rank-8 adapters with the (tied) token embedding trained beside them: the chat
# template's role tokens never occurred in pretraining, so their rows are untrained there.
VARIANTS.update({f"{name}_embed": (*VARIANTS[name], "peft.include=^embed/embedding$")
                 for name in ("lora_r8", "dora_r8")})
# Only those rows: the chat template's tokens (PEFT's trainable_token_indices).
VARIANTS["lora_r8_chat_rows"] = (*VARIANTS["lora_r8"], "peft.trainable_tokens=chat")


def trainable_count(workdir: Path) -> int:
  """Parameters the run trained (by its saved config's PEFT settings)."""
  cfg, _, _, params = loop.load_trained(workdir)
  setup = loop.build_model(cfg, params["embed"]["embedding"].shape[0],
                          sharding.make_mesh(cfg.mesh))
  return peft.counts(params, setup.trainable)[0]


def main() -> None:
  p = chain_parser(__doc__, VARIANTS)
  args = p.parse_args()
  out = Path(args.out)
  train_stage("pretrain", args.preset, out)
  heldout = heldout_prompts(args.preset)
  table = out / "peft_variants.json"  # runs of this preset measured before are kept
  earlier = json.loads(table.read_text()) if table.is_file() else {}
  results = {**(earlier if earlier.get("preset") == args.preset else {}),
             "preset": args.preset, "heldout_prompts": len(heldout)}
  for name in args.only:
    run = f"sft_{name}"
    overrides = (*VARIANTS[name], "train.eval_every=500")
    _, wall_s = train_stage("sft", args.preset, out, overrides, run_name=run)
    results[run] = {"overrides": list(overrides), "wall_s": wall_s,
                    "trainable_params": trainable_count(out / run),
                    "heldout_loss": last_eval(out / run).get("loss"),
                    "exact_match": exact_match(out / run, heldout)}
    print(run, json.dumps(results[run]), flush=True)
  table.write_text(json.dumps(results, indent=2))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
