"""Per-example values a frozen model computes once before training, cached on disk.

An objective may ask (`precompute(cfg) -> {name: (workdir, fn)}`) for columns computed by a
frozen model over its example rows, e.g. DPO's reference log-probs: `fn(model, rows)` maps a
chunk of rows to new columns. Values are cached per example under
`$JAXLM_CACHE/precomputed/<model id>.npz`, keyed by a hash of the example's tokens, so reruns
and later epochs reuse them and a changed example is never served a stale value. The frozen
model is loaded for the pre-pass only and need not stay in memory during training.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

CHUNK = 64


def cache_dir() -> Path:
  """Where precomputed columns live ($JAXLM_CACHE/precomputed)."""
  root = Path(os.environ.get("JAXLM_CACHE", Path.home() / ".cache" / "jaxlm"))
  return root / "precomputed"


def row_hashes(rows: dict[str, np.ndarray]) -> np.ndarray:
  """A hash per row of the integer (token) columns: the example's identity."""
  keys = sorted(k for k, v in rows.items() if np.issubdtype(v.dtype, np.integer))
  n = len(rows[keys[0]])
  return np.array([hashlib.sha1(b"".join(np.ascontiguousarray(rows[k][i]).tobytes()
                                         for k in keys)).hexdigest() for i in range(n)])


def model_id(workdir: str, step: int, name: str) -> str:
  """Identity of a frozen model's weights: its run folder and checkpoint step."""
  return hashlib.sha1(f"{Path(workdir).resolve()}:{step}:{name}".encode()).hexdigest()[:20]


def add_columns(rows: dict[str, np.ndarray], graphdef: Any, params: Any, fn: Callable,
                model_key: str) -> int:
  """Adds fn's columns to `rows` in place, from the cache where possible; returns how many
  rows were computed (not found in the cache)."""
  path = cache_dir() / f"{model_key}.npz"
  cached: dict[str, dict[str, float]] = {}
  if path.is_file():
    with np.load(path) as f:  # each f[k] reads the whole array from the file: once per key
      columns = {k: f[k] for k in f.files if k != "hash"}
      for i, h in enumerate(f["hash"]):
        cached[str(h)] = {k: v[i] for k, v in columns.items()}
  hashes = row_hashes(rows)
  missing = [i for i, h in enumerate(hashes) if h not in cached]
  compute = jax.jit(lambda p, batch: fn(nnx.merge(graphdef, p), batch))
  for start in range(0, len(missing), CHUNK):
    idx = np.array(missing[start:start + CHUNK])
    # Pad the last chunk to a full one so the pre-pass compiles once.
    padded = np.concatenate([idx, np.repeat(idx[-1:], CHUNK - len(idx))])
    out = jax.device_get(compute(params, {k: v[padded] for k, v in rows.items()}))
    for j, i in enumerate(idx):
      cached[hashes[i]] = {k: np.asarray(v[j]) for k, v in out.items()}
  names = sorted(next(iter(cached.values()))) if cached else []
  for k in names:
    rows[k] = np.stack([cached[h][k] for h in hashes])
  if missing:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    all_hashes = sorted(cached)
    np.savez(tmp, hash=np.array(all_hashes),
             **{k: np.stack([cached[h][k] for h in all_hashes]) for k in names})
    os.replace(tmp, path)  # atomic: readers see the old or the new cache, never half of it
  return len(missing)
