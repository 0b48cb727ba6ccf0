"""T5 span corruption (Raffel et al. 2020): the numpy batch-preparation half.

A row of raw tokens gets a noise mask of random spans (`random_spans_noise_mask`: a fixed
number of noise tokens and spans, non-noise and noise spans alternating, non-noise first).
Each noise span becomes one sentinel `<extra_id_k>` in the inputs (k counting spans in
order); the targets are each sentinel followed by the tokens it replaced; both end in EOS.
Counts follow T5 exactly, including its float32 round-half-to-even (length 30 has 4 noise
tokens, not 5). All rows of a batch have the same length, hence the same counts, so the
whole batch is corrupted with array operations and comes out rectangular.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from jaxlm.data.pipeline import MappedBatches
from jaxlm.data.tokenizer import TokenContract
from jaxlm.objectives.common import masked_token_loss, windows

Batch = dict[str, np.ndarray]


def noise_counts(length: int, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """(num_noise_tokens, num_noise_spans) of a row of `length` >= 2 tokens, as T5 computes them.

  round(length * density) clipped to [1, length - 1] noise tokens, in max(1, round(noise /
  mean span)) spans, with float32 products rounded half to even.
  """
  if length < 2:
    raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
  num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length)))
  return num_noise, max(num_spans, 1)


def _random_segmentations(num_rows: int, num_items: int, num_segments: int,
                          rng: np.random.Generator) -> np.ndarray:
  """Per row, `num_items` split into `num_segments` positive lengths, all splits equally likely.

  T5's `_random_segmentation`: shuffle (num_items - 1) segment-start flags of which
  (num_segments - 1) are set; the set flags are the boundaries between segments.
  """
  flags_BxN = np.tile(np.arange(num_items - 1) < num_segments - 1, (num_rows, 1))
  flags_BxN = rng.permuted(flags_BxN, axis=1)
  # Each row has exactly num_segments - 1 flags, so nonzero's row-major columns reshape cleanly.
  cuts_BxS1 = np.nonzero(flags_BxN)[1].reshape(num_rows, num_segments - 1) + 1
  edges_BxS1 = np.concatenate([np.zeros((num_rows, 1), np.int64), cuts_BxS1,
                               np.full((num_rows, 1), num_items)], axis=1)
  return np.diff(edges_BxS1, axis=1)


def random_spans_noise_masks(num_rows: int, length: int, rng: np.random.Generator,
                             noise_density: float = 0.15,
                             mean_noise_span_length: float = 3.0) -> np.ndarray:
  """Independent T5 random-spans noise masks, bool (num_rows, length); True marks noise.

  Like T5, a length below 2 is treated as 2 and the mask cut back (so it holds no noise).
  """
  full = max(length, 2)
  num_noise, num_spans = noise_counts(full, noise_density, mean_noise_span_length)
  noise_BxS = _random_segmentations(num_rows, num_noise, num_spans, rng)
  nonnoise_BxS = _random_segmentations(num_rows, full - num_noise, num_spans, rng)
  spans_Bx2S = np.stack([nonnoise_BxS, noise_BxS], axis=2).reshape(num_rows, 2 * num_spans)
  # A span starts at each cumulative length; the parity of spans started so far marks noise.
  starts_Bx2S1 = np.cumsum(spans_Bx2S, axis=1)[:, :-1]
  started_BxL = np.zeros((num_rows, full), np.int32)
  np.put_along_axis(started_BxL, starts_Bx2S1, 1, axis=1)
  return (np.cumsum(started_BxL, axis=1) % 2 == 1)[:, :length]


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
  """One T5 random-spans noise mask, bool (length,); True marks noise."""
  return random_spans_noise_masks(1, length, rng, noise_density, mean_noise_span_length)[0]


def _spans_to_sentinels(tokens_BxL: np.ndarray, mask_BxL: np.ndarray,
                        sentinel_ids_K: np.ndarray) -> np.ndarray:
  """T5's `noise_span_to_unique_sentinel`: the k-th masked run becomes sentinel k, the rest stay.

  Every row must keep the same number of tokens (true when rows share their counts).
  """
  prev_BxL = np.zeros_like(mask_BxL)
  prev_BxL[:, 1:] = mask_BxL[:, :-1]
  first_BxL = mask_BxL & ~prev_BxL
  out_BxL = tokens_BxL.copy()
  out_BxL[first_BxL] = sentinel_ids_K[(np.cumsum(first_BxL, axis=1) - 1)[first_BxL]]
  keep_BxL = ~(mask_BxL & prev_BxL)
  kept = keep_BxL.sum(axis=1)
  if len(kept) and (kept != kept[0]).any():
    raise ValueError(f"rows corrupt to different lengths {sorted(set(kept.tolist()))}; "
                     "corrupt them one at a time")
  return out_BxL[keep_BxL].reshape(len(kept), -1)


def span_corrupt(tokens: np.ndarray, noise_mask: np.ndarray, sentinel_id: Callable[[int], int],
                 eos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of one row (L,) or of rows (B, L) that corrupt to equal lengths.

  Inputs: each noise span replaced by `sentinel_id(k)`, k = 0, 1, ... in order. Targets:
  each sentinel followed by the span it replaced (T5's `nonnoise_span_to_unique_sentinel`,
  which also ends the targets with one more sentinel when the row ends in non-noise).
  `eos_id` (None: none) is appended to both. The mask must start with non-noise, as
  `random_spans_noise_mask` does: otherwise the target sentinels would not line up.
  """
  tokens_BxL, mask_BxL = np.atleast_2d(tokens), np.atleast_2d(noise_mask).astype(bool)
  if tokens_BxL.shape != mask_BxL.shape:
    raise ValueError(f"tokens {tokens_BxL.shape} and noise mask {mask_BxL.shape} differ in shape")
  if mask_BxL.shape[1] and mask_BxL[:, 0].any():
    raise ValueError("the noise mask must start with a non-noise token")
  # Runs alternate from non-noise: the targets need one sentinel per non-noise run.
  num_changes = (mask_BxL[:, 1:] != mask_BxL[:, :-1]).sum(axis=1).max(initial=0)
  num_sentinels = int(num_changes) // 2 + 1
  ids_K = np.fromiter(map(sentinel_id, range(num_sentinels)), tokens_BxL.dtype, num_sentinels)
  inputs_BxI = _spans_to_sentinels(tokens_BxL, mask_BxL, ids_K)
  targets_BxT = _spans_to_sentinels(tokens_BxL, ~mask_BxL, ids_K)
  if eos_id is not None:
    eos_Bx1 = np.full((len(tokens_BxL), 1), eos_id, tokens_BxL.dtype)
    inputs_BxI, targets_BxT = (np.concatenate([x, eos_Bx1], axis=1)
                               for x in (inputs_BxI, targets_BxT))
  if np.ndim(tokens) == 1:
    return inputs_BxI[0], targets_BxT[0]
  return inputs_BxI, targets_BxT


def raw_length_for(inputs_length: int, noise_density: float = 0.15,
                   mean_noise_span_length: float = 3.0, add_eos: bool = True) -> tuple[int, int]:
  """(tokens_length, targets_length): the most raw tokens whose corrupted inputs fit
  `inputs_length`, and the length of their targets (T5's `random_spans_helper`).

  One sentinel per noise span in each of inputs and targets, and EOS on both if `add_eos`.
  Counts come from `noise_counts`, so they are exactly those of `random_spans_noise_mask`
  (T5's helper rounds in float64, which differs at a few lengths such as 190).
  """

  def corrupted_lengths(tokens_length: int) -> tuple[int, int]:
    num_noise, num_spans = noise_counts(tokens_length, noise_density, mean_noise_span_length)
    return (tokens_length - num_noise + num_spans + add_eos, num_noise + num_spans + add_eos)

  tokens_length = inputs_length - 1
  if tokens_length < 2:
    raise ValueError(f"inputs_length {inputs_length} is too short for span corruption")
  while corrupted_lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, corrupted_lengths(tokens_length)[1]


def corrupt_batch(rows_BxL: np.ndarray, rng: np.random.Generator, *, contract: TokenContract,
                  inputs_length: int, targets_length: int, noise_density: float = 0.15,
                  mean_noise_span_length: float = 3.0, add_eos: bool = True,
                  decoder_start_id: int | None = None) -> Batch:
  """A padded encoder-decoder batch from rows of raw tokens (no padding), each row corrupted
  with its own random-spans mask drawn from `rng`.

  Rows of `raw_length_for(inputs_length)[0]` tokens fill the inputs exactly. Keys:
  `inputs`, `inputs_segment_ids` (B, inputs_length); `targets`, `decoder_inputs` (targets
  shifted right after `decoder_start_id`, default pad as in T5), `targets_segment_ids`,
  `loss_mask` (B, targets_length). Segment ids are 1 on tokens and 0 on padding.
  """
  b, length = rows_BxL.shape
  mask_BxL = random_spans_noise_masks(b, length, rng, noise_density, mean_noise_span_length)
  eos_id = contract.eos_id if add_eos else None
  inputs_BxI, targets_BxT = span_corrupt(rows_BxL, mask_BxL, contract.sentinel_id, eos_id)
  batch: Batch = {}
  for name, x_BxN, size in (("inputs", inputs_BxI, inputs_length),
                            ("targets", targets_BxT, targets_length)):
    if x_BxN.shape[1] > size:
      raise ValueError(f"rows of {length} tokens corrupt to {x_BxN.shape[1]} {name} tokens, more "
                       f"than {name}_length {size}; take rows of raw_length_for(inputs_length)[0]")
    batch[name] = np.full((b, size), contract.pad_id, np.int32)
    batch[name][:, :x_BxN.shape[1]] = x_BxN
    is_token_N = np.arange(size) < x_BxN.shape[1]
    batch[f"{name}_segment_ids"] = np.tile(is_token_N, (b, 1)).astype(np.int32)
  start = contract.pad_id if decoder_start_id is None else decoder_start_id
  batch["decoder_inputs"] = np.concatenate(
      [np.full((b, 1), start, np.int32), batch["targets"][:, :-1]], axis=1)
  batch["loss_mask"] = batch["targets_segment_ids"].astype(np.float32)
  return batch


MODEL_FAMILY = "encdec"


def build_batches(tokens: np.ndarray, segments: np.ndarray, *, cfg, tokenizer,
                  seed: int, process_index: int = 0, process_count: int = 1) -> MappedBatches:
  """Windows of the raw length that corrupts to `data.seq_len` encoder tokens, corrupted per
  `config.span` in the input pipeline (keys as `corrupt_batch`)."""
  s = cfg.span
  raw, targets_length = raw_length_for(cfg.data.seq_len, s.noise_density, s.mean_span_length)

  def make(window_tokens_BxL1: np.ndarray, _segments, rng: np.random.Generator) -> Batch:
    return corrupt_batch(window_tokens_BxL1[:, :raw], rng, contract=tokenizer.contract,
                         inputs_length=cfg.data.seq_len, targets_length=targets_length,
                         noise_density=s.noise_density, mean_noise_span_length=s.mean_span_length)

  return MappedBatches(windows(tokens, segments, cfg, seed=seed, process_index=process_index,
                               process_count=process_count, seq_len=raw), make)


def loss_fn(model, batch: dict, rng, frozen: dict | None = None):
  """Cross-entropy of the decoder on the span targets (sentinels, spans, EOS)."""
  logits_BxTxV = model(batch["inputs"], batch["decoder_inputs"], batch["inputs_segment_ids"],
                       batch["targets_segment_ids"], dropout_rng=rng)
  return masked_token_loss(logits_BxTxV, batch["targets"], batch["loss_mask"])
