"""Reading and writing Hugging Face safetensors checkpoints (single file or sharded).

A sharded checkpoint is `model.safetensors.index.json` (its `weight_map` names the shard of
every tensor) plus the shard files. Tensors come back as float32 numpy arrays; they are
written in float32 or bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.flax import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
          "bf16": jnp.bfloat16}


def dtype_name(dtype: str) -> str:
  """Canonical name ("float32" or "bfloat16") of a dtype flag; clear error otherwise."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  return jnp.dtype(DTYPES[dtype]).name


def checkpoint_files(folder: str | Path) -> list[Path]:
  """The safetensors files of a checkpoint folder: the index's shards, or the single file."""
  folder = Path(folder)
  index = folder / INDEX_FILE
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
      raise FileNotFoundError(f"{index} names shards that do not exist: {', '.join(missing)}")
    return [folder / s for s in shards]
  if (folder / SINGLE_FILE).is_file():
    return [folder / SINGLE_FILE]
  found = sorted(p.name for p in folder.glob("*.bin")) if folder.is_dir() else []
  hint = f" (found {', '.join(found)}: PyTorch .bin checkpoints are not read; re-save with " \
         "safetensors)" if found else ""
  raise FileNotFoundError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}{hint}")


def read_file(path: str | Path) -> dict[str, np.ndarray]:
  """Every tensor of one safetensors file, by name, as float32 numpy arrays."""
  with safe_open(str(path), framework="flax") as f:
    return {name: np.asarray(f.get_tensor(name), dtype=np.float32) for name in f.keys()}


def read_tensors(folder: str | Path) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint in `folder`, by name, as float32 numpy arrays."""
  return {name: x for path in checkpoint_files(folder) for name, x in read_file(path).items()}


def write_tensors(folder: str | Path, tensors: dict[str, np.ndarray], dtype: str = "float32",
                  filename: str = SINGLE_FILE) -> Path:
  """Writes `tensors` into one safetensors file in `dtype` (float32 or bfloat16)."""
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  target = DTYPES[dtype_name(dtype)]
  path = folder / filename
  save_file({k: jnp.asarray(np.ascontiguousarray(v), dtype=target) for k, v in tensors.items()},
            str(path), metadata={"format": "pt"})
  return path
