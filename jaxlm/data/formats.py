"""Post-training data files: SFT conversations and preference pairs as JSONL.

SFT, one example per line, either shape:
  {"prompt": "What is 2+2?", "response": "4"}      -> a user message, then an assistant one
  {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
Preference, one pair per line (`prompt` a string, i.e. one user message, or a message list
ending with a user message; `chosen` / `rejected` the two candidate assistant replies):
  {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
Unpaired feedback (KTO), one judged reply per line, or a preference pair read as two:
  {"prompt": "What is 2+2?", "completion": "4", "label": true}

Blank lines are skipped; other fields are ignored. Every error names `file:line` and what is
wrong with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from jaxlm.data.chat import check_messages

Conversation = list[dict[str, str]]


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
  """(`file:line`, object) for each non-blank line; clear errors for a missing file, invalid
  JSON, a line that is not an object, or a file without records."""
  p = Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"data file {p} does not exist")
  seen = False
  with p.open(encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{p}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
      if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
      seen = True
      yield where, record
  if not seen:
    raise ValueError(f"data file {p} is empty: no JSONL records")


def _string(record: dict, key: str, where: str) -> str:
  if key not in record:
    raise ValueError(f"{where}: missing field {key!r}")
  if not isinstance(record[key], str):
    raise ValueError(f"{where}: field {key!r} must be a string, got {type(record[key]).__name__}")
  return record[key]


def _messages(value: Any, where: str) -> Conversation:
  try:
    check_messages(value)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  return [{"role": m["role"], "content": m["content"]} for m in value]


def parse_sft(record: dict, where: str) -> Conversation:
  """The conversation of one SFT record (`where` prefixes errors)."""
  if "messages" in record:
    if "prompt" in record or "response" in record:
      raise ValueError(f"{where}: give either 'messages' or 'prompt'/'response', not both")
    messages = _messages(record["messages"], where)
    if not any(m["role"] == "assistant" for m in messages):
      raise ValueError(f"{where}: no assistant message, so nothing to learn")
    return messages
  if "prompt" not in record and "response" not in record:
    raise ValueError(f"{where}: expected 'prompt' and 'response', or 'messages'; "
                     f"got fields {sorted(record)}")
  return [{"role": "user", "content": _string(record, "prompt", where)},
          {"role": "assistant", "content": _string(record, "response", where)}]


def _prompt(record: dict, where: str) -> Conversation:
  """A record's `prompt`: a string (one user message) or messages ending with a user one."""
  if "prompt" not in record:
    raise ValueError(f"{where}: missing field 'prompt'")
  prompt = record["prompt"]
  if isinstance(prompt, str):
    return [{"role": "user", "content": prompt}]
  prompt = _messages(prompt, where)
  if prompt[-1]["role"] != "user":
    raise ValueError(f"{where}: a prompt message list must end with a user message, "
                     f"not {prompt[-1]['role']!r}")
  return prompt


def parse_preference(record: dict, where: str) -> dict[str, Any]:
  """`{prompt: messages, chosen: str, rejected: str}` of one preference record."""
  prompt = _prompt(record, where)
  chosen, rejected = _string(record, "chosen", where), _string(record, "rejected", where)
  if chosen == rejected:
    raise ValueError(f"{where}: 'chosen' and 'rejected' are identical, so nothing to prefer")
  return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def parse_unpaired(record: dict, where: str) -> list[dict[str, Any]]:
  """`[{prompt: messages, completion: str, label: bool}]` of one unpaired record, or the two
  of a preference pair (its chosen reply desirable, its rejected one not)."""
  if "completion" not in record and "chosen" in record:
    pair = parse_preference(record, where)
    return [{"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}
            for side in ("chosen", "rejected")]
  if not isinstance(record.get("label"), bool):
    raise ValueError(f"{where}: field 'label' must be true (a desirable reply) or false, got "
                     f"{record.get('label')!r}")
  return [{"prompt": _prompt(record, where), "completion": _string(record, "completion", where),
           "label": record["label"]}]


def read_sft_jsonl(path: str | os.PathLike) -> list[Conversation]:
  """Conversations of an SFT JSONL file (see the module docstring for the formats)."""
  return [parse_sft(record, where) for where, record in iter_jsonl(path)]


def read_preference_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Preference pairs `{prompt: messages, chosen: str, rejected: str}` of a JSONL file."""
  return [parse_preference(record, where) for where, record in iter_jsonl(path)]


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
  """Writes one JSON object per line (UTF-8, creating parent folders); returns the path."""
  p = Path(path).expanduser()
  p.parent.mkdir(parents=True, exist_ok=True)
  with p.open("w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  return p
