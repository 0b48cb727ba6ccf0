"""Orbax checkpoints of the TrainState, the data iterator position and the resolved config.

Orbax writes each step into a temporary folder and renames it when complete, so a crash or
SIGTERM mid-save never touches the last good checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm import config as configlib


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used: corrupt, incomplete, or for a different model."""


class Checkpointer:
  """Keep-N Orbax CheckpointManager under `workdir/checkpoints` (async saves by default)."""

  def __init__(self, workdir: str | Path, *, keep: int = 3, async_save: bool = True):
    self.directory = Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of every complete checkpoint kept, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, config: dict) -> None:
    """Starts saving `state`, the data position and the config at `step`."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), force=True)

  def saved_config(self, step: int) -> dict:
    """The resolved config stored with checkpoint `step`; settings added to jaxlm since it
    was saved take their defaults (so they do not read as changed on resume)."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for a damaged folder
      raise CheckpointError(f"checkpoint {self.directory / str(step)} is unreadable: {e}") from e
    return configlib.with_defaults(restored["config"], configlib.to_dict(configlib.base_config()))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """The TrainState (laid out as `abstract_state`, shardings included) and data position."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(
          f"cannot restore checkpoint {self.directory / str(step)}: {type(e).__name__}: {e}") from e
    return restored["state"], restored["data"]

  def restore_params(self, step: int, abstract_state: Any) -> Any:
    """Only the parameters of checkpoint `step`, laid out as `abstract_state.params`: the
    optimizer's moments (twice the parameters in bytes, with Adam) are never read, so
    sampling, evaluation and `init_from` need memory for the weights alone."""
    item = {"params": abstract_state.params}
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), item)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True)))
    except Exception as e:
      raise CheckpointError(
          f"cannot restore checkpoint {self.directory / str(step)}: {type(e).__name__}: {e}") from e
    return restored["state"]["params"]

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def checkpoint_steps(workdir: str | Path) -> list[int]:
  """Steps of the complete checkpoints kept in `workdir` (none without a checkpoints folder)."""
  if not (Path(workdir) / "checkpoints").is_dir():
    return []
  ckpt = Checkpointer(workdir)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def branch_source(spec: str) -> tuple[Path, int]:
  """(workdir, step) of a `train.branch_from` setting "WORKDIR:STEP", checked to exist."""
  path, sep, step = spec.rpartition(":")
  if not sep or not path or not step.isdigit():
    raise ValueError(f"train.branch_from must be WORKDIR:STEP, got {spec!r}")
  steps = checkpoint_steps(path)
  if int(step) not in steps:
    raise FileNotFoundError(f"train.branch_from={spec!r}: {path} holds no checkpoint at step "
                            f"{step} (it has {steps or 'none'})")
  return Path(path), int(step)


def copy_checkpoint(source: str | Path, step: int, workdir: str | Path) -> None:
  """Copies checkpoint `step` of the run in `source` into `workdir`, which then resumes from
  it exactly as `source` would: parameters, optimizer state, RNG and data position."""
  shutil.copytree(Path(source) / "checkpoints" / str(step),
                  Path(workdir) / "checkpoints" / str(step))


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` with the given shardings (the restore target)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def config_mismatch(saved: dict, current: dict, sections: tuple[str, ...],
                    ignore: tuple[str, ...] = ()) -> list[str]:
  """Dotted keys under `sections` (top-level sections or dotted fields, e.g. "optim.name";
  except those in `ignore`) whose values differ between two config dicts."""
  diffs = []

  def get(config: dict, dotted: str) -> Any:
    for key in dotted.split("."):
      config = config.get(key) if isinstance(config, dict) else None
    return config

  def walk(a: Any, b: Any, prefix: str):
    if prefix in ignore:
      return
    if isinstance(a, dict) and isinstance(b, dict):
      for k in sorted(set(a) | set(b)):
        walk(a.get(k), b.get(k), f"{prefix}.{k}")
    elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
      diffs.append(f"{prefix}: checkpoint has {a!r}, config has {b!r}")
  for section in sections:
    walk(get(saved, section), get(current, section), section)
  return diffs
