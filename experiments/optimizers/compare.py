"""Optimizers and schedules on nanoGPT's shakespeare_char CPU recipe, and warmup-stable-decay
cooldowns branched from one long run.

  python experiments/optimizers/compare.py [--out experiments/optimizers/runs] [--only NAME ...]

Every run is `configs/shakespeare_char.py:cpu` (4 layers, width 128, block 64, batch 12,
2000 steps) with the overrides below, evaluated on 50 validation batches. The `branch` runs
start from the step-800 checkpoint of `wsd_sqrt` (`train.branch_from`) and train on to
step 1000, so their last 200 steps are the cooldown of a 1000-step WSD run. Finished runs
are reused. Writes results.json next to the runs and prints a markdown table.
"""

from __future__ import annotations


from jaxlm.scaling import variants

COMMON = ("train.progress=False", "train.eval_batches=50", "train.ckpt_every=400",
          "train.keep_checkpoints=10")
# name -> overrides of the recipe (AdamW lr 1e-3, cosine to 1e-4 after 100 warmup steps)
RUNS: dict[str, tuple[str, ...]] = {
    "adamw_1e-3": (),
    "adamw_2e-3": ("optim.lr=2e-3", "optim.min_lr=2e-4"),
    "adamw_4e-3": ("optim.lr=4e-3", "optim.min_lr=4e-4"),
    "adamw_8e-3": ("optim.lr=8e-3", "optim.min_lr=8e-4"),
    "lion_1e-4": ("optim.name=lion", "optim.lr=1e-4", "optim.min_lr=1e-5"),
    "lion_3e-4": ("optim.name=lion", "optim.lr=3e-4", "optim.min_lr=3e-5"),
    "lion_1e-3": ("optim.name=lion", "optim.lr=1e-3", "optim.min_lr=1e-4"),
    "lion_3e-3": ("optim.name=lion", "optim.lr=3e-3", "optim.min_lr=3e-4"),
    "adafactor_2e-2": ("optim.name=adafactor", "optim.lr=2e-2", "optim.min_lr=2e-3"),
    "adafactor_5e-2": ("optim.name=adafactor", "optim.lr=5e-2", "optim.min_lr=5e-3"),
    "adafactor_1e-1": ("optim.name=adafactor", "optim.lr=1e-1", "optim.min_lr=1e-2"),
    "muon_1e-3": ("optim.name=muon",),
    "muon_3e-3": ("optim.name=muon", "optim.lr=3e-3", "optim.min_lr=3e-4"),
    "muon_1e-2": ("optim.name=muon", "optim.lr=1e-2", "optim.min_lr=1e-3"),
    "muon_3e-2": ("optim.name=muon", "optim.lr=3e-2", "optim.min_lr=3e-3"),
    "wsd_linear": ("optim.schedule=wsd",),
    "wsd_sqrt": ("optim.schedule=wsd", "optim.cooldown_shape=sqrt"),
    "adamw_1e-3_1000": ("train.steps=1000",),
    "wsd_sqrt_1000": ("optim.schedule=wsd", "optim.cooldown_shape=sqrt", "train.steps=1000"),
}
# name -> (the run whose checkpoint it starts from, that checkpoint's step, its overrides)
BRANCHES: variants.Branches = {
    "wsd_sqrt_branch_800_to_1000": ("wsd_sqrt", 800, RUNS["wsd_sqrt_1000"]),
}


def main() -> None:
  out, only = variants.parse_args(__doc__, "experiments/optimizers/runs", [*RUNS, *BRANCHES])
  results = variants.train_variants("configs/shakespeare_char.py:cpu", RUNS, out,
                                    common=COMMON, branches=BRANCHES, only=only)
  print(variants.markdown_table(results))


if __name__ == "__main__":
  main()
