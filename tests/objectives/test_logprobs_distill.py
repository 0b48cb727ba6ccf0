"""Sequence log-probs and the distillation loss against independent numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.objectives.distill_loss import distillation_loss
from jaxlm.objectives.logprobs import (sequence_logprobs, sequence_mean_logprobs,
                                       token_logprobs)


def np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_token_logp(logits, targets):
  return np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]


def example(seed=0, b=3, t=7, v=13):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 3, size=(b, t, v)).astype(np.float32)
  targets = rng.integers(0, v, (b, t))
  # prompt (0) then response (1) then right padding (0)
  mask = np.array([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0, 0]],
                  np.float32)[:b, :t]
  return logits, targets, mask


def test_sequence_logprobs_are_masked_sums():
  logits, targets, mask = example()
  per_token = np_token_logp(logits, targets)
  np.testing.assert_allclose(np.asarray(token_logprobs(jnp.asarray(logits), jnp.asarray(targets))),
                             per_token, rtol=1e-5, atol=1e-5)
  want = np.array([sum(per_token[b, t] for t in range(mask.shape[1]) if mask[b, t])
                   for b in range(mask.shape[0])])
  got = sequence_logprobs(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  mean = sequence_mean_logprobs(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(mean), want / mask.sum(-1), rtol=1e-5)


def test_prompt_and_padding_do_not_matter():
  logits, targets, mask = example(seed=1)
  f = jax.jit(lambda lg, tg: (sequence_logprobs(lg, tg, jnp.asarray(mask)),
                              sequence_mean_logprobs(lg, tg, jnp.asarray(mask))))
  base = f(jnp.asarray(logits), jnp.asarray(targets))
  off = mask == 0
  noisy = logits.copy()
  noisy[off] = np.random.default_rng(9).normal(0, 50, size=noisy[off].shape)
  noisy[0, 0, :] = -np.inf  # even -inf logits at an excluded position give no NaN
  other_targets = np.where(off, 0, targets)
  moved = f(jnp.asarray(noisy), jnp.asarray(other_targets))
  for a, b in zip(base, moved):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # an empty row gives 0, not NaN
  empty = sequence_mean_logprobs(jnp.asarray(logits), jnp.asarray(targets),
                                 jnp.zeros_like(jnp.asarray(mask)))
  np.testing.assert_array_equal(np.asarray(empty), 0.0)


def np_kl(student, teacher, temp):
  logp, logq = np_log_softmax(teacher / temp), np_log_softmax(student / temp)
  return (np.exp(logp) * (logp - logq)).sum(-1)


def np_ce(student, targets):
  return -np_token_logp(student, targets)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_identical_teacher_gives_zero_kl(alpha):
  logits, targets, mask = example(seed=2)
  loss, m = distillation_loss(jnp.asarray(logits), jnp.asarray(logits), jnp.asarray(targets),
                              jnp.asarray(mask), temperature=1.0, alpha=alpha)
  ce = (np_ce(logits, targets) * mask).sum() / mask.sum()
  assert abs(float(m["kl"])) < 1e-6
  np.testing.assert_allclose(float(m["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(loss), (1 - alpha) * ce, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temp,alpha", [(2.0, 0.5), (4.0, 0.9), (1.0, 0.7)])
def test_kl_matches_numpy(temp, alpha):
  logits, targets, mask = example(seed=3)
  teacher = np.random.default_rng(4).normal(0, 3, size=logits.shape).astype(np.float32)
  loss, m = distillation_loss(jnp.asarray(logits), jnp.asarray(teacher), jnp.asarray(targets),
                              jnp.asarray(mask), temperature=temp, alpha=alpha)
  kl = (np_kl(logits, teacher, temp) * mask).sum() / mask.sum()
  ce = (np_ce(logits, targets) * mask).sum() / mask.sum()
  np.testing.assert_allclose(float(m["kl"]), kl, rtol=1e-5)
  np.testing.assert_allclose(float(m["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(loss), alpha * temp ** 2 * kl + (1 - alpha) * ce, rtol=1e-5)
  acc = ((logits.argmax(-1) == targets) * mask).sum() / mask.sum()
  np.testing.assert_allclose(float(m["accuracy"]), acc, rtol=1e-6)


def test_distillation_ignores_masked_positions_and_teacher_gets_no_grad():
  logits, targets, mask = example(seed=5)
  teacher = np.random.default_rng(6).normal(0, 3, size=logits.shape).astype(np.float32)

  @jax.jit
  def f(student, teacher, targets):
    return distillation_loss(student, teacher, targets, jnp.asarray(mask), temperature=2.0,
                             alpha=0.5)[0]

  base = f(jnp.asarray(logits), jnp.asarray(teacher), jnp.asarray(targets))
  off = mask == 0
  s2, t2 = logits.copy(), teacher.copy()
  s2[off] += 7.0 * np.random.default_rng(7).normal(size=s2[off].shape).astype(np.float32)
  t2[off] = -5.0
  t2[0, 0, 3] = -np.inf  # a zero-probability teacher entry gives no NaN
  moved = f(jnp.asarray(s2), jnp.asarray(t2), jnp.asarray(np.where(off, 0, targets)))
  np.testing.assert_allclose(float(moved), float(base), rtol=1e-6)
  g_s, g_t = jax.grad(f, argnums=(0, 1))(jnp.asarray(logits), jnp.asarray(teacher),
                                         jnp.asarray(targets))
  assert np.isfinite(np.asarray(g_s)).all()
  assert not np.asarray(g_s)[off].any() and not np.asarray(g_t).any()
