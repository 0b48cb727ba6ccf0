"""MLM batch preparation against independent references: BERT's per-row counts and 80/10/10
split, special tokens and padding, whole-word masking, word starts from sentencepiece pieces."""

import numpy as np
import pytest

from jaxlm.data import tokenizer as tok_lib
from jaxlm.objectives import mlm

CONTRACT = tok_lib.TokenContract(base_size=1000, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                 num_sentinels=100)
# Written out from the contract's layout rather than taken from mlm: pad/unk/bos/eos, then
# everything from base_size up (sentinels 1000-1099, mask 1100, roles 1101-1104, padding ids).
SPECIALS = np.array([0, 1, 2, 3, *range(1000, CONTRACT.vocab_size)])
SPECIAL_SET = set(SPECIALS.tolist())
NUM_ORDINARY = 1000 - 4
TEXT = """The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs
into the forest. A small bird sings on the branch of an old tree while the wind blows softly.
Children play in the park near the river; their parents talk about the weather and the news.
""" * 3


def random_rows(seed: int, b: int = 2000, length: int = 128) -> np.ndarray:
  """Ordinary tokens with bos first, ~5% scattered specials and a padded tail of random length."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 1000, (b, length))
  scattered = rng.random((b, length)) < 0.05
  tokens[scattered] = rng.choice(SPECIALS[SPECIALS != 0], scattered.sum())
  tokens[:, 0] = CONTRACT.bos_id
  pad_from = rng.integers(length // 2, length + 1, b)
  tokens[np.arange(length) >= pad_from[:, None]] = CONTRACT.pad_id
  return tokens.astype(np.int32)


def four_se(p: float, n: int) -> float:
  """Four standard errors of a binomial proportion p over n draws."""
  return 4 * np.sqrt(p * (1 - p) / n)


def bert_budget(n: int, rate: float) -> int:
  """BERT's count: max(1, int(round(n * rate))), none when nothing is eligible or rate is 0."""
  return max(1, int(round(n * rate))) if n and rate else 0


def reference_words(tokens_row: np.ndarray, starts_row: np.ndarray) -> list[list[int]]:
  """Words as position lists, by a plain loop: eligible runs, split at word starts."""
  words, prev_eligible = [], False
  for i, t in enumerate(tokens_row.tolist()):
    eligible = t not in SPECIAL_SET
    if eligible and (starts_row[i] or not prev_eligible):
      words.append([i])
    elif eligible:
      words[-1].append(i)
    prev_eligible = eligible
  return words


def test_per_row_counts_and_80_10_10_split():
  tokens = random_rows(0)
  out = mlm.mask_tokens(tokens, np.random.default_rng(1), contract=CONTRACT)
  sel = out["loss_mask"] == 1
  eligible = ~np.isin(tokens, SPECIALS)
  assert sel.sum(1).tolist() == [bert_budget(int(n), 0.15) for n in eligible.sum(1)]
  # Per-row exact: only rounding (at most half a token per row) moves the fraction off 15%.
  n_eligible, k = int(eligible.sum()), int(sel.sum())
  assert abs(k / n_eligible - 0.15) <= 0.5 * len(tokens) / n_eligible
  # Chosen uniformly within the row: every quarter of the row is selected at the same rate.
  for q in range(4):
    cols = slice(32 * q, 32 * (q + 1))
    n_q = int(eligible[:, cols].sum())
    assert abs(sel[:, cols].sum() / n_q - 0.15) < four_se(0.15, n_q)
  inputs, targets = out["inputs"][sel], out["targets"][sel]
  masked = inputs == CONTRACT.mask_id
  changed = ~masked & (inputs != targets)
  unchanged = inputs == targets
  assert abs(masked.mean() - 0.8) < four_se(0.8, k)
  # A random replacement equals the original with probability 1 / NUM_ORDINARY.
  p_changed = 0.1 * (1 - 1 / NUM_ORDINARY)
  assert abs(changed.mean() - p_changed) < four_se(p_changed, k)
  assert abs(unchanged.mean() - (1 - 0.8 - p_changed)) < four_se(1 - 0.8 - p_changed, k)


def test_specials_and_padding_are_never_selected_nor_drawn():
  tokens = random_rows(2, b=500)
  for mask_frac, random_frac in [(0.8, 0.1), (0.0, 1.0)]:
    out = mlm.mask_tokens(tokens, np.random.default_rng(3), contract=CONTRACT, rate=0.5,
                          mask_frac=mask_frac, random_frac=random_frac)
    sel = out["loss_mask"] == 1
    assert not sel[np.isin(tokens, SPECIALS)].any()
    assert not sel[tokens == CONTRACT.pad_id].any()
    drawn = out["inputs"][sel & (out["inputs"] != CONTRACT.mask_id)]
    assert not np.isin(drawn, SPECIALS).any()
  # With every selected token replaced at random, the draws cover the ordinary vocabulary.
  assert drawn.min() < 4 + 20 and drawn.max() >= 1000 - 20 and len(np.unique(drawn)) > 900


def test_targets_are_originals_and_unselected_inputs_unchanged():
  tokens = random_rows(4, b=300)
  out = mlm.mask_tokens(tokens, np.random.default_rng(5), contract=CONTRACT)
  assert out["targets"].tolist() == tokens.tolist()
  assert out["loss_mask"].dtype == np.float32 and out["inputs"].dtype == tokens.dtype
  unselected = out["loss_mask"] == 0
  assert (out["inputs"][unselected] == tokens[unselected]).all()
  assert set(np.unique(out["loss_mask"]).tolist()) <= {0.0, 1.0}


def test_configurable_rates_and_edge_rows():
  tokens = random_rows(6, b=1000)
  tokens[0] = CONTRACT.pad_id           # all padding: nothing selected
  tokens[1] = [CONTRACT.bos_id, 7] + [CONTRACT.pad_id] * 126  # one eligible token: it is selected
  out = mlm.mask_tokens(tokens, np.random.default_rng(7), contract=CONTRACT, rate=0.3,
                        mask_frac=0.5, random_frac=0.25)
  sel = out["loss_mask"] == 1
  eligible = ~np.isin(tokens, SPECIALS)
  assert sel.sum(1).tolist() == [bert_budget(int(n), 0.3) for n in eligible.sum(1)]
  assert sel[0].sum() == 0 and sel[1].tolist() == [False, True] + [False] * 126
  masked = (out["inputs"][sel] == CONTRACT.mask_id).mean()
  assert abs(masked - 0.5) < four_se(0.5, int(sel.sum()))
  none = mlm.mask_tokens(tokens, np.random.default_rng(7), contract=CONTRACT, rate=0.0)
  assert none["loss_mask"].sum() == 0 and (none["inputs"] == tokens).all()
  with pytest.raises(ValueError):
    mlm.mask_tokens(tokens, np.random.default_rng(7), contract=CONTRACT, mask_frac=0.8,
                    random_frac=0.3)


def test_whole_words_are_selected_together_greedily():
  tokens = random_rows(8, b=400)
  starts = np.random.default_rng(9).random(tokens.shape) < 0.4  # words of ~2.5 pieces
  out = mlm.mask_tokens(tokens, np.random.default_rng(10), contract=CONTRACT,
                        word_starts_BxL=starts)
  sel = out["loss_mask"] == 1
  assert not sel[np.isin(tokens, SPECIALS)].any()
  mixed_decisions = multi_piece_words = 0
  for row in range(len(tokens)):
    words = reference_words(tokens[row], starts[row])
    budget = bert_budget(sum(map(len, words)), 0.15)
    chosen = [w for w in words if sel[row, w].all()]
    assert all(sel[row, w].all() or not sel[row, w].any() for w in words)
    taken = sum(map(len, chosen))
    # BERT's greedy fill: within budget, and every skipped word was too long for what was left.
    assert taken <= budget
    assert all(len(w) > budget - taken for w in words if w not in chosen)
    for w in chosen:
      multi_piece_words += len(w) > 1
      mixed_decisions += len(w) > 1 and len(set((out["inputs"][row, w] == CONTRACT.mask_id))) > 1
  # 80/10/10 is decided per token, so many multi-piece words mix masked and unmasked pieces.
  assert multi_piece_words > 100 and mixed_decisions > 0.2 * multi_piece_words
  k = int(sel.sum())
  assert abs((out["inputs"][sel] == CONTRACT.mask_id).mean() - 0.8) < four_se(0.8, k)


def test_single_piece_words_match_token_masking_and_seed_determines_output():
  tokens = random_rows(11, b=200)
  plain = mlm.mask_tokens(tokens, np.random.default_rng(12), contract=CONTRACT)
  again = mlm.mask_tokens(tokens, np.random.default_rng(12), contract=CONTRACT)
  words = mlm.mask_tokens(tokens, np.random.default_rng(12), contract=CONTRACT,
                          word_starts_BxL=np.ones(tokens.shape, bool))
  other = mlm.mask_tokens(tokens, np.random.default_rng(13), contract=CONTRACT)
  for key in plain:
    assert np.array_equal(plain[key], again[key]) and np.array_equal(plain[key], words[key])
  assert not np.array_equal(plain["loss_mask"], other["loss_mask"])


@pytest.fixture(scope="module")
def bpe_tok():
  return tok_lib.train_tokenizer([TEXT], "bpe", 400)


def byte_reference_starts(tok, ids: list[int]) -> list[bool]:
  """Word starts from the bytes the pieces stand for: a text token starts a word when it comes
  first or after a special, when its first byte is whitespace, or when the byte before it is."""
  out, prev = [], None
  for i in ids:
    if i in (tok.contract.pad_id, tok.contract.bos_id, tok.contract.eos_id) or i >= 400:
      out.append(False)
      prev = None
      continue
    piece = tok.sp.id_to_piece(i)
    if tok.sp.is_byte(i):
      data = bytes([int(piece[3:5], 16)])
    else:
      data = piece.replace("\u2581", " ").encode()
    out.append(prev is None or data[:1].isspace() or prev.isspace())
    prev = data[-1:]
  return out


def test_word_starts_on_a_hand_checked_sentence(bpe_tok):
  ids = bpe_tok.encode("The dog sleeps  in the forest.\nA quiet tôt fox, runs\tfar", bos=True,
                       eos=True) + [bpe_tok.contract.pad_id] * 2
  starts = mlm.word_starts(bpe_tok, np.array([ids]))[0]
  assert not starts[0] and not starts[-3:].any()  # bos, eos, padding
  groups = []
  for i, s in zip(ids[1:-3], starts[1:-3]):
    if s:
      groups.append([i])
    else:
      groups[-1].append(i)
  assert [bpe_tok.sp.decode(g) for g in groups] == [
      "The", " dog", " sleeps", " ", " in", " the", " forest.", "\n", "A", " quiet", " tôt",
      " fox,", " runs", "\t", "far"]
  assert max(map(len, groups)) > 2  # some words really span several pieces (and byte pieces)


def test_word_starts_match_a_byte_level_reference(bpe_tok):
  texts = ["the weather and the news\n\nChildren play", "  two  spaces, tabs\tand ünïcödé",
           "forest.\nA small bird; wind blows softly", "x"]
  rows = [bpe_tok.encode(t, bos=k % 2 == 0, eos=True) for k, t in enumerate(texts)]
  length = max(map(len, rows)) + 2
  tokens = np.array([r + [bpe_tok.contract.pad_id] * (length - len(r)) for r in rows])
  tokens[3, -1] = bpe_tok.contract.mask_id  # an id past the sentencepiece vocabulary
  starts = mlm.word_starts(bpe_tok, tokens)
  for row, got in zip(tokens.tolist(), starts.tolist()):
    assert got == byte_reference_starts(bpe_tok, row)
