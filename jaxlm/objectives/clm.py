"""Causal language modelling: next-token cross-entropy on the shared example type.

Batch preparation: random windows over the packed token stream (`WindowBatches`), so the
batch of every step is a pure function of the seed and the step. Loss: mean cross-entropy
over the positions whose `loss_mask` is set (documents never predict each other).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.data.pipeline import WindowBatches


def build_batches(tokens: np.ndarray, segments: np.ndarray, *, seq_len: int, global_batch: int,
                  seed: int, process_index: int = 0, process_count: int = 1) -> WindowBatches:
  """Random-access CLM batches over a tokenised split."""
  return WindowBatches(tokens, segments, seq_len=seq_len, global_batch=global_batch, seed=seed,
                       process_index=process_index, process_count=process_count)


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


def loss_fn(model, batch: dict[str, jax.Array], rng: jax.Array | None):
  """Next-token loss of `model` on a batch; `rng` drives dropout (None: deterministic)."""
  logits_BxLxV = model(batch["tokens"], batch["positions"], batch["segment_ids"], dropout_rng=rng)
  return masked_token_loss(logits_BxLxV, batch["targets"], batch["loss_mask"])
