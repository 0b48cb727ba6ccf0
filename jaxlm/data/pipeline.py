"""From documents to sharded global batches: tokenise, pack, window, batch, resume.

Documents are tokenised and concatenated (each followed by EOS) into one stream with a
segment id per document. A row is a window of `seq_len + 1` tokens at an offset that is a
pure function of (seed, global row index), so the batch of step s is the same whatever the
process count, and the iterator position is just a step number. Rows carry the shared
example type `tokens, targets, loss_mask, segment_ids, positions`: attention and loss never
cross documents, and positions restart at each document start.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import grain
import numpy as np

from jaxlm.data.tokenizer import Tokenizer

Batch = dict[str, np.ndarray]
NUM_STEPS = 2**40  # an effectively endless stream of batches


def tokenize_documents(tokenizer: Tokenizer, docs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Concatenated token ids (each document followed by EOS, and opened by BOS when the
  tokenizer's texts open with it) and their 1-based segment ids."""
  ids = tokenizer.encode_batch(docs)
  opening, eos = tokenizer.contract.opening, tokenizer.contract.eos_id
  tokens = np.fromiter((t for doc in ids for t in (*opening, *doc, eos)), np.int32)
  segments = np.repeat(np.arange(1, len(ids) + 1, dtype=np.int32),
                       [len(opening) + len(d) + 1 for d in ids])
  return tokens, segments


def positions_in_segment(segment_ids_BxL: np.ndarray) -> np.ndarray:
  """Position of each token from the start of its segment within the row."""
  b, length = segment_ids_BxL.shape
  idx = np.broadcast_to(np.arange(length), (b, length))
  starts = np.ones((b, length), bool)
  starts[:, 1:] = segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1]
  return (idx - np.maximum.accumulate(np.where(starts, idx, 0), axis=1)).astype(np.int32)


def rows_from_windows(window_tokens_BxL1: np.ndarray, window_segments_BxL1: np.ndarray) -> Batch:
  """The example type from windows of `seq_len + 1` tokens: inputs, shifted targets, masks."""
  segment_ids = window_segments_BxL1[:, :-1]
  return {
      "tokens": window_tokens_BxL1[:, :-1],
      "targets": window_tokens_BxL1[:, 1:],
      # A target from the next document is not predictable from this one; padding (0) never is.
      "loss_mask": ((segment_ids == window_segments_BxL1[:, 1:]) & (segment_ids > 0)).astype(
          np.float32),
      "segment_ids": segment_ids,
      "positions": positions_in_segment(segment_ids),
  }


def pack_documents(docs: Sequence[Sequence[int]], seq_len: int, pad_id: int, *,
                   one_per_row: bool = False) -> Batch:
  """Greedily packs tokenised documents (each at most seq_len + 1 long) into padded rows
  (or puts each in its own row)."""
  rows, row, segs, seg = [], [], [], 1
  for doc in docs:
    if len(doc) > seq_len + 1:
      raise ValueError(f"document of {len(doc)} tokens does not fit a row of {seq_len + 1}")
    if row and (one_per_row or len(row) + len(doc) > seq_len + 1):
      rows.append((row, segs))
      row, segs, seg = [], [], 1
    row, segs, seg = row + list(doc), segs + [seg] * len(doc), seg + 1
  rows.append((row, segs))
  tokens = np.full((len(rows), seq_len + 1), pad_id, np.int32)
  segments = np.zeros((len(rows), seq_len + 1), np.int32)
  for i, (r, s) in enumerate(rows):
    tokens[i, :len(r)], segments[i, :len(s)] = r, s
  return rows_from_windows(tokens, segments)


class WindowBatches:
  """Random-access batches of random windows: `self[step]` is this process's share of the
  global batch of `step`, a pure function of (seed, step, process index)."""

  def __init__(self, tokens: np.ndarray, segments: np.ndarray, *, seq_len: int, global_batch: int,
               seed: int, process_index: int = 0, process_count: int = 1):
    if len(tokens) < seq_len + 1:
      raise ValueError(
          f"the data has {len(tokens)} tokens, fewer than one row of seq_len + 1 = {seq_len + 1}; "
          "use more data or a shorter data.seq_len")
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    self.tokens, self.segments = tokens, segments
    self.seq_len, self.seed = seq_len, seed
    self.local_batch = global_batch // process_count
    self.global_batch = global_batch
    self.first_row = process_index * self.local_batch

  def global_rows(self, step: int) -> np.ndarray:
    """Global indices of this process's rows of `step`."""
    return step * self.global_batch + self.first_row + np.arange(self.local_batch)

  def row_generators(self, step: int) -> list[np.random.Generator]:
    """A generator per row of `step`, keyed by (seed, global row index): the row's window
    offset and then its random choices (e.g. masking) come from it, whatever the process count."""
    return [np.random.default_rng((self.seed, int(r))) for r in self.global_rows(step)]

  def windows(self, step: int, generators: Sequence[np.random.Generator] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Raw (tokens, segment ids) windows of `seq_len + 1` for this process's rows of `step`,
    each at an offset drawn from its row's generator (fresh ones unless `generators`)."""
    generators = generators or self.row_generators(step)
    high = len(self.tokens) - self.seq_len
    offsets = np.array([g.integers(high) for g in generators])
    idx = offsets[:, None] + np.arange(self.seq_len + 1)
    return self.tokens[idx], self.segments[idx]

  def __getitem__(self, step: int) -> Batch:
    return rows_from_windows(*self.windows(step))


class RowGenerators:
  """Batch-leading draws with each row's values from that row's own generator: the part of the
  `np.random.Generator` API the objectives use. Row i's draws never depend on the other rows,
  provided each call's per-row shape does not (draw for the longest case and slice)."""

  def __init__(self, generators: Sequence[np.random.Generator]):
    self.generators = generators

  def random(self, size: tuple[int, ...]) -> np.ndarray:
    """Uniform [0, 1) floats of shape `size` (size[0] = rows)."""
    return np.stack([g.random(size[1:]) for g in self._check(size[0])])

  def integers(self, low: int, high: int | None = None, size: int | tuple[int, ...] = 1
               ) -> np.ndarray:
    """Integers in [low, high) (or [0, low)) of shape `size` (size[0] = rows)."""
    size = (size,) if isinstance(size, int) else tuple(size)
    return np.stack([g.integers(low, high, size=size[1:]) for g in self._check(size[0])])

  def permuted(self, x_BxN: np.ndarray, axis: int) -> np.ndarray:
    """Each row of `x_BxN` shuffled along `axis` (1 or -1: within the row)."""
    if axis not in (1, -1) or x_BxN.ndim != 2:
      raise ValueError("RowGenerators.permuted shuffles within the rows of a 2-D array")
    return np.stack([g.permuted(row) for g, row in zip(self._check(len(x_BxN)), x_BxN)])

  def _check(self, rows: int) -> Sequence[np.random.Generator]:
    if rows != len(self.generators):
      raise ValueError(f"{rows} rows drawn with {len(self.generators)} row generators")
    return self.generators


class MappedBatches:
  """Batches made by `fn(window_tokens, window_segments, rng)` from the windows of each step:
  how objectives such as MLM or span corruption turn raw windows into their examples.

  `rng` is a `RowGenerators` over the rows' own generators, so a global row is corrupted the
  same way whatever the process count.
  """

  def __init__(self, windows: WindowBatches, fn: Callable[..., Batch]):
    self.source, self.fn = windows, fn

  def __getitem__(self, step: int) -> Batch:
    generators = self.source.row_generators(step)
    return self.fn(*self.source.windows(step, generators), RowGenerators(generators))


def batch_iterator(batches: WindowBatches | MappedBatches, state: dict | None = None,
                   prefetch: int = 4) -> grain.DatasetIterator:
  """A grain iterator over `batches` from step 0 (or from a saved `state`), with prefetching.

  Its `get_state()` is the position to store with a checkpoint.
  """
  ds = grain.MapDataset.range(0, NUM_STEPS).map(batches.__getitem__)
  it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)))
  if state:
    it.set_state(state)
  return it


def fixed_batches(batches: WindowBatches | MappedBatches, num: int) -> Iterator[Batch]:
  """The first `num` batches: a fixed evaluation set."""
  return (batches[i] for i in range(num))
