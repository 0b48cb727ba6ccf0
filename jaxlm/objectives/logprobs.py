"""Per-token and per-sequence log-probabilities of given targets under a model's logits.

Post-training losses (DPO family, SimPO, PPO-style objectives) score a response by the
log-probability the policy gives it. `mask_BxT` selects the response tokens: prompt and
padding positions are excluded, so they never change the result. All outputs are fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Mean of `x` over positions where `mask` is set (0 when none is)."""
  mask = mask.astype(x.dtype)
  return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log softmax(logits)[target] at every position, in fp32: shape (B, T)."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  idx_BxTx1 = targets_BxT.astype(jnp.int32)[..., None]
  return jnp.take_along_axis(logp_BxTxV, idx_BxTx1, axis=-1)[..., 0]


def masked_token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                          mask_BxT: jax.Array) -> jax.Array:
  """`token_logprobs` with positions outside `mask_BxT` set to exactly 0 (never NaN)."""
  logp_BxT = token_logprobs(logits_BxTxV, targets_BxT)
  return jnp.where(mask_BxT.astype(bool), logp_BxT, 0.0)


def sequence_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                      mask_BxT: jax.Array) -> jax.Array:
  """Sum of target log-probs over the masked (response) positions of each row: shape (B,)."""
  return masked_token_logprobs(logits_BxTxV, targets_BxT, mask_BxT).sum(-1)


def sequence_mean_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                           mask_BxT: jax.Array) -> jax.Array:
  """Length-normalised `sequence_logprobs` (mean over masked positions; 0 for an empty row).

  This is the reward SimPO uses, so long responses are not favoured by their length.
  """
  count_B = mask_BxT.astype(jnp.float32).sum(-1)
  return sequence_logprobs(logits_BxTxV, targets_BxT, mask_BxT) / jnp.maximum(count_B, 1.0)
