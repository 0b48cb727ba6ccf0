"""Pieces every objective shares: the masked token loss and the batch-builder signature."""

from __future__ import annotations

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


def windows(tokens: np.ndarray, segments: np.ndarray, cfg: ml_collections.ConfigDict, *,
            seed: int, process_index: int, process_count: int,
            seq_len: int | None = None) -> WindowBatches:
  """Random windows of `seq_len` (default `data.seq_len`) + 1 tokens over a tokenised split."""
  return WindowBatches(tokens, segments, seq_len=seq_len or cfg.data.seq_len,
                       global_batch=cfg.train.batch_size, seed=seed,
                       process_index=process_index, process_count=process_count)
