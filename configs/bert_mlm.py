"""BERT-style masked-LM pre-training (Devlin et al. 2019): 15% of tokens selected, 80/10/10.

Default: bert-base (12 layers, width 768, post-LayerNorm), sequences of 512, batch 64, on the
embedded corpus with a 8192-piece BPE tokenizer (point `data.source` at your corpus).
`:cpu`: a 4-layer width-128 encoder on 128-token rows that learns in a few minutes.
"""

from jaxlm.config import apply_preset, base_config, short_cpu_run


def cpu(c):
  c.model.update(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512)
  short_cpu_run(c, lr=2e-3)


def get_config(arg: str | None = None):
  c = base_config("bert-base")
  c.objective = "mlm"
  c.data.update(seq_len=512)
  c.data.tokenizer.update(kind="bpe", vocab_size=8192)
  c.optim.update(lr=1e-4, min_lr=1e-5, warmup_steps=1000, b2=0.999, weight_decay=0.01)
  c.train.steps = 20_000
  apply_preset(c, arg, {"cpu": cpu})
  return c
