"""Mixture-of-experts MLP (Mixtral, Switch): a router sends each token to `experts_per_token`
of `num_experts` expert MLPs and sums their outputs weighted by its probabilities.

Two ways to run the experts. Dropless (`moe_capacity_factor` 0, and always with a KV cache):
every (token, expert) assignment is computed; the assignments are sorted by expert and each
projection is one grouped matmul over them (`jax.lax.ragged_dot`: a grouped GEMM where the
backend has one, e.g. TPU; JAX's CPU lowering masks a dense matmul per expert instead, E
times the work). With capacity (Switch, GShard): each expert takes at most
ceil(factor x tokens x k / E) assignments, first choices before second ones and earlier
tokens first; the rest are dropped (the token keeps its residual stream and its other
experts), and every projection is one batched matmul over (E, capacity) rows, factor x the
work of k dense MLPs on any backend. The router's statistics give the load-balancing loss
and z-loss (`router_losses`) that the language-model objectives add (`with_router_losses`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers
from jaxlm.models.config import ModelConfig

# Router statistics a MoE block returns (means over its real tokens): the two losses, and
# with a capacity the share of assignments dropped.
BALANCE, ROUTER_Z, DROPPED = "moe_balance", "router_z", "moe_dropped"


class Experts(nnx.Module):
  """`num` stacked weight matrices (num, in, out) applied to rows grouped by expert."""

  def __init__(self, num: int, in_dim: int, out_dim: int, names: tuple[str, str], *,
               dtype: jnp.dtype, std: float, rngs: nnx.Rngs):
    init = layers.named(nnx.initializers.normal(std), "expert", *names)
    self.kernel = nnx.Param(init(rngs.params(), (num, in_dim, out_dim), jnp.float32))
    self.dtype = dtype

  def __call__(self, x_AxI: jax.Array, group_sizes_E: jax.Array) -> jax.Array:
    """Rows of `x` sorted by expert, `group_sizes_E[e]` of them for expert e: (A, out)."""
    return jax.lax.ragged_dot(x_AxI.astype(self.dtype), self.kernel[...].astype(self.dtype),
                              group_sizes_E)

  def batched(self, x_ExCxI: jax.Array) -> jax.Array:
    """Each expert's own rows through its matrix: (E, C, out)."""
    return jnp.einsum("eci,eio->eco", x_ExCxI.astype(self.dtype),
                      self.kernel[...].astype(self.dtype))


class MoE(nnx.Module):
  """Router + experts in place of a block's MLP; returns the output and router statistics."""

  def __init__(self, cfg: ModelConfig, out_std: float, rngs: nnx.Rngs):
    e, d, f, dt = cfg.num_experts, cfg.embed_dim, cfg.mlp_dim, cfg.compute_dtype
    self.cfg = cfg
    self.router = layers.dense(d, e, ("embed", None), bias=False, dtype=dt, rngs=rngs)
    self.up = Experts(e, d, f, ("embed", "mlp"), dtype=dt, std=0.02, rngs=rngs)
    if cfg.gated_mlp:
      self.gate = Experts(e, d, f, ("embed", "mlp"), dtype=dt, std=0.02, rngs=rngs)
    self.down = Experts(e, f, d, ("mlp", "embed"), dtype=dt, std=out_std, rngs=rngs)

  def route(self, x_NxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(fp32 router logits (N, E), the picked experts' weights (N, k), their ids (N, k))."""
    logits_NxE = self.router(x_NxD).astype(jnp.float32)
    weights_NxK, experts_NxK = jax.lax.top_k(jax.nn.softmax(logits_NxE, axis=-1),
                                             self.cfg.experts_per_token)
    if self.cfg.moe_renormalize:
      weights_NxK = weights_NxK / weights_NxK.sum(-1, keepdims=True)
    return logits_NxE, weights_NxK, experts_NxK

  def experts(self, x: jax.Array, project) -> jax.Array:
    """The expert MLP on rows `x`, each projection applied by `project(experts, rows)`."""
    cfg = self.cfg
    h = project(self.up, x)
    if cfg.gated_mlp:
      h = layers.activation(cfg.mlp_act, project(self.gate, x)) * h
    else:
      h = layers.activation(cfg.mlp_act, h)
    return project(self.down, h)

  def dropless(self, x_NxD: jax.Array, experts_NxK: jax.Array) -> jax.Array:
    """Every assignment's expert output (N, k, D), by grouped matmuls over the assignments
    sorted by expert (assignment a is token a // k's (a % k)-th pick)."""
    n, k = experts_NxK.shape
    experts_A = experts_NxK.reshape(-1)
    order_A = jnp.argsort(experts_A, stable=True)
    sizes_E = jnp.bincount(experts_A, length=self.cfg.num_experts).astype(jnp.int32)
    y_AxD = self.experts(x_NxD[order_A // k], lambda m, rows: m(rows, sizes_E))
    return jnp.zeros_like(y_AxD).at[order_A].set(y_AxD).reshape(n, k, -1)

  def with_capacity(self, x_NxD: jax.Array, experts_NxK: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """(every assignment's expert output (N, k, D), 0 where it was dropped; whether each
    assignment was kept (N, k)), each expert taking its first `capacity` assignments in
    (choice, token) order into an (E, capacity) batch."""
    e = self.cfg.num_experts
    n, k = experts_NxK.shape
    capacity = max(1, math.ceil(self.cfg.moe_capacity_factor * n * k / e))
    experts_A = experts_NxK.T.reshape(-1)  # choice-major: every first pick, then the seconds
    order_A = jnp.argsort(experts_A, stable=True)
    sorted_A = experts_A[order_A]
    sizes_E = jnp.bincount(experts_A, length=e)
    rank_A = jnp.arange(n * k) - (jnp.cumsum(sizes_E) - sizes_E)[sorted_A]
    slot_sorted_A = jnp.where(rank_A < capacity, sorted_A * capacity + rank_A, e * capacity)
    slot_NxK = jnp.zeros(n * k, jnp.int32).at[order_A].set(slot_sorted_A).reshape(k, n).T
    tokens_NxK = jnp.broadcast_to(jnp.arange(n)[:, None], (n, k))
    rows_SxD = jnp.zeros((e * capacity, x_NxD.shape[-1]), x_NxD.dtype).at[
        slot_NxK.reshape(-1)].set(x_NxD[tokens_NxK.reshape(-1)], mode="drop")
    y_ExCxD = self.experts(rows_SxD.reshape(e, capacity, -1), lambda m, rows: m.batched(rows))
    y_NxKxD = y_ExCxD.reshape(e * capacity, -1).at[slot_NxK].get(mode="fill", fill_value=0)
    return y_NxKxD, slot_NxK < e * capacity

  def __call__(self, x_BxTxD: jax.Array, segment_ids_BxT: jax.Array | None = None,
               dropless: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The mixture's output (B, T, D) and router statistics over the tokens whose segment id
    is not 0 (padding; all tokens without segment ids). With `moe_capacity_factor` > 0 the
    experts take at most their capacity, unless `dropless` (KV-cache decoding)."""
    b, t, d = x_BxTxD.shape
    x_NxD = x_BxTxD.reshape(b * t, d)
    logits_NxE, weights_NxK, experts_NxK = self.route(x_NxD)
    real_N = (jnp.ones(b * t, bool) if segment_ids_BxT is None
              else segment_ids_BxT.reshape(-1) != 0)
    stats = router_losses(logits_NxE, experts_NxK, real_N)
    if self.cfg.moe_capacity_factor and not dropless:
      y_NxKxD, kept_NxK = self.with_capacity(x_NxD, experts_NxK)
      dropped_N = 1.0 - kept_NxK.astype(jnp.float32).mean(-1)
      stats[DROPPED] = (dropped_N * real_N).sum() / jnp.maximum(real_N.sum(), 1)
    else:
      y_NxKxD = self.dropless(x_NxD, experts_NxK)
    y_NxD = jnp.einsum("nkd,nk->nd", y_NxKxD, weights_NxK.astype(y_NxKxD.dtype))
    return y_NxD.reshape(b, t, d), stats


def router_losses(logits_NxE: jax.Array, experts_NxK: jax.Array,
                  real_N: jax.Array) -> dict[str, jax.Array]:
  """Over the `real_N` tokens: the load-balancing loss E * sum_e f_e P_e (f_e: assignments
  to expert e per token, P_e: its mean router probability; k when routing is uniform, as
  transformers' `load_balancing_loss_func` of one layer) and the router z-loss
  mean(logsumexp(logits)^2)."""
  num_experts = logits_NxE.shape[-1]
  w_N = real_N.astype(jnp.float32)
  count = jnp.maximum(w_N.sum(), 1.0)
  picks_NxE = jax.nn.one_hot(experts_NxK, num_experts, dtype=jnp.float32).sum(1)
  f_E = (picks_NxE * w_N[:, None]).sum(0) / count
  p_E = (jax.nn.softmax(logits_NxE, axis=-1) * w_N[:, None]).sum(0) / count
  z_N = jnp.square(jax.nn.logsumexp(logits_NxE, axis=-1))
  return {BALANCE: num_experts * (f_E * p_E).sum(), ROUTER_Z: (z_N * w_N).sum() / count}


def is_routed(model) -> bool:
  """Whether `model` is a decoder whose MLPs are mixtures of experts."""
  return bool(getattr(getattr(model, "cfg", None), "moe", False))


def with_router_losses(loss: jax.Array, metrics: dict[str, jax.Array],
                       stats: dict[str, jax.Array], cfg: ModelConfig
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`loss` plus router_aux_coef x the balance loss and router_z_coef x the z-loss (layer
  means in `stats`; none for a dense model), with both logged beside the loss."""
  if not stats:
    return loss, metrics
  loss = loss + cfg.router_aux_coef * stats[BALANCE] + cfg.router_z_coef * stats[ROUTER_Z]
  return loss, {**metrics, **stats}
