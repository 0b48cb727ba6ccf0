"""IsoFLOP sweep for one GPU on your corpus: GPT-2-style models of 5M to 65M parameters.

Three compute budgets (1e16, 3e16, 1e17 FLOPs) x seven sizes, context 512, batch 64 (32k
tokens per step), a BPE tokenizer of 8192 pieces trained once on the corpus. About 1e18
FLOPs in all: a few hours on one H100 (small models reach a low MFU).

The data source is the preset argument or $JAXLM_SWEEP_DATA (`text:PATH`, `jsonl:PATH`,
`tfds:NAME`); when neither is given or it cannot be read here (no network: e.g. a tfds
dataset that is not prepared), the sweep falls back to the embedded Tiny Shakespeare, which
is far too small for these budgets (hundreds of epochs): a smoke test of the sweep, not a law.

  jaxlm sweep --config configs/sweeps/isoflop_gpu.py:text:/data/corpus --workdir runs/isoflop
  jaxlm sweep --config configs/sweeps/isoflop_gpu.py:tfds:lm1b --print-commands > jobs.txt
"""

import os
import sys

from jaxlm.scaling.plan import default_sweep, unavailable_reason

FALLBACK = "embedded:tinyshakespeare"


def data_source(arg: str | None = None) -> str:
  """The requested data source if it can be read here, else the embedded corpus."""
  source = arg or os.environ.get("JAXLM_SWEEP_DATA") or FALLBACK
  why = unavailable_reason(source)
  if why:
    print(f"isoflop_gpu: {why}; falling back to {FALLBACK}", file=sys.stderr)
    return FALLBACK
  return source


def get_config(arg: str | None = None):
  c = default_sweep()
  c.train_config = "configs/gpt2_124m.py"
  c.overrides = (f"data.source={data_source(arg)}", "data.seq_len=512", "model.max_seq_len=512",
                 "data.tokenizer.kind=bpe", "data.tokenizer.vocab_size=8192",
                 "train.batch_size=64", "optim.lr=1.5e-3", "optim.min_lr=1.5e-4",
                 "train.eval_batches=50", "train.log_every=100", "train.sample_every=0",
                 "sample.num_samples=0")
  c.kind = "isoflop"
  c.sizes = tuple(dict(num_layers=layers, embed_dim=64 * heads, num_heads=heads,
                       mlp_dim=256 * heads)
                  for layers, heads in ((4, 4), (6, 5), (6, 6), (8, 7), (8, 8), (10, 9), (12, 10)))
  c.compute_budgets = (1e16, 3e16, 1e17)
  c.min_steps = 200
  c.warmup_fraction = 0.05
  c.evals_per_run = 4
  c.ckpts_per_run = 4
  return c
