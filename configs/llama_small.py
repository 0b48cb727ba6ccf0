"""A small Llama-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head).

`llama-60m` (8 layers, width 512, 8 query / 4 key-value heads) with a unigram tokenizer
trained on the data. Set `data.source=tfds:NAME` (prepared in array_record format) or
`text:PATH` / `jsonl:PATH` for your own corpus. `:cpu` shrinks it to a smoke run.
"""

from jaxlm.config import apply_preset, base_config, cpu_preset


def get_config(arg: str | None = None):
  c = base_config("llama-60m")
  c.data.update(seq_len=1024)
  c.data.tokenizer.update(kind="unigram", vocab_size=8192)
  c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=500, b2=0.95, weight_decay=0.1)
  c.train.steps = 10_000
  apply_preset(c, arg, {"cpu": cpu_preset})
  return c
