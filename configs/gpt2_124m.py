"""GPT-2 124M (12 layers, 12 heads, width 768, context 1024) on a text corpus.

Default data is the embedded corpus with a 8192-piece BPE tokenizer trained on it; point
`data.source` at your own corpus (`text:PATH`, `jsonl:PATH`, `tfds:NAME`) and a tokenizer
(`data.tokenizer.path=gpt2.model` or a larger `data.tokenizer.vocab_size`).
Batch 64 x 1024 = 65k tokens per step; use `optim.grad_accum` for larger batches.
`:cpu` shrinks it to a 2-layer smoke run.
"""

from jaxlm.config import apply_preset, base_config, cpu_preset


def get_config(arg: str | None = None):
  c = base_config("gpt2-124m")
  c.data.update(seq_len=1024)
  c.data.tokenizer.update(kind="bpe", vocab_size=8192)
  c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=700, b2=0.95, weight_decay=0.1)
  c.train.steps = 20_000
  apply_preset(c, arg, {"cpu": cpu_preset})
  return c
