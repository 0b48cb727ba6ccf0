"""DPO-family and Bradley-Terry losses against direct numpy computations of the papers' formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.objectives.preference_losses import bradley_terry_loss, preference_loss


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_dpo_family(kind, pc, pr, rc, rr, beta, eps, gamma):
  """Losses and rewards straight from the published formulas, in float64."""
  if kind == "simpo":
    z = beta * (pc - pr) - gamma
    losses = -(1 - eps) * np_log_sigmoid(z) - eps * np_log_sigmoid(-z)
    return losses.mean(), beta * pc, beta * pr
  if kind == "orpo":  # Hong et al. 2024, eq. 6-7: L_SFT + lambda L_OR on mean log-probs
    odds = lambda a: np.exp(a) / (1.0 - np.exp(a))
    l_or = -np_log_sigmoid(np.log(odds(pc) / odds(pr)))
    return (-pc + beta * l_or).mean(), beta * pc, beta * pr
  h = (pc - rc) - (pr - rr)
  if kind == "ipo":
    losses = (h - 1.0 / (2.0 * beta)) ** 2
  elif kind == "hinge":  # SLiC-HF's calibration loss with delta = 1 / beta, scaled by beta
    losses = np.maximum(0.0, 1.0 - beta * h)
  elif kind == "dpop":  # Pal et al. 2024, eq. 3 with lambda = gamma (the test's 4th number)
    losses = -np_log_sigmoid(beta * (h - gamma * np.maximum(0.0, rc - pc)))
  elif kind == "robust":  # Chowdhury et al. 2024, eq. 9: unbiased under flip rate eps
    losses = ((1 - eps) * -np_log_sigmoid(beta * h) - eps * -np_log_sigmoid(-beta * h)) / (1 - 2 * eps)
  elif kind == "sigmoid" and eps == 0.0:
    losses = -np_log_sigmoid(beta * h)
  else:  # cDPO, also TRL's "sigmoid" with label smoothing
    losses = -(1 - eps) * np_log_sigmoid(beta * h) - eps * np_log_sigmoid(-beta * h)
  return losses.mean(), beta * (pc - rc), beta * (pr - rr)


def random_logps(seed, b=16):
  rng = np.random.default_rng(seed)
  return [rng.normal(-30.0, 8.0, size=b).astype(np.float32) for _ in range(4)]


REFERENCE_FREE = ("simpo", "orpo")
NO_SMOOTHING = ("ipo", "hinge", "orpo", "dpop")
CASES = [(kind, beta, eps, gamma)
         for kind in ("sigmoid", "cdpo", "robust", "dpop", "ipo", "hinge", "simpo", "orpo")
         for beta in (0.05, 0.1, 0.5, 2.0)
         for eps, gamma in ((0.0, 0.0), (0.1, 0.5), (0.3, 1.4))]


@pytest.mark.parametrize("kind,beta,eps,gamma", CASES)
def test_loss_and_metrics_match_numpy(kind, beta, eps, gamma):
  pc, pr, rc, rr = random_logps(seed=int(beta * 100) + int(eps * 10))
  if kind in REFERENCE_FREE:  # length-normalised log-probs are O(1), and below 0
    pc, pr = -np.abs(pc / 20.0), -np.abs(pr / 20.0)
  ref = (None, None) if kind in REFERENCE_FREE else (jnp.asarray(rc), jnp.asarray(rr))
  loss, m = preference_loss(kind, jnp.asarray(pc), jnp.asarray(pr), *ref, beta=beta,
                            label_smoothing=eps, simpo_gamma=gamma, dpop_lambda=gamma)
  d = [x.astype(np.float64) for x in (pc, pr, rc, rr)]
  want, rew_c, rew_r = np_dpo_family(kind, *d, beta, 0.0 if kind in NO_SMOOTHING else eps, gamma)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(float(m["loss"]), want, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(float(m["rewards/chosen"]), rew_c.mean(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(m["rewards/rejected"]), rew_r.mean(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(m["rewards/margins"]), (rew_c - rew_r).mean(),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(m["rewards/accuracies"]), (rew_c > rew_r).mean())


@pytest.mark.parametrize("beta", [0.1, 0.5, 3.0])
def test_policy_equal_to_reference(beta):
  pc, pr, _, _ = random_logps(seed=7)
  args = (jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(pc), jnp.asarray(pr))
  loss, m = preference_loss("sigmoid", *args, beta=beta)
  # h is exactly 0; log 2 to fp32 rounding (XLA's log1p(1) is within 2 ulp)
  assert float(loss) == pytest.approx(np.log(2.0), rel=3e-7)
  assert float(m["rewards/margins"]) == 0.0 and float(m["rewards/accuracies"]) == 0.0
  loss, _ = preference_loss("cdpo", *args, beta=beta, label_smoothing=0.2)
  assert float(loss) == pytest.approx(np.log(2.0), rel=3e-7)
  loss, _ = preference_loss("ipo", *args, beta=beta)
  assert float(loss) == pytest.approx((1.0 / (2.0 * beta)) ** 2, rel=1e-6)


def test_simpo_ignores_reference_and_gamma_shifts_the_margin():
  pc, pr, rc, rr = random_logps(seed=3)
  pc, pr = jnp.asarray(pc / 10), jnp.asarray(pr / 10)
  a, _ = preference_loss("simpo", pc, pr, None, None, beta=2.0, simpo_gamma=0.5)
  b, _ = preference_loss("simpo", pc, pr, jnp.asarray(rc), jnp.asarray(rr), beta=2.0,
                         simpo_gamma=0.5)
  assert float(a) == float(b)
  # equal policy log-probs: -log sigmoid(-gamma)
  same, _ = preference_loss("simpo", pc, pc, None, None, beta=2.0, simpo_gamma=0.5)
  np.testing.assert_allclose(float(same), -np_log_sigmoid(-0.5), rtol=1e-6)


@pytest.mark.parametrize("kind", ["sigmoid", "cdpo", "robust", "dpop", "ipo", "hinge", "simpo",
                                  "orpo"])
def test_gradients_are_finite_and_jit(kind):
  pc, pr, rc, rr = (jnp.asarray(x) for x in random_logps(seed=11))
  if kind in REFERENCE_FREE:
    pc, pr = pc / 20.0, pr / 20.0

  @jax.jit
  def f(pc, pr):
    return preference_loss(kind, pc, pr, rc, rr, beta=0.1, label_smoothing=0.1,
                           simpo_gamma=0.3)[0]

  g_c, g_r = jax.grad(f, argnums=(0, 1))(pc, pr)
  assert np.isfinite(np.asarray(g_c)).all() and np.isfinite(np.asarray(g_r)).all()
  # without smoothing the logistic losses fall as the chosen log-prob rises (cDPO / IPO have
  # a finite optimum, so their gradient sign depends on h)
  if kind in ("sigmoid", "simpo", "orpo"):
    g_c, g_r = jax.grad(lambda pc, pr: preference_loss(kind, pc, pr, rc, rr, beta=0.1)[0],
                        argnums=(0, 1))(pc, pr)
    assert (np.asarray(g_c) < 0).all() and (np.asarray(g_r) > 0).all()
  # no gradient flows into the reference log-probs
  g_ref = jax.grad(lambda rc: preference_loss(kind, pc, pr, rc, rr, beta=0.1)[0])(rc)
  assert not np.asarray(g_ref).any()


def test_errors():
  x = jnp.zeros(3)
  with pytest.raises(ValueError, match="sigmoid, cdpo, robust, dpop, ipo, hinge, simpo, orpo"):
    preference_loss("kto", x, x, x, x, beta=0.1)
  with pytest.raises(ValueError, match="reference"):
    preference_loss("sigmoid", x, x, None, None, beta=0.1)
  with pytest.raises(ValueError, match=r"label noise rate in \[0, 0.5\)"):
    preference_loss("robust", x, x, x, x, beta=0.1, label_smoothing=0.5)
  with pytest.raises(ValueError, match="needs the chosen responses' NLL"):
    preference_loss("sigmoid", x, x, x, x, beta=0.1, nll_weight=1.0)
  with pytest.raises(ValueError, match="ORPO already weighs"):
    preference_loss("orpo", x, x, None, None, beta=0.1, chosen_nll_B=x, nll_weight=1.0)
  with pytest.raises(ValueError, match=">= 0"):
    preference_loss("ipo", x, x, x, x, beta=0.1, chosen_nll_B=x, nll_weight=-1.0)


def test_hinge_is_zero_past_the_margin_and_robust_is_unbiased():
  # hinge: h = 10 at beta 0.5 clears the margin 1 / beta = 2: loss and gradient are 0
  pc, pr, rc, rr = (jnp.array([v]) for v in (-10.0, -20.0, -10.0, -10.0))
  loss, _ = preference_loss("hinge", pc, pr, rc, rr, beta=0.5)
  assert float(loss) == 0.0
  # robust DPO: averaging its loss over a label flipped with probability eps gives back
  # plain DPO's loss on the true label (Chowdhury et al. 2024, Lemma 3.1)
  eps, beta = 0.2, 0.3
  pc, pr, rc, rr = (jnp.asarray(x) for x in random_logps(seed=5))
  kept, _ = preference_loss("robust", pc, pr, rc, rr, beta=beta, label_smoothing=eps)
  flipped, _ = preference_loss("robust", pr, pc, rr, rc, beta=beta, label_smoothing=eps)
  dpo, _ = preference_loss("sigmoid", pc, pr, rc, rr, beta=beta)
  np.testing.assert_allclose((1 - eps) * float(kept) + eps * float(flipped), float(dpo),
                             rtol=1e-5)


def test_dpop_is_dpo_until_the_chosen_reply_falls_below_the_reference():
  pc, pr, rc, rr = (jnp.asarray(x) for x in random_logps(seed=13))
  above = jnp.maximum(pc, rc + 0.5)  # every chosen reply above the reference: plain DPO
  dpo, _ = preference_loss("sigmoid", above, pr, rc, rr, beta=0.2)
  dpop, m = preference_loss("dpop", above, pr, rc, rr, beta=0.2, dpop_lambda=50.0)
  assert float(dpop) == pytest.approx(float(dpo), rel=1e-6) and float(m["chosen_fall"]) == 0.0
  # one chosen reply 0.1 nats below its reference: lambda x 0.1 comes off that margin, and the
  # gradient on that reply's log-prob is (1 + lambda) times plain DPO's
  below = above.at[0].set(rc[0] - 0.1)
  grad = lambda kind: jax.grad(lambda c: preference_loss(kind, c, pr, rc, rr, beta=0.2,
                                                         dpop_lambda=50.0)[0])(below)
  plain, positive = grad("sigmoid"), grad("dpop")
  h0 = (below[0] - rc[0]) - (pr[0] - rr[0])
  s = lambda z: 1 / (1 + np.exp(-z))
  np.testing.assert_allclose(float(positive[0]), -0.2 * 51 * s(-0.2 * (h0 - 5.0)) / 16, rtol=1e-4)
  np.testing.assert_allclose(float(plain[0]), -0.2 * s(-0.2 * h0) / 16, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(positive[1:]), np.asarray(plain[1:]), rtol=1e-5)


def test_orpo_and_rpo_add_the_chosen_nll():
  pc, pr, rc, rr = (jnp.asarray(x) for x in random_logps(seed=9))
  nll = jnp.abs(pc) / 17.0  # any per-row NLL
  dpo, _ = preference_loss("sigmoid", pc, pr, rc, rr, beta=0.1)
  rpo, m = preference_loss("sigmoid", pc, pr, rc, rr, beta=0.1, chosen_nll_B=nll,
                           nll_weight=0.5)
  np.testing.assert_allclose(float(rpo), float(dpo) + 0.5 * float(nll.mean()), rtol=1e-6)
  np.testing.assert_allclose(float(m["nll_loss"]), float(nll.mean()), rtol=1e-6)
  # ORPO with equal sides: the odds ratio is 1, so the loss is NLL + beta log 2
  avg = -jnp.abs(pc) / 20.0
  loss, m = preference_loss("orpo", avg, avg, None, None, beta=0.25)
  np.testing.assert_allclose(float(loss), float(-avg.mean()) + 0.25 * np.log(2.0), rtol=1e-5)
  assert float(m["log_odds_ratio"]) == 0.0
  # a row of probability ~1 (mean log-prob 0, an empty row) stays finite
  loss, _ = preference_loss("orpo", jnp.array([0.0, -1e-9]), jnp.array([-1.0, 0.0]), None,
                            None, beta=0.1)
  assert np.isfinite(float(loss))


def test_bradley_terry_by_hand():
  # pairs (chosen, rejected) = (2, 0) and (1, 3): gaps +2 and -2
  chosen, rejected = jnp.array([2.0, 1.0]), jnp.array([0.0, 3.0])
  loss, m = bradley_terry_loss(chosen, rejected)
  # -log s(2) = log(1 + e^-2); -log s(-2) = log(1 + e^2) = 2 + log(1 + e^-2)
  want = (np.log1p(np.exp(-2.0)) + 2.0 + np.log1p(np.exp(-2.0))) / 2.0
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-6)
  assert float(m["accuracy"]) == 0.5 and float(m["margin"]) == 0.0
  # a margin of 1 on both pairs: gaps become +1 and -3
  loss, m = bradley_terry_loss(chosen, rejected, jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(float(loss), (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(3.0))) / 2,
                             rtol=1e-6)
  assert float(m["accuracy"]) == 0.5 and float(m["margin"]) == 0.0
  # ties count as wrong
  _, m = bradley_terry_loss(jnp.array([1.0, 4.0, 0.0]), jnp.array([1.0, 1.0, 2.0]))
  np.testing.assert_allclose(float(m["accuracy"]), 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(float(m["margin"]), (0.0 + 3.0 - 2.0) / 3, rtol=1e-6)
