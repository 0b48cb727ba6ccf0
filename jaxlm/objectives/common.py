"""Pieces every objective shares: the masked token loss and the batch-builder signature."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlm.data.pipeline import WindowBatches
from jaxlm.models import moe


def masked_token_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array, mask_BxL: jax.Array,
                      z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy and accuracy over masked positions (an empty mask gives 0, not NaN).
  `z_loss > 0` adds PaLM's auxiliary z_loss * mean(log Z ** 2) to the objective (not to the
  logged `loss`, which stays the cross-entropy that perplexity is made of)."""
  ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  correct_BxL = (jnp.argmax(logits_BxLxV, -1) == targets_BxL).astype(jnp.float32)
  sums = [(ce_BxL * mask_BxL).sum(), (correct_BxL * mask_BxL).sum()]
  if z_loss:
    log_z_BxL = jax.nn.logsumexp(logits_BxLxV.astype(jnp.float32), axis=-1)
    sums.append((jnp.square(log_z_BxL) * mask_BxL).sum())
  return token_means(jnp.stack(sums), mask_BxL.sum(), z_loss)


def token_means(sums: jax.Array, weight: jax.Array,
                z_loss: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The objective and metrics from per-token sums (cross-entropy, correct, and log Z squared
  when `z_loss` is set) over `weight` loss tokens."""
  denom = jnp.maximum(weight, 1.0)
  loss = sums[0] / denom
  metrics = {"loss": loss, "accuracy": sums[1] / denom, "tokens": weight}
  if not z_loss:
    return loss, metrics
  metrics["z_loss"] = sums[2] / denom
  return loss + z_loss * metrics["z_loss"], metrics


def chunked_token_loss(logits_fn: Callable[[jax.Array], jax.Array], hidden_BxLxD: jax.Array,
                       targets_BxL: jax.Array, mask_BxL: jax.Array, chunk: int,
                       z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
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
    sums_C = [(ce_C * m_C).sum(), (correct_C * m_C).sum()]
    if z_loss:
      log_z_C = jax.nn.logsumexp(logits_CxV.astype(jnp.float32), axis=-1)
      sums_C.append((jnp.square(log_z_C) * m_C).sum())
    return jnp.stack(sums_C)

  def body(total, xs):
    return total + sums(*xs), None

  totals, _ = jax.lax.scan(
      body, jnp.zeros(3 if z_loss else 2, jnp.float32),
      (hidden_NxD.reshape(num, chunk, d), targets_N.reshape(num, chunk),
       mask_N.reshape(num, chunk)))
  return token_means(totals, mask_N.sum(), z_loss)


def lm_loss(model, batch: dict[str, jax.Array], rng: jax.Array | None, *, chunk: int = 0,
            z_loss: float = 0.0, **model_kwargs) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked next-token loss of a decoder on a batch of `tokens/positions/segment_ids/targets/
  loss_mask`; `chunk > 0` computes it with `chunked_token_loss` (same value, less memory);
  `z_loss > 0` adds PaLM's z-loss (see `masked_token_loss`); a mixture of experts adds its
  router losses (`moe.with_router_losses`)."""
  args = (batch["tokens"], batch["positions"], batch["segment_ids"])
  targets, mask = batch["targets"], batch["loss_mask"]
  if chunk:
    hidden_BxLxD, _, stats = model.hidden_and_router_stats(*args, dropout_rng=rng,
                                                           **model_kwargs)
    loss, metrics = chunked_token_loss(model.logits, hidden_BxLxD, targets, mask, chunk, z_loss)
  else:  # any model that maps tokens to logits
    logits_BxLxV, stats = moe.logits_and_router_stats(model, *args, dropout_rng=rng,
                                                      **model_kwargs)
    loss, metrics = masked_token_loss(logits_BxLxV, targets, mask, z_loss)
  return moe.with_router_losses(model, loss, metrics, stats)


def windows(tokens: np.ndarray, segments: np.ndarray, cfg: ml_collections.ConfigDict, *,
            seed: int, process_index: int, process_count: int,
            seq_len: int | None = None) -> WindowBatches:
  """Random windows of `seq_len` (default `data.seq_len`) + 1 tokens over a tokenised split."""
  return WindowBatches(tokens, segments, seq_len=seq_len or cfg.data.seq_len,
                       global_batch=cfg.train.batch_size, seed=seed,
                       process_index=process_index, process_count=process_count)
