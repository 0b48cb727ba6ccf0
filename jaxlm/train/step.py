"""The jitted, donated train step and the eval step, for any objective's loss_fn."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.models import moe
from jaxlm.train.state import TrainState

LossFn = Callable[..., tuple[jax.Array, dict]]  # (model, batch, rng, frozen=) -> (loss, metrics)


def merge_frozen(graphdefs: dict[str, nnx.GraphDef], params: dict[str, Any]) -> dict[str, nnx.Module]:
  """Frozen models (a DPO reference, a distillation teacher) from their graphdefs and params."""
  return {name: nnx.merge(graphdefs[name], jax.lax.stop_gradient(params[name]))
          for name in graphdefs}


def _weighted_metric(sum_: jax.Array, weight: jax.Array, total: jax.Array) -> jax.Array:
  """A micro-batch metric's weighted sum over its weight: NaN when every micro-batch with a
  weight left it undefined, 0 when no micro-batch had any weight (no tokens at all)."""
  mean = sum_ / jnp.where(weight > 0, weight, 1.0).astype(sum_.dtype)
  if not jnp.issubdtype(sum_.dtype, jnp.floating):
    return mean
  return jnp.where((weight == 0) & (total > 0), jnp.nan, mean)


def _split_micro(batch: dict, num: int) -> dict:
  """(B, ...) -> (num, B/num, ...) for gradient accumulation, micro-batch i = rows i, i + num,
  ...: each device's shard of the batch splits evenly, so every micro-batch stays sharded over
  all devices (contiguous blocks would sit on num-th of them, gathered and recomputed)."""
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f"batch of {x.shape[0]} rows is not divisible into {num} micro-batches")
    return x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum: int = 1,
                    frozen_graphdefs: dict[str, nnx.GraphDef] | None = None,
                    trainable: Any = None) -> Callable:
  """`step(state, batch, frozen_params) -> (state, metrics)`; metrics stay on device.

  `frozen_params` holds the parameters of the frozen models named in `frozen_graphdefs`
  ({} when the objective needs none); the loss sees them as `frozen={name: model}`.
  With `grad_accum > 1` the batch is split into micro-batches whose gradients are averaged
  in a `lax.scan`, so memory holds one micro-batch of activations; a loss that reports
  `tokens` is averaged per token, so the step equals one step on the whole batch. Leaves
  that `trainable` (a tree of bools) marks False get no gradient (zeros: `grad_norm` is the
  trainable leaves') and keep their exact old values; `grad_norm` leaves out router biases.
  """
  frozen_graphdefs = frozen_graphdefs or {}

  def grads_of(params, batch, key, frozen_params):
    def objective(p):
      if trainable is not None:
        # Frozen leaves are constants to autodiff: their gradients (a third of a full
        # fine-tuning step's matmuls) are never computed, and count in no norm.
        p = jax.tree.map(lambda t, x: x if t else jax.lax.stop_gradient(x), trainable, p)
      return loss_fn(nnx.merge(graphdef, p), batch, key,
                     frozen=merge_frozen(frozen_graphdefs, frozen_params))
    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, metrics

  def step(state: TrainState, batch: dict, frozen_params: dict) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if grad_accum == 1:
      grads, metrics = grads_of(state.params, batch, key, frozen_params)
    else:
      def body(carry, inputs):
        micro, i = inputs
        g, m = grads_of(state.params, micro, jax.random.fold_in(key, i), frozen_params)
        # A token-mean loss weighs each micro-batch by its tokens, so the sum over micro-batches
        # is the whole batch's token mean (a micro-batch of few tokens must not count fully).
        w = m["tokens"].astype(jnp.float32) if "tokens" in m else jnp.ones((), jnp.float32)
        # A metric that a micro-batch leaves undefined (NaN) is the mean of the others'.
        m_w = {k: jnp.where(jnp.isnan(v), 0.0, w) for k, v in m.items()}
        m = {k: jnp.where(jnp.isnan(v), 0, v) for k, v in m.items()}
        weighted = (jax.tree.map(lambda x: x * w.astype(x.dtype), g),
                    jax.tree.map(lambda x, mw: x * mw.astype(x.dtype), m, m_w))
        return jax.tree.map(jnp.add, carry, (*weighted, m_w, w)), None
      micro_shapes = jax.eval_shape(grads_of, state.params, jax.tree.map(
          lambda x: x[0], _split_micro(batch, grad_accum)), key, frozen_params)
      metric_weights = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in micro_shapes[1]}
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           (*micro_shapes, metric_weights, jax.ShapeDtypeStruct((), jnp.float32)))
      (grads, metrics, weights, total), _ = jax.lax.scan(
          body, zeros, (_split_micro(batch, grad_accum), jnp.arange(grad_accum)))
      denom = jnp.maximum(total, 1.0) if "tokens" in metrics else total
      grads = jax.tree.map(lambda x: x / denom.astype(x.dtype), grads)
      metrics = {k: _weighted_metric(v, weights[k], total) for k, v in metrics.items()}
      if "tokens" in metrics:
        metrics["tokens"] = total
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if trainable is not None:  # frozen leaves stay bit-identical (p + 0 would turn -0 into 0)
      params = jax.tree.map(lambda t, new, old: new if t else old, trainable, params,
                            state.params)
    # a router bias's "gradient" is its expert's overload, not a descent direction
    grad_norm = optax.tree.norm(moe.without_router_biases(grads))
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite, state.step,
                               state.nonfinite_step)
    metrics = {**metrics, "grad_norm": grad_norm, "lr": schedule(state.step)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              nonfinite_step=nonfinite_step)
    return new_state, metrics

  return step


def jit_train_step(step: Callable, shardings: TrainState, batch_sharding: Any,
                   frozen_shardings: Any = None) -> Callable:
  """Compiles the step with explicit shardings; the state (positional arg 0) is donated."""
  return jax.jit(step, in_shardings=(shardings, batch_sharding, frozen_shardings or {}),
                 out_shardings=(shardings, None), donate_argnums=(0,))


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn,
                   frozen_graphdefs: dict[str, nnx.GraphDef] | None = None) -> Callable:
  """`eval_step(params, batch, frozen_params) -> metrics`, deterministic (no dropout), jitted."""
  frozen_graphdefs = frozen_graphdefs or {}

  @jax.jit
  def eval_step(params: Any, batch: dict, frozen_params: dict) -> dict:
    frozen = merge_frozen(frozen_graphdefs, frozen_params)
    _, metrics = loss_fn(nnx.merge(graphdef, params), batch, None, frozen=frozen)
    return metrics
  return eval_step
