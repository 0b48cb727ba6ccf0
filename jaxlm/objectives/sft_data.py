"""Supervised fine-tuning batches (numpy, model-free): render, truncate, pack, shuffle.

Conversations are rendered by the one chat template (`jaxlm.data.chat`) into token ids and a
response mask (assistant content and its end token). Examples are packed greedily, in order,
into rows of `seq_len + 1` tokens with segment ids 1, 2, ... (0 is padding), giving the shared
example type `tokens, targets, loss_mask, segment_ids, positions`: attention, positions and
loss never cross examples, no example is split across rows, and the loss covers the positions
whose target is a response token of the same example. Over-long examples are dropped or cut
by an explicit policy and counted in a `TruncationReport`, never silently.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np

from jaxlm.data.chat import ChatTemplate
from jaxlm.data.pipeline import Batch, pack_documents
from jaxlm.data.tokenizer import Tokenizer

TRUNCATION = ("drop", "left", "right")
Example = tuple[np.ndarray, np.ndarray]  # (token ids, response mask), both of one length


def encode_conversations(conversations: Sequence[Sequence[Mapping[str, str]]],
                         tokenizer: Tokenizer, template: ChatTemplate) -> list[Example]:
  """(ids int32, response mask bool) per conversation, rendered by `template`."""
  return [(np.asarray(ids, np.int32), np.asarray(mask, bool))
          for ids, mask in template.render_batch(conversations, tokenizer)]


@dataclasses.dataclass(frozen=True)
class TruncationReport:
  """What packing did with examples longer than a row (`row_len` = seq_len + 1 tokens)."""

  policy: str
  row_len: int
  total: int  # examples given
  too_long: int  # of which longer than a row
  truncated: int  # over-long examples cut to a row and kept
  dropped: int  # over-long examples left out: policy "drop", or cutting would lose the response
  longest: int  # tokens in the longest example given

  @property
  def kept(self) -> int:
    """Examples packed into rows."""
    return self.total - self.dropped

  def __str__(self) -> str:
    head = (f"SFT packing: {self.total} examples, {self.too_long} longer than a row of "
            f"{self.row_len} tokens (longest {self.longest})")
    if not self.too_long:
      return head
    return (f"{head}: {self.truncated} truncated ({self.policy!r}), {self.dropped} dropped; "
            f"{self.kept} kept")


def _last_response_start(mask: np.ndarray) -> int:
  """Index of the first token of the last run of response tokens (len(mask) if none)."""
  starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
  return int(starts[-1]) if len(starts) else len(mask)


def truncate(example: Example, row_len: int, policy: str) -> Example | None:
  """`example` cut to `row_len` tokens by `policy`, or None when it is to be dropped.

  "drop" drops it; "right" keeps the first `row_len` tokens; "left" keeps the last `row_len`,
  which must include the token before the final response so that every response token stays
  a target (else it is dropped). A cut that leaves no response target is dropped too.
  """
  ids, mask = example
  if policy == "drop":
    return None
  if policy == "right":
    ids, mask = ids[:row_len], mask[:row_len]
  else:
    cut = len(ids) - row_len
    if cut >= _last_response_start(mask):
      return None
    ids, mask = ids[cut:], mask[cut:]
  return (ids, mask) if mask[1:].any() else None


def pack_sft(examples: Sequence[Example], seq_len: int, pad_id: int, *, truncation: str = "drop",
             train_on_prompt: bool = False, pack: bool = True) -> tuple[Batch, TruncationReport]:
  """Packs (ids, response mask) examples into rows of the shared example type.

  Rows hold `seq_len + 1` tokens (inputs and shifted targets), examples placed greedily in
  order and never split (with `pack=False`, one example per row). `loss_mask` is 1 where the target is in the same example and is a
  response token, or any token of that example with `train_on_prompt`. Examples longer than
  a row are handled by `truncation` (see `truncate`) and counted in the returned report.
  """
  if truncation not in TRUNCATION:
    raise ValueError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
  row_len = seq_len + 1
  examples = [(np.asarray(ids, np.int32), np.asarray(mask, bool)) for ids, mask in examples]
  lengths = np.fromiter((len(ids) for ids, _ in examples), np.int64, len(examples))
  kept: list[Example] = []
  truncated = dropped = 0
  for example, length in zip(examples, lengths):
    if length > row_len:
      example = truncate(example, row_len, truncation)
      truncated, dropped = truncated + (example is not None), dropped + (example is None)
    if example is not None:
      kept.append(example)
  report = TruncationReport(truncation, row_len, len(examples), int((lengths > row_len).sum()),
                            truncated, dropped, int(lengths.max(initial=0)))
  if not kept:
    raise ValueError(f"no SFT example left to train on: {report}")
  batch = pack_documents([ids for ids, _ in kept], seq_len, pad_id, one_per_row=not pack)
  if not train_on_prompt:
    # Masks packed by the same greedy rule land where their tokens do (only lengths matter).
    response = pack_documents([mask.astype(np.int32) for _, mask in kept], seq_len, 0,
                              one_per_row=not pack)
    batch["loss_mask"] = batch["loss_mask"] * response["targets"].astype(np.float32)
  return batch, report


class SFTBatches:
  """Random-access batches of packed rows: `self[step]` is this process's share of the
  global batch of `step`. Global row k of the stream is row `perm_e[k % R]` of epoch
  e = k // R, with `perm_e` a permutation drawn from (seed, e): a pure function of
  (seed, step), the same rows whatever the process count, and every row once per epoch."""

  def __init__(self, rows: Batch, *, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    self.rows = rows
    self.num_rows = len(next(iter(rows.values())))
    if not self.num_rows:
      raise ValueError("no packed rows to draw batches from")
    self.seed, self.global_batch = seed, global_batch
    self.local_batch = global_batch // process_count
    self.first_row = process_index * self.local_batch
    self._permutation = functools.lru_cache(maxsize=8)(self._draw_permutation)

  def _draw_permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng((self.seed, epoch)).permutation(self.num_rows)

  @property
  def steps_per_epoch(self) -> float:
    """Steps that see every row once."""
    return self.num_rows / self.global_batch

  def row_indices(self, step: int) -> np.ndarray:
    """Indices into the packed rows of this process's share of `step`."""
    k = step * self.global_batch + self.first_row + np.arange(self.local_batch)
    epochs, within = np.divmod(k, self.num_rows)
    out = np.empty(self.local_batch, np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._permutation(int(e))[within[sel]]
    return out

  def rng(self, step: int) -> np.random.Generator:
    """A generator for any random choice of `step` on this process."""
    return np.random.default_rng((self.seed, step, self.first_row, self.global_batch))

  def __getitem__(self, step: int) -> Batch:
    idx = self.row_indices(step)
    return {k: v[idx] for k, v in self.rows.items()}


def sft_batches(conversations: Sequence[Sequence[Mapping[str, str]]], tokenizer: Tokenizer,
                template: ChatTemplate, *, seq_len: int, global_batch: int, seed: int,
                process_index: int = 0, process_count: int = 1, truncation: str = "drop",
                train_on_prompt: bool = False) -> tuple[SFTBatches, TruncationReport]:
  """Conversations to random-access SFT batches in one call, with the truncation report."""
  rows, report = pack_sft(encode_conversations(conversations, tokenizer, template), seq_len,
                          tokenizer.contract.pad_id, truncation=truncation,
                          train_on_prompt=train_on_prompt)
  return SFTBatches(rows, global_batch=global_batch, seed=seed, process_index=process_index,
                    process_count=process_count), report

