"""Causal language modelling: next-token cross-entropy on the shared example type.

Batch preparation: random windows over the packed token stream (`WindowBatches`), so the
batch of every step is a pure function of the seed and the step. Loss: mean cross-entropy
over the positions whose `loss_mask` is set (documents never predict each other).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxlm.data.pipeline import WindowBatches
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.objectives.common import masked_token_loss, windows

MODEL_FAMILY = "decoder"


def build_batches(tokens: np.ndarray, segments: np.ndarray, *, cfg: ml_collections.ConfigDict,
                  tokenizer: Tokenizer, seed: int, process_index: int = 0,
                  process_count: int = 1) -> WindowBatches:
  """Random-access CLM batches over a tokenised split."""
  del tokenizer  # every token is a target
  return windows(tokens, segments, cfg, seed=seed, process_index=process_index,
                 process_count=process_count)


def loss_fn(model, batch: dict[str, jax.Array], rng: jax.Array | None,
            frozen: dict | None = None):
  """Next-token loss of `model` on a batch; `rng` drives dropout (None: deterministic)."""
  logits_BxLxV = model(batch["tokens"], batch["positions"], batch["segment_ids"], dropout_rng=rng)
  return masked_token_loss(logits_BxLxV, batch["targets"], batch["loss_mask"])
