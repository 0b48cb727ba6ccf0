"""Mixture-of-experts MLP (Mixtral, Switch): a router sends each token to `experts_per_token`
of `num_experts` expert MLPs and sums their outputs weighted by its probabilities.

Dropless: every (token, expert) assignment is computed, none is dropped for capacity. The
assignments are sorted by expert and each projection is one grouped matmul over them
(`jax.lax.ragged_dot`), so the work is that of `experts_per_token` dense MLPs, not
`num_experts`. The router's statistics give the load-balancing loss and z-loss
(`router_losses`) that the language-model objectives add (`with_router_losses`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers
from jaxlm.models.config import ModelConfig

# Router statistics a MoE block returns (means over its real tokens), and their losses.
BALANCE, ROUTER_Z = "moe_balance", "router_z"


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

  def __call__(self, x_BxTxD: jax.Array, segment_ids_BxT: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The mixture's output (B, T, D) and `router_losses` over the tokens whose segment id
    is not 0 (padding; all tokens without segment ids)."""
    cfg = self.cfg
    b, t, d = x_BxTxD.shape
    k = cfg.experts_per_token
    x_NxD = x_BxTxD.reshape(b * t, d)
    logits_NxE, weights_NxK, experts_NxK = self.route(x_NxD)
    # Sort the N * k assignments by expert: assignment a is token a // k's (a % k)-th pick.
    experts_A = experts_NxK.reshape(-1)
    order_A = jnp.argsort(experts_A, stable=True)
    sizes_E = jnp.bincount(experts_A, length=cfg.num_experts).astype(jnp.int32)
    x_AxD = x_NxD[order_A // k]
    h_AxF = self.up(x_AxD, sizes_E)
    if cfg.gated_mlp:
      h_AxF = layers.activation(cfg.mlp_act, self.gate(x_AxD, sizes_E)) * h_AxF
    else:
      h_AxF = layers.activation(cfg.mlp_act, h_AxF)
    y_AxD = self.down(h_AxF, sizes_E)
    y_NxKxD = jnp.zeros_like(y_AxD).at[order_A].set(y_AxD).reshape(b * t, k, d)
    y_NxD = jnp.einsum("nkd,nk->nd", y_NxKxD, weights_NxK.astype(y_NxKxD.dtype))
    real_N = (jnp.ones(b * t, bool) if segment_ids_BxT is None
              else segment_ids_BxT.reshape(-1) != 0)
    return y_NxD.reshape(b, t, d), router_losses(logits_NxE, experts_NxK, real_N)


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
