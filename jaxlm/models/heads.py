"""Scalar heads on top of a decoder's hidden states (reward models, PPO value heads).

A reward model scores a sequence by the head's output at its last real token. Rows are
assumed right-padded (real tokens first, then padding with segment id / mask 0), the layout
of `jaxlm.data` batches; `last_token_index` takes the last non-zero position of each row,
so it never lands on padding. In a packed row it gives the last token of the last document.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers


class ScalarHead(nnx.Module):
  """A dense D -> 1 head (kernel axes ("embed", None)), zero-initialised by default.

  Zero init makes every initial score 0 (DPO/BT losses start at log 2, values at 0); pass
  `std > 0` for a small normal init instead. The output is fp32 with the last axis dropped.
  """

  def __init__(self, embed_dim: int, *, rngs: nnx.Rngs, std: float = 0.0, bias: bool = True,
               dtype: jnp.dtype = jnp.float32):
    self.proj = layers.dense(embed_dim, 1, ("embed", None), bias=bias, dtype=dtype, rngs=rngs,
                             std=std)

  def __call__(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """Scores of shape hidden.shape[:-1]: (B, T) per token, or (B,) for (B, D) inputs."""
    return self.proj(hidden_BxTxD)[..., 0].astype(jnp.float32)


def last_token_index(mask_BxT: jax.Array) -> jax.Array:
  """Index of the last non-zero (real) position of each row: shape (B,), int32.

  Accepts segment ids (0 = padding) or a boolean / 0-1 mask. A row with no real token gives 0.
  """
  t = mask_BxT.shape[-1]
  pos_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), mask_BxT.shape)
  return jnp.where(mask_BxT != 0, pos_BxT, 0).max(-1)


def gather_last(hidden_BxTxD: jax.Array, idx_B: jax.Array) -> jax.Array:
  """hidden[b, idx[b]] for every row b: shape (B, D)."""
  idx_Bx1x1 = idx_B.astype(jnp.int32)[:, None, None]
  return jnp.take_along_axis(hidden_BxTxD, idx_Bx1x1, axis=1)[:, 0]


def sequence_scores(head: ScalarHead, hidden_BxTxD: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """The head's score at the last real token of each row: shape (B,), fp32."""
  return head(gather_last(hidden_BxTxD, last_token_index(mask_BxT)))
