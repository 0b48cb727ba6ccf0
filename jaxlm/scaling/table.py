"""The results table of a sweep: one row per finished run, written as CSV and JSONL.

`params_total` is the N of Hoffmann et al.'s fits (approaches 2 and 3, and C = 6 N D);
`params_nonembed` (no token embedding, output head or position tables) is Kaplan et al.'s N.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

# compute_budget: the nominal C of an IsoFLOP set (empty in a grid sweep); compute: 6 N D.
COLUMNS = ("run", "compute_budget", "params_total", "params_nonembed", "tokens", "steps", "compute",
           "final_eval_loss", "best_eval_loss", "final_train_loss", "wall_s", "tokens_per_sec",
           "config_hash")
TEXT_COLUMNS = ("run", "config_hash")


def write_table(rows: Sequence[dict[str, Any]], root: str | Path) -> tuple[Path, Path]:
  """Writes ROOT/results.csv and ROOT/results.jsonl (columns in COLUMNS order)."""
  root = Path(root)
  csv_path, jsonl_path = root / "results.csv", root / "results.jsonl"
  with csv_path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _csv_value(row.get(k)) for k in COLUMNS})
  with jsonl_path.open("w") as f:
    for row in rows:
      f.write(json.dumps({k: _json_value(row.get(k)) for k in COLUMNS}) + "\n")
  return csv_path, jsonl_path


def _json_value(v: Any) -> Any:
  return None if isinstance(v, float) and not math.isfinite(v) else v


def _csv_value(v: Any) -> Any:
  if isinstance(v, (float, np.floating)):
    return "" if not math.isfinite(v) else repr(float(v))
  if isinstance(v, np.integer):
    return int(v)
  return "" if v is None else v


def read_table(path: str | Path) -> dict[str, np.ndarray]:
  """Columns of a results table (.csv or .jsonl) as arrays; numeric columns as floats."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"results table {path} does not exist")
  if path.suffix == ".csv":
    with path.open(newline="") as f:
      rows = list(csv.DictReader(f))
  elif path.suffix == ".jsonl":
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  else:
    raise ValueError(f"results table {path} must be .csv or .jsonl")
  if not rows:
    raise ValueError(f"results table {path} has no rows")
  missing = [c for c in ("params_total", "tokens", "final_eval_loss") if c not in rows[0]]
  if missing:
    raise ValueError(f"results table {path} lacks columns {missing}")
  return {k: _column([r.get(k) for r in rows], k) for k in rows[0]}


def _column(values: Iterable[Any], name: str) -> np.ndarray:
  values = list(values)
  if name in TEXT_COLUMNS:
    return np.array(["" if v is None else str(v) for v in values])
  return np.array([np.nan if v in ("", None) else float(v) for v in values])
