"""Masked language modelling (BERT, Devlin et al. 2019): numpy batch preparation.

`mask_tokens` corrupts a batch of token rows the BERT way: in each row it selects `rate` of the
eligible tokens, replaces `mask_frac` of the selected with the mask token and `random_frac` with
a random ordinary token, leaves the rest unchanged, and sets `loss_mask` on the selected positions
only. Eligible tokens are the ordinary sentencepiece pieces: never padding, pad/unk/bos/eos, the
sentinels, the mask token or the chat roles (every id >= `base_size`). Given word starts (see
`word_starts`), whole words are selected together (BERT's whole-word masking).
"""

from __future__ import annotations

import weakref

import numpy as np

from jaxlm.data.pipeline import MappedBatches, positions_in_segment
from jaxlm.data.tokenizer import TokenContract, Tokenizer
from jaxlm.objectives.common import masked_token_loss, windows

Batch = dict[str, np.ndarray]
SPACE_MARK = "\u2581"  # '▁': how sentencepiece writes a space inside a piece
_WORD_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_ids(contract: TokenContract) -> np.ndarray:
  """The pad, unk, bos, eos and mask ids that the tokenizer defines (sentencepiece uses -1 for
  none; the mask id is inside the vocabulary only when the tokenizer has its own, BERT's)."""
  ids = (contract.pad_id, contract.unk_id, contract.bos_id, contract.eos_id, contract.mask_id)
  return np.array([i for i in ids if i >= 0], np.int64)


def ordinary_ids(contract: TokenContract) -> np.ndarray:
  """Ids of the ordinary vocabulary: pieces below `base_size` other than pad/unk/bos/eos."""
  return np.setdiff1d(np.arange(contract.base_size), special_ids(contract))


def is_ordinary(tokens: np.ndarray, contract: TokenContract) -> np.ndarray:
  """True where a token is an ordinary vocabulary piece, the only tokens MLM may select."""
  tokens = np.asarray(tokens)
  return (tokens >= 0) & (tokens < contract.base_size) & ~np.isin(tokens, special_ids(contract))


def _select(eligible_BxL: np.ndarray, starts_BxL: np.ndarray, rate: float,
            rng: np.random.Generator) -> np.ndarray:
  """Selected positions: BERT's greedy fill of a per-row token budget with words in random order.

  A word is a run of eligible tokens opened by a word start or by following an ineligible token.
  Words are visited in random order and taken when they fit in what is left of the budget, else
  skipped (as in BERT). Done in vectorised passes: drop the words longer than the budget left (they
  can never fit), then take the longest fitting prefix of the rest; every pass takes a word or ends.
  """
  b, length = eligible_BxL.shape
  count_B = eligible_BxL.sum(1)
  budget_B = np.where((count_B > 0) & (rate > 0),
                      np.maximum(1, np.rint(rate * count_B)), 0).astype(np.int64)
  prev_BxL = np.zeros_like(eligible_BxL)
  prev_BxL[:, 1:] = eligible_BxL[:, :-1]
  opens_BxL = eligible_BxL & (starts_BxL | ~prev_BxL)
  word_BxL = np.maximum(np.cumsum(opens_BxL, 1) - 1, 0)  # the word a token is in (if eligible)
  w = max(int(opens_BxL.sum(1).max(initial=0)), 1)
  flat = (np.arange(b)[:, None] * w + word_BxL)[eligible_BxL]
  lens_BxW = np.bincount(flat, minlength=b * w).reshape(b, w)
  # Drawn for the most words a row can hold, so a row's draws do not depend on the others'.
  keys_BxW = np.where(lens_BxW > 0, rng.random((b, length))[:, :w], 2.0)  # absent ones last
  order_BxW = np.argsort(keys_BxW, axis=1, kind="stable")
  lens_BxW = np.take_along_axis(lens_BxW, order_BxW, 1)  # now in visiting order
  undecided_BxW = lens_BxW > 0
  taken_BxW = np.zeros_like(undecided_BxW)
  while undecided_BxW.any():
    undecided_BxW &= lens_BxW <= budget_B[:, None]
    fits_BxW = undecided_BxW & (np.cumsum(lens_BxW * undecided_BxW, 1) <= budget_B[:, None])
    taken_BxW |= fits_BxW
    undecided_BxW &= ~fits_BxW
    budget_B -= (lens_BxW * fits_BxW).sum(1)
  unsorted_BxW = np.zeros_like(taken_BxW)
  np.put_along_axis(unsorted_BxW, order_BxW, taken_BxW, 1)
  return eligible_BxL & np.take_along_axis(unsorted_BxW, word_BxL, 1)


def mask_tokens(tokens_BxL: np.ndarray, rng: np.random.Generator, *, contract: TokenContract,
                rate: float = 0.15, mask_frac: float = 0.8, random_frac: float = 0.1,
                word_starts_BxL: np.ndarray | None = None) -> Batch:
  """BERT's masked-LM corruption of a batch: `inputs` (corrupted), `targets`, `loss_mask`.

  Selection is per-row exact, not Bernoulli: as in BERT's `create_masked_lm_predictions`, each row
  selects max(1, round(rate * n)) of its n eligible tokens (none if n == 0 or rate == 0; n counts
  eligible tokens, not the whole row, and there is no max_predictions_per_seq cap). Each selected
  token independently becomes the mask token (`mask_frac`), a uniformly random ordinary token
  (`random_frac`; it may equal the original) or stays unchanged (the rest).

  With `word_starts_BxL` (True where a token begins a word) whole words are selected, as in BERT's
  whole-word masking: words in random order are taken while they fit in the row's budget, so a
  row selects at most (not exactly) that many tokens; the 80/10/10 choice is still per token.
  Padding and special tokens are never selected, and random replacements are never special.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"masking rate must be in [0, 1], got {rate}")
  if mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1:
    raise ValueError(f"need mask_frac, random_frac >= 0 with sum <= 1, got {mask_frac}, "
                     f"{random_frac}")
  tokens_BxL = np.asarray(tokens_BxL)
  if tokens_BxL.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens_BxL.shape}")
  eligible_BxL = is_ordinary(tokens_BxL, contract)
  if word_starts_BxL is None:
    starts_BxL = eligible_BxL  # every token is a word of its own
  else:
    starts_BxL = np.asarray(word_starts_BxL, bool)
    if starts_BxL.shape != tokens_BxL.shape:
      raise ValueError(f"word starts {starts_BxL.shape} do not match tokens {tokens_BxL.shape}")
  pool = ordinary_ids(contract)
  if len(pool) == 0:
    raise ValueError("the vocabulary has no ordinary tokens to mask")
  selected_BxL = _select(eligible_BxL, starts_BxL, rate, rng)
  u_BxL = rng.random(tokens_BxL.shape)
  random_BxL = pool[rng.integers(len(pool), size=tokens_BxL.shape)]
  inputs_BxL = np.where(selected_BxL & (u_BxL < mask_frac), contract.mask_id, tokens_BxL)
  replace_BxL = selected_BxL & (u_BxL >= mask_frac) & (u_BxL < mask_frac + random_frac)
  inputs_BxL = np.where(replace_BxL, random_BxL, inputs_BxL)
  return {"inputs": inputs_BxL.astype(tokens_BxL.dtype), "targets": tokens_BxL.copy(),
          "loss_mask": selected_BxL.astype(np.float32)}


def _piece_text(tokenizer: Tokenizer, i: int) -> str:
  """The text of piece `i` with spaces as '▁' (a byte piece as its ASCII character, or '?')."""
  piece = tokenizer.sp.id_to_piece(i)
  if tokenizer.sp.is_byte(i):
    value = int(piece[3:5], 16)  # '<0xNN>'
    return chr(value) if value < 0x80 else "?"
  return piece


def _word_tables(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-id lookup tables, built once per tokenizer: is the piece text (not pad/bos/eos), does
  it begin with whitespace, does it end with whitespace."""
  if tokenizer not in _WORD_TABLES:
    def space(c: str) -> bool:
      return c == SPACE_MARK or c.isspace()
    sp, n = tokenizer.sp, tokenizer.contract.base_size
    texts = [_piece_text(tokenizer, i) for i in range(n)]
    real = np.array([not sp.is_control(i) for i in range(n)], bool)
    begins = np.array([bool(t) and space(t[0]) for t in texts], bool) & real
    ends = np.array([bool(t) and space(t[-1]) for t in texts], bool) & real
    _WORD_TABLES[tokenizer] = (real, begins, ends)
  return _WORD_TABLES[tokenizer]


def word_starts(tokenizer: Tokenizer, tokens_BxL: np.ndarray) -> np.ndarray:
  """True where a token begins a word, for `mask_tokens(..., word_starts_BxL=...)`.

  A text piece begins a word when it starts with whitespace ('▁' or '\\n'), follows a piece that
  ends with whitespace (a whitespace-only piece such as '\\n' or a lone '▁' is a word of its own),
  or follows no text piece (row start, bos/eos/pad, ids >= base_size). Those are False.
  """
  real, begins, ends = _word_tables(tokenizer)
  tokens_BxL = np.asarray(tokens_BxL)
  in_table_BxL = (tokens_BxL >= 0) & (tokens_BxL < len(real))
  idx_BxL = np.where(in_table_BxL, tokens_BxL, 0)
  real_BxL = in_table_BxL & real[idx_BxL]
  after_break_BxL = np.ones(tokens_BxL.shape, bool)
  after_break_BxL[:, 1:] = ~real_BxL[:, :-1] | ends[idx_BxL[:, :-1]]
  return real_BxL & (begins[idx_BxL] | after_break_BxL)


MODEL_FAMILY = "encoder"


def build_batches(tokens: np.ndarray, segments: np.ndarray, *, cfg, tokenizer: Tokenizer,
                  seed: int, process_index: int = 0, process_count: int = 1) -> MappedBatches:
  """Random windows of `data.seq_len` tokens, masked per `config.mlm` in the input pipeline.

  Keys: `tokens` (corrupted inputs), `targets` (originals), `loss_mask` (selected positions),
  `segment_ids` (one per document; attention stays within a document) and `positions`.
  """
  m = cfg.mlm

  def make(window_tokens_BxL1: np.ndarray, window_segments_BxL1: np.ndarray,
           rng: np.random.Generator) -> Batch:
    tokens_BxL, segments_BxL = window_tokens_BxL1[:, :-1], window_segments_BxL1[:, :-1]
    starts = word_starts(tokenizer, tokens_BxL) if m.whole_word else None
    masked = mask_tokens(tokens_BxL, rng, contract=tokenizer.contract, rate=m.rate,
                         mask_frac=m.mask_frac, random_frac=m.random_frac, word_starts_BxL=starts)
    return {"tokens": masked["inputs"], "targets": masked["targets"],
            "loss_mask": masked["loss_mask"], "segment_ids": segments_BxL,
            "positions": positions_in_segment(segments_BxL)}

  return MappedBatches(windows(tokens, segments, cfg, seed=seed, process_index=process_index,
                               process_count=process_count), make)


def loss_fn(model, batch: dict, rng, frozen: dict | None = None):
  """Cross-entropy and accuracy on the selected (masked) positions only."""
  logits_BxLxV = model(batch["tokens"], batch["segment_ids"], batch["positions"], dropout_rng=rng)
  return masked_token_loss(logits_BxLxV, batch["targets"], batch["loss_mask"])
