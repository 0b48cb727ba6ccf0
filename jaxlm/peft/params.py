"""The one variable type of every parameter PEFT adds, and the decoder that surgery edits.

Every added parameter (LoRA factors, adapters, prefixes, soft prompts) is an
`nnx.LoRAParam`, so `jaxlm.peft.trainable_mask` selects them all with one isinstance test.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import Decoder, Encoder, EncoderDecoder, layers

PeftParam = nnx.LoRAParam


def new_param(init: layers.Initializer, names: Sequence[str | None], key: jax.Array,
              shape: tuple[int, ...]) -> nnx.LoRAParam:
  """A float32 trainable PEFT parameter carrying logical axis `names` for the mesh rules."""
  return PeftParam(layers.named(init, *names)(key, shape, jnp.float32))


def decoder_of(model: nnx.Module, method: str) -> Decoder:
  """`model` itself when it is a decoder (or a subclass such as the reward model)."""
  if not isinstance(model, Decoder):
    raise ValueError(f"peft.method={method!r} needs a decoder model (gpt2 / llama style), got "
                     f"{type(model).__name__}")
  return model


def blocks_of(model: nnx.Module) -> list[tuple[nnx.Module, int]]:
  """(block, repeats) for every transformer block of a decoder, encoder (BERT) or
  encoder-decoder (T5, both stacks), in order (see `Layered.block_groups`: repeats > 0 for a
  stacked module, `model.scan_layers`)."""
  if isinstance(model, EncoderDecoder):
    holders = [model.encoder, model.decoder]
  elif isinstance(model, (Decoder, Encoder)):
    holders = [model]
  else:
    raise ValueError(f"no transformer blocks known in a {type(model).__name__}")
  return [group for holder in holders for group in holder.block_groups()]


def check_virtual_sizes(method: str, length: int, hidden: int) -> None:
  """Validates `peft.<method>_len` (>= 1 slots) and `peft.<method>_hidden` (>= 0; 0: none)."""
  if length < 1:
    raise ValueError(f"peft.{method}_len must be >= 1, got {length}")
  if hidden < 0:
    raise ValueError(f"peft.{method}_hidden must be >= 0 (0: no reparameterising MLP), got "
                     f"{hidden}")
