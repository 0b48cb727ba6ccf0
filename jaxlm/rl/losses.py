"""The PPO and GRPO objectives on a minibatch of scored rollouts.

A minibatch holds the full sequences (`tokens`, `positions`, `segment_ids`, prompt left-padded
to a fixed width P, then N response slots) and per-response-token columns (B, N): `mask`,
`old_logp` (the sampling policy's log-probs), `advantages`, and for PPO `old_values` and
`returns`, for GRPO `ref_logp`. Every loss is a pure function for `jaxlm.train.step`; a
mixture-of-experts policy adds its router losses over the rows (as `clm`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm.models import moe
from jaxlm.objectives.logprobs import masked_mean
from jaxlm.rl.kl import kl_estimate
from jaxlm.rl.models import response_outputs


AGGREGATIONS = ("sequence", "token", "constant")


def clipped_policy_terms(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                         clip: float, clip_high: float = 0.0
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per token: PPO's clipped surrogate max(-A r, -A clip(r, 1-e, 1+e_high)) with
  r = exp(logp - old_logp), whether the clipped term won, and the approx-KL (r - 1) - log r.
  `clip_high` > 0 raises the upper bound alone (DAPO's clip-higher); 0 means `clip`."""
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + (clip_high or clip))
  return jnp.maximum(unclipped, clipped), clipped > unclipped, (ratio - 1.0) - log_ratio


def aggregate(x_BxN: jax.Array, mask_BxN: jax.Array, how: str) -> jax.Array:
  """One number from per-token terms: "sequence" averages each response's tokens, then the
  responses (GRPO); "token" averages all tokens of the batch (DAPO); "constant" sums them and
  divides by B x N, the same for every batch (Dr. GRPO), so no response length reweights."""
  if how == "sequence":
    return masked_mean(x_BxN, mask_BxN, axis=1).mean()
  if how == "token":
    return masked_mean(x_BxN, mask_BxN)
  if how == "constant":
    return (x_BxN * mask_BxN.astype(x_BxN.dtype)).sum() / x_BxN.size
  raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")


def clipped_policy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                        mask: jax.Array, clip: float, clip_high: float = 0.0
                        ) -> tuple[jax.Array, dict]:
  """`clipped_policy_terms` as a masked token mean, with metrics clip_frac and approx_kl."""
  loss, was_clipped, approx_kl = clipped_policy_terms(logp, old_logp, advantages, clip,
                                                      clip_high)
  return masked_mean(loss, mask), {
      "clip_frac": masked_mean(was_clipped.astype(jnp.float32), mask),
      "approx_kl": masked_mean(approx_kl, mask)}


def clipped_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
                       mask: jax.Array, clip: float) -> tuple[jax.Array, dict]:
  """0.5 max((v - R)^2, (v_clip - R)^2) with v_clip = v_old + clip(v - v_old, -c, c),
  as a masked token mean; metric the fraction of tokens where the clipped term wins."""
  v_clipped = old_values + jnp.clip(values - old_values, -clip, clip)
  plain, clipped = jnp.square(values - returns), jnp.square(v_clipped - returns)
  return 0.5 * masked_mean(jnp.maximum(plain, clipped), mask), {
      "value_clip_frac": masked_mean((clipped > plain).astype(jnp.float32), mask)}


def entropy(logits_BxNxV: jax.Array) -> jax.Array:
  """Entropy of each position's distribution: (B, N)."""
  logp = jax.nn.log_softmax(logits_BxNxV, axis=-1)
  return -(jnp.exp(logp) * logp).sum(-1)


def make_ppo_loss(rl: ml_collections.ConfigDict) -> Callable:
  """PPO: clipped policy loss + vf_coef x clipped value loss - ent_coef x entropy."""

  def loss_fn(model, batch: dict, rng, frozen: dict | None = None):
    logits, logp, values, stats = response_outputs(model, batch, rl.temperature,
                                                   with_values=True)
    mask = batch["mask"]
    pg, m_pg = clipped_policy_loss(logp, batch["old_logp"], batch["advantages"], mask,
                                   rl.clip_ratio, rl.clip_ratio_high)
    vf, m_vf = clipped_value_loss(values, batch["old_values"], batch["returns"], mask,
                                  rl.clip_value)
    ent = masked_mean(entropy(logits), mask)
    loss = pg + rl.vf_coef * vf - rl.ent_coef * ent
    return moe.with_router_losses(model, loss, {
        "loss": loss, "policy_loss": pg, "value_loss": vf, "entropy": ent, **m_pg, **m_vf},
        stats)

  return loss_fn


def make_grpo_loss(rl: ml_collections.ConfigDict) -> Callable:
  """GRPO (Shao et al. 2024): clipped policy loss + kl_coef x k3 KL to the reference, both
  aggregated over tokens by `rl.loss_agg` (GRPO's per-response mean by default)."""

  def loss_fn(model, batch: dict, rng, frozen: dict | None = None):
    logits, logp, _, stats = response_outputs(model, batch, rl.temperature, with_values=False)
    mask = batch["mask"]
    per_token, was_clipped, approx_kl = clipped_policy_terms(
        logp, batch["old_logp"], batch["advantages"], rl.clip_ratio, rl.clip_ratio_high)
    pg = aggregate(per_token, mask, rl.loss_agg)
    # Padding slots hold ref_logp 0: k3's exp(ref - logp) there could overflow, and a masked
    # inf still gives NaN (inf x 0, and in the backward pass), so they take the reference's value.
    logp_on_mask = jnp.where(mask > 0, logp, batch["ref_logp"])
    kl = aggregate(kl_estimate(logp_on_mask, batch["ref_logp"], "k3"), mask, rl.loss_agg)
    ent = masked_mean(entropy(logits), mask)
    loss = pg + batch["kl_coef"].mean() * kl - rl.ent_coef * ent
    return moe.with_router_losses(model, loss, {
        "loss": loss, "policy_loss": pg, "kl_ref_k3": kl, "entropy": ent,
        "clip_frac": masked_mean(was_clipped.astype(jnp.float32), mask),
        "approx_kl": masked_mean(approx_kl, mask)}, stats)

  return loss_fn
