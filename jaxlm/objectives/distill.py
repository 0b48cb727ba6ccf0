"""Knowledge distillation (Hinton et al. 2015) of a frozen teacher into a student decoder.

Batches are CLM windows; the loss mixes KL(teacher_T || student_T) x T^2 on the teacher's
temperature-softened distribution with the hard-label next-token cross-entropy
(`distill.alpha` weighs the KL term). The teacher is any jaxlm run (`distill.teacher`), held
frozen; it must share the student's tokenizer, which the student takes from it. A
mixture-of-experts student adds its router losses (as `clm`).
"""

from __future__ import annotations

import jax
import ml_collections

from jaxlm.models import moe
from jaxlm.objectives import clm
from jaxlm.objectives.distill_loss import distillation_loss

MODEL_FAMILY = "decoder"
build_batches = clm.build_batches


def frozen_models(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """The teacher run to load and hold frozen."""
  if not cfg.distill.teacher:
    raise ValueError("objective 'distill' needs distill.teacher=<workdir of a trained run>")
  return {"teacher": cfg.distill.teacher}


def make_loss_fn(cfg: ml_collections.ConfigDict):
  """The distillation loss with `distill.temperature` and `distill.alpha` bound."""
  temperature, alpha = cfg.distill.temperature, cfg.distill.alpha

  def loss_fn(model, batch: dict[str, jax.Array], rng: jax.Array | None,
              frozen: dict | None = None):
    """Distillation loss of the student `model` against `frozen["teacher"]`."""
    args = (batch["tokens"], batch["positions"], batch["segment_ids"])
    student_BxLxV, stats = moe.logits_and_router_stats(model, *args, dropout_rng=rng)
    teacher_BxLxV = jax.lax.stop_gradient(frozen["teacher"](*args))
    loss, metrics = distillation_loss(student_BxLxV, teacher_BxLxV, batch["targets"],
                                      batch["loss_mask"], temperature=temperature, alpha=alpha)
    return moe.with_router_losses(model, loss, metrics, stats)

  return loss_fn
