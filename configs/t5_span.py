"""T5-style span-corruption pre-training (Raffel et al. 2020) of a T5 v1.1 encoder-decoder.

Noise density 0.15, mean span length 3, sentinels `<extra_id_k>` from the tokenizer's
reserved ids. Default: t5-v1.1-small, 512 encoder tokens (about 568 raw tokens, 114 target
tokens), batch 64, on the embedded corpus with a 8192-piece unigram tokenizer.
`:cpu`: a 2+2-layer width-128 model on 128 encoder tokens that learns in a few minutes
(600 steps: eval loss 4.20 / 3.96 / 3.87 at steps 200 / 400 / 600 on a 2-core CPU; at
lr 3e-3 it was 4.37 / 4.27 / 4.19). It learns the sentinel structure, not yet the text.
"""

from jaxlm.config import apply_preset, base_config, short_cpu_run


def cpu(c):
  c.model.update(num_layers=2, num_decoder_layers=2, num_heads=4, head_dim=32, embed_dim=128,
                 mlp_dim=256)
  short_cpu_run(c, lr=1e-3)


def get_config(arg: str | None = None):
  c = base_config("t5-v1.1-small")
  c.objective = "span"
  c.data.update(seq_len=512)
  c.data.tokenizer.update(kind="unigram", vocab_size=8192)
  c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=1000, b2=0.99, weight_decay=0.0)
  c.train.steps = 20_000
  # end-of-run samples: the spans the model fills in for each <extra_id_k>
  c.sample.update(prompt="First Citizen:\nBefore we proceed any <extra_id_0>, hear me "
                         "<extra_id_1>.\n", temperature=0.0, num_samples=1, max_new_tokens=32)
  apply_preset(c, arg, {"cpu": cpu})
  return c
