"""TrainState: params, optimizer state, step, base RNG and the first non-finite step.

Created directly sharded: shapes come from `nnx.eval_shape`, shardings from the logical axis
names, and the jitted initialiser writes each shard where it belongs.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.train import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes, as one pytree."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; the step's key is fold_in(rng, step), so it never needs updating
  nonfinite_step: jax.Array  # first step whose loss or gradient was NaN/Inf, -1 if none


def abstract_model(make_model: Callable[[nnx.Rngs], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State]:
  """Graph definition and shape-only state of a model, without allocating it."""
  return nnx.split(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))))


def state_shardings(abstract_params: nnx.State, optimizer: optax.GradientTransformation,
                    mesh: Mesh) -> TrainState:
  """NamedShardings for every leaf of the TrainState (a parameter its mesh axes do not split
  evenly is named first)."""
  sharding.check_divisible(abstract_params, mesh)
  param_sh = sharding.named(mesh, sharding.param_specs(abstract_params))
  replicated = NamedSharding(mesh, P())
  pure = nnx.to_pure_dict(abstract_params)
  opt_abstract = jax.eval_shape(optimizer.init, pure)
  masked = lambda x: isinstance(x, optax.MaskedNode)  # frozen leaves (no optimizer state)

  def like_param(x, s, p):
    if masked(x):
      return x
    # A moment of the parameter's shape is laid out like it; a factored one (Adafactor's
    # row / column statistics) is small and replicated.
    return s if x.shape == p.shape else replicated

  opt_sh = optax.tree_map_params(optimizer, like_param, opt_abstract, param_sh, pure,
                                 transform_non_params=lambda _: replicated, is_leaf=masked)
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated,
                    nonfinite_step=replicated)


def make_initializer(make_model: Callable[[nnx.Rngs], nnx.Module],
                     optimizer: optax.GradientTransformation, seed: int,
                     mesh: Mesh) -> tuple[nnx.GraphDef, Callable[[], TrainState], TrainState]:
  """(graphdef, jitted sharded initialiser, state shardings).

  `jax.eval_shape(init)` gives the restore target without allocating anything.
  """
  graphdef, abstract_params = abstract_model(make_model)
  shardings = state_shardings(abstract_params, optimizer, mesh)

  def init() -> TrainState:
    return _step_zero(nnx.to_pure_dict(nnx.split(make_model(nnx.Rngs(seed)))[1]), optimizer, seed)

  return graphdef, jax.jit(init, out_shardings=shardings), shardings


def _step_zero(params: Any, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(seed + 1)),
                    nonfinite_step=jnp.full((), -1, jnp.int32))


def state_from_params(params: Any, optimizer: optax.GradientTransformation, seed: int,
                      shardings: TrainState) -> TrainState:
  """The step-0 TrainState `make_initializer` would give, around these parameters (e.g. an
  HF import), built without first making random ones."""
  return jax.jit(lambda p: _step_zero(p, optimizer, seed), out_shardings=shardings)(params)
