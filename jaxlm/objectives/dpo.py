"""Direct preference optimisation and its variants on preference pairs.

`dpo.loss`: sigmoid (DPO, Rafailov et al. 2023), cdpo (conservative DPO: label smoothing
`dpo.label_smoothing`), robust (Chowdhury et al. 2024: label noise `dpo.label_smoothing`),
dpop (DPO-Positive, Pal et al. 2024: `dpo.dpop_lambda` x how far the chosen reply's log-prob
falls below the reference's is taken off the margin), ipo (Azar et al. 2023), hinge (SLiC-HF,
Zhao et al. 2023), or the reference-free, length-normalised simpo (Meng et al. 2024, margin
`dpo.simpo_gamma`) and orpo (Hong et al. 2024: the chosen side's SFT loss plus `dpo.beta` x an
odds-ratio loss; no reference).
`dpo.rpo_alpha` > 0 adds that weight x the chosen side's per-token NLL to the others (RPO,
Pang et al. 2024). An NLL is each chosen response's mean over its tokens, averaged over the
batch, as the papers write it (TRL averages over all the batch's chosen tokens instead, which
weighs long responses more). The formulas: `jaxlm.objectives.preference_losses`. A
mixture-of-experts policy adds its router losses over both sides' tokens (as `clm`).

The reference is a jaxlm run (`dpo.reference`, default `init_from`), cached in a pre-pass
(`dpo.reference_mode=cached`, default) or evaluated in the step (`frozen`): see
`jaxlm.objectives.reference`. Metrics as users know them:
rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (and nll_loss,
log_odds_ratio where they apply).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm.models import moe
from jaxlm.objectives import reference, reward
from jaxlm.objectives.preference_data import SIDES, side
from jaxlm.objectives.preference_losses import (REFERENCE_FREE, check_settings,
                                                 preference_loss)

MODEL_FAMILY = "decoder"
INPUT = "records"
load_records, record_texts = reward.load_records, reward.record_texts
# DPO reads each side's targets, so a side may fill the whole row of seq_len + 1 tokens.
build_batches = functools.partial(reward.build_batches, in_inputs=False)


def reference_run(cfg: ml_collections.ConfigDict) -> str | None:
  """The reference run's workdir (None for the reference-free SimPO and ORPO)."""
  return None if cfg.dpo.loss in REFERENCE_FREE else reference.reference_run(cfg, "dpo")


def frozen_models(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """The reference held frozen in the step (`dpo.reference_mode=frozen`)."""
  return reference.frozen_models(cfg, "dpo", reference_run(cfg))


def precompute(cfg: ml_collections.ConfigDict) -> dict:
  """Reference log-probs computed once before training (`dpo.reference_mode=cached`)."""
  return reference.precompute(cfg, "dpo", reference_run(cfg), SIDES)


def chosen_nll(batch: dict, chosen_logp_B: jax.Array, *, mean: bool) -> jax.Array:
  """Per-token NLL of each chosen response, from its summed (or already mean) log-prob."""
  if mean:
    return -chosen_logp_B
  count_B = side(batch, "chosen")["loss_mask"].astype(jnp.float32).sum(-1)
  return -chosen_logp_B / jnp.maximum(count_B, 1.0)


def make_loss_fn(cfg: ml_collections.ConfigDict):
  """The configured preference loss, with the reference model from `frozen`."""
  d = cfg.dpo

  check_settings(d.loss, d.label_smoothing, d.rpo_alpha, d.dpop_lambda)

  def loss_fn(model, batch: dict, rng, frozen: dict | None = None):
    reference_free = d.loss in REFERENCE_FREE
    (policy_c, policy_r), stats = reference.side_logprobs_and_router_stats(
        model, batch, rng, SIDES, mean=reference_free)
    ref_c = ref_r = None
    if not reference_free:
      ref_c, ref_r = reference.reference_logprobs(batch, frozen, SIDES)
    nll_B = chosen_nll(batch, policy_c, mean=reference_free) if d.rpo_alpha else None
    loss, metrics = preference_loss(d.loss, policy_c, policy_r, ref_c, ref_r, beta=d.beta,
                                    label_smoothing=d.label_smoothing,
                                    simpo_gamma=d.simpo_gamma, dpop_lambda=d.dpop_lambda,
                                    chosen_nll_B=nll_B, nll_weight=d.rpo_alpha)
    return moe.with_router_losses(model, loss, metrics, stats)

  return loss_fn
