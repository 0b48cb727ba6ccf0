"""Prompt tuning (Lester et al. 2021): trainable virtual tokens before the input embeddings.

`apply_prompt` adds `soft_prompt`, V embedding vectors initialised as copies of random rows of
the embedding table (Lester et al.'s sampled-vocabulary init; when `init_from` loads the base
weights, `resample_from_vocab` redraws them from the loaded table), optionally (`hidden` > 0)
passed through a small residual MLP encoder that starts at zero, as P-tuning does.

Decoders: the virtual tokens precede every row at positions -V..-1 (RoPE sees the right
relative distances; GPT-2 style adds no learned position to them) and the text keeps
positions 0..T-1, so the context is not shortened. Because they come first and attend only
to each other, their keys and values do not depend on the text: the decoder computes them
once per forward pass (one row, not B) into the first V cache slots, so the logits and the
loss keep their shapes and the sampler needs nothing extra.

Encoder-decoders (T5, Lester et al.'s setting): the virtual tokens precede every encoder row,
where they see and are seen by the whole input (`EncoderDecoder.encode`); rows must hold one
example each, so `objective=seq2seq` does not pack when prompt-tuning.
"""

from __future__ import annotations

from typing import Any, Collection

import jax
from flax import nnx

from jaxlm.models import Decoder, EncoderDecoder
from jaxlm.models.stacking import path_name
from jaxlm.peft.params import check_virtual_sizes, new_param

PROMPT_TABLE, EMBED_TABLE = "soft_prompt/table", "embed/embedding"


class SoftPrompt(nnx.Module):
  """V trainable virtual-token embeddings (V, D), optionally through an MLP encoder."""

  def __init__(self, init_VxD: jax.Array, hidden: int, rngs: nnx.Rngs):
    self.length, dim = init_VxD.shape
    self.table = new_param(lambda *_: init_VxD, (None, "embed"), rngs.params(), init_VxD.shape)
    if hidden:
      zeros = nnx.initializers.zeros_init()
      self.w1 = new_param(nnx.initializers.kaiming_uniform(), ("embed", "mlp"), rngs.params(),
                          (dim, hidden))
      self.b1 = new_param(zeros, ("mlp",), rngs.params(), (hidden,))
      self.w2 = new_param(zeros, ("mlp", "embed"), rngs.params(), (hidden, dim))
      self.b2 = new_param(zeros, ("embed",), rngs.params(), (dim,))

  def __call__(self) -> jax.Array:
    """The virtual tokens' input embeddings (V, D), float32."""
    e_VxD = self.table[...]
    if hasattr(self, "w1"):
      e_VxD = e_VxD + jax.nn.gelu(e_VxD @ self.w1[...] + self.b1[...]) @ self.w2[...] + (
          self.b2[...])
    return e_VxD


def apply_prompt(model: nnx.Module, length: int, hidden: int, rngs: nnx.Rngs) -> None:
  """Adds `length` trainable virtual tokens in front of every input of the decoder, or of
  the encoder of an encoder-decoder (T5, as Lester et al.)."""
  check_virtual_sizes("prompt", length, hidden)
  if not isinstance(model, (Decoder, EncoderDecoder)):
    raise ValueError("peft.method='prompt' needs a decoder (gpt2 / llama style) or an "
                     f"encoder-decoder (t5) model, got {type(model).__name__}")
  vocab = model.embed.embedding[...]
  ids_V = jax.random.randint(rngs.params(), (length,), 0, vocab.shape[0])
  model.soft_prompt = SoftPrompt(vocab[ids_V].astype(jax.numpy.float32), hidden, rngs)


def resample_from_vocab(params: Any, loaded: Collection[str], seed: int) -> Any:
  """`params` with each fresh soft-prompt table redrawn as random rows of its decoder's
  embedding table, when that table is in `loaded` (paths taken from another run): the
  sampled-vocabulary init must see the pre-trained vocabulary, not the one built at init."""
  leaves = {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  redrawn = {}
  for name, table in leaves.items():
    if not name.endswith(PROMPT_TABLE) or name in loaded:
      continue
    embed = name[:-len(PROMPT_TABLE)] + EMBED_TABLE
    if embed in loaded:
      ids = jax.random.randint(jax.random.key(seed), (table.shape[0],), 0,
                               leaves[embed].shape[0])
      redrawn[name] = leaves[embed][ids].astype(table.dtype)
  return jax.tree_util.tree_map_with_path(lambda p, x: redrawn.get(path_name(p), x), params)
