"""Scaling-law fits recover the laws that generated synthetic losses."""

import re

import numpy as np
import pytest
from scipy import optimize

from jaxlm.scaling import fit, table

TRUE = fit.ChinchillaParams(**fit.CHINCHILLA)


def chinchilla_runs(noise: float, seed: int = 0):
  """Losses from the published fit on Hoffmann et al.'s range: 70M-16B params, 5B-500B tokens."""
  N, D = (x.ravel() for x in np.meshgrid(np.geomspace(7e7, 1.6e10, 8), np.geomspace(5e9, 5e11, 8)))
  L = TRUE.loss(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, N.shape))
  return N, D, L


def isoflop_runs(budgets, noise: float = 0.0, seed: int = 0):
  """IsoFLOP sets as a real sweep lays them out: one fixed size ladder, per budget the sizes
  within a factor 6 of where the optimum lies."""
  ladder = np.geomspace(1e7, 1e12, 41)
  rng = np.random.default_rng(seed)
  N, D, C = [], [], []
  for c in budgets:
    n_opt, _ = TRUE.optimal_allocation(c)
    sizes = ladder[(ladder > n_opt / 6) & (ladder < n_opt * 6)]
    N += list(sizes)
    D += list(c / (6 * sizes))
    C += [c] * len(sizes)
  N, D, C = map(np.array, (N, D, C))
  return N, D, C, TRUE.loss(N, D) * np.exp(rng.normal(0, noise, N.shape))


def test_huber_gradient_matches_finite_differences():
  N, D, L = chinchilla_runs(0.01)
  args = (np.log(N), np.log(D), np.log(L), 1e-3)
  for theta in ([6.0, 6.0, 0.5, 0.34, 0.28], [5.0, 7.0, 0.2, 0.5, 0.2]):
    err = optimize.check_grad(lambda t: fit.huber_objective(t, *args)[0],
                              lambda t: fit.huber_objective(t, *args)[1], np.array(theta))
    assert err < 1e-6


def test_optimal_allocation_minimises_the_loss_at_fixed_compute():
  C = 5.76e23  # Chinchilla's budget
  n_opt, d_opt = TRUE.optimal_allocation(C)
  assert n_opt * d_opt * 6 == pytest.approx(C)
  around = n_opt * np.array([0.9, 1.1])
  assert np.all(TRUE.loss(around, C / (6 * around)) > TRUE.loss(n_opt, d_opt))
  assert TRUE.a == pytest.approx(0.28 / 0.62)


def test_approach3_is_exact_without_noise():
  N, D, L = chinchilla_runs(0.0)
  got = fit.fit_chinchilla(N, D, L).params
  for name, value in fit.CHINCHILLA.items():
    assert getattr(got, name) == pytest.approx(value, rel=2e-3), name


def test_approach3_recovers_chinchilla_from_noisy_losses_with_bootstrap_intervals():
  N, D, L = chinchilla_runs(0.005)  # 0.5% multiplicative noise on each loss
  result = fit.fit_chinchilla(N, D, L, bootstrap=25, seed=1)
  p = result.params
  assert abs(p.E - 1.69) < 0.05
  assert abs(p.alpha - 0.34) < 0.02
  assert abs(p.beta - 0.28) < 0.02
  assert abs(p.a - TRUE.a) < 0.03
  # Predictions within 0.5%, inside the grid and at Chinchilla itself (70B params, 1.4T tokens).
  n_test, d_test = np.array([3e8, 2e9, 7e10]), np.array([2e10, 1e11, 1.4e12])
  np.testing.assert_allclose(p.loss(n_test, d_test), TRUE.loss(n_test, d_test), rtol=5e-3)
  assert result.samples.shape == (25, 5)
  for name in ("E", "alpha", "beta"):
    lo, hi = result.interval(name)
    assert lo < fit.CHINCHILLA[name] < hi and hi - lo < 0.2, name


def test_approach2_recovers_the_implied_exponent():
  budgets = np.geomspace(1e18, 1e22, 5)
  N, D, C, L = isoflop_runs(budgets, noise=0.001)
  result = fit.fit_isoflop(N, L, C)
  assert len(result.minima) == 5 and all(m.inside for m in result.minima)
  assert result.a == pytest.approx(0.28 / (0.34 + 0.28), abs=0.02)
  assert result.b == pytest.approx(1 - result.a, abs=1e-9)  # D_opt = C / 6 N_opt
  lo, hi = result.N_opt.interval
  assert lo < TRUE.a < hi
  n_true, _ = TRUE.optimal_allocation(budgets)
  np.testing.assert_allclose([m.N_opt for m in result.minima], n_true, rtol=0.15)


def test_approach2_reports_budgets_without_a_minimum():
  N = np.array([1e6, 1e7, 1e8] * 2)
  C = np.array([1e15] * 3 + [1e16] * 3)
  with pytest.raises(ValueError, match="not convex"):
    fit.fit_isoflop(N, np.array([3.0, 2.0, 1.8, 3.0, 3.2, 3.3]), C)


def test_kaplan_recovers_a_power_law():
  N = np.geomspace(1e5, 1e9, 12)
  L = (8.8e13 / N) ** 0.076 * np.exp(np.random.default_rng(0).normal(0, 0.002, N.shape))
  result = fit.fit_kaplan(N, L)
  assert result.alpha_N == pytest.approx(0.076, abs=0.003)
  assert result.interval[0] < 0.076 < result.interval[1]
  assert 0.5 < result.N_c / 8.8e13 < 2.0
  np.testing.assert_allclose(result.loss(N), (8.8e13 / N) ** 0.076, rtol=5e-3)


def test_too_few_runs_is_a_clear_error():
  with pytest.raises(ValueError, match="at least 5 runs"):
    fit.fit_chinchilla([1e6, 1e7], [1e8, 1e9], [3.0, 2.5])
  with pytest.raises(ValueError, match="positive"):
    fit.fit_kaplan([1e6, -1e7], [3.0, 2.5])


def test_table_fits_and_plots_from_a_written_table(tmp_path, capsys):
  from jaxlm import cli
  N, D, C, L = isoflop_runs(np.geomspace(1e18, 1e21, 4), noise=0.002)
  rows = [dict(run=f"r{i}", compute_budget=c, params_total=n, params_nonembed=0.9 * n, tokens=d,
               compute=6 * n * d, final_eval_loss=loss, config_hash="x")
          for i, (n, d, c, loss) in enumerate(zip(N, D, C, L))]
  csv_path, jsonl_path = table.write_table(rows, tmp_path)
  columns = table.read_table(jsonl_path)
  np.testing.assert_allclose(columns["final_eval_loss"], L)
  assert np.isnan(columns["wall_s"]).all() and list(columns["run"][:2]) == ["r0", "r1"]
  assert cli.main(["sweep", "--fit", str(csv_path), "--bootstrap", "5", "--plots",
                   str(tmp_path / "plots")]) == 0
  out = capsys.readouterr().out
  alpha = float(re.search(r"alpha = ([0-9.]+)", out).group(1))
  assert abs(alpha - 0.34) < 0.05, out
  isoflop = fit.fit_isoflop(N, L, C)
  assert f"N_opt ~ C^{isoflop.a:.3f}" in out and abs(isoflop.a - TRUE.a) < 0.03
  assert "Kaplan" in out and "25 bootstrap" not in out and "5 bootstrap resamples" in out
  for name in ("isoflop.png", "frontier.png", "loss_vs_compute.png"):
    assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
