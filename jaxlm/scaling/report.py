"""Fitting a results table: approaches 3 and 2 and Kaplan's L(N), printed with intervals and
plotted. Each fit runs when the table supports it and otherwise says why it did not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxlm.scaling import fit as fit_lib
from jaxlm.scaling import table as table_lib


@dataclasses.dataclass
class TableFits:
  """The fits of one table (None where the data do not allow one) and notes on why not."""

  chinchilla: fit_lib.ChinchillaFit | None = None
  isoflop: fit_lib.IsoFlopFit | None = None
  kaplan: fit_lib.KaplanFit | None = None
  notes: list[str] = dataclasses.field(default_factory=list)
  plots: list[Path] = dataclasses.field(default_factory=list)


def fit_columns(columns: dict[str, np.ndarray], *, loss: str = "final_eval_loss",
                bootstrap: int = 200, seed: int = 0) -> TableFits:
  """All three fits over a table's columns (rows with a missing loss are left out)."""
  if loss not in columns:
    raise ValueError(f"the table has no {loss!r} column; columns: {', '.join(columns)}")
  ok = np.isfinite(columns[loss])
  N, D, L = columns["params_total"][ok], columns["tokens"][ok], columns[loss][ok]
  fits = TableFits()
  try:
    fits.chinchilla = fit_lib.fit_chinchilla(N, D, L, bootstrap=bootstrap, seed=seed)
  except ValueError as e:
    fits.notes.append(f"approach 3: {e}")
  budgets = columns.get("compute_budget")
  if budgets is not None and np.isfinite(budgets[ok]).all():
    try:
      fits.isoflop = fit_lib.fit_isoflop(N, L, budgets[ok])
      fits.notes += [f"approach 2 skipped {s}" for s in fits.isoflop.skipped]
    except ValueError as e:
      fits.notes.append(f"approach 2: {e}")
  else:
    fits.notes.append("approach 2: needs IsoFLOP runs (a compute_budget on every row)")
  nonembed = columns.get("params_nonembed", columns["params_total"])[ok]
  try:
    fits.kaplan = fit_lib.fit_kaplan(*fit_lib.best_per_size(nonembed, L))
  except ValueError as e:
    fits.notes.append(f"Kaplan: {e}")
  return fits


def _interval(iv: tuple[float, float] | None, fmt: str = ".3f") -> str:
  return "" if iv is None else f"  [{iv[0]:{fmt}}, {iv[1]:{fmt}}]"


def format_fits(fits: TableFits, num_runs: int) -> str:
  """A plain-text summary next to the published values."""
  lines = [f"{num_runs} runs"]
  c = fits.chinchilla
  if c is not None:
    level = f"{100 * c.level:.0f}%"
    boot = f"{len(c.samples)} bootstrap resamples" if c.samples is not None else "no bootstrap"
    lines.append(f"approach 3 (L = E + A/N^alpha + B/D^beta, N total params; {boot}, "
                 f"{level} intervals):")
    for name in fit_lib.PARAM_NAMES:
      value = getattr(c.params, name)
      fmt = ".4g" if name in ("A", "B") else ".3f"
      lines.append(f"  {name:5s} = {value:{fmt}}{_interval(c.interval(name), fmt)}"
                   f"   (Hoffmann {fit_lib.CHINCHILLA[name]}, Besiroglu "
                   f"{fit_lib.BESIROGLU[name]})")
    lines.append(f"  N_opt ~ C^{c.params.a:.3f}{_interval(c.interval('a'))}, D_opt ~ "
                 f"C^{c.params.b:.3f}{_interval(c.interval('b'))}   (Hoffmann 0.46 / 0.54)")
  i = fits.isoflop
  if i is not None:
    lines.append("approach 2 (IsoFLOP parabola minima, 95% t intervals):")
    for m in i.minima:
      where = "" if m.inside else "  (outside the sampled sizes: extrapolated)"
      lines.append(f"  C = {m.compute:.3g}: N_opt = {m.N_opt:.4g}, loss {m.loss_opt:.4f}{where}")
    lines.append(f"  N_opt ~ C^{i.a:.3f}{_interval(i.N_opt.interval)}, D_opt ~ "
                 f"C^{i.b:.3f}{_interval(i.D_opt.interval)}   (Hoffmann 0.49 / 0.51)")
  k = fits.kaplan
  if k is not None:
    lines.append("Kaplan L(N) = (N_c/N)^alpha_N (N non-embedding, best loss per size):")
    lines.append(f"  alpha_N = {k.alpha_N:.4f}{_interval(k.interval, '.4f')}, N_c = {k.N_c:.3g}"
                 f"   (Kaplan {fit_lib.KAPLAN['alpha_N']}, {fit_lib.KAPLAN['N_c']:.2g})")
  lines += [f"note: {n}" for n in fits.notes]
  lines += [f"plot: {p}" for p in fits.plots]
  return "\n".join(lines)


def fit_table(path: str | Path, *, loss: str = "final_eval_loss", bootstrap: int = 200,
              plots_dir: str | Path | None = None, seed: int = 0) -> tuple[TableFits, str]:
  """Fits a results table, writes the plots (default: beside the table) and the summary."""
  from jaxlm.scaling import plots
  path = Path(path)
  columns = table_lib.read_table(path)
  fits = fit_columns(columns, loss=loss, bootstrap=bootstrap, seed=seed)
  out = Path(plots_dir) if plots_dir else path.parent
  ok = np.isfinite(columns[loss])
  N, L, C = columns["params_total"][ok], columns[loss][ok], columns["compute"][ok]
  if fits.isoflop is not None:
    fits.plots.append(plots.isoflop_curves(N, L, columns["compute_budget"][ok], fits.isoflop,
                                           out / "isoflop.png"))
  if fits.isoflop is not None or fits.chinchilla is not None:
    fits.plots.append(plots.frontier(fits.isoflop, fits.chinchilla, out / "frontier.png",
                                     (C.min() / 2, C.max() * 2)))
  fits.plots.append(plots.loss_vs_compute(C, L, N, fits.chinchilla, out / "loss_vs_compute.png"))
  return fits, format_fits(fits, int(ok.sum()))
