"""T5 sentinel markup: `<extra_id_k>` in text <-> the tokenizer's sentinel ids.

Span-corruption inputs and targets hold sentinel ids that have no text of their own (they sit
past the sentencepiece vocabulary, see `tokenizer.TokenContract`); this markup lets a person
write an infilling prompt and read the spans a T5 model fills in.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

SENTINEL = re.compile(r"<extra_id_(\d+)>")


def encode(tokenizer: Any, text: str) -> list[int]:
  """Token ids of `text`, each `<extra_id_k>` becoming sentinel k's id (ValueError if the
  tokenizer has fewer sentinels)."""
  ids: list[int] = []
  pos = 0
  count = tokenizer.contract.num_sentinels
  for match in SENTINEL.finditer(text):
    k = int(match.group(1))
    if k >= count:
      raise ValueError(f"{match.group(0)} in the text, but the tokenizer has {count} sentinels"
                       + (f" (<extra_id_0> .. <extra_id_{count - 1}>)" if count else ""))
    ids += tokenizer.encode(text[pos:match.start()]) if match.start() > pos else []
    ids.append(tokenizer.contract.sentinel_id(k))
    pos = match.end()
  return ids + (tokenizer.encode(text[pos:]) if pos < len(text) else [])


def decode(tokenizer: Any, ids: Iterable[int]) -> str:
  """Text of `ids` with each sentinel id written as `<extra_id_k>`."""
  contract = tokenizer.contract
  first = contract.sentinel_id(contract.num_sentinels - 1) if contract.num_sentinels else 0
  last = first + contract.num_sentinels
  parts, run = [], []
  for i in map(int, ids):
    if first <= i < last:
      parts.append(tokenizer.decode(run))
      parts.append(f"<extra_id_{last - 1 - i}>")
      run = []
    else:
      run.append(i)
  return "".join(parts) + tokenizer.decode(run)


class Markup:
  """A view of a tokenizer whose `encode` / `decode` read and write `<extra_id_k>` markup
  (the sampler's text helpers take it in place of the tokenizer)."""

  def __init__(self, tokenizer: Any):
    self.tokenizer = tokenizer
    self.contract = tokenizer.contract

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, sentinels included."""
    return encode(self.tokenizer, text)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, sentinels written as markup."""
    return decode(self.tokenizer, ids)
