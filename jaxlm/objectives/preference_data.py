"""Preference pairs as rows: chosen and rejected conversations, one example per row.

Both answers of a pair are rendered with the chat template after the same prompt; a pair
with either side longer than a row is dropped (and counted). Row keys are the shared
example type prefixed `chosen_` / `rejected_`, whose `loss_mask` marks response targets.
`side_rows` lays out any named sides so (KTO: `completion_` / `kl_`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxlm.data.chat import ChatTemplate
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.objectives.sft_data import SFTBatches, encode_conversations, pack_sft

SIDES = ("chosen", "rejected")


def side_rows(replies: Mapping[str, Sequence[tuple[Sequence[dict], str]]], tokenizer: Tokenizer,
              template: ChatTemplate, seq_len: int, *,
              in_inputs: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """(rows, kept): example i's row holds, for each side, `replies[side][i]` (prompt messages,
  assistant reply) rendered as `<side>_*` columns; an example with any side too long is
  dropped (`kept` marks the others).

  A side may fill the row's `seq_len + 1` tokens when only its targets are read (DPO); with
  `in_inputs` (a reward model scores the last input token) it must fit the `seq_len` inputs.
  """
  longest = seq_len if in_inputs else seq_len + 1
  encoded = {side: encode_conversations(
      [[*prompt, {"role": "assistant", "content": reply}] for prompt, reply in pairs],
      tokenizer, template) for side, pairs in replies.items()}
  kept = np.array([all(len(ex[i][0]) <= longest for ex in encoded.values())
                   for i in range(len(next(iter(encoded.values()))))], bool)
  if not kept.any():
    raise ValueError(f"no example fits in {longest} tokens")
  rows = {}
  for side, examples in encoded.items():
    packed, _ = pack_sft([ex for ex, ok in zip(examples, kept) if ok], seq_len,
                         tokenizer.contract.pad_id, pack=False)
    rows.update({f"{side}_{k}": v for k, v in packed.items()})
  return rows, kept


def pair_rows(pairs: Sequence[dict], tokenizer: Tokenizer, template: ChatTemplate,
              seq_len: int, *, in_inputs: bool = False) -> tuple[dict[str, np.ndarray], int]:
  """(rows, number of pairs dropped as too long) from `{"prompt", "chosen", "rejected"}`
  (see `side_rows`)."""
  rows, kept = side_rows({s: [(p["prompt"], p[s]) for p in pairs] for s in SIDES}, tokenizer,
                         template, seq_len, in_inputs=in_inputs)
  return rows, int((~kept).sum())


def pair_batches(pairs: Sequence[dict], tokenizer: Tokenizer, template: ChatTemplate, *,
                 seq_len: int, global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1, in_inputs: bool = False) -> SFTBatches:
  """Random-access batches of pair rows (prints how many pairs were too long)."""
  rows, dropped = pair_rows(pairs, tokenizer, template, seq_len, in_inputs=in_inputs)
  if dropped:
    print(f"preference data: dropped {dropped} of {len(pairs)} pairs longer than "
          f"{seq_len if in_inputs else seq_len + 1} tokens")
  return SFTBatches(rows, global_batch=global_batch, seed=seed, process_index=process_index,
                    process_count=process_count)


def side(batch: dict, name: str) -> dict:
  """The shared example type of one side (`chosen` / `rejected`) of a pair batch."""
  return {k[len(name) + 1:]: v for k, v in batch.items() if k.startswith(name + "_")}
