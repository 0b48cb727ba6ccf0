"""Supervised fine-tuning: next-token loss on response tokens of chat conversations.

Records are JSONL conversations (`{"prompt", "response"}` or `{"messages": [...]}`) rendered by
the one chat template (`config.chat`), packed into rows with segment ids so examples never
see each other, and learned on assistant tokens only (`sft.train_on_prompt` learns all).
Over-long examples follow `sft.truncation` (drop | left | right) and are reported.
"""

from __future__ import annotations

import jax
import ml_collections

from jaxlm.data import chat, formats
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.objectives import clm, records
from jaxlm.objectives.sft_data import SFTBatches, sft_batches

MODEL_FAMILY = "decoder"
INPUT = "records"
loss_fn = clm.loss_fn  # CLM with a response-only loss mask
make_loss_fn = clm.make_loss_fn


def load_records(cfg: ml_collections.ConfigDict) -> tuple[list, list]:
  """Train and validation conversations from `data.source` (jsonl, tfds or task)."""
  return records.load_split(cfg, formats.parse_sft, records.task_conversations)


record_texts = records.conversation_texts


def build_batches(conversations: list, *, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  seed: int, process_index: int = 0, process_count: int = 1) -> SFTBatches:
  """Packed SFT rows as random-access batches; prints the truncation report."""
  batches, report = sft_batches(
      conversations, tokenizer, chat.from_config(cfg.chat), seq_len=cfg.data.seq_len,
      global_batch=cfg.train.batch_size, seed=seed, process_index=process_index,
      process_count=process_count, truncation=cfg.sft.truncation,
      train_on_prompt=cfg.sft.train_on_prompt)
  if jax.process_index() == 0:
    print(f"sft data: {report}")
  return batches
