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
from jaxlm.objectives.common import lm_loss, windows

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
  return lm_loss(model, batch, rng)


def make_loss_fn(cfg: ml_collections.ConfigDict):
  """The next-token loss, chunked over `train.loss_chunk` positions when that is set, with
  PaLM's z-loss when `train.z_loss` is."""
  chunk, z_loss = cfg.train.loss_chunk, cfg.train.z_loss
  if z_loss < 0:
    raise ValueError(f"train.z_loss must be >= 0 (PaLM used 1e-4), got {z_loss}")

  def configured_loss_fn(model, batch: dict[str, jax.Array], rng: jax.Array | None,
                         frozen: dict | None = None):
    """Next-token loss of `model` on a batch with the run's `train.loss_chunk` / `z_loss`."""
    return lm_loss(model, batch, rng, chunk=chunk, z_loss=z_loss)

  return configured_loss_fn if chunk or z_loss else loss_fn
