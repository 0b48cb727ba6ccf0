"""Host rows that every process holds whole <-> global arrays split over the batch axes.

Rollouts, their scores and the sampler's prompts are small host arrays that every process
builds identically (same seed, same prompts). To compute on them without each device redoing
the whole batch, `place` lays their rows out over a batch sharding (each device gets only its
rows, whatever the device order or process count) and `fetch` brings a global result back
whole to every process. With no sharding (one device, or a caller that does not care) both
are plain conversions.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


def row_shards(batch_sharding: jax.sharding.Sharding | None) -> int:
  """Into how many parts `batch_sharding` splits the rows (dimension 0); 1 for None."""
  if batch_sharding is None:
    return 1
  devices = batch_sharding.num_devices
  return devices // batch_sharding.shard_shape((devices,))[0]


def padded_rows(n: int, batch_sharding: jax.sharding.Sharding | None) -> int:
  """`n` rounded up to a whole number of row shards."""
  shards = row_shards(batch_sharding)
  return -(-n // shards) * shards


def fill_rows(rows: Sequence[Any], batch_sharding: jax.sharding.Sharding | None) -> list[Any]:
  """`rows` followed by copies of its first row, up to a whole number of row shards."""
  return list(rows) + [rows[0]] * (padded_rows(len(rows), batch_sharding) - len(rows))


def place(host: Any, batch_sharding: jax.sharding.Sharding | None) -> Any:
  """A tree of host arrays (same values on every process) as global arrays whose rows are
  split by `batch_sharding`; unchanged when it is None."""
  if batch_sharding is None:
    return host

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, batch_sharding, lambda index: x[index])
  return jax.tree.map(one, host)


def fetch(tree: Any) -> Any:
  """A tree of arrays as numpy, whole on every process (gathered across processes when an
  array's rows live on other hosts)."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
  return jax.tree.map(one, tree)
