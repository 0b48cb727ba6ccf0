"""Beam search against exhaustive search (a beam per prefix finds the true best hypotheses),
and its invariants and refusals. Parity with transformers: tests/interop."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm import sampling
from jaxlm.models import Decoder, from_config, registry

VOCAB, EOS, NEW = 6, 2, 3


@pytest.fixture(scope="module")
def tiny():
  """A tiny Llama-style decoder over 6 tokens, its logits sharpened so scores spread out."""
  cfg = from_config(registry.model_config(
      "gpt2-124m", style="llama", num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
      mlp_dim=64, max_seq_len=16), vocab_size=VOCAB)
  graphdef, state = nnx.split(Decoder(cfg, nnx.Rngs(0)))
  params = jax.tree.map(lambda x: x * 3.0, nnx.to_pure_dict(state))
  return graphdef, params


def exhaustive(graphdef, params, prompt, length_penalty):
  """Every hypothesis of up to NEW tokens (ending at its first EOS or at the limit) and its
  score sum(log p) / len ** length_penalty, from full forward passes, best first."""
  tails = np.array(list(itertools.product(range(VOCAB), repeat=NEW)))
  seqs = np.concatenate([np.tile(prompt, (len(tails), 1)), tails], axis=1)
  # One forward pass over every tail; causal attention keeps each token's log-probability
  # independent of the tokens after it (those past an EOS).
  logp = jax.jit(lambda p, x: jax.nn.log_softmax(nnx.merge(graphdef, p)(x)))(params, seqs)
  logp = np.take_along_axis(np.asarray(logp[:, len(prompt) - 1:-1]), tails[..., None], -1)[..., 0]
  scores = {}
  for tail, tail_logp in zip(tails.tolist(), logp):
    n = tail.index(EOS) + 1 if EOS in tail else NEW
    scores[tuple(tail[:n])] = float(tail_logp[:n].sum()) / n ** length_penalty
  return sorted(scores.items(), key=lambda kv: -kv[1])


@pytest.mark.parametrize("length_penalty", (1.0, 0.0, 2.0))
def test_enough_beams_find_the_exhaustive_best(tiny, length_penalty):
  """With a beam per prefix (VOCAB ** (NEW - 1) beams) and exact stopping, the K hypotheses
  are the K best of all of them, for each prompt of a left-padded batch."""
  graphdef, params = tiny
  prompts = [[1, 4, 3, 5, 1], [3], [5, 0, 4]]
  k = VOCAB ** (NEW - 1)
  cfg = sampling.SamplingConfig(max_new_tokens=NEW, num_beams=k, length_penalty=length_penalty,
                                early_stopping="never")
  ranked = sampling.ranked_beams(graphdef, params, prompts, cfg, eos_id=EOS)
  for prompt, beams in zip(prompts, ranked):
    want = exhaustive(graphdef, params, prompt, length_penalty)[:k]
    np.testing.assert_allclose([s for _, s in beams], [s for _, s in want], rtol=1e-5,
                               atol=1e-6)
    assert [tuple(t) for t, _ in beams][:5] == [h for h, _ in want][:5]
  # Some of the best hypotheses end before the limit, some run to it.
  assert len({len(t) for beams in ranked for t, _ in beams}) > 1


def test_a_prompt_gets_the_same_beams_alone_and_in_a_padded_batch(tiny):
  graphdef, params = tiny
  cfg = sampling.SamplingConfig(max_new_tokens=6, num_beams=3, early_stopping=True)
  alone = sampling.ranked_beams(graphdef, params, [[3, 1]], cfg, eos_id=EOS)
  batch = sampling.ranked_beams(graphdef, params, [[5, 0, 4, 4, 1, 3, 1], [3, 1]], cfg,
                                eos_id=EOS)
  assert [t for t, _ in batch[1]] == [t for t, _ in alone[0]]
  np.testing.assert_allclose([s for _, s in batch[1]], [s for _, s in alone[0]], rtol=1e-5)
  # Scores are best first; generate returns the best hypothesis.
  assert all(np.all(np.diff([s for _, s in row]) <= 0) for row in batch)
  best = sampling.generate(graphdef, params, [[3, 1]], cfg, jax.random.key(0), eos_id=EOS)
  assert best == [alone[0][0][0]]


def test_beam_search_refuses_what_it_cannot_do(tiny):
  graphdef, params = tiny
  with pytest.raises(ValueError, match="apply to sampling only"):
    sampling.SamplingConfig(num_beams=2, top_k=5)
  with pytest.raises(ValueError, match="apply to sampling only"):
    sampling.SamplingConfig(num_beams=2, temperature=0.7)
  with pytest.raises(ValueError, match="early_stopping"):
    sampling.SamplingConfig(num_beams=2, early_stopping="sometimes")
  with pytest.raises(ValueError, match="num_beams"):
    sampling.SamplingConfig(num_beams=0)
  cfg = sampling.SamplingConfig(max_new_tokens=10, num_beams=2)
  with pytest.raises(ValueError, match="must fit the model context of 16"):
    sampling.generate(graphdef, params, [[1] * 7], cfg, jax.random.key(0), eos_id=EOS)
  with pytest.raises(ValueError, match="num_beams >= 2"):
    sampling.ranked_beams(graphdef, params, [[1]], dataclasses.replace(cfg, num_beams=1),
                          eos_id=EOS)
