"""IsoFLOP sweep on CPU: char-level GPTs on the embedded Tiny Shakespeare, minutes on 2 cores.

Three compute budgets (1e10, 2e10, 3e10 FLOPs) x five sizes (3.4k to 22k parameters); for
each budget C a size N trains on D = C / 6N tokens (batch 8 x 64 characters, cosine
schedule over the run). Small enough for a CPU, too small to pin down the laws' constants:
see experiments/chinchilla_tiny/README.md.

  jaxlm sweep --config configs/sweeps/isoflop_tiny.py --workdir runs/isoflop_tiny
  jaxlm sweep --fit runs/isoflop_tiny/results.csv
"""

from jaxlm.scaling.plan import default_sweep


def get_config(arg: str | None = None):
  c = default_sweep()
  c.train_config = "configs/shakespeare_char.py:cpu"
  c.overrides = ("train.batch_size=8", "data.seq_len=64", "model.max_seq_len=64",
                 "model.dropout=0.0", "optim.lr=6e-3", "optim.min_lr=6e-4",
                 "train.eval_batches=16", "train.log_every=100", "train.progress=False",
                 "train.sample_every=0", "sample.num_samples=0", "train.async_checkpoints=False")
  c.kind = "isoflop"
  c.sizes = (dict(num_layers=1, embed_dim=8, num_heads=2, mlp_dim=32),
             dict(num_layers=1, embed_dim=12, num_heads=2, mlp_dim=48),
             dict(num_layers=1, embed_dim=16, num_heads=2, mlp_dim=64),
             dict(num_layers=2, embed_dim=16, num_heads=2, mlp_dim=64),
             dict(num_layers=2, embed_dim=24, num_heads=2, mlp_dim=96))
  c.compute_budgets = (1e10, 2e10, 3e10)
  c.min_steps = 25
  c.warmup_fraction = 0.1
  c.evals_per_run = 1
  c.ckpts_per_run = 2
  return c
