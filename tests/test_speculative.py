"""Speculative decoding: greedy output equal to the target's, sampled output distributed as
the target's (a chi-square test against exact enumeration, which the draft alone fails), a
draft equal to the target always accepted, and the refusals."""

import itertools

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from jaxlm import sampling, speculative
from jaxlm.models import Decoder, from_config, registry


def tiny(layers, seed, vocab=16, scale=3.0, **extra):
  """A tiny Llama-style decoder, its weights scaled up so its distributions are peaked."""
  cfg = from_config(registry.model_config(
      "gpt2-124m", style="llama", num_layers=layers, num_heads=4, num_kv_heads=2, embed_dim=32,
      mlp_dim=64, max_seq_len=48, **extra), vocab_size=vocab)
  graphdef, state = nnx.split(Decoder(cfg, nnx.Rngs(seed)))
  return graphdef, jax.tree.map(lambda x: x * scale, nnx.to_pure_dict(state))


def near(model, seed, amount):
  """`model`'s graph with its weights moved by relative noise of `amount`: a draft that often,
  not always, agrees with it."""
  graphdef, params = model
  rng = np.random.default_rng(seed)
  return graphdef, jax.tree.map(
      lambda x: x * (1 + amount * rng.standard_normal(x.shape)).astype(x.dtype), params)


def test_greedy_speculation_is_the_targets_greedy_output():
  target = tiny(2, 0)
  draft = near(target, 1, 0.5)
  prompts = [[1, 4, 3], [5, 6, 7, 8, 9, 1, 2], [3]]
  cfg = sampling.SamplingConfig(temperature=0.0, max_new_tokens=24)
  want = sampling.generate(*target, prompts, cfg, jax.random.key(0), eos_id=7)
  for gamma in (1, 3):
    got, counts = speculative.generate(*target, *draft, prompts, cfg, jax.random.key(0),
                                       gamma=gamma, eos_id=7)
    assert got == want
    assert counts["proposed"] > 0 and 0 < counts["accepted"] < counts["proposed"]
  assert any(row[-1] == 7 and len(row) < 24 for row in want)  # a row stopped at EOS


def test_a_draft_equal_to_the_target_is_always_accepted():
  target = tiny(2, 0)
  cfg = sampling.SamplingConfig(temperature=1.0, top_k=8, max_new_tokens=17)
  _, counts = speculative.generate(*target, *target, [[1, 2], [3]], cfg, jax.random.key(1),
                                   gamma=4, eos_id=-1)
  assert counts["acceptance"] == 1.0 and counts["tokens_per_target_pass"] == 5.0


def exact_joint(graphdef, params, prompt, vocab, n):
  """P(x_1..x_n | prompt) under the target's own sampling (temperature 1), by enumeration."""
  seqs = np.array([list(prompt) + list(t) for t in itertools.product(range(vocab), repeat=n)])
  logp = jax.nn.log_softmax(nnx.merge(graphdef, params)(seqs))[:, len(prompt) - 1:-1]
  tails = seqs[:, len(prompt):]
  return np.exp(np.take_along_axis(np.asarray(logp), tails[..., None], -1)[..., 0].sum(-1))


def test_sampled_speculation_follows_the_targets_distribution():
  """12,000 rows of 3 new tokens (2 of them drafted, accepted or resampled from the
  residual): the joint frequencies of all 216 sequences pass a chi-square test against the
  target's exact probabilities, and those of the draft's own sampling do not."""
  vocab, n, rows = 6, 3, 12_000
  target, draft = tiny(2, 0, vocab=vocab, scale=2.0), tiny(1, 5, vocab=vocab, scale=2.0)
  prompt = [1, 4, 3, 2]
  cfg = sampling.SamplingConfig(temperature=1.0, max_new_tokens=n)
  want = exact_joint(*target, prompt, vocab, n).astype(np.float64)

  def chi2_pvalue(samples):
    index = np.ravel_multi_index(np.array(samples).T, (vocab,) * n)
    counts = np.bincount(index, minlength=vocab ** n)
    return stats.chisquare(counts, want / want.sum() * counts.sum()).pvalue

  got, counts = speculative.generate(*target, *draft, [prompt] * rows, cfg, jax.random.key(2),
                                     gamma=2, eos_id=-1)
  assert 0.2 < counts["acceptance"] < 0.9  # both acceptance and the residual draw are used
  assert chi2_pvalue(got) > 1e-3
  alone = sampling.generate(*draft, [prompt] * rows, cfg, jax.random.key(2), eos_id=-1)
  assert chi2_pvalue(alone) < 1e-12


def test_speculation_refuses_what_it_cannot_keep_exact():
  target = tiny(2, 0)
  cfg = sampling.SamplingConfig(temperature=0.0, max_new_tokens=8)
  with pytest.raises(ValueError, match="vocabulary"):
    speculative.generate(*target, *tiny(1, 1, vocab=32), [[1]], cfg, jax.random.key(0),
                         eos_id=-1)
  with pytest.raises(ValueError, match="sliding_window=4"):
    speculative.generate(*target, *tiny(1, 1, sliding_window=4), [[1]], cfg,
                         jax.random.key(0), eos_id=-1)
  with pytest.raises(ValueError, match="must fit the context of both models"):
    speculative.generate(*target, *tiny(1, 1), [[1] * 45], cfg, jax.random.key(0), eos_id=-1)
  with pytest.raises(ValueError, match="gamma"):
    speculative.generate(*target, *tiny(1, 1), [[1]], cfg, jax.random.key(0), gamma=0,
                         eos_id=-1)
