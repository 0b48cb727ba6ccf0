"""Sequence-to-sequence fine-tuning of encoder-decoder models (T5 / Flan-T5 style).

Records are the SFT records (`{"prompt", "response"}`, `{"messages": [...]}`, or `task:KINDS`):
the encoder reads the text of every message before the last, one per line, then EOS; the
decoder learns the last message, which must be the assistant's, then EOS. Examples are packed
greedily, in order, into rows of `data.seq_len` encoder tokens and `sft.targets_len` decoder
tokens (t5x's packing): an example goes into the current row while both its halves fit, with
one segment id on both sides, so self-attention, cross-attention and the loss never cross
examples, and each example's decoder inputs start afresh from the start token. Batches have
span corruption's keys, so the loss is `span.loss_fn`. Over-long examples follow
`sft.truncation`: drop them, or keep the end ("left") or the start ("right") of the input,
the target cut to its row; they are counted in the printed report. With prompt tuning
(`peft.method=prompt`) rows hold one example each: the virtual tokens join their row's example.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from jaxlm.data import formats
from jaxlm.data.pipeline import Batch
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.objectives import records, span
from jaxlm.objectives.sft_data import TRUNCATION, SFTBatches

MODEL_FAMILY = "encdec"
INPUT = "records"
loss_fn = span.loss_fn
record_texts = records.conversation_texts

Pair = tuple[np.ndarray, np.ndarray]  # (encoder ids, decoder target ids)


def load_records(cfg: ml_collections.ConfigDict) -> tuple[list, list]:
  """Train and validation conversations from `data.source` (jsonl, tfds or task)."""
  return records.load_split(cfg, formats.parse_sft, records.task_conversations)


def input_and_target(conversation: Sequence[Mapping[str, str]], where: str) -> tuple[str, str]:
  """(encoder text, target text) of a conversation: the earlier messages, one per line, and
  the last message, which must be the assistant's."""
  if conversation[-1]["role"] != "assistant":
    raise ValueError(f"{where}: a seq2seq record must end with the assistant's message (the "
                     f"decoder's target), got a {conversation[-1]['role']!r} message")
  if len(conversation) < 2:
    raise ValueError(f"{where}: a seq2seq record needs a message before the target")
  return "\n".join(m["content"] for m in conversation[:-1]), conversation[-1]["content"]


def encode_pairs(conversations: Sequence[Sequence[Mapping[str, str]]],
                 tokenizer: Tokenizer) -> list[Pair]:
  """(encoder ids + EOS, target ids + EOS) of each conversation."""
  texts = [input_and_target(c, f"record {i}") for i, c in enumerate(conversations)]
  eos = [tokenizer.contract.eos_id]
  return [(np.asarray(x + eos, np.int32), np.asarray(y + eos, np.int32))
          for x, y in zip(tokenizer.encode_batch([t[0] for t in texts]),
                          tokenizer.encode_batch([t[1] for t in texts]))]


@dataclasses.dataclass(frozen=True)
class PackingReport:
  """What packing did with examples that do not fit a row."""

  policy: str
  inputs_len: int
  targets_len: int
  total: int
  too_long: int
  dropped: int
  rows: int

  def __str__(self) -> str:
    head = (f"seq2seq packing: {self.total} examples into {self.rows} rows of "
            f"{self.inputs_len} + {self.targets_len} tokens")
    if not self.too_long:
      return head
    return (f"{head}; {self.too_long} too long ({self.policy!r}): "
            f"{self.too_long - self.dropped} cut, {self.dropped} dropped")


def fit(pair: Pair, inputs_len: int, targets_len: int, policy: str) -> Pair | None:
  """`pair` cut to the row by `policy` (None: dropped)."""
  x, y = pair
  if len(x) <= inputs_len and len(y) <= targets_len:
    return pair
  if policy == "drop":
    return None
  return (x[-inputs_len:] if policy == "left" else x[:inputs_len]), y[:targets_len]


def pack_pairs(pairs: Sequence[Pair], inputs_len: int, targets_len: int, *, pad_id: int,
               start_id: int, truncation: str = "drop",
               pack: bool = True) -> tuple[Batch, PackingReport]:
  """Rows of span corruption's keys from (encoder ids, target ids) pairs, packed greedily in
  order (one pair per row with `pack=False`); see the module docstring."""
  if truncation not in TRUNCATION:
    raise ValueError(f"truncation must be one of {TRUNCATION}, got {truncation!r}")
  fitted = [fit(p, inputs_len, targets_len, truncation) for p in pairs]
  kept = [p for p in fitted if p is not None]
  too_long = sum(p is not q for p, q in zip(pairs, fitted))
  if not kept:
    raise ValueError(f"no seq2seq example fits rows of {inputs_len} + {targets_len} tokens "
                     f"({len(pairs)} given, truncation {truncation!r})")
  rows: list[list[Pair]] = [[]]
  used_x = used_y = 0
  for x, y in kept:
    if rows[-1] and (not pack or used_x + len(x) > inputs_len or used_y + len(y) > targets_len):
      rows.append([])
      used_x = used_y = 0
    rows[-1].append((x, y))
    used_x, used_y = used_x + len(x), used_y + len(y)
  n = len(rows)
  batch = {"inputs": np.full((n, inputs_len), pad_id, np.int32),
           "targets": np.full((n, targets_len), pad_id, np.int32),
           "decoder_inputs": np.full((n, targets_len), pad_id, np.int32),
           "inputs_segment_ids": np.zeros((n, inputs_len), np.int32),
           "targets_segment_ids": np.zeros((n, targets_len), np.int32)}
  for r, row in enumerate(rows):
    i = t = 0
    for segment, (x, y) in enumerate(row, start=1):
      batch["inputs"][r, i:i + len(x)], batch["inputs_segment_ids"][r, i:i + len(x)] = x, segment
      batch["targets"][r, t:t + len(y)], batch["targets_segment_ids"][r, t:t + len(y)] = y, segment
      batch["decoder_inputs"][r, t:t + len(y)] = np.concatenate([[start_id], y[:-1]])
      i, t = i + len(x), t + len(y)
  batch["loss_mask"] = (batch["targets_segment_ids"] > 0).astype(np.float32)
  return batch, PackingReport(truncation, inputs_len, targets_len, len(pairs), too_long,
                              len(pairs) - len(kept), n)


def targets_length(cfg: ml_collections.ConfigDict) -> int:
  """Decoder tokens per row: `sft.targets_len`, or `data.seq_len` when 0."""
  return cfg.sft.targets_len or cfg.data.seq_len


def build_batches(conversations: list, *, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  seed: int, process_index: int = 0, process_count: int = 1) -> SFTBatches:
  """Packed seq2seq rows as random-access batches; prints the packing report."""
  # A soft prompt joins its row's one example (EncoderDecoder.encode): no packing then.
  rows, report = pack_pairs(encode_pairs(conversations, tokenizer), cfg.data.seq_len,
                            targets_length(cfg), pad_id=tokenizer.contract.pad_id,
                            start_id=tokenizer.contract.pad_id, truncation=cfg.sft.truncation,
                            pack=cfg.peft.method != "prompt")
  if jax.process_index() == 0:
    print(f"seq2seq data: {report}")
  return SFTBatches(rows, global_batch=cfg.train.batch_size, seed=seed,
                    process_index=process_index, process_count=process_count)
