"""Reading JSONL records (conversations, preference pairs) for post-training objectives."""

from __future__ import annotations

from typing import Callable, Sequence

import ml_collections


def split_records(records: list, val_fraction: float) -> tuple[list, list]:
  """The last `val_fraction` of the records held out for evaluation."""
  cut = len(records) - int(round(len(records) * val_fraction))
  return records[:cut], records[cut:]


def load_split(cfg: ml_collections.ConfigDict, reader: Callable[[str], list]) -> tuple[list, list]:
  """Records of `data.source` (`jsonl:PATH`) read by `reader`, split train / validation."""
  kind, _, path = cfg.data.source.partition(":")
  if kind != "jsonl":
    raise ValueError(f"objective {cfg.objective!r} reads JSONL records: set "
                     f"data.source=jsonl:PATH (got {cfg.data.source!r})")
  return split_records(reader(path), cfg.data.val_fraction)


def conversation_texts(conversations: Sequence[Sequence[dict]]) -> list[str]:
  """Every message's text (what a tokenizer trained for these records must cover)."""
  return [m["content"] for conv in conversations for m in conv]
