"""Direct preference optimisation and its variants on preference pairs.

`dpo.loss`: sigmoid (DPO, Rafailov et al. 2023), cdpo (conservative DPO: label smoothing
`dpo.label_smoothing`), robust (Chowdhury et al. 2024: label noise `dpo.label_smoothing`),
ipo (Azar et al. 2023), hinge (SLiC-HF, Zhao et al. 2023), or the reference-free,
length-normalised simpo (Meng et al. 2024, margin `dpo.simpo_gamma`) and orpo (Hong et al.
2024: the chosen side's SFT loss plus `dpo.beta` x an odds-ratio loss; no reference).
`dpo.rpo_alpha` > 0 adds that weight x the chosen side's per-token NLL to the others (RPO,
Pang et al. 2024). An NLL is each chosen response's mean over its tokens, averaged over the
batch, as the papers write it (TRL averages over all the batch's chosen tokens instead, which
weighs long responses more). The formulas: `jaxlm.objectives.preference_losses`.

The reference is a jaxlm run (`dpo.reference`, default `init_from`).
`dpo.reference_mode=cached` (default) computes its log-probs once in a pre-pass, cached on
disk per example (`jaxlm.train.precompute`), so it never sits in memory during training;
`frozen` evaluates it on the fly in the same step. Metrics as users know them:
rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (and nll_loss,
log_odds_ratio where they apply).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm.objectives import reward
from jaxlm.objectives.logprobs import sequence_logprobs, sequence_mean_logprobs
from jaxlm.objectives.preference_data import side
from jaxlm.objectives.preference_losses import (REFERENCE_FREE, check_settings,
                                                 preference_loss)

MODEL_FAMILY = "decoder"
INPUT = "records"
load_records, record_texts = reward.load_records, reward.record_texts
# DPO reads each side's targets, so a side may fill the whole row of seq_len + 1 tokens.
build_batches = functools.partial(reward.build_batches, in_inputs=False)


def reference_run(cfg: ml_collections.ConfigDict) -> str | None:
  """The reference run's workdir (None for the reference-free SimPO and ORPO)."""
  if cfg.dpo.loss in REFERENCE_FREE:
    return None
  if cfg.dpo.reference_mode not in ("cached", "frozen"):
    raise ValueError(f"dpo.reference_mode must be cached or frozen, got {cfg.dpo.reference_mode!r}")
  reference = cfg.dpo.reference or cfg.init_from
  if not reference:
    raise ValueError("DPO needs a reference: set dpo.reference or init_from to a trained run")
  return reference


def frozen_models(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """The reference held frozen in the step (`dpo.reference_mode=frozen`)."""
  reference = reference_run(cfg)
  return {"reference": reference} if reference and cfg.dpo.reference_mode == "frozen" else {}


def reference_columns(model, rows: dict) -> dict:
  """The reference log-probs of a chunk of pair rows (the cached pre-pass)."""
  chosen, rejected = pair_logprobs(model, rows, None)
  return {"chosen_ref": chosen, "rejected_ref": rejected}


def precompute(cfg: ml_collections.ConfigDict) -> dict:
  """Reference log-probs computed once before training (`dpo.reference_mode=cached`)."""
  reference = reference_run(cfg)
  if reference and cfg.dpo.reference_mode == "cached":
    return {"reference": (reference, reference_columns)}
  return {}


def pair_logprobs(model, batch: dict, rng: jax.Array | None, *,
                  mean: bool = False) -> tuple[jax.Array, jax.Array]:
  """Summed (or length-normalised) response log-probs of the chosen and rejected sides."""
  chosen, rejected = side(batch, "chosen"), side(batch, "rejected")
  both = {k: jnp.concatenate([chosen[k], rejected[k]]) for k in chosen}
  logits = model(both["tokens"], both["positions"], both["segment_ids"], dropout_rng=rng)
  reduce = sequence_mean_logprobs if mean else sequence_logprobs
  return jnp.split(reduce(logits, both["targets"], both["loss_mask"]), 2)


def chosen_nll(batch: dict, chosen_logp_B: jax.Array, *, mean: bool) -> jax.Array:
  """Per-token NLL of each chosen response, from its summed (or already mean) log-prob."""
  if mean:
    return -chosen_logp_B
  count_B = side(batch, "chosen")["loss_mask"].astype(jnp.float32).sum(-1)
  return -chosen_logp_B / jnp.maximum(count_B, 1.0)


def make_loss_fn(cfg: ml_collections.ConfigDict):
  """The configured preference loss, with the reference model from `frozen`."""
  d = cfg.dpo

  check_settings(d.loss, d.label_smoothing, d.rpo_alpha)

  def loss_fn(model, batch: dict, rng, frozen: dict | None = None):
    reference_free = d.loss in REFERENCE_FREE
    policy_c, policy_r = pair_logprobs(model, batch, rng, mean=reference_free)
    ref_c = ref_r = None
    if "chosen_ref" in batch:  # cached by the pre-pass
      ref_c, ref_r = batch["chosen_ref"], batch["rejected_ref"]
    elif not reference_free:
      ref_c, ref_r = jax.lax.stop_gradient(pair_logprobs(frozen["reference"], batch, None))
    nll_B = chosen_nll(batch, policy_c, mean=reference_free) if d.rpo_alpha else None
    return preference_loss(d.loss, policy_c, policy_r, ref_c, ref_r, beta=d.beta,
                           label_smoothing=d.label_smoothing, simpo_gamma=d.simpo_gamma,
                           chosen_nll_B=nll_B, nll_weight=d.rpo_alpha)

  return loss_fn
