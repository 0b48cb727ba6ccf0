"""`jaxlm sweep`: run a sweep, print its train commands, or fit a results table."""

from __future__ import annotations

import argparse
from pathlib import Path

RUN_PREFIX = "run."


def split_sweep_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
  """(sweep overrides, per-run train overrides): `run.KEY=V` goes to every run as `KEY=V`."""
  sweep, runs = [], []
  for item in overrides:
    (runs if item.startswith(RUN_PREFIX) else sweep).append(
        item[len(RUN_PREFIX):] if item.startswith(RUN_PREFIX) else item)
  return sweep, runs


def run(args: argparse.Namespace, overrides: list[str]) -> int:
  """The `jaxlm sweep` subcommand; returns the exit code (130 when interrupted)."""
  from jaxlm.scaling import plan, report, sweep
  if not args.config and not args.fit:
    raise SystemExit("error: sweep needs --config SWEEP (to run) or --fit TABLE (or both)")
  code = 0
  if args.config:
    sweep_overrides, run_overrides = split_sweep_overrides(overrides)
    cfg = plan.load_sweep(args.config, sweep_overrides)
    if run_overrides:
      with cfg.unlocked():
        cfg.overrides = tuple(cfg.overrides) + tuple(run_overrides)
    root = Path(args.workdir or Path("runs/sweeps") / Path(args.config.partition(":")[0]).stem)
    if args.print_commands:
      print("\n".join(sweep.commands(cfg, root)))
      return 0
    _, stopped = sweep.run_sweep(cfg, root, limit=args.limit)
    code = 130 if stopped not in (None, "limit") else 0
  elif overrides:
    raise SystemExit("error: --config.* overrides need a sweep --config")
  if args.fit:
    _, text = report.fit_table(args.fit, loss=args.loss, bootstrap=args.bootstrap,
                               plots_dir=args.plots)
    print(text)
  return code
