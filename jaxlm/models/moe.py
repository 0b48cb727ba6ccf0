"""Mixture-of-experts MLP (Mixtral, Switch): a router sends each token to `experts_per_token`
of `num_experts` expert MLPs and sums their outputs weighted by its probabilities.

Two ways to run the experts. Dropless (`moe_capacity_factor` 0, and always with a KV cache):
every (token, expert) assignment is computed; the assignments are sorted by expert and each
projection is one grouped matmul over them (`jax.lax.ragged_dot`: a grouped GEMM where the
backend has one, e.g. TPU; JAX's CPU lowering masks a dense matmul per expert instead, E
times the work). With capacity (Switch, GShard): each sequence routes its own tokens, each
expert taking at most ceil(factor x length x k / E) of its assignments, first choices before
second ones and earlier positions first; the rest are dropped (the token keeps its residual
stream and its other experts), and every projection is one batched matmul over
(batch, E, capacity) rows: factor x the work of k dense MLPs on any backend, with the batch
split over the mesh as a dense MLP's; on a mesh with an `expert` axis (expert parallelism)
the rows move to the devices that hold their experts and back, two all-to-alls. A shared
expert (`shared_expert_dim`; Qwen2-MoE, DeepSeekMoE) is a dense MLP every token runs through
beside its routed experts, optionally scaled by a per-token sigmoid gate (Qwen2-MoE). The
router's statistics give the load-balancing loss and z-loss (`router_losses`) that the
decoder objectives add (`with_router_losses`), and the batch's worst overload (MaxVio).

Auxiliary-loss-free balancing (`router_bias`; DeepSeek-V3, Wang et al. 2024): a per-expert
bias b is added to the scores that pick the experts, and the picked experts are weighted by
their unbiased scores. After each step b_e moves by the rate u against the sign of expert
e's overload: b_e += u * sign(mean load - load_e). The update rides on the optimizer: the
objective gains a term of value 0 whose gradient with respect to b_e is e's load minus the
mean (`bias_hook`), and the optimizer gives the bias leaves sign descent at rate u
(`jaxlm.train.optim`) outside the clipping and the gradient norm. So gradient accumulation
and data parallelism, which average gradients, move b by the whole batch's loads, and the
bias is checkpointed, sharded and resumed as any parameter.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers, stacking
from jaxlm.models.config import ModelConfig

# Router statistics a MoE block returns (means over its real tokens): the two losses, and
# with a capacity the share of assignments dropped.
BALANCE, ROUTER_Z, DROPPED = "moe_balance", "router_z", "moe_dropped"
# MaxVio (Wang et al. 2024): the most loaded expert's assignments over the mean, minus 1.
MAX_VIOLATION = "moe_max_violation"
# The router bias's zero-valued gradient carrier: added to the loss, never logged.
BIAS_HOOK = "router_bias_hook"
ROUTER_BIAS = "router_bias"


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

  def batched(self, x_BxExCxI: jax.Array) -> jax.Array:
    """Each expert's own rows through its matrix: (B, E, C, out)."""
    return jnp.einsum("beci,eio->beco", x_BxExCxI.astype(self.dtype),
                      self.kernel[...].astype(self.dtype))


class MoE(nnx.Module):
  """Router + experts in place of a block's MLP; returns the output and router statistics."""

  def __init__(self, cfg: ModelConfig, out_std: float, rngs: nnx.Rngs):
    e, d, f, dt = cfg.num_experts, cfg.embed_dim, cfg.mlp_dim, cfg.compute_dtype
    self.cfg = cfg
    # The router runs in fp32 whatever the compute dtype (ST-MoE's selective precision): its
    # softmax picks the experts, and bf16 rounding would flip near ties.
    self.router = layers.dense(d, e, ("embed", None), bias=False, dtype=jnp.float32, rngs=rngs)
    self.up = Experts(e, d, f, ("embed", "mlp"), dtype=dt, std=0.02, rngs=rngs)
    if cfg.gated_mlp:
      self.gate = Experts(e, d, f, ("embed", "mlp"), dtype=dt, std=0.02, rngs=rngs)
    self.down = Experts(e, f, d, ("mlp", "embed"), dtype=dt, std=out_std, rngs=rngs)
    if cfg.shared_expert_dim:
      self.shared = layers.MLP(d, cfg.shared_expert_dim, act=cfg.mlp_act, gated=cfg.gated_mlp,
                               bias=False, dtype=dt, out_std=out_std, rngs=rngs)
    if cfg.shared_expert_gate:
      self.shared_gate = layers.dense(d, 1, ("embed", None), bias=False, dtype=dt, rngs=rngs)
    if cfg.router_bias:
      self.router_bias = nnx.Param(layers.named(nnx.initializers.zeros_init(), None)(
          rngs.params(), (e,), jnp.float32))

  def route(self, x_NxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(fp32 router logits (N, E), the picked experts' weights (N, k), their ids (N, k)):
    the top k of the scores plus the router bias, weighted by their scores alone."""
    logits_NxE = self.router(x_NxD)  # fp32: the router's own dtype
    scores_NxE = router_scores(logits_NxE, self.cfg.router_scoring)
    picking_NxE = scores_NxE + self.router_bias[...] if self.cfg.router_bias else scores_NxE
    if self.cfg.router_groups > 1:
      picking_NxE = best_groups_only(picking_NxE, self.cfg.router_groups,
                                     self.cfg.router_groups_per_token, self.cfg.router_group_top)
    _, experts_NxK = jax.lax.top_k(jax.lax.stop_gradient(picking_NxE),
                                   self.cfg.experts_per_token)
    weights_NxK = jnp.take_along_axis(scores_NxE, experts_NxK, axis=-1)
    if self.cfg.moe_renormalize:
      weights_NxK = weights_NxK / weights_NxK.sum(-1, keepdims=True)
    return logits_NxE, weights_NxK * self.cfg.router_scale, experts_NxK

  def experts(self, x: jax.Array, project) -> jax.Array:
    """The expert MLP on rows `x`, each projection applied by `project(experts, rows)`."""
    return layers.mlp_apply(x, lambda name, rows: project(getattr(self, name), rows),
                            act=self.cfg.mlp_act, gated=self.cfg.gated_mlp)

  def dropless(self, x_NxD: jax.Array, experts_NxK: jax.Array) -> jax.Array:
    """Every assignment's expert output (N, k, D), by grouped matmuls over the assignments
    sorted by expert (assignment a is token a // k's (a % k)-th pick)."""
    n, k = experts_NxK.shape
    experts_A = experts_NxK.reshape(-1)
    order_A = jnp.argsort(experts_A, stable=True)
    sizes_E = jnp.bincount(experts_A, length=self.cfg.num_experts).astype(jnp.int32)
    y_AxD = self.experts(x_NxD[order_A // k], lambda m, rows: m(rows, sizes_E))
    return jnp.zeros_like(y_AxD).at[order_A].set(y_AxD).reshape(n, k, -1)

  def with_capacity(self, x_BxTxD: jax.Array, experts_BxTxK: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """(every assignment's expert output (B, T, k, D), 0 where it was dropped; whether each
    assignment was kept (B, T, k)). Each sequence routes its own tokens (GShard's groups, so
    the batch stays split over the mesh): each expert takes its first `capacity` of the
    sequence's assignments in (choice, position) order into a (B, E, capacity) batch."""
    e = self.cfg.num_experts
    b, t, k = experts_BxTxK.shape
    capacity = max(1, math.ceil(self.cfg.moe_capacity_factor * t * k / e))
    dropped = e * capacity  # the slot of an assignment past its expert's capacity

    def slots(experts_TxK):
      experts_A = experts_TxK.T.reshape(-1)  # choice-major: every first pick, then the seconds
      order_A = jnp.argsort(experts_A, stable=True)
      sorted_A = experts_A[order_A]
      sizes_E = jnp.bincount(experts_A, length=e)
      rank_A = jnp.arange(t * k) - (jnp.cumsum(sizes_E) - sizes_E)[sorted_A]
      slot_sorted_A = jnp.where(rank_A < capacity, sorted_A * capacity + rank_A, dropped)
      return jnp.zeros(t * k, jnp.int32).at[order_A].set(slot_sorted_A).reshape(k, t).T

    def dispatch(x_TxD, slot_TxK):
      rows_TxKxD = jnp.broadcast_to(x_TxD[:, None], (t, k, x_TxD.shape[-1]))
      return jnp.zeros((dropped, x_TxD.shape[-1]), x_TxD.dtype).at[slot_TxK].set(
          rows_TxKxD, mode="drop")

    slot_BxTxK = jax.vmap(slots)(experts_BxTxK)
    rows_BxExCxD = jax.vmap(dispatch)(x_BxTxD, slot_BxTxK).reshape(b, e, capacity, -1)
    # Built where its sequences are (batch split over every batch axis), then moved to the
    # devices of its experts (split over `expert`, the batch over the rest): the all-to-all
    # of expert parallelism, and back after the experts (nothing moves on a mesh without it).
    rows_BxExCxD = layers.constrain(rows_BxExCxD, "batch", None, None, "act_embed")
    rows_BxExCxD = layers.constrain(rows_BxExCxD, "expert_batch", "act_expert", None, "act_embed")
    y_BxExCxD = self.experts(rows_BxExCxD, lambda m, rows: m.batched(rows))
    y_BxExCxD = layers.constrain(y_BxExCxD, "expert_batch", "act_expert", None, "act_embed")
    y_BxExCxD = layers.constrain(y_BxExCxD, "batch", None, None, "act_embed")
    y_BxSxD = y_BxExCxD.reshape(b, dropped, -1)
    y_BxTxKxD = jax.vmap(lambda y, s: y.at[s].get(mode="fill", fill_value=0))(y_BxSxD, slot_BxTxK)
    return y_BxTxKxD, slot_BxTxK < dropped

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
    stats = router_losses(logits_NxE, experts_NxK, real_N, self.cfg.router_scoring)
    if self.cfg.router_bias:
      stats[BIAS_HOOK] = bias_hook(self.router_bias[...],
                                  expert_loads(experts_NxK, real_N, self.cfg.num_experts))
    if self.cfg.moe_capacity_factor and not dropless:
      y_BxTxKxD, kept_BxTxK = self.with_capacity(x_BxTxD, experts_NxK.reshape(b, t, -1))
      y_NxKxD = y_BxTxKxD.reshape(b * t, *y_BxTxKxD.shape[2:])
      dropped_N = 1.0 - kept_BxTxK.reshape(b * t, -1).astype(jnp.float32).mean(-1)
      stats[DROPPED] = (dropped_N * real_N).sum() / jnp.maximum(real_N.sum(), 1)
    else:
      y_NxKxD = self.dropless(x_NxD, experts_NxK)
    y_NxD = jnp.einsum("nkd,nk->nd", y_NxKxD, weights_NxK.astype(y_NxKxD.dtype))
    y_BxTxD = y_NxD.reshape(b, t, d)
    if self.cfg.shared_expert_dim:
      y_BxTxD = y_BxTxD + self.shared_expert(x_BxTxD)
    return y_BxTxD, stats

  def shared_expert(self, x_BxTxD: jax.Array) -> jax.Array:
    """The shared expert's output, times sigmoid(gate . x) with `shared_expert_gate`."""
    y_BxTxD = self.shared(x_BxTxD)
    if self.cfg.shared_expert_gate:
      y_BxTxD = y_BxTxD * jax.nn.sigmoid(self.shared_gate(x_BxTxD)).astype(y_BxTxD.dtype)
    return y_BxTxD


def router_scores(logits_NxE: jax.Array, scoring: str) -> jax.Array:
  """Each expert's score for each token: the softmax over experts, or (DeepSeek-V3) each
  logit's own sigmoid."""
  return jax.nn.sigmoid(logits_NxE) if scoring == "sigmoid" else jax.nn.softmax(logits_NxE, -1)


def best_groups_only(picking_NxE: jax.Array, groups: int, keep: int, top: int) -> jax.Array:
  """`picking` with every expert outside each token's `keep` best of `groups` equal groups
  (consecutive ids) set to -inf; a group scores the sum of its `top` best (DeepSeek-V3: 2,
  DeepSeek-V2: 1)."""
  n, e = picking_NxE.shape
  picking_NxGxS = picking_NxE.reshape(n, groups, e // groups)
  group_NxG = jax.lax.top_k(picking_NxGxS, top)[0].sum(-1)
  _, best_NxK = jax.lax.top_k(group_NxG, keep)
  kept_NxG = (best_NxK[:, :, None] == jnp.arange(groups)).any(1)
  return jnp.where(kept_NxG[:, :, None], picking_NxGxS, -jnp.inf).reshape(n, e)


def expert_loads(experts_NxK: jax.Array, real_N: jax.Array, num_experts: int) -> jax.Array:
  """f (E,): each expert's assignments per real token (summing to k over the experts)."""
  w_N = real_N.astype(jnp.float32)
  picks_NxE = jax.nn.one_hot(experts_NxK, num_experts, dtype=jnp.float32).sum(1)
  return (picks_NxE * w_N[:, None]).sum(0) / jnp.maximum(w_N.sum(), 1.0)


def bias_hook(bias_E: jax.Array, loads_E: jax.Array) -> jax.Array:
  """0, with gradient `loads_E - mean(loads_E)` with respect to `bias_E`: descending its
  sign raises the bias of every underloaded expert and lowers that of every overloaded one."""
  term = (bias_E * jax.lax.stop_gradient(loads_E - loads_E.mean())).sum()
  return term - jax.lax.stop_gradient(term)


def router_losses(logits_NxE: jax.Array, experts_NxK: jax.Array, real_N: jax.Array,
                  scoring: str = "softmax") -> dict[str, jax.Array]:
  """Over the `real_N` tokens: the load-balancing loss E * sum_e f_e P_e (f_e: assignments
  to expert e per token, P_e: its mean router probability, the scores normalised per token;
  k when routing is uniform, as transformers' `load_balancing_loss_func` of one layer), the
  router z-loss mean(logsumexp(logits)^2) and MaxVio, max_e f_e / mean_e f_e - 1."""
  num_experts = logits_NxE.shape[-1]
  w_N = real_N.astype(jnp.float32)
  count = jnp.maximum(w_N.sum(), 1.0)
  f_E = expert_loads(experts_NxK, real_N, num_experts)
  scores_NxE = router_scores(logits_NxE, scoring)
  probs_NxE = scores_NxE / scores_NxE.sum(-1, keepdims=True)
  p_E = (probs_NxE * w_N[:, None]).sum(0) / count
  z_N = jnp.square(jax.nn.logsumexp(logits_NxE, axis=-1))
  max_violation = f_E.max() / jnp.maximum(f_E.mean(), 1e-9) - 1.0
  return {BALANCE: num_experts * (f_E * p_E).sum(), ROUTER_Z: (z_N * w_N).sum() / count,
          MAX_VIOLATION: max_violation}


def is_router_bias(path) -> bool:
  """Whether a parameter's key path names a mixture's router bias (any layout)."""
  return stacking.path_name(path).endswith(f"mlp/{ROUTER_BIAS}")


def without_router_biases(tree: Any) -> Any:
  """`tree` (parameters or their gradients) with the router biases' leaves zeroed."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if is_router_bias(path) else x, tree)


def is_routed(model) -> bool:
  """Whether `model` is a decoder whose MLPs are mixtures of experts."""
  return bool(getattr(getattr(model, "cfg", None), "moe", False))


def logits_and_router_stats(model, *args, **kwargs) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`model(*args, **kwargs)`'s logits and, for a mixture of experts, the layer means of its
  router statistics ({} for any other model that maps tokens to logits)."""
  if is_routed(model):
    return model(*args, router_stats=True, **kwargs)
  return model(*args, **kwargs), {}


def with_router_losses(model, loss: jax.Array, metrics: dict[str, jax.Array],
                       stats: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`loss` plus `model`'s router_aux_coef x the balance loss and router_z_coef x the z-loss
  (layer means in `stats`; none for a dense model), with both logged beside the loss."""
  if not stats:
    return loss, metrics
  cfg, stats = model.cfg, dict(stats)
  loss = loss + cfg.router_aux_coef * stats[BALANCE] + cfg.router_z_coef * stats[ROUTER_Z]
  loss = loss + stats.pop(BIAS_HOOK, 0.0)  # value 0: carries the router bias's update
  return loss, {**metrics, **stats}
