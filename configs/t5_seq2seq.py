"""Seq2seq fine-tuning of a T5 encoder-decoder on the shipped verifiable tasks (add, reverse,
sort; `jaxlm.data.tasks`): the encoder reads the prompt, the decoder learns the answer
(`objective=seq2seq`: encoder and decoder rows packed together, t5x style).

Default: a t5-v1.1-small-shaped model from scratch, character tokenizer, rows of 64 encoder +
32 decoder tokens, batch 64. To fine-tune a pre-trained T5 instead, point `init_from` at its
workdir (a span run, or `jaxlm convert --from-hf` of a T5 / Flan-T5 checkpoint); its
tokenizer comes along. `:cpu`: a 2+2-layer width-128 model (0.8M parameters), 1500 steps:
held-out exact match 99.3% (add 98.3%, reverse 100%, sort 100%; 300 prompts) after 3 min 32 s
on a 2-core CPU. At lr 3e-3 the same preset stalls (train loss 0.99, exact match 24%).
"""

from jaxlm.config import apply_preset, base_config


def cpu(c):
  c.model.update(num_layers=2, num_decoder_layers=2, num_heads=4, head_dim=32, embed_dim=128,
                 mlp_dim=256)
  c.task.update(n_train=8000, n_heldout=300)
  c.train.update(steps=1500, batch_size=32, eval_every=500, ckpt_every=500)
  c.optim.update(warmup_steps=50)


def get_config(arg: str | None = None):
  c = base_config("t5-v1.1-small")
  c.objective = "seq2seq"
  c.seed = 0
  c.data.update(source="task:all", seq_len=64)
  c.model.update(max_seq_len=64, dropout=0.0)
  c.sft.targets_len = 32
  c.data.tokenizer.update(kind="char", vocab_size=0, num_sentinels=0)
  c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=200, b2=0.99, weight_decay=0.0)
  c.train.update(steps=5000, batch_size=64, log_every=50, eval_every=1000, eval_batches=5,
                 ckpt_every=1000)
  c.sample.update(prompt="Sort: 3 1 2", temperature=0.0, num_samples=1, max_new_tokens=16)
  apply_preset(c, arg, {"cpu": cpu})
  return c
