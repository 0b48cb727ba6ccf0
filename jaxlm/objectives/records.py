"""Reading JSONL records (conversations, preference pairs) for post-training objectives."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from jaxlm.data import formats, tasks


def split_records(records: list, val_fraction: float) -> tuple[list, list]:
  """The last `val_fraction` of the records held out for evaluation."""
  cut = len(records) - int(round(len(records) * val_fraction))
  return records[:cut], records[cut:]


def load_split(cfg: ml_collections.ConfigDict, parse: Callable[[dict, str], Any],
               from_examples: Callable[[list], list]) -> tuple[list, list]:
  """Records of `data.source`, split train / validation, each record checked by `parse`:
  `jsonl:PATH` (the last `data.val_fraction` held out), `tfds:NAME` (a prepared dataset with
  the same text fields; its validation or test split held out) or `task:KINDS` (the shipped
  tasks' train and held-out prompts, turned into records by `from_examples`)."""
  kind, _, arg = cfg.data.source.partition(":")
  if kind == "task":
    train, heldout = tasks.train_and_heldout(arg, cfg.task)
    return from_examples(train), from_examples(heldout)
  if kind == "tfds":
    from jaxlm.data import tfds_source  # optional extra
    return tuple([parse(r, f"tfds:{arg}[{split}:{i}]") for i, r in enumerate(records)]
                 for split, records in zip(("train", "val"), tfds_source.load_records(arg)))
  if kind != "jsonl":
    raise ValueError(f"objective {cfg.objective!r} reads records: set data.source=jsonl:PATH, "
                     f"tfds:NAME or task:KINDS (got {cfg.data.source!r})")
  return split_records([parse(r, where) for where, r in formats.iter_jsonl(arg)],
                       cfg.data.val_fraction)


def task_conversations(examples: list) -> list:
  """SFT conversations of task examples."""
  return [e.conversation() for e in examples]


def task_preferences(examples: list) -> list:
  """Preference pairs of task examples (the answer against a corruption), as records."""
  pairs = tasks.preference_pairs(examples, np.random.default_rng(len(examples)))
  return [formats.parse_preference(p, f"task pair {i}") for i, p in enumerate(pairs)]


def conversation_texts(conversations: Sequence[Sequence[dict]]) -> list[str]:
  """Every message's text (what a tokenizer trained for these records must cover)."""
  return [m["content"] for conv in conversations for m in conv]
