"""Pieces every objective shares: the masked token loss and the batch-builder signature."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlm.data.pipeline import WindowBatches


def masked_token_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                      mask_BxL: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy and accuracy over masked positions (an empty mask gives 0, not NaN)."""
  ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  weight = mask_BxL.sum()
  denom = jnp.maximum(weight, 1.0)
  loss = (ce_BxL * mask_BxL).sum() / denom
  correct_BxL = (jnp.argmax(logits_BxLxV, -1) == targets_BxL).astype(jnp.float32)
  return loss, {"loss": loss, "accuracy": (correct_BxL * mask_BxL).sum() / denom,
                "tokens": weight}


def chunked_token_loss(logits_fn: Callable[[jax.Array], jax.Array], hidden_BxLxD: jax.Array,
                       targets_BxL: jax.Array, mask_BxL: jax.Array,
                       chunk: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`masked_token_loss(logits_fn(hidden), ...)` without the full (B, L, V) logits.

  The B*L positions are cut into chunks of `chunk`; each chunk's fp32 logits live only inside
  a rematerialised scan step, so the backward pass recomputes them chunk by chunk too and
  peak memory holds one (chunk, V) block instead of (B, L, V).
  """
  b, l, d = hidden_BxLxD.shape
  n = b * l
  pad = -n % chunk
  hidden_NxD = jnp.pad(hidden_BxLxD.reshape(n, d), ((0, pad), (0, 0)))
  targets_N = jnp.pad(targets_BxL.reshape(n), (0, pad))
  mask_N = jnp.pad(mask_BxL.reshape(n).astype(jnp.float32), (0, pad))
  num = (n + pad) // chunk

  @jax.checkpoint
  def sums(h_CxD, t_C, m_C):
    logits_CxV = logits_fn(h_CxD[None])[0]
    ce_C = optax.softmax_cross_entropy_with_integer_labels(logits_CxV, t_C)
    correct_C = (jnp.argmax(logits_CxV, -1) == t_C).astype(jnp.float32)
    return jnp.stack([(ce_C * m_C).sum(), (correct_C * m_C).sum()])

  def body(total, xs):
    return total + sums(*xs), None

  (ce_sum, correct_sum), _ = jax.lax.scan(
      body, jnp.zeros(2, jnp.float32),
      (hidden_NxD.reshape(num, chunk, d), targets_N.reshape(num, chunk),
       mask_N.reshape(num, chunk)))
  weight = mask_N.sum()
  denom = jnp.maximum(weight, 1.0)
  loss = ce_sum / denom
  return loss, {"loss": loss, "accuracy": correct_sum / denom, "tokens": weight}


def lm_loss(model, batch: dict[str, jax.Array], rng: jax.Array | None, *, chunk: int = 0,
            **model_kwargs) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked next-token loss of a decoder on a batch of `tokens/positions/segment_ids/targets/
  loss_mask`; `chunk > 0` computes it with `chunked_token_loss` (same value, less memory)."""
  args = (batch["tokens"], batch["positions"], batch["segment_ids"])
  if not chunk:
    logits_BxLxV = model(*args, dropout_rng=rng, **model_kwargs)
    return masked_token_loss(logits_BxLxV, batch["targets"], batch["loss_mask"])
  hidden_BxLxD, _ = model.hidden(*args, dropout_rng=rng, **model_kwargs)
  return chunked_token_loss(model.logits, hidden_BxLxD, batch["targets"], batch["loss_mask"],
                            chunk)


def windows(tokens: np.ndarray, segments: np.ndarray, cfg: ml_collections.ConfigDict, *,
            seed: int, process_index: int, process_count: int,
            seq_len: int | None = None) -> WindowBatches:
  """Random windows of `seq_len` (default `data.seq_len`) + 1 tokens over a tokenised split."""
  return WindowBatches(tokens, segments, seq_len=seq_len or cfg.data.seq_len,
                       global_batch=cfg.train.batch_size, seed=seed,
                       process_index=process_index, process_count=process_count)
