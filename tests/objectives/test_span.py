"""T5 span corruption: counts, masks, sentinels and round trips against independent references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxlm.data.tokenizer import TokenContract
from jaxlm.objectives import span

CONTRACT = TokenContract(base_size=32000, pad_id=0, unk_id=2, bos_id=1, eos_id=1, num_sentinels=100)
SENTINELS = {CONTRACT.sentinel_id(k): k for k in range(CONTRACT.num_sentinels)}


def t5_counts(length: int, density: float = 0.15, mean: float = 3.0) -> tuple[int, int]:
  """T5's counts, spelled out in float32 as TensorFlow computes them."""
  noise = int(np.round(np.float32(length) * np.float32(density)))  # round half to even
  noise = min(max(noise, 1), length - 1)
  return noise, max(int(np.round(np.float32(noise) / np.float32(mean))), 1)


def runs(mask: np.ndarray) -> list[tuple[bool, int]]:
  """(value, length) of each maximal run of equal values."""
  return [(bool(k), len(list(g))) for k, g in itertools.groupby(mask.tolist())]


def t5_unique_sentinels(tokens: list[int], mask: list[bool]) -> list[int]:
  """Token-by-token port of T5's `noise_span_to_unique_sentinel` (sentinel k for the k-th run)."""
  out, k = [], 0
  for i, (tok, m) in enumerate(zip(tokens, mask)):
    if m and (i == 0 or not mask[i - 1]):
      out.append(CONTRACT.sentinel_id(k))
      k += 1
    elif not m:
      out.append(tok)
  return out


def uncorrupt(inputs: np.ndarray, targets: np.ndarray) -> list[int]:
  """Replaces each sentinel of the inputs with what follows that sentinel in the targets."""
  filled, current = {}, None
  for tok in targets.tolist():
    if tok in SENTINELS:
      current = filled.setdefault(SENTINELS[tok], [])
    elif current is not None:
      current.append(tok)
  return [t for tok in inputs.tolist() for t in filled.get(SENTINELS.get(tok), [tok])]


def random_tokens(rng: np.random.Generator, length: int) -> np.ndarray:
  """Ordinary token ids: never a sentinel, pad or EOS."""
  return rng.integers(3, CONTRACT.base_size, length, dtype=np.int32)


def test_counts_match_t5_float32_formulas():
  for length in range(2, 601):
    assert span.noise_counts(length) == t5_counts(length), length
  # float32(30) * float32(0.15) is 4.5 exactly: half to even gives 4 where half up gives 5.
  assert np.float32(30) * np.float32(0.15) == np.float32(4.5)
  assert span.noise_counts(30) == (4, 1)
  assert int(np.floor(30 * 0.15 + 0.5)) == 5
  # 190 * 0.15 is just above 28.5 in float32 (29) but just below in float64 (28).
  assert span.noise_counts(190) == t5_counts(190) == (29, 10) and round(190 * 0.15) == 28
  assert span.noise_counts(2) == (1, 1) and span.noise_counts(10, 0.5, 2.0) == (5, 2)
  with pytest.raises(ValueError, match="at least 2"):
    span.noise_counts(1)


def test_mask_has_t5_counts_and_alternating_spans():
  rng = np.random.default_rng(0)
  for length in range(2, 601):
    mask = span.random_spans_noise_mask(length, rng)
    num_noise, num_spans = t5_counts(length)
    assert mask.shape == (length,) and mask.dtype == bool
    assert mask.sum() == num_noise
    r = runs(mask)
    assert [v for v, _ in r] == [False, True] * num_spans, length  # non-noise first, alternating
    assert all(n > 0 for _, n in r)
  # Like T5, lengths below 2 are corrupted as length 2 and cut back.
  assert span.random_spans_noise_mask(1, rng).tolist() == [False]
  assert span.random_spans_noise_mask(0, rng).shape == (0,)


def test_batched_masks_are_uniform():
  rng = np.random.default_rng(1)
  masks = span.random_spans_noise_masks(20000, 40, rng)  # 6 noise tokens in 2 spans
  assert (masks.sum(axis=1) == 6).all()
  # All masks equally likely: 5 splits of the noise times 33 of the 34 non-noise tokens.
  _, counts = np.unique(masks, axis=0, return_counts=True)
  assert len(counts) == 5 * 33
  expected = len(masks) / (5 * 33)  # about 121, standard deviation about 11
  assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


def test_determinism_and_seed_dependence():
  a = span.random_spans_noise_mask(300, np.random.default_rng(42))
  b = span.random_spans_noise_mask(300, np.random.default_rng(42))
  c = span.random_spans_noise_mask(300, np.random.default_rng(43))
  assert (a == b).all() and (a != c).any()


def test_paper_example_and_sentinel_ids():
  assert CONTRACT.sentinel_id(0) == 32099
  words = "Thank you for inviting me to your party last week .".split()
  ids = np.arange(100, 100 + len(words), dtype=np.int32)
  mask = np.array([w in ("for", "inviting", "last") for w in words])
  inputs, targets = span.span_corrupt(ids, mask, CONTRACT.sentinel_id, CONTRACT.eos_id)
  x, y, z = 32099, 32098, 32097  # <extra_id_0>, <extra_id_1>, <extra_id_2>
  assert inputs.tolist() == [100, 101, x, 104, 105, 106, 107, y, 109, 110, 1]
  assert targets.tolist() == [x, 102, 103, y, 108, z, 1]
  inputs, targets = span.span_corrupt(ids, mask, CONTRACT.sentinel_id, eos_id=None)
  assert inputs[-1] == 110 and targets[-1] == z


def test_matches_token_by_token_t5_port():
  rng = np.random.default_rng(2)
  for _ in range(200):
    length = int(rng.integers(1, 80))
    tokens = random_tokens(rng, length)
    mask = rng.random(length) < rng.random()
    mask[0] = False
    inputs, targets = span.span_corrupt(tokens, mask, CONTRACT.sentinel_id, eos_id=None)
    assert inputs.tolist() == t5_unique_sentinels(tokens.tolist(), mask.tolist())
    assert targets.tolist() == t5_unique_sentinels(tokens.tolist(), (~mask).tolist())


def test_uncorrupting_reconstructs_the_row():
  rng = np.random.default_rng(3)
  for seed in range(300):
    length = int(rng.integers(2, 700))
    tokens = random_tokens(rng, length)
    mask = span.random_spans_noise_mask(length, np.random.default_rng(seed))
    inputs, targets = span.span_corrupt(tokens, mask, CONTRACT.sentinel_id, CONTRACT.eos_id)
    assert inputs[-1] == targets[-1] == CONTRACT.eos_id
    assert uncorrupt(inputs[:-1], targets[:-1]) == tokens.tolist()
    num_noise, num_spans = t5_counts(length)
    assert len(inputs) == length - num_noise + num_spans + 1
    assert len(targets) == num_noise + num_spans + 1
    got = [t for t in inputs.tolist() if t in SENTINELS]
    assert got == [CONTRACT.sentinel_id(k) for k in range(num_spans)]  # 32099, 32098, ...


def test_span_corrupt_rejects_bad_masks():
  tokens = np.arange(10, 20)
  with pytest.raises(ValueError, match="start with a non-noise"):
    span.span_corrupt(tokens, np.arange(10) < 3, CONTRACT.sentinel_id)
  with pytest.raises(ValueError, match="differ in shape"):
    span.span_corrupt(tokens, np.zeros(9, bool), CONTRACT.sentinel_id)
  rows = np.stack([tokens, tokens])
  with pytest.raises(ValueError, match="different lengths"):
    span.span_corrupt(rows, np.stack([np.arange(10) > 7, np.arange(10) > 6]), CONTRACT.sentinel_id)


def t5_random_spans_helper(inputs_length: int, density: float = 0.15,
                           mean: float = 3.0) -> tuple[int, int]:
  """T5's `random_spans_helper` (float64 Python rounding, one sentinel per span, EOS)."""

  def lengths(t):
    noise = int(round(t * density))
    spans = int(round(noise / mean))
    return t - noise + spans + 1, noise + spans + 1

  t = inputs_length - 1
  while lengths(t + 1)[0] <= inputs_length:
    t += 1
  return t, lengths(t)[1]


def test_raw_length_for():
  assert span.raw_length_for(512) == (568, 114) == t5_random_spans_helper(512)
  for n in (64, 128, 256, 1024, 2048):
    assert span.raw_length_for(n) == t5_random_spans_helper(n)
  for inputs_length in range(4, 1100):
    tokens_length, targets_length = span.raw_length_for(inputs_length)
    num_noise, num_spans = t5_counts(tokens_length)
    assert tokens_length - num_noise + num_spans + 1 <= inputs_length
    assert num_noise + num_spans + 1 == targets_length
    more_noise, more_spans = t5_counts(tokens_length + 1)
    assert tokens_length + 1 - more_noise + more_spans + 1 > inputs_length
  # T5's float64 helper disagrees with its own float32 mask at 190 tokens; ours follows the mask.
  assert t5_random_spans_helper(172) == (190, 38) and span.raw_length_for(172) == (190, 40)
  assert span.raw_length_for(512, add_eos=False)[0] > 568
  with pytest.raises(ValueError, match="too short"):
    span.raw_length_for(2)


def test_corrupt_batch():
  rng = np.random.default_rng(4)
  tokens_length, targets_length = span.raw_length_for(128)
  rows = random_tokens(rng, 8 * tokens_length).reshape(8, tokens_length)
  batch = span.corrupt_batch(rows, np.random.default_rng(0), contract=CONTRACT, inputs_length=128,
                             targets_length=targets_length + 3)
  again = span.corrupt_batch(rows, np.random.default_rng(0), contract=CONTRACT, inputs_length=128,
                             targets_length=targets_length + 3)
  assert all((batch[k] == again[k]).all() for k in batch)
  assert batch["inputs"].shape == batch["inputs_segment_ids"].shape == (8, 128)
  for k in ("targets", "targets_segment_ids", "decoder_inputs", "loss_mask"):
    assert batch[k].shape == (8, targets_length + 3), k
  assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
  assert batch["loss_mask"].dtype == np.float32
  assert len({r.tobytes() for r in batch["inputs"]}) == 8  # each row has its own mask
  n_in = int(batch["inputs_segment_ids"][0].sum())
  for i in range(8):
    seg_in, seg_tgt = batch["inputs_segment_ids"][i], batch["targets_segment_ids"][i]
    assert seg_in.tolist() == [1] * n_in + [0] * (128 - n_in)
    assert seg_tgt.tolist() == [1] * targets_length + [0] * 3
    inputs, targets = batch["inputs"][i][seg_in == 1], batch["targets"][i][seg_tgt == 1]
    assert (batch["targets"][i][seg_tgt == 0] == CONTRACT.pad_id).all()
    assert inputs[-1] == targets[-1] == CONTRACT.eos_id
    assert uncorrupt(inputs[:-1], targets[:-1]) == rows[i].tolist()
    shifted = [CONTRACT.pad_id] + batch["targets"][i][:-1].tolist()
    assert batch["decoder_inputs"][i].tolist() == shifted
    np.testing.assert_array_equal(batch["loss_mask"][i], seg_tgt)
  with pytest.raises(ValueError, match="inputs tokens"):
    span.corrupt_batch(rows, rng, contract=CONTRACT, inputs_length=127,
                       targets_length=targets_length)
  with pytest.raises(ValueError, match="targets tokens"):
    span.corrupt_batch(rows, rng, contract=CONTRACT, inputs_length=128,
                       targets_length=targets_length - 1)
  # With the defaults, 2274 raw tokens (inputs_length 2048) need 114 sentinels: more than 100.
  long_rows = random_tokens(rng, 2 * 2274).reshape(2, 2274)
  with pytest.raises(IndexError, match="sentinel 100 out of range"):
    span.corrupt_batch(long_rows, rng, contract=CONTRACT, inputs_length=2048, targets_length=456)
