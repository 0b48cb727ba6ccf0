"""A Hugging Face `tokenizer.json` (e.g. GPT-2's byte-level BPE) behind jaxlm's tokenizer
interface, through the `tokenizers` library.

It offers what the trainer and sampler use (`encode`, `encode_batch`, `decode`, `save`,
`vocab_size`, `contract`). The token contract is jaxlm's: pad / unk / bos / eos are the
tokenizer's own special tokens where it has them (GPT-2's `<|endoftext|>` serves as bos,
eos, unk and pad; BERT's `[MASK]` is the mask token), and the chat roles (and a mask token,
when the tokenizer has none) take new ids after the vocabulary, which is padded to a multiple
of 128 (GPT-2: 50257 -> 50304). Texts open with BOS when its post-processor puts one first.
Sentencepiece-only features (whole-
word MLM masking reads `tokenizer.sp`) are not available with it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from jaxlm.data.tokenizer import TokenContract

FILE_NAME = "tokenizer.json"
# Candidate spellings of each special token, first match wins.
SPECIALS = {
    "eos": ("<|endoftext|>", "</s>", "[SEP]", "<eos>", "<|end_of_text|>"),  # ... Llama 3
    "bos": ("<|endoftext|>", "<s>", "[CLS]", "<bos>", "<|begin_of_text|>"),
    "unk": ("<unk>", "[UNK]", "<|endoftext|>"),
    "pad": ("<pad>", "[PAD]", "<|endoftext|>", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}


def with_add_bos_token(tokenizer: Any, tokenizer_config: dict[str, Any] | None) -> Any:
  """`tokenizer`, whose texts open with BOS as an HF `tokenizer_config.json`'s
  `add_bos_token` says, when it says (Llama-2's sentencepiece `tokenizer.model` carries no
  such setting itself)."""
  flag = (tokenizer_config or {}).get("add_bos_token")
  if isinstance(flag, bool):
    tokenizer.contract = dataclasses.replace(tokenizer.contract, opens_with_bos=flag)
  return tokenizer


class HFTokenizer:
  """`tokenizers.Tokenizer` plus a jaxlm TokenContract."""

  file_name = FILE_NAME

  def __init__(self, json_text: str, num_sentinels: int = 0):
    from tokenizers import Tokenizer as RustTokenizer  # optional dependency, imported on use
    self.json_text = json_text
    self.tok = RustTokenizer.from_str(json_text)
    base = self.tok.get_vocab_size(with_added_tokens=True)
    ids = {role: self._first_id(names) for role, names in SPECIALS.items()}
    if ids["eos"] is None:
      raise ValueError(f"tokenizer.json defines no end-of-text token (one of {SPECIALS['eos']})")
    # Its post-processor frames a text as [BOS] text (Llama, Gemma, Llama 3), not as GPT-2
    # (nothing), BERT ([CLS] text [SEP]) or T5 (text </s>).
    framed, plain = (self.tok.encode("a", add_special_tokens=s).ids for s in (True, False))
    opens_with_bos = ids["bos"] is not None and framed == [ids["bos"], *plain]
    self.contract = TokenContract(
        base_size=base, pad_id=ids["pad"] if ids["pad"] is not None else ids["eos"],
        unk_id=ids["unk"] if ids["unk"] is not None else ids["eos"],
        bos_id=ids["bos"] if ids["bos"] is not None else ids["eos"], eos_id=ids["eos"],
        num_sentinels=num_sentinels, own_mask_id=ids["mask"], opens_with_bos=opens_with_bos)

  def _first_id(self, names: Sequence[str]) -> int | None:
    for name in names:
      i = self.tok.token_to_id(name)
      if i is not None:
        return i
    return None

  @property
  def vocab_size(self) -> int:
    return self.contract.vocab_size

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    """Token ids of `text` (no special tokens added), optionally framed by bos / eos."""
    ids = self.tok.encode(text, add_special_tokens=False).ids
    return ([self.contract.bos_id] if bos else []) + ids + ([self.contract.eos_id] if eos else [])

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of several texts."""
    return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; special tokens and ids past the vocabulary are dropped."""
    base = self.contract.base_size
    return self.tok.decode([int(i) for i in ids if 0 <= int(i) < base], skip_special_tokens=True)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the tokenizer.json."""
    Path(path).write_text(self.json_text)

  @classmethod
  def load(cls, path: str | os.PathLike, num_sentinels: int = 0) -> "HFTokenizer":
    """Loads a tokenizer.json, with a clear error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
      return cls(path.read_text(), num_sentinels)
    except Exception as e:  # tokenizers raises its own exception type on bad JSON
      if isinstance(e, ValueError) and "end-of-text" in str(e):
        raise
      raise ValueError(f"{path} is not a readable tokenizer.json: {e}") from e
