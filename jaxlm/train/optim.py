"""Optimizer: AdamW (or Lion, Adafactor, Muon) with warmup and a decay schedule (cosine,
linear, constant, or warmup-stable-decay), decay mask, clipping."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from jaxlm.models import moe, stacking

OPTIMIZERS = ("adamw", "lion", "adafactor", "muon")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
COOLDOWN_SHAPES = ("linear", "sqrt")
MU_DTYPES = ("float32", "bfloat16")
# Muon's update scaled to AdamW's typical RMS (Moonlight, Liu et al. 2025), so that one
# optim.lr and optim.weight_decay serve the Muon matrices and the AdamW rest alike.
MUON_RMS = 0.2


def cooldown_schedule(lr: float, min_lr: float, stable_steps: int, cooldown_steps: int,
                      shape: str) -> optax.Schedule:
  """`lr` for `stable_steps`, then down to `min_lr` over `cooldown_steps`: linearly, or as
  1 - sqrt of the cooldown's progress ("sqrt", Hägele et al. 2024), constant afterwards."""
  if shape not in COOLDOWN_SHAPES:
    raise ValueError(f"optim.cooldown_shape must be one of {COOLDOWN_SHAPES}, got {shape!r}")

  def schedule(count):
    progress = jnp.clip((count - stable_steps) / max(cooldown_steps, 1), 0.0, 1.0)
    return lr - (lr - min_lr) * (jnp.sqrt(progress) if shape == "sqrt" else progress)

  return schedule


def make_schedule(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then decay to `min_lr` at `decay_steps` (default: the
  run's length), constant afterwards. `wsd` (warmup-stable-decay) holds `lr` until the last
  `cooldown_fraction` of the decay steps: its stable part does not depend on the run's length,
  so a checkpoint of a long run starts a cooldown for any shorter budget."""
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
  elif kind == "wsd":
    fraction = optim["cooldown_fraction"]
    cooldown = round(fraction * decay_steps)
    if not 0 < fraction <= 1 or cooldown > span:
      raise ValueError(f"optim.cooldown_fraction={fraction} must be in (0, 1] and leave the "
                       f"cooldown ({cooldown} steps) after the {warmup} warmup steps")
    decay = cooldown_schedule(lr, min_lr, span - cooldown, cooldown, optim["cooldown_shape"])
  else:
    decay = optax.constant_schedule(lr)
  return optax.join_schedules([warm, decay], [warmup])


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices and embedding tables only, not on biases or norm scales (a
  stacked block's leaves have one more, leading, dimension: `model.scan_layers`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim - stacking.is_stacked(path) >= 2, params)


def muon_dimensions(params: Any) -> Any:
  """Muon's axes for the transformer blocks' weight matrices (input axis reduced, output
  kept; behind the layer axis when stacked, and a mixture's expert axis: one matrix per
  expert) and None for everything else: embeddings,
  output heads, biases and norms go to AdamW (with Nesterov momentum, as optax's Muon has
  it), as Muon's authors prescribe."""
  def dims(path, p):
    name, stacked = stacking.path_name(path), int(stacking.is_stacked(path))
    hidden = (f"/{stacking.STACK}/" in f"/{name}" or "blocks/" in name) and name.endswith("/kernel")
    experts = int(p.ndim - stacked == 3 and "/mlp/" in f"/{name}")
    if not hidden or p.ndim - stacked - experts != 2:
      return None
    first = stacked + experts
    return contrib.MuonDimensionNumbers(reduction_axis=first, output_axis=first + 1)
  return jax.tree_util.tree_map_with_path(dims, params)


def base_optimizer(optim: Mapping[str, Any],
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """`optim.name`'s update rule on `schedule`, weight decay (times the learning rate, as
  AdamW's) on `decay_mask`'s leaves."""
  name, wd = optim["name"], optim["weight_decay"]
  if name not in OPTIMIZERS:
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {name!r}")
  if optim["mu_dtype"] not in MU_DTYPES:
    raise ValueError(f"optim.mu_dtype must be one of {MU_DTYPES}, got {optim['mu_dtype']!r}")
  mu_dtype = None if optim["mu_dtype"] == "float32" else jnp.dtype(optim["mu_dtype"])
  if name == "adamw":
    return optax.adamw(schedule, b1=optim["b1"], b2=optim["b2"], eps=optim["eps"],
                       mu_dtype=mu_dtype, weight_decay=wd, mask=decay_mask)
  if name == "lion":
    return optax.lion(schedule, b1=optim["b1"], b2=optim["b2"], mu_dtype=mu_dtype,
                      weight_decay=wd, mask=decay_mask)
  if name == "muon":
    missing = {"consistent_rms", "muon_weight_dimension_numbers"} - set(
        inspect.signature(contrib.muon).parameters)
    if missing:  # added to optax's Muon after some releases this project allows
      raise ValueError(f"optim.name=muon needs an optax whose contrib.muon takes "
                       f"{sorted(missing)}; this is optax {optax.__version__} (0.2.8 has them)")
    return contrib.muon(schedule, beta=optim["muon_momentum"], weight_decay=wd,
                        weight_decay_mask=decay_mask, mu_dtype=mu_dtype, adam_b1=optim["b1"],
                        adam_b2=optim["b2"], eps=optim["eps"], adam_weight_decay=wd,
                        muon_weight_dimension_numbers=muon_dimensions, consistent_rms=MUON_RMS)
  if mu_dtype is not None:
    raise ValueError("optim.mu_dtype is for adamw, lion and muon: adafactor keeps no first moment "
                     "(its optional momentum, optim.adafactor_momentum, stays float32)")
  # optax.adafactor's weight decay is not scaled by the learning rate; this chain is the same
  # rule (factored second moment, update clipping, relative step size, optional momentum)
  # with AdamW's decay.
  momentum = optim["adafactor_momentum"]
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"optim.adafactor_momentum must be in [0, 1), got {momentum}")
  return optax.chain(
      optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
      optax.scale_by_param_block_rms(),
      *([optax.ema(momentum, debias=False)] if momentum else []),
      optax.add_decayed_weights(wd, mask=decay_mask), optax.scale_by_learning_rate(schedule))


def router_bias_rule(rate: float) -> optax.GradientTransformation:
  """Auxiliary-loss-free balancing's update of the router biases (their gradients are their
  experts' loads minus the mean, `jaxlm.models.moe.bias_hook`): b -= rate * sign(gradient)."""
  if rate < 0:
    raise ValueError(f"optim.router_bias_rate must be >= 0, got {rate}")
  return optax.chain(optax.scale_by_sign(), optax.scale(-rate))


def make_optimizer(optim: Mapping[str, Any], total_steps: int,
                   trainable: Any = None) -> optax.GradientTransformation:
  """Global-norm clipping followed by `optim.name` on the schedule, over the `trainable`
  leaves only (a tree of bools with the parameters' paths; None: all): frozen leaves get no
  optimizer state and zero updates. Trainable router biases (`model.router_bias`; found by
  their paths in `trainable`, so pass it for such a model) get `router_bias_rule` instead,
  outside the clipping."""
  # identity() keeps the state's structure when clipping is off, so such a run still resumes.
  clip = optax.clip_by_global_norm(optim["grad_clip"]) if optim["grad_clip"] else optax.identity()
  opt = optax.chain(clip, base_optimizer(optim, make_schedule(optim, total_steps)))
  if trainable is None:
    return opt
  labels = jax.tree_util.tree_map_with_path(
      lambda path, t: ("bias" if moe.is_router_bias(path) else "train") if t else "frozen",
      trainable)
  used = set(jax.tree.leaves(labels))
  if used == {"train"}:
    return opt
  rules = {"train": opt, "frozen": optax.set_to_zero()}
  if "bias" in used:
    rules["bias"] = router_bias_rule(optim["router_bias_rate"])
  return optax.multi_transform(rules, labels)
