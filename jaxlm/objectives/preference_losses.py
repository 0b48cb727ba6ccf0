"""Preference losses: the DPO family (DPO, cDPO, robust DPO, DPOP, IPO, hinge, SimPO, ORPO), KTO
(`kto_loss`, unpaired replies) and Bradley-Terry.

Inputs are per-sequence log-probs of the chosen and rejected responses (see
`jaxlm.objectives.logprobs`). With h = (pi_c - ref_c) - (pi_r - ref_r):

  sigmoid  DPO (Rafailov et al. 2023):      -log s(beta h)
  cdpo     conservative DPO, smoothing eps:  -(1 - eps) log s(beta h) - eps log s(-beta h)
  robust   robust DPO (Chowdhury et al. 2024, label noise eps):
                                   (-(1 - eps) log s(beta h) + eps log s(-beta h)) / (1 - 2 eps)
  dpop     DPO-Positive (Pal et al. 2024):   -log s(beta (h - lambda max(0, ref_c - pi_c)))
  ipo      IPO (Azar et al. 2023):           (h - 1 / (2 beta))^2
  hinge    SLiC-HF (Zhao et al. 2023):       max(0, 1 - beta h)
  simpo    SimPO (Meng et al. 2024):         -log s(beta (avg_c - avg_r) - gamma)
  orpo     ORPO (Hong et al. 2024):          -avg_c - beta log s(log odds(avg_c) - log odds(avg_r))

where avg is a length-normalised policy log-prob and log odds(a) = a - log(1 - e^a).
As in TRL, `label_smoothing` applies to every logistic kind ("sigmoid", "cdpo", "simpo"), so
"sigmoid" with eps > 0 is cDPO; with eps = 0 (the default) "sigmoid" and "cdpo" coincide.
IPO, hinge and ORPO ignore it. SimPO and ORPO are reference-free: their inputs are
length-normalised policy log-probs and the reference arguments are ignored; ORPO's first term
is the chosen response's negative log-likelihood per token (its SFT loss). Any kind may add
`nll_weight` x that NLL, given per row as `chosen_nll_B` (RPO, Pang et al. 2024: DPO + NLL).
Metrics follow TRL's names ("rewards/chosen", ..., "nll_loss", "log_odds_ratio").
All functions are pure and jit-able; `kind` is a static Python string.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.objectives.logprobs import masked_mean

PREFERENCE_KINDS = ("sigmoid", "cdpo", "robust", "dpop", "ipo", "hinge", "simpo", "orpo")
# Kinds scored by length-normalised policy log-probs alone, with no reference model.
REFERENCE_FREE = ("simpo", "orpo")

Metrics = dict[str, jax.Array]


def _logistic_loss(logits_B: jax.Array, label_smoothing: float) -> jax.Array:
  """-(1 - eps) log s(z) - eps log s(-z), elementwise: shape (B,)."""
  return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits_B)
          - label_smoothing * jax.nn.log_sigmoid(-logits_B))


def _log_odds(mean_logp_B: jax.Array) -> jax.Array:
  """log(p / (1 - p)) of p = exp(mean_logp), stable near 0 and 1 (log1mexp as in Maechler
  2012); a mean log-prob of exactly 0 (an empty row) is kept just below it, not at -inf."""
  a_B = jnp.minimum(mean_logp_B, -1e-7)
  log1mexp_B = jnp.where(a_B > -jnp.log(2.0), jnp.log(-jnp.expm1(a_B)),
                         jnp.log1p(-jnp.exp(a_B)))
  return a_B - log1mexp_B


def check_settings(kind: str, label_smoothing: float = 0.0, nll_weight: float = 0.0,
                   dpop_lambda: float = 0.0) -> None:
  """Raises ValueError, naming the setting, for a combination no loss here is defined for."""
  if kind not in PREFERENCE_KINDS:
    raise ValueError(f"unknown preference loss {kind!r}; known: {', '.join(PREFERENCE_KINDS)}")
  if kind == "robust" and not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"robust DPO needs a label noise rate in [0, 0.5), got {label_smoothing}")
  if nll_weight < 0 or dpop_lambda < 0:
    raise ValueError(f"the NLL weight and DPOP's lambda must be >= 0, got {nll_weight} and "
                     f"{dpop_lambda}")
  if nll_weight and kind == "orpo":
    raise ValueError("ORPO already weighs the chosen responses' NLL by 1: no NLL weight")


def preference_loss(kind: str, policy_chosen_B: jax.Array, policy_rejected_B: jax.Array,
                    ref_chosen_B: jax.Array | None, ref_rejected_B: jax.Array | None, *,
                    beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.0,
                    dpop_lambda: float = 0.0, chosen_nll_B: jax.Array | None = None,
                    nll_weight: float = 0.0) -> tuple[jax.Array, Metrics]:
  """Mean DPO-family loss of `kind` over the batch, and TRL-style reward metrics.

  Rewards are beta * (policy - reference) log-probs (beta * avg log-prob for the
  reference-free kinds); reference log-probs are treated as constants (no gradient flows
  into them). `chosen_nll_B`, the chosen responses' per-token NLL, is needed when
  `nll_weight` > 0 (ORPO computes it from its own inputs and takes no `nll_weight`).
  """
  check_settings(kind, label_smoothing, nll_weight, dpop_lambda)
  if nll_weight and chosen_nll_B is None:
    raise ValueError("an NLL term (nll_weight > 0) needs the chosen responses' NLL")
  pc_B = policy_chosen_B.astype(jnp.float32)
  pr_B = policy_rejected_B.astype(jnp.float32)
  if kind in REFERENCE_FREE:
    chosen_ratio_B, rejected_ratio_B = pc_B, pr_B
  else:
    if ref_chosen_B is None or ref_rejected_B is None:
      raise ValueError(f"preference loss {kind!r} needs reference log-probs")
    rc_B = jax.lax.stop_gradient(ref_chosen_B.astype(jnp.float32))
    rr_B = jax.lax.stop_gradient(ref_rejected_B.astype(jnp.float32))
    chosen_ratio_B, rejected_ratio_B = pc_B - rc_B, pr_B - rr_B
  h_B = chosen_ratio_B - rejected_ratio_B

  extra: Metrics = {}
  if kind == "orpo":
    chosen_nll_B = -pc_B
    log_odds_ratio_B = _log_odds(pc_B) - _log_odds(pr_B)
    losses_B = -beta * jax.nn.log_sigmoid(log_odds_ratio_B)
    nll_weight = 1.0
    extra["log_odds_ratio"] = jax.lax.stop_gradient(log_odds_ratio_B).mean()
  elif kind == "ipo":
    losses_B = (h_B - 1.0 / (2.0 * beta)) ** 2
  elif kind == "hinge":
    losses_B = jax.nn.relu(1.0 - beta * h_B)
  elif kind == "dpop":  # penalised once the chosen reply falls below the reference's
    fall_B = jax.nn.relu(-chosen_ratio_B)
    losses_B = -jax.nn.log_sigmoid(beta * (h_B - dpop_lambda * fall_B))
    extra["chosen_fall"] = jax.lax.stop_gradient(fall_B).mean()
  elif kind == "robust":
    eps = label_smoothing
    losses_B = (-(1.0 - eps) * jax.nn.log_sigmoid(beta * h_B)
                + eps * jax.nn.log_sigmoid(-beta * h_B)) / (1.0 - 2.0 * eps)
  elif kind == "simpo":
    losses_B = _logistic_loss(beta * h_B - simpo_gamma, label_smoothing)
  else:  # sigmoid / cdpo
    losses_B = _logistic_loss(beta * h_B, label_smoothing)
  loss = losses_B.mean()
  if nll_weight:
    nll = chosen_nll_B.astype(jnp.float32).mean()
    loss = loss + nll_weight * nll
    extra["nll_loss"] = jax.lax.stop_gradient(nll)

  chosen_rewards_B = jax.lax.stop_gradient(beta * chosen_ratio_B)
  rejected_rewards_B = jax.lax.stop_gradient(beta * rejected_ratio_B)
  metrics = {
      "loss": loss,
      "rewards/chosen": chosen_rewards_B.mean(),
      "rewards/rejected": rejected_rewards_B.mean(),
      "rewards/margins": (chosen_rewards_B - rejected_rewards_B).mean(),
      "rewards/accuracies": (chosen_rewards_B > rejected_rewards_B).astype(jnp.float32).mean(),
      "logps/chosen": jax.lax.stop_gradient(pc_B).mean(),
      "logps/rejected": jax.lax.stop_gradient(pr_B).mean(),
      **extra,
  }
  return loss, metrics


def bradley_terry_loss(score_chosen_B: jax.Array, score_rejected_B: jax.Array,
                       margin_B: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
  """Reward-model loss -log s(s_c - s_r - margin), batch mean; metrics accuracy and margin.

  `margin_B` (optional, as in Llama 2's reward model) asks for a larger score gap on pairs
  with a clearer preference; "margin" in the metrics is the mean raw gap s_c - s_r.
  """
  diff_B = score_chosen_B.astype(jnp.float32) - score_rejected_B.astype(jnp.float32)
  logits_B = diff_B if margin_B is None else diff_B - margin_B.astype(jnp.float32)
  loss = -jax.nn.log_sigmoid(logits_B).mean()
  return loss, {"loss": loss,
                "accuracy": (diff_B > 0).astype(jnp.float32).mean(),
                "margin": jax.lax.stop_gradient(diff_B).mean()}


def kto_loss(policy_B: jax.Array, ref_B: jax.Array, policy_kl_B: jax.Array,
             ref_kl_B: jax.Array, desirable_B: jax.Array, *, beta: float,
             desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[jax.Array, Metrics]:
  """KTO (Ethayarajh et al. 2024) on unpaired replies, batch mean, and TRL-style metrics.

  With r = policy - reference log-prob of a reply and z0 = max(0, mean over the batch of the
  same log-ratio on mismatched (prompt, reply) rows), a constant: a desirable reply costs
  w_D (1 - s(beta (r - z0))), an undesirable one w_U (1 - s(beta (z0 - r))). "kl" is z0;
  "rewards/chosen" / "rewards/rejected" average beta r over the desirable / undesirable rows
  of the batch: NaN when it has none, so that the logged mean over steps leaves that batch out
  rather than counting a 0 (common with unbalanced labels).
  """
  r_B = policy_B.astype(jnp.float32) - jax.lax.stop_gradient(ref_B.astype(jnp.float32))
  kl_B = policy_kl_B.astype(jnp.float32) - ref_kl_B.astype(jnp.float32)
  z0 = jax.lax.stop_gradient(jnp.maximum(kl_B.mean(), 0.0))
  good_B = desirable_B.astype(bool)
  losses_B = jnp.where(good_B, desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r_B - z0))),
                       undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - r_B))))
  loss = losses_B.mean()
  rewards_B = jax.lax.stop_gradient(beta * r_B)
  label_mean = lambda x_B, rows_B: jnp.where(rows_B.any(), masked_mean(x_B, rows_B), jnp.nan)
  chosen, rejected = label_mean(rewards_B, good_B), label_mean(rewards_B, ~good_B)
  logp_B = jax.lax.stop_gradient(policy_B.astype(jnp.float32))
  return loss, {"loss": loss, "kl": z0, "rewards/chosen": chosen, "rewards/rejected": rejected,
                "rewards/margins": chosen - rejected,
                "logps/chosen": label_mean(logp_B, good_B),
                "logps/rejected": label_mean(logp_B, ~good_B),
                "desirable_fraction": good_B.astype(jnp.float32).mean()}
