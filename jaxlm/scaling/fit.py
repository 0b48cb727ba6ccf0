"""Scaling-law fits: Chinchilla approaches 2 and 3 (Hoffmann et al. 2022) and Kaplan's L(N).

Approach 3 fits L(N, D) = E + A / N^alpha + B / D^beta to every run, as Hoffmann et al.:
log L is predicted by logsumexp(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b,
E = e^e, the Huber loss (delta 1e-3) of the log-loss residuals is minimised with L-BFGS
from a grid of initialisations, and confidence intervals come from refits on bootstrap
resamples of the runs. N is the total parameter count (Hoffmann's convention).

Approach 2 fits a parabola to loss against log N within each IsoFLOP set (runs of one
compute budget C), takes its minimum N_opt(C), and fits N_opt ~ C^a, D_opt ~ C^b with
D_opt = C / (6 N_opt).

Kaplan et al. 2020 fit L(N) = (N_c / N)^alpha_N with N the non-embedding parameter count;
it is a straight line in log-log, fitted by least squares.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping, Sequence

import numpy as np
from scipy import optimize, special, stats

# Published fits (the names are the ones used in the papers' tables).
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022
BESIROGLU = dict(E=1.82, A=482.0, B=2085.4, alpha=0.35, beta=0.37)  # replication, 2024
KAPLAN = dict(N_c=8.8e13, alpha_N=0.076)  # Kaplan et al. 2020, non-embedding N

# Hoffmann et al.'s initialisation grid for (alpha, beta, e, a, b).
HOFFMANN_GRID = dict(alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5),
                     e=np.arange(-1.0, 1.01, 0.5), a=np.arange(0.0, 25.1, 5.0),
                     b=np.arange(0.0, 25.1, 5.0))
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclasses.dataclass(frozen=True)
class ChinchillaParams:
  """The parameters of L(N, D) = E + A / N^alpha + B / D^beta."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float

  def loss(self, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Predicted loss of a model of N parameters trained on D tokens."""
    N, D = np.asarray(N, float), np.asarray(D, float)
    return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

  @property
  def a(self) -> float:
    """Exponent of N_opt ~ C^a: beta / (alpha + beta)."""
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    """Exponent of D_opt ~ C^b: alpha / (alpha + beta)."""
    return self.alpha / (self.alpha + self.beta)

  def optimal_allocation(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising the loss at compute C = 6 N D (Hoffmann et al. eq. 4)."""
    C = np.asarray(C, float)
    G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
    N_opt = G * (C / 6.0) ** self.a
    return N_opt, C / (6.0 * N_opt)

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


def _theta_to_params(theta: np.ndarray) -> ChinchillaParams:
  a, b, e, alpha, beta = (float(x) for x in theta)
  return ChinchillaParams(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)


def huber_objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                    delta: float) -> tuple[float, np.ndarray]:
  """Summed Huber loss of log-loss residuals and its gradient; theta = (a, b, e, alpha, beta)."""
  a, b, e, alpha, beta = theta
  terms_3xR = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
  top_R = terms_3xR.max(axis=0)
  exp_3xR = np.exp(terms_3xR - top_R)
  sum_R = exp_3xR.sum(axis=0)
  r_R = np.log(sum_R) + top_R - logL
  abs_R = np.abs(r_R)
  value = np.where(abs_R <= delta, 0.5 * r_R * r_R, delta * (abs_R - 0.5 * delta)).sum()
  w_3xR = exp_3xR * (np.clip(r_R, -delta, delta) / sum_R)
  grad = np.array([w_3xR[0].sum(), w_3xR[1].sum(), w_3xR[2].sum(),
                   -(w_3xR[0] * logN).sum(), -(w_3xR[1] * logD).sum()])
  return float(value), grad


def _grid_thetas(grid: Mapping[str, Sequence[float]]) -> np.ndarray:
  """Initial points as rows (a, b, e, alpha, beta)."""
  combos = itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])
  return np.array(list(combos), dtype=float)


def _grid_values(thetas_Gx5: np.ndarray, logN, logD, logL, delta: float) -> np.ndarray:
  """The objective at every initial point at once."""
  a, b, e, alpha, beta = (thetas_Gx5[:, i:i + 1] for i in range(5))
  terms = np.stack([a - alpha * logN, b - beta * logD, np.broadcast_to(e, (len(e), len(logN)))])
  r_GxR = special.logsumexp(terms, axis=0) - logL
  huber = np.where(np.abs(r_GxR) <= delta, 0.5 * r_GxR ** 2, delta * (np.abs(r_GxR) - 0.5 * delta))
  return huber.sum(axis=1)


def _minimise(starts: np.ndarray, logN, logD, logL, delta: float) -> tuple[np.ndarray, float]:
  """Best L-BFGS solution over the starting points."""
  best_theta, best_value = None, np.inf
  for theta0 in starts:
    res = optimize.minimize(huber_objective, theta0, args=(logN, logD, logL, delta), jac=True,
                            method="L-BFGS-B",
                            options=dict(maxiter=500, ftol=1e-12, gtol=1e-8))
    if np.all(np.isfinite(res.x)) and res.fun < best_value:
      best_theta, best_value = res.x, float(res.fun)
  if best_theta is None:
    raise RuntimeError("the Chinchilla fit diverged from every initialisation")
  return best_theta, best_value


@dataclasses.dataclass
class ChinchillaFit:
  """Approach-3 result: point estimate, objective, and bootstrap intervals."""

  params: ChinchillaParams
  objective: float
  num_runs: int
  samples: np.ndarray | None = None  # bootstrap rows of (E, A, B, alpha, beta)
  level: float = 0.95

  def interval(self, name: str) -> tuple[float, float] | None:
    """Central bootstrap interval of a parameter or of the exponents `a`, `b`."""
    if self.samples is None or len(self.samples) < 2:
      return None
    cols = dict(zip(PARAM_NAMES, self.samples.T))
    cols["a"] = cols["beta"] / (cols["alpha"] + cols["beta"])
    cols["b"] = cols["alpha"] / (cols["alpha"] + cols["beta"])
    tail = 100 * (1 - self.level) / 2
    lo, hi = np.percentile(cols[name], [tail, 100 - tail])
    return float(lo), float(hi)


def fit_chinchilla(N: Sequence[float], D: Sequence[float], L: Sequence[float], *,
                   delta: float = 1e-3, grid: Mapping[str, Sequence[float]] = HOFFMANN_GRID,
                   num_starts: int = 8, bootstrap: int = 0, bootstrap_starts: int = 0,
                   level: float = 0.95, seed: int = 0) -> ChinchillaFit:
  """Chinchilla approach 3 over runs (N total params, D tokens, L final loss).

  The objective is evaluated on the whole initialisation grid and L-BFGS runs from its
  `num_starts` best points (all of them when `num_starts` <= 0). Each of `bootstrap`
  resamples (runs drawn with replacement) is refitted from the full fit's solution and the
  `bootstrap_starts` best grid points of the full data.
  """
  logN, logD, logL = _check_runs(N, D, L)
  if len(logL) < 5:
    raise ValueError(f"approach 3 fits 5 parameters and needs at least 5 runs, got {len(logL)}")
  thetas = _grid_thetas(grid)
  values = _grid_values(thetas, logN, logD, logL, delta)
  order = np.argsort(values)
  starts = thetas[order] if num_starts <= 0 else thetas[order[:num_starts]]
  theta, value = _minimise(starts, logN, logD, logL, delta)
  fit = ChinchillaFit(_theta_to_params(theta), value, len(logL), level=level)
  if bootstrap:
    rng = np.random.default_rng(seed)
    rows = []
    starts = np.vstack([theta[None], thetas[order[:bootstrap_starts]]])
    for _ in range(bootstrap):
      idx = rng.integers(0, len(logL), len(logL))
      t, _ = _minimise(starts, logN[idx], logD[idx], logL[idx], delta)
      p = _theta_to_params(t)
      rows.append([p.E, p.A, p.B, p.alpha, p.beta])
    fit.samples = np.array(rows)
  return fit


def _check_runs(*columns: Sequence[float]) -> tuple[np.ndarray, ...]:
  """Logs of positive, finite, equally long columns."""
  arrays = [np.asarray(c, dtype=float) for c in columns]
  if len({len(a) for a in arrays}) != 1:
    raise ValueError(f"columns of different lengths: {[len(a) for a in arrays]}")
  for a in arrays:
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
      raise ValueError("parameter counts, token counts, compute and losses must be positive "
                       "and finite")
  return tuple(np.log(a) for a in arrays)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """y = k * x^exponent fitted in log-log, with a `level` confidence interval on the exponent."""

  exponent: float
  coefficient: float
  interval: tuple[float, float] | None

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return self.coefficient * np.asarray(x, float) ** self.exponent


def fit_power_law(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> PowerLaw:
  """Least-squares line through (log x, log y); the interval is Student-t on the slope."""
  logx, logy = _check_runs(x, y)
  if len(logx) < 2 or np.ptp(logx) == 0:
    raise ValueError("a power law needs at least two distinct x values")
  res = stats.linregress(logx, logy)
  interval = None
  if len(logx) > 2:
    half = stats.t.ppf(0.5 + level / 2, len(logx) - 2) * res.stderr
    interval = (float(res.slope - half), float(res.slope + half))
  return PowerLaw(float(res.slope), float(np.exp(res.intercept)), interval)


@dataclasses.dataclass(frozen=True)
class IsoFlopMinimum:
  """The parabola fit of one IsoFLOP set: loss = c2 u^2 + c1 u + c0 with u = log N."""

  compute: float
  coeffs: tuple[float, float, float]
  N_opt: float
  loss_opt: float
  inside: bool  # the minimum lies within the sampled N range


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
  """Approach-2 result: per-budget minima and N_opt ~ C^a, D_opt ~ C^b."""

  minima: tuple[IsoFlopMinimum, ...]
  skipped: tuple[str, ...]  # budgets without a usable minimum, with the reason
  N_opt: PowerLaw
  D_opt: PowerLaw

  @property
  def a(self) -> float:
    return self.N_opt.exponent

  @property
  def b(self) -> float:
    return self.D_opt.exponent


def isoflop_minimum(N: Sequence[float], L: Sequence[float], compute: float) -> IsoFlopMinimum:
  """Parabola in log N through one IsoFLOP set; an error if it has no minimum."""
  logN = np.log(np.asarray(N, float))
  L = np.asarray(L, float)
  if len(np.unique(logN)) < 3:
    raise ValueError(f"C={compute:.3g}: a parabola needs at least 3 model sizes")
  c2, c1, c0 = np.polyfit(logN, L, 2)
  if c2 <= 0:
    raise ValueError(f"C={compute:.3g}: loss against log N is not convex (no minimum)")
  u = -c1 / (2 * c2)
  return IsoFlopMinimum(float(compute), (float(c2), float(c1), float(c0)), float(np.exp(u)),
                        float(c0 - c1 ** 2 / (4 * c2)), bool(logN.min() <= u <= logN.max()))


def fit_isoflop(N: Sequence[float], L: Sequence[float], C: Sequence[float],
                level: float = 0.95) -> IsoFlopFit:
  """Chinchilla approach 2 over runs grouped by their compute budget C (exact equality)."""
  N, L, C = (np.asarray(v, float) for v in (N, L, C))
  minima, skipped = [], []
  for budget in np.unique(C):
    sel = C == budget
    try:
      minima.append(isoflop_minimum(N[sel], L[sel], budget))
    except ValueError as e:
      skipped.append(str(e))
  if len(minima) < 2:
    raise ValueError("approach 2 needs at least 2 compute budgets with a parabola minimum; "
                     + ("; ".join(skipped) or f"got {len(minima)}"))
  Cs = np.array([m.compute for m in minima])
  Ns = np.array([m.N_opt for m in minima])
  return IsoFlopFit(tuple(minima), tuple(skipped), fit_power_law(Cs, Ns, level),
                    fit_power_law(Cs, Cs / (6 * Ns), level))


@dataclasses.dataclass(frozen=True)
class KaplanFit:
  """L(N) = (N_c / N)^alpha_N with a `level` interval on alpha_N."""

  N_c: float
  alpha_N: float
  interval: tuple[float, float] | None

  def loss(self, N: np.ndarray) -> np.ndarray:
    return (self.N_c / np.asarray(N, float)) ** self.alpha_N


def fit_kaplan(N: Sequence[float], L: Sequence[float], level: float = 0.95) -> KaplanFit:
  """Kaplan's L(N) over (non-embedding N, converged loss): log L = alpha_N (log N_c - log N)."""
  law = fit_power_law(N, L, level)
  alpha = -law.exponent
  if alpha <= 0:
    raise ValueError("loss does not fall with N; no (N_c / N)^alpha_N law with alpha_N > 0")
  interval = None if law.interval is None else (-law.interval[1], -law.interval[0])
  return KaplanFit(float(law.coefficient ** (1 / alpha)), float(alpha), interval)


def best_per_size(N: Sequence[float], L: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """The lowest loss reached by each distinct N (Kaplan's loss at convergence, approximated)."""
  N, L = np.asarray(N, float), np.asarray(L, float)
  sizes = np.unique(N)
  return sizes, np.array([L[N == n].min() for n in sizes])

