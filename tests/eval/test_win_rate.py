"""Win rate with ties counted half, and its Wilson / bootstrap intervals."""

import numpy as np
import pytest

from jaxlm.eval import win_rate


def test_outcomes_and_rate_on_constructed_scores():
  policy = [3.0, 1.0, 2.0, 2.0, 5.0, 0.30]
  reference = [1.0, 2.0, 2.0, 0.0, 5.0, 0.25]
  # win, loss, tie, win, tie, win (0.05 apart; a tie within tolerance 0.1)
  np.testing.assert_array_equal(win_rate.outcomes(policy, reference), [1, 0, .5, 1, .5, 1])
  np.testing.assert_array_equal(win_rate.outcomes(policy, reference, 0.1), [1, 0, .5, 1, .5, .5])
  got = win_rate.win_rate(policy, reference)
  assert (got["wins"], got["ties"], got["losses"], got["n"]) == (3, 2, 1, 6)
  assert got["win_rate"] == pytest.approx(4 / 6)  # (3 + 2/2) / 6


def test_wilson_interval_hand_computed():
  # 8 successes of 10 at 95%: the textbook Wilson interval (0.4902, 0.9433).
  lo, hi = win_rate.wilson_interval(0.8, 10, 0.95)
  assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
  # p = 4/6 from the scores above, n = 6, z = 1.959964: centre (p + z^2/12) / (1 + z^2/6)
  # = 0.601611, half-width z / (1 + z^2/6) * sqrt(p (1 - p) / 6 + z^2 / 144) = 0.301618.
  got = win_rate.win_rate([3.0, 1.0, 2.0, 2.0, 5.0, 0.30], [1.0, 2.0, 2.0, 0.0, 5.0, 0.25])
  assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.299993, 0.903229), abs=2e-6)
  assert win_rate.wilson_interval(1.0, 5)[1] == 1.0 and win_rate.wilson_interval(0.0, 5)[0] == 0.0


def test_bootstrap_interval():
  assert win_rate.win_rate([2.0] * 5, [1.0] * 5, interval="bootstrap")["ci_low"] == 1.0
  rng = np.random.default_rng(0)
  policy = rng.normal(0.3, 1.0, 400)
  reference = rng.normal(0.0, 1.0, 400)
  wilson = win_rate.win_rate(policy, reference)
  boot = win_rate.win_rate(policy, reference, interval="bootstrap", seed=1)
  assert boot["win_rate"] == wilson["win_rate"]
  # Large n: the bootstrap agrees with the normal-theory interval to within a point.
  assert boot["ci_low"] == pytest.approx(wilson["ci_low"], abs=0.01)
  assert boot["ci_high"] == pytest.approx(wilson["ci_high"], abs=0.01)
  assert boot == win_rate.win_rate(policy, reference, interval="bootstrap", seed=1)


def test_bad_inputs():
  with pytest.raises(ValueError, match="equal-length"):
    win_rate.outcomes([1.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="interval must be one of"):
    win_rate.win_rate([1.0], [0.0], interval="normal")
