"""Advantages from rewards: GAE for PPO, group-normalised scores for GRPO, masked whitening.

Token arrays are (B, N) over response slots; `mask_BxN` is 1 on real response tokens (a
prefix of each row: the response up to and including EOS) and 0 on the padding after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.objectives.logprobs import masked_mean


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Population variance of `x` over the masked positions."""
  return masked_mean(jnp.square(x - masked_mean(x, mask)), mask)


def whiten(x: jax.Array, mask: jax.Array, *, shift_mean: bool = True) -> jax.Array:
  """(x - mean) / std over the masked positions (mean kept with `shift_mean=False`); 0 off-mask."""
  mean = masked_mean(x, mask)
  out = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + 1e-8)
  if not shift_mean:
    out = out + mean
  return jnp.where(mask.astype(bool), out, 0.0)


def gae(rewards_BxN: jax.Array, values_BxN: jax.Array, mask_BxN: jax.Array, *, gamma: float,
        lam: float) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation (Schulman et al. 2016): (advantages, returns), (B, N).

  The episode ends after the last masked token (the value beyond it is 0);
  returns = advantages + values. Both are 0 off the mask.
  """
  mask = mask_BxN.astype(jnp.float32)
  values = values_BxN * mask
  next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
  next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
  deltas = rewards_BxN * mask + gamma * next_values - values

  def back(carry_B, xs):
    delta_B, cont_B = xs
    adv_B = delta_B + gamma * lam * cont_B * carry_B
    return adv_B, adv_B

  _, adv_NxB = jax.lax.scan(back, jnp.zeros(rewards_BxN.shape[0], jnp.float32),
                            (deltas.T, next_mask.T), reverse=True)
  advantages = adv_NxB.T * mask
  return advantages, (advantages + values) * mask


GROUP_SCALES = ("group", "batch", "none")
GROUP_BASELINES = ("mean", "leave_one_out")


def group_advantages(scores_B: jax.Array, group_size: int, eps: float = 1e-6,
                     scale: str = "group", baseline: str = "mean",
                     std_ddof: int = 0) -> jax.Array:
  """GRPO advantages: each score minus a baseline from its group of `group_size` consecutive
  rows (samples of one prompt), divided by a standard deviation per `scale`: "group" (the
  group's, as GRPO; a group whose scores are all equal gets 0), "batch" (all scores', one for
  every group) or "none" (not divided: Dr. GRPO, Liu et al. 2025). The baseline is the
  group's mean ("mean", GRPO) or the mean of the other samples' scores ("leave_one_out":
  RLOO, Kool et al. 2019, Ahmadian et al. 2024, an unbiased baseline; G / (G - 1) times the
  mean-centred score). `std_ddof=1` divides by the sample standard deviation (as TRL's
  torch.std does) instead of the population one (0)."""
  if scores_B.shape[0] % group_size:
    raise ValueError(f"{scores_B.shape[0]} scores do not split into groups of {group_size}")
  if scale not in GROUP_SCALES:
    raise ValueError(f"scale must be one of {GROUP_SCALES}, got {scale!r}")
  if baseline not in GROUP_BASELINES:
    raise ValueError(f"baseline must be one of {GROUP_BASELINES}, got {baseline!r}")
  if std_ddof not in (0, 1):
    raise ValueError(f"std_ddof must be 0 (population std) or 1 (sample std), got {std_ddof}")
  s_GxS = scores_B.reshape(-1, group_size).astype(jnp.float32)
  centred_GxS = s_GxS - s_GxS.mean(-1, keepdims=True)
  if baseline == "leave_one_out":
    centred_GxS = centred_GxS * (group_size / (group_size - 1))
  if scale == "group":
    centred_GxS = centred_GxS / (s_GxS.std(-1, keepdims=True, ddof=std_ddof) + eps)
  elif scale == "batch":
    centred_GxS = centred_GxS / (s_GxS.std(ddof=std_ddof) + eps)
  return centred_GxS.reshape(-1)


def alike_groups(scores_B: np.ndarray, group_size: int) -> np.ndarray:
  """(G,) bool: whether every score of each group of `group_size` consecutive rows is equal."""
  return np.ptp(np.asarray(scores_B).reshape(-1, group_size), axis=1) == 0


def informative_groups(scores_B: np.ndarray, group_size: int, keep: int) -> np.ndarray:
  """Row indices of `keep` groups of `group_size` consecutive rows, groups whose scores differ
  first (DAPO's dynamic sampling: a group that scored alike has zero advantages), then as many
  alike groups as needed (the first sampled); the kept groups stay in sampled order."""
  alike_G = alike_groups(scores_B, group_size)
  if keep > alike_G.size:
    raise ValueError(f"cannot keep {keep} groups of {alike_G.size}")
  order = np.concatenate([np.flatnonzero(~alike_G), np.flatnonzero(alike_G)])[:keep]
  return (np.sort(order)[:, None] * group_size + np.arange(group_size)).reshape(-1)
