"""Bottleneck adapters (Houlsby et al. 2019) inserted into every transformer block by tree
surgery: decoder, encoder (BERT, as in the paper) and both T5 stacks.

An adapter maps a sublayer's output h to h + up(gelu(down(h))): a down-projection to `size`
features, a non-linearity and an up-projection back. `up` (kernel and bias) starts at zero, so
a freshly adapted model is exactly the base model. `apply_adapters` adds them as
`Block.attn_adapter` / `Block.mlp_adapter` (after the self-attention and / or MLP sublayer,
before the residual add and, in BERT's post-norm blocks, before the LayerNorm, as Houlsby et
al. place them); the base stays frozen and only the adapters train.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxlm.models import stacking
from jaxlm.peft.params import blocks_of, new_param

PLACEMENTS = {"attn": ("attn",), "mlp": ("mlp",), "both": ("attn", "mlp")}


class Adapter(nnx.Module):
  """h + up(gelu(down(h))) with zero-initialised `up`: the identity at initialisation."""

  def __init__(self, dim: int, size: int, rngs: nnx.Rngs):
    zeros = nnx.initializers.zeros_init()
    self.down = new_param(nnx.initializers.kaiming_uniform(), ("embed", None), rngs.params(),
                          (dim, size))
    self.down_bias = new_param(zeros, (None,), rngs.params(), (size,))
    self.up = new_param(zeros, (None, "embed"), rngs.params(), (size, dim))
    self.up_bias = new_param(zeros, ("embed",), rngs.params(), (dim,))

  def __call__(self, h_BxTxD: jax.Array) -> jax.Array:
    dt = h_BxTxD.dtype
    z_BxTxR = jax.nn.gelu(h_BxTxD @ self.down[...].astype(dt) + self.down_bias[...].astype(dt))
    return h_BxTxD + (z_BxTxR @ self.up[...].astype(dt) + self.up_bias[...].astype(dt))


def apply_adapters(model: nnx.Module, size: int, placement: str, rngs: nnx.Rngs) -> int:
  """Adds an adapter after the `placement` sublayers ("attn", "mlp" or "both") of every block;
  returns how many were added."""
  if placement not in PLACEMENTS:
    raise ValueError(f"peft.adapter_placement must be one of {tuple(PLACEMENTS)}, got "
                     f"{placement!r}")
  if size < 1:
    raise ValueError(f"peft.adapter_size must be >= 1, got {size}")
  added = 0
  for block, repeats in blocks_of(model):
    for where in PLACEMENTS[placement]:
      if repeats:  # a stacked block (`model.scan_layers`): one adapter per layer, stacked too
        adapter = stacking.stack_modules([Adapter(block.cfg.embed_dim, size, rngs)
                                          for _ in range(repeats)])
      else:
        adapter = Adapter(block.cfg.embed_dim, size, rngs)
      setattr(block, f"{where}_adapter", adapter)
      added += repeats or 1
  return added
