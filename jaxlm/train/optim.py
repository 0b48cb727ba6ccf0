"""Optimizer: AdamW with warmup + cosine/linear decay to a floor, decay mask, clipping."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from jaxlm.models import stacking

SCHEDULES = ("cosine", "linear", "constant")
MU_DTYPES = ("float32", "bfloat16")


def make_schedule(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then decay to `min_lr` at `decay_steps` (default: the
  run's length), constant afterwards."""
  lr, min_lr, warmup = optim["lr"], optim["min_lr"], optim["warmup_steps"]
  decay_steps = optim["decay_steps"] or total_steps
  kind = optim["schedule"]
  if kind not in SCHEDULES:
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {kind!r}")
  warm = optax.linear_schedule(0.0, lr, max(warmup, 1))
  span = max(decay_steps - warmup, 1)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, span, alpha=min_lr / lr if lr else 0.0)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, min_lr, span)
  else:
    decay = optax.constant_schedule(lr)
  return optax.join_schedules([warm, decay], [warmup])


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices and embedding tables only, not on biases or norm scales (a
  stacked block's leaves have one more, leading, dimension: `model.scan_layers`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim - stacking.is_stacked(path) >= 2, params)


def make_optimizer(optim: Mapping[str, Any], total_steps: int,
                   trainable: Any = None) -> optax.GradientTransformation:
  """Global-norm clipping followed by AdamW on the schedule, over the `trainable` leaves only
  (a tree of bools; None: all): frozen leaves get no optimizer state and zero updates."""
  # identity() keeps the state's structure when clipping is off, so such a run still resumes.
  clip = optax.clip_by_global_norm(optim["grad_clip"]) if optim["grad_clip"] else optax.identity()
  if optim["mu_dtype"] not in MU_DTYPES:
    raise ValueError(f"optim.mu_dtype must be one of {MU_DTYPES}, got {optim['mu_dtype']!r}")
  mu_dtype = None if optim["mu_dtype"] == "float32" else jnp.dtype(optim["mu_dtype"])
  opt = optax.chain(clip, optax.adamw(
      make_schedule(optim, total_steps), b1=optim["b1"], b2=optim["b2"], eps=optim["eps"],
      mu_dtype=mu_dtype, weight_decay=optim["weight_decay"], mask=decay_mask))
  if trainable is None or all(jax.tree.leaves(trainable)):
    return opt
  labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
  return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
