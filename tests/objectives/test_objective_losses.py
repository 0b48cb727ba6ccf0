"""Objective losses against hand-computed numpy values, and their batch builders."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jaxlm.data import pipeline, tokenizer as tok_lib
from jaxlm.objectives import clm, mlm, prefix_lm, span


def numpy_masked_ce(logits, targets, mask):
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  return (nll * mask).sum() / mask.sum()


class FixedLogits:
  """A stand-in model that returns given logits whatever its inputs."""

  def __init__(self, logits):
    self.logits = jnp.asarray(logits)

  def __call__(self, *args, **kwargs):
    return self.logits


@pytest.mark.parametrize("objective", [clm, mlm, prefix_lm, span])
def test_loss_is_masked_cross_entropy(objective):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (2, 6))
  mask = np.array([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 1]], np.float32)
  batch = {k: jnp.zeros((2, 6), jnp.int32) for k in (
      "tokens", "positions", "segment_ids", "inputs", "decoder_inputs", "inputs_segment_ids",
      "targets_segment_ids")}
  batch.update(targets=jnp.asarray(targets), loss_mask=jnp.asarray(mask),
               prefix=jnp.zeros((2, 6), bool))
  loss, metrics = objective.loss_fn(FixedLogits(logits), batch, None)
  np.testing.assert_allclose(float(loss), numpy_masked_ce(logits, targets, mask), rtol=1e-5)
  assert float(metrics["tokens"]) == mask.sum()
  # Targets at unselected positions do not matter.
  batch["targets"] = jnp.asarray(np.where(mask > 0, targets, (targets + 1) % 11))
  np.testing.assert_allclose(float(objective.loss_fn(FixedLogits(logits), batch, None)[0]),
                             float(loss), rtol=1e-6)


@pytest.fixture(scope="module")
def bpe():
  from jaxlm.data import sources
  return tok_lib.train_tokenizer([sources.embedded_text("tinyshakespeare")[:100_000]], "bpe", 500)


def split_tokens(tok):
  from jaxlm.data import sources
  return pipeline.tokenize_documents(tok, [sources.embedded_text("tinyshakespeare")[:20_000]])


def test_mlm_batches(bpe):
  cfg = tiny_config(**{"data.seq_len": 64, "train.batch_size": 32})
  batches = mlm.build_batches(*split_tokens(bpe), cfg=cfg, tokenizer=bpe, seed=0)
  b = batches[3]
  selected = b["loss_mask"] > 0
  assert b["tokens"].shape == (32, 64) and abs(selected.mean() - 0.15) < 0.03
  np.testing.assert_array_equal(b["tokens"][~selected], b["targets"][~selected])
  assert (b["tokens"][selected] == bpe.contract.mask_id).mean() > 0.6
  np.testing.assert_array_equal(batches[3]["tokens"], b["tokens"])  # deterministic per step


def test_span_batches_uncorrupt_to_the_raw_window(bpe):
  cfg = tiny_config(**{"data.seq_len": 64, "train.batch_size": 4})
  tokens, segments = split_tokens(bpe)
  batches = span.build_batches(tokens, segments, cfg=cfg, tokenizer=bpe, seed=0)
  b = batches[1]
  raw, targets_len = span.raw_length_for(64)
  assert b["inputs"].shape == (4, 64) and b["targets"].shape == (4, targets_len)
  windows, _ = batches.source.windows(1)
  sentinels = {bpe.contract.sentinel_id(k) for k in range(100)}
  for row in range(4):
    inputs = [t for t, s in zip(b["inputs"][row], b["inputs_segment_ids"][row]) if s][:-1]
    targets = [t for t, s in zip(b["targets"][row], b["targets_segment_ids"][row]) if s][:-1]
    spans, current = {}, None
    for t in targets:
      if t in sentinels:
        current = t
        spans[current] = []
      else:
        spans[current].append(t)
    rebuilt = [x for t in inputs for x in (spans[t] if t in sentinels else [t])]
    assert rebuilt == windows[row, :raw].tolist()


def test_prefix_batches_mask_the_prefix_targets():
  tokens = np.arange(200, dtype=np.int32)
  cfg = tiny_config(**{"data.seq_len": 16, "train.batch_size": 8})
  b = prefix_lm.build_batches(tokens, np.ones_like(tokens), cfg=cfg, tokenizer=None, seed=0)[0]
  prefix_len = b["prefix"].sum(1)
  assert prefix_len.min() >= 1 and prefix_len.max() <= 15
  for row, p in enumerate(prefix_len):
    assert b["loss_mask"][row].tolist() == [0.0] * (p - 1) + [1.0] * (16 - p + 1)


@pytest.mark.parametrize("objective", [mlm, span, prefix_lm])
def test_mapped_batches_are_the_same_whatever_the_process_count(objective, bpe):
  """Masks, spans and prefixes of global row r at step s do not depend on how many processes
  share the batch (a run may resume on another host count)."""
  cfg = tiny_config(**{"data.seq_len": 32, "train.batch_size": 4})
  tokens, segments = split_tokens(bpe)

  def build(p, n):
    return objective.build_batches(tokens, segments, cfg=cfg, tokenizer=bpe, seed=7,
                                   process_index=p, process_count=n)

  whole, halves = build(0, 1), [build(p, 2) for p in range(2)]
  for step in (0, 5):
    one = whole[step]
    for key, value in one.items():
      np.testing.assert_array_equal(value, np.concatenate([h[step][key] for h in halves]), key)
  corrupted = "inputs" if objective is span else ("prefix" if objective is prefix_lm else "tokens")
  assert not np.array_equal(whole[0][corrupted][0], whole[0][corrupted][1])  # rows differ
