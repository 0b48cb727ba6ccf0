"""Sentencepiece tokenizers and the one token contract every objective uses.

The contract: sentencepiece owns pad=0, unk=1, bos=2, eos=3 (for models trained here;
loaded models keep their own ids). Ids past the sentencepiece vocabulary are reserved in
one fixed order: `num_sentinels` T5-style sentinels (`<extra_id_k>` = base + num_sentinels
- 1 - k, so with 100 of them `<extra_id_0>` = base + 99 as in T5), then the mask token (unless
the tokenizer has its own, as BERT's `[MASK]`), then the chat roles. The model vocabulary is that total padded to a multiple of 128.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

CHAT_ROLES = ("system", "user", "assistant", "end")
KINDS = ("char", "bpe", "unigram")
VOCAB_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class TokenContract:
  """Special token ids and the padded vocabulary size, defined once per tokenizer."""

  base_size: int
  pad_id: int
  unk_id: int
  bos_id: int
  eos_id: int
  num_sentinels: int
  own_mask_id: int | None = None  # the tokenizer's own mask token (BERT's [MASK]), if any
  # Texts open with BOS, as Llama, Gemma and Mistral were trained (an imported tokenizer's
  # own setting); jaxlm's tokenizers frame documents with EOS alone.
  opens_with_bos: bool = False

  @property
  def opening(self) -> list[int]:
    """The ids put before every document and prompt: [BOS] when texts open with it, else
    none."""
    return [self.bos_id] if self.opens_with_bos else []

  @property
  def start_id(self) -> int:
    """The id a document's first token is predicted from: BOS when texts open with it, else
    EOS (which ends the document before it in the training stream)."""
    return self.bos_id if self.opens_with_bos else self.eos_id

  @property
  def _reserved_end(self) -> int:
    """One past the sentinels and the new mask id (when the tokenizer has none of its own)."""
    return self.base_size + self.num_sentinels + (self.own_mask_id is None)

  @property
  def mask_id(self) -> int:
    """The masked-LM mask token: the tokenizer's own, else a new id after the sentinels."""
    return self.base_size + self.num_sentinels if self.own_mask_id is None else self.own_mask_id

  def sentinel_id(self, k: int) -> int:
    """Id of `<extra_id_k>` (T5 numbering: k counts down from the top of the block)."""
    if not 0 <= k < self.num_sentinels:
      raise IndexError(f"sentinel {k} out of range: the tokenizer has {self.num_sentinels}")
    return self.base_size + self.num_sentinels - 1 - k

  @property
  def role_ids(self) -> dict[str, int]:
    return {role: self._reserved_end + i for i, role in enumerate(CHAT_ROLES)}

  @property
  def num_used(self) -> int:
    return self._reserved_end + len(CHAT_ROLES)

  @property
  def vocab_size(self) -> int:
    return -(-self.num_used // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


class Tokenizer:
  """A sentencepiece model plus the token contract; encode/decode plain text."""

  def __init__(self, model_proto: bytes, num_sentinels: int = 100):
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.contract = TokenContract(
        base_size=self.sp.get_piece_size(), pad_id=self.sp.pad_id(), unk_id=self.sp.unk_id(),
        bos_id=self.sp.bos_id(), eos_id=self.sp.eos_id(), num_sentinels=num_sentinels)

  @property
  def vocab_size(self) -> int:
    return self.contract.vocab_size

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    """Token ids of `text`, optionally framed by bos / eos."""
    ids = self.sp.encode(text)
    return ([self.contract.bos_id] if bos else []) + ids + ([self.contract.eos_id] if eos else [])

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of several texts (sentencepiece's batched, multithreaded encoder)."""
    return self.sp.encode(list(texts), num_threads=os.cpu_count() or 1)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; control tokens and ids past the sentencepiece vocabulary are dropped."""
    base = self.contract.base_size
    return self.sp.decode([int(i) for i in ids if 0 <= int(i) < base])

  def save(self, path: str | os.PathLike) -> None:
    """Writes the sentencepiece model file."""
    Path(path).write_bytes(self.model_proto)

  @classmethod
  def load(cls, path: str | os.PathLike, num_sentinels: int = 100) -> "Tokenizer":
    """Loads a sentencepiece `.model` file, with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer model {path} does not exist")
    try:
      return cls(path.read_bytes(), num_sentinels)
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{path} is not a readable sentencepiece model: {e}") from e


def train_tokenizer(texts: Sequence[str], kind: str, vocab_size: int,
                    num_sentinels: int = 100) -> Tokenizer:
  """Trains a sentencepiece model on `texts` that round-trips them exactly.

  Identity normalisation, no dummy prefix, whitespace kept and newline as its own piece,
  so decode(encode(text)) == text for every text over the training characters. `char`
  models take one piece per distinct character (`vocab_size` is ignored).
  """
  if kind not in KINDS:
    raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
  # sentencepiece silently skips sentences over 4192 bytes; 1024 characters are at most 4096.
  lines = [line[i:i + 1024] for text in texts for line in text.splitlines(keepends=True)
           for i in range(0, len(line), 1024)]
  if not any(line.strip() for line in lines):
    raise ValueError("cannot train a tokenizer on an empty corpus")
  if kind == "char":  # every distinct character gets a piece, plus pad/unk/bos/eos
    vocab_size = len(set().union(*map(set, texts)) - {"\n"}) + 5
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=writer, model_type=kind,
        vocab_size=vocab_size, character_coverage=1.0,
        normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"], byte_fallback=kind != "char",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, num_threads=os.cpu_count() or 1, minloglevel=2)
  except RuntimeError as e:  # e.g. a vocabulary smaller than the 256 byte pieces + characters
    raise ValueError(f"cannot train a {kind} tokenizer of {vocab_size} pieces: {e}") from e
  return Tokenizer(writer.getvalue(), num_sentinels)


def cache_key(texts: Sequence[str], kind: str, vocab_size: int) -> str:
  """A stable key for a tokenizer trained on `texts` with these settings."""
  h = hashlib.sha256(f"{kind}:{vocab_size}:{spm.__version__}".encode())
  for text in texts:
    h.update(hashlib.sha256(text.encode()).digest())
  return h.hexdigest()[:16]


def default_cache_dir() -> Path:
  """Where trained tokenizers are cached ($JAXLM_CACHE or ~/.cache/jaxlm)."""
  return Path(os.environ.get("JAXLM_CACHE", Path.home() / ".cache" / "jaxlm")) / "tokenizers"


def load_or_train(texts: Sequence[str], kind: str, vocab_size: int, num_sentinels: int = 100,
                  cache_dir: str | os.PathLike | None = None) -> Tokenizer:
  """The tokenizer for `texts`: from the cache if trained before, else trained and cached."""
  cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
  path = cache_dir / f"{kind}-{vocab_size}-{cache_key(texts, kind, vocab_size)}.model"
  if path.is_file():
    return Tokenizer.load(path, num_sentinels)
  tok = train_tokenizer(texts, kind, vocab_size, num_sentinels)
  cache_dir.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}")
  tok.save(tmp)
  os.replace(tmp, path)  # atomic: a concurrent reader never sees a half-written model
  return tok
