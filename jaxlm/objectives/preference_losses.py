"""Preference losses: the DPO family (DPO, IPO, conservative DPO, SimPO) and Bradley-Terry.

Inputs are per-sequence log-probs of the chosen and rejected responses (see
`jaxlm.objectives.logprobs`). With h = (pi_c - ref_c) - (pi_r - ref_r):

  sigmoid  DPO (Rafailov et al. 2023):      -log s(beta h)
  cdpo     conservative DPO, smoothing eps:  -(1 - eps) log s(beta h) - eps log s(-beta h)
  ipo      IPO (Azar et al. 2023):           (h - 1 / (2 beta))^2
  simpo    SimPO (Meng et al. 2024):         -log s(beta (avg_c - avg_r) - gamma)

As in TRL, `label_smoothing` applies to every logistic kind ("sigmoid", "cdpo", "simpo"), so
"sigmoid" with eps > 0 is cDPO; with eps = 0 (the default) "sigmoid" and "cdpo" coincide.
IPO ignores it. SimPO is reference-free: its inputs are length-normalised policy log-probs
and the reference arguments are ignored. Metrics follow TRL's names ("rewards/chosen", ...).
All functions are pure and jit-able; `kind` is a static Python string.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PREFERENCE_KINDS = ("sigmoid", "cdpo", "ipo", "simpo")

Metrics = dict[str, jax.Array]


def _logistic_loss(logits_B: jax.Array, label_smoothing: float) -> jax.Array:
  """-(1 - eps) log s(z) - eps log s(-z), elementwise: shape (B,)."""
  return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits_B)
          - label_smoothing * jax.nn.log_sigmoid(-logits_B))


def preference_loss(kind: str, policy_chosen_B: jax.Array, policy_rejected_B: jax.Array,
                    ref_chosen_B: jax.Array | None, ref_rejected_B: jax.Array | None, *,
                    beta: float, label_smoothing: float = 0.0,
                    simpo_gamma: float = 0.0) -> tuple[jax.Array, Metrics]:
  """Mean DPO-family loss of `kind` over the batch, and TRL-style reward metrics.

  Rewards are beta * (policy - reference) log-probs (beta * avg log-prob for "simpo");
  reference log-probs are treated as constants (no gradient flows into them).
  """
  if kind not in PREFERENCE_KINDS:
    raise ValueError(f"unknown preference loss {kind!r}; known: {', '.join(PREFERENCE_KINDS)}")
  pc_B = policy_chosen_B.astype(jnp.float32)
  pr_B = policy_rejected_B.astype(jnp.float32)
  if kind == "simpo":
    chosen_ratio_B, rejected_ratio_B = pc_B, pr_B
  else:
    if ref_chosen_B is None or ref_rejected_B is None:
      raise ValueError(f"preference loss {kind!r} needs reference log-probs")
    rc_B = jax.lax.stop_gradient(ref_chosen_B.astype(jnp.float32))
    rr_B = jax.lax.stop_gradient(ref_rejected_B.astype(jnp.float32))
    chosen_ratio_B, rejected_ratio_B = pc_B - rc_B, pr_B - rr_B
  h_B = chosen_ratio_B - rejected_ratio_B

  if kind == "ipo":
    losses_B = (h_B - 1.0 / (2.0 * beta)) ** 2
  elif kind == "simpo":
    losses_B = _logistic_loss(beta * h_B - simpo_gamma, label_smoothing)
  else:  # sigmoid / cdpo
    losses_B = _logistic_loss(beta * h_B, label_smoothing)
  loss = losses_B.mean()

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
