"""Knowledge distillation loss (Hinton et al. 2015): soft teacher targets plus hard labels.

  loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - alpha) * CE(student, targets)            (CE at temperature 1)

Both terms are averaged over the masked positions of `mask_BxT` only. The T^2 factor keeps
the soft-target gradients on the same scale as the hard-label ones when T changes. The
teacher is a constant: no gradient flows into its logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.objectives.common import masked_token_loss


def token_kl(student_logits_BxTxV: jax.Array, teacher_logits_BxTxV: jax.Array,
             temperature: float) -> jax.Array:
  """KL(teacher_T || student_T) at every position, fp32: shape (B, T).

  Vocabulary entries the teacher gives probability 0 contribute exactly 0 (never NaN).
  """
  t = jnp.float32(temperature)
  logq_BxTxV = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32) / t, axis=-1)
  teacher_BxTxV = jax.lax.stop_gradient(teacher_logits_BxTxV.astype(jnp.float32))
  logp_BxTxV = jax.nn.log_softmax(teacher_BxTxV / t, axis=-1)
  p_BxTxV = jnp.exp(logp_BxTxV)
  terms_BxTxV = jnp.where(p_BxTxV > 0, p_BxTxV * (logp_BxTxV - logq_BxTxV), 0.0)
  return terms_BxTxV.sum(-1)


def distillation_loss(student_logits_BxTxV: jax.Array, teacher_logits_BxTxV: jax.Array,
                      targets_BxT: jax.Array, mask_BxT: jax.Array, *, temperature: float,
                      alpha: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """alpha * T^2 * masked-mean KL + (1 - alpha) * masked-mean CE; metrics kl, ce, accuracy.

  "kl" in the metrics is the masked-mean KL at temperature T, before the T^2 factor.
  An empty mask gives 0, not NaN.
  """
  mask_BxT = mask_BxT.astype(jnp.float32)
  denom = jnp.maximum(mask_BxT.sum(), 1.0)
  kl_BxT = token_kl(student_logits_BxTxV, teacher_logits_BxTxV, temperature)
  kl = jnp.where(mask_BxT > 0, kl_BxT, 0.0).sum() / denom
  ce, ce_metrics = masked_token_loss(student_logits_BxTxV.astype(jnp.float32), targets_BxT,
                                     mask_BxT)
  loss = alpha * temperature ** 2 * kl + (1.0 - alpha) * ce
  return loss, {"loss": loss, "kl": kl, "ce": ce, "accuracy": ce_metrics["accuracy"],
                "tokens": ce_metrics["tokens"]}
