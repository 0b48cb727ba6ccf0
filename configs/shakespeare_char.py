"""Character-level GPT on Tiny Shakespeare: nanoGPT's baby-GPT recipe.

Default: 6 layers, 6 heads, width 384, block 256, batch 64, dropout 0.2 (residual, embedding
and attention probabilities, as nanoGPT), lr 1e-3 (GPU). Attention dropout takes the XLA
attention path; `--config.model.attention_dropout=0` keeps cuDNN attention.
`:cpu`: nanoGPT's CPU recipe (4 layers, 4 heads, width 128, block 64, batch 12, 2000 steps).
"""

from jaxlm.config import apply_preset, base_config


def cpu(c):
  c.model.update(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512, max_seq_len=64,
                 dropout=0.0, attention_dropout=0.0)
  c.data.seq_len = 64
  c.train.update(steps=2000, batch_size=12, log_every=50, eval_every=500, eval_batches=20,
                 ckpt_every=500, sample_every=0)
  c.sample.update(max_new_tokens=300)


def get_config(arg: str | None = None):
  c = base_config("gpt2-124m")
  c.seed = 1337
  c.model.update(num_layers=6, num_heads=6, embed_dim=384, mlp_dim=1536, max_seq_len=256,
                 dropout=0.2, attention_dropout=0.2, use_bias=False)
  c.data.update(seq_len=256)
  c.data.tokenizer.update(kind="char", vocab_size=0)
  c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99)
  c.train.update(steps=5000, batch_size=64, log_every=10, eval_every=250, eval_batches=200,
                 ckpt_every=250, sample_every=1000)
  c.sample.update(prompt="\n", max_new_tokens=500)
  apply_preset(c, arg, {"cpu": cpu})
  return c
