"""Direct preference optimisation and its variants on preference pairs.

`dpo.loss`: sigmoid (DPO, Rafailov et al. 2023), cdpo (conservative DPO: label smoothing
`dpo.label_smoothing`), ipo (Azar et al. 2023) or simpo (Meng et al. 2024, reference-free,
length-normalised, margin `dpo.simpo_gamma`). The reference model is a frozen jaxlm run
(`dpo.reference`, default `init_from`), evaluated on the fly in the same step.
Metrics as users know them: rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm.objectives import reward
from jaxlm.objectives.logprobs import sequence_logprobs, sequence_mean_logprobs
from jaxlm.objectives.preference_data import side
from jaxlm.objectives.preference_losses import preference_loss

MODEL_FAMILY = "decoder"
INPUT = "records"
load_records, record_texts, build_batches = (reward.load_records, reward.record_texts,
                                             reward.build_batches)


def frozen_models(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """The reference run (none for the reference-free SimPO)."""
  if cfg.dpo.loss == "simpo":
    return {}
  reference = cfg.dpo.reference or cfg.init_from
  if not reference:
    raise ValueError("DPO needs a reference: set dpo.reference or init_from to a trained run")
  return {"reference": reference}


def pair_logprobs(model, batch: dict, rng: jax.Array | None, *,
                  mean: bool = False) -> tuple[jax.Array, jax.Array]:
  """Summed (or length-normalised) response log-probs of the chosen and rejected sides."""
  chosen, rejected = side(batch, "chosen"), side(batch, "rejected")
  both = {k: jnp.concatenate([chosen[k], rejected[k]]) for k in chosen}
  logits = model(both["tokens"], both["positions"], both["segment_ids"], dropout_rng=rng)
  reduce = sequence_mean_logprobs if mean else sequence_logprobs
  return jnp.split(reduce(logits, both["targets"], both["loss_mask"]), 2)


def make_loss_fn(cfg: ml_collections.ConfigDict):
  """The configured preference loss, with the reference model from `frozen`."""
  d = cfg.dpo

  def loss_fn(model, batch: dict, rng, frozen: dict | None = None):
    simpo = d.loss == "simpo"
    policy_c, policy_r = pair_logprobs(model, batch, rng, mean=simpo)
    ref_c = ref_r = None
    if not simpo:
      ref_c, ref_r = jax.lax.stop_gradient(pair_logprobs(frozen["reference"], batch, None))
    return preference_loss(d.loss, policy_c, policy_r, ref_c, ref_r, beta=d.beta,
                           label_smoothing=d.label_smoothing, simpo_gamma=d.simpo_gamma)

  return loss_fn
