"""Preference pairs as rows: chosen and rejected conversations, one example per row.

Both answers of a pair are rendered with the chat template after the same prompt; a pair
with either side longer than a row is dropped (and counted). Row keys are the shared
example type prefixed `chosen_` / `rejected_`, whose `loss_mask` marks response targets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxlm.data.chat import ChatTemplate
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.objectives.sft_data import SFTBatches, encode_conversations, pack_sft

SIDES = ("chosen", "rejected")


def pair_rows(pairs: Sequence[dict], tokenizer: Tokenizer, template: ChatTemplate,
              seq_len: int, *, in_inputs: bool = False) -> tuple[dict[str, np.ndarray], int]:
  """(rows, number of pairs dropped as too long) from `{"prompt", "chosen", "rejected"}`.

  A side may fill the row's `seq_len + 1` tokens when only its targets are read (DPO); with
  `in_inputs` (a reward model scores the last input token) it must fit the `seq_len` inputs.
  """
  longest = seq_len if in_inputs else seq_len + 1
  encoded = {side: encode_conversations(
      [[*p["prompt"], {"role": "assistant", "content": p[side]}] for p in pairs], tokenizer,
      template) for side in SIDES}
  fits = [all(len(encoded[side][i][0]) <= longest for side in SIDES)
          for i in range(len(pairs))]
  if not any(fits):
    raise ValueError(f"no preference pair fits in {longest} tokens")
  rows = {}
  for side in SIDES:
    kept = [ex for ex, ok in zip(encoded[side], fits) if ok]
    side_rows, _ = pack_sft(kept, seq_len, tokenizer.contract.pad_id, pack=False)
    rows.update({f"{side}_{k}": v for k, v in side_rows.items()})
  return rows, len(pairs) - sum(fits)


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
