"""Prefix language modelling (T5's prefix-LM objective on a decoder-only model).

Batch preparation: each CLM window is split at a random point; the prefix attends to itself
bidirectionally (`prefix` mask), the rest is causal, and the loss covers only the tokens
after the prefix. The split point is uniform in [1, seq_len - 1] per row.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxlm.data.pipeline import MappedBatches, rows_from_windows
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.objectives.common import lm_loss, windows

MODEL_FAMILY = "decoder"


def split_prefix(tokens_BxL1: np.ndarray, segments_BxL1: np.ndarray,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
  """CLM rows plus a random prefix per row: `prefix` marks it, `loss_mask` excludes it."""
  batch = rows_from_windows(tokens_BxL1, segments_BxL1)
  b, length = batch["tokens"].shape
  prefix_len_B = rng.integers(1, length, size=b)
  prefix_BxL = np.arange(length)[None, :] < prefix_len_B[:, None]
  # targets[t] is token t + 1: a target inside the prefix is visible to the prefix, so no loss.
  target_in_prefix_BxL = np.arange(1, length + 1)[None, :] < prefix_len_B[:, None]
  batch["loss_mask"] = batch["loss_mask"] * ~target_in_prefix_BxL
  batch["prefix"] = prefix_BxL
  return batch


def build_batches(tokens: np.ndarray, segments: np.ndarray, *, cfg: ml_collections.ConfigDict,
                  tokenizer: Tokenizer, seed: int, process_index: int = 0,
                  process_count: int = 1) -> MappedBatches:
  """Random-access prefix-LM batches over a tokenised split."""
  del tokenizer
  return MappedBatches(windows(tokens, segments, cfg, seed=seed, process_index=process_index,
                               process_count=process_count), split_prefix)


def loss_fn(model, batch: dict[str, jax.Array], rng: jax.Array | None,
            frozen: dict | None = None):
  """Loss on the tokens after each row's prefix (with a mixture's router losses)."""
  return lm_loss(model, batch, rng, prefix_BxT=batch["prefix"])
