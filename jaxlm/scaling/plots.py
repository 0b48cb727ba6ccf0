"""Scaling-law plots (matplotlib, Agg backend, PNG): IsoFLOP curves, the compute-optimal
frontier, and loss against compute."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxlm.scaling import fit as fit_lib  # noqa: E402


def _save(fig, path: str | Path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _budget_colors(budgets: np.ndarray) -> dict[float, tuple]:
  unique = np.unique(budgets)
  cmap = plt.get_cmap("viridis")
  return {b: cmap(i / max(1, len(unique) - 1)) for i, b in enumerate(unique)}


def isoflop_curves(N: np.ndarray, L: np.ndarray, C: np.ndarray, isoflop: fit_lib.IsoFlopFit | None,
                   path: str | Path) -> Path:
  """Loss against N for each compute budget, with its parabola and minimum."""
  fig, ax = plt.subplots(figsize=(6, 4.2))
  colors = _budget_colors(C)
  minima = {m.compute: m for m in isoflop.minima} if isoflop else {}
  for budget, color in colors.items():
    sel = C == budget
    ax.scatter(N[sel], L[sel], color=color, label=f"C = {budget:.2g}", zorder=3)
    m = minima.get(budget)
    if m is not None:
      u = np.linspace(np.log(N[sel].min()), np.log(N[sel].max()), 100)
      ax.plot(np.exp(u), np.polyval(m.coeffs, u), color=color, lw=1)
      ax.scatter([m.N_opt], [m.loss_opt], marker="*", s=160, color=color, edgecolor="k", zorder=4)
  ax.set(xscale="log", xlabel="parameters N (total)", ylabel="eval loss", title="IsoFLOP curves")
  ax.legend(fontsize=8)
  return _save(fig, path)


def frontier(isoflop: fit_lib.IsoFlopFit | None, chinchilla: fit_lib.ChinchillaFit | None,
             path: str | Path, compute_range: tuple[float, float] | None = None) -> Path:
  """N_opt and D_opt against C: approach-2 minima and fit, and approach 3's frontier."""
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
  if compute_range is None:
    cs = [m.compute for m in isoflop.minima] if isoflop else [1e18, 1e22]
    compute_range = (min(cs) / 2, max(cs) * 2)
  grid_C = np.geomspace(*compute_range, 50)
  for ax, what in zip(axes, ("N", "D")):
    if isoflop is not None:
      Cs = np.array([m.compute for m in isoflop.minima])
      Ns = np.array([m.N_opt for m in isoflop.minima])
      ys = Ns if what == "N" else Cs / (6 * Ns)
      law = isoflop.N_opt if what == "N" else isoflop.D_opt
      ax.scatter(Cs, ys, color="C0", zorder=3, label="IsoFLOP minima")
      ax.plot(grid_C, law(grid_C), color="C0", label=f"approach 2: C^{law.exponent:.2f}")
    if chinchilla is not None:
      n_opt, d_opt = chinchilla.params.optimal_allocation(grid_C)
      exponent = chinchilla.params.a if what == "N" else chinchilla.params.b
      ax.plot(grid_C, n_opt if what == "N" else d_opt, color="C1", ls="--",
              label=f"approach 3: C^{exponent:.2f}")
    title = f"compute-optimal {'parameters' if what == 'N' else 'tokens'}"
    ax.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel=f"{what}_opt",
           title=title)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
  return _save(fig, path)


def loss_vs_compute(C: np.ndarray, L: np.ndarray, N: np.ndarray,
                    chinchilla: fit_lib.ChinchillaFit | None, path: str | Path) -> Path:
  """Every run's loss against its compute, coloured by N, with approach 3's optimal loss."""
  fig, ax = plt.subplots(figsize=(6, 4.2))
  points = ax.scatter(C, L, c=np.log10(N), cmap="plasma", zorder=3)
  fig.colorbar(points, ax=ax, label="log10 N")
  if chinchilla is not None:
    grid_C = np.geomspace(C.min() / 2, C.max() * 2, 60)
    n_opt, d_opt = chinchilla.params.optimal_allocation(grid_C)
    ax.plot(grid_C, chinchilla.params.loss(n_opt, d_opt), color="k", ls="--",
            label="approach 3 at N_opt(C)")
    ax.legend(fontsize=8)
  ax.set(xscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel="eval loss",
         title="loss against compute")
  return _save(fig, path)
