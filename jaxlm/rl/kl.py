"""KL estimators between the policy and the frozen reference, and the KL-coefficient controllers.

With r = logp_ref - logp at a token sampled from the policy (Schulman, "Approximating KL
divergence", 2020): k1 = -r (unbiased, can be negative), k2 = r^2 / 2 (low variance, biased),
k3 = exp(r) - 1 - r (unbiased and always >= 0; GRPO's choice). The controllers follow
Ziegler et al. 2019: a fixed coefficient, or one adapted so the observed KL tracks a target.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: jax.Array, logp_ref: jax.Array, estimator: str = "k1") -> jax.Array:
  """Per-token estimate of KL(policy || reference) at tokens sampled from the policy."""
  r = logp_ref - logp
  if estimator == "k1":
    return -r
  if estimator == "k2":
    return 0.5 * jnp.square(r)
  if estimator == "k3":
    return jnp.exp(r) - 1.0 - r
  raise ValueError(f"unknown KL estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")


@dataclasses.dataclass
class KLController:
  """The KL penalty coefficient: fixed (target 0) or adaptive (Ziegler et al. 2019).

  Adaptive: after each rollout batch of `n` samples with mean sequence KL `kl`,
  coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon.
  """

  coef: float
  target: float = 0.0
  horizon: int = 10_000

  def __post_init__(self):
    if self.coef < 0 or self.target < 0 or self.horizon <= 0:
      raise ValueError(f"KL controller needs coef >= 0, target >= 0 and horizon > 0; got "
                       f"coef={self.coef}, target={self.target}, horizon={self.horizon}")

  @property
  def adaptive(self) -> bool:
    return self.target > 0

  def update(self, kl: float, n: int) -> None:
    """Adapts the coefficient to the observed KL (a no-op for a fixed controller)."""
    if self.adaptive:
      error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
      self.coef *= 1.0 + error * n / self.horizon

  def state(self) -> dict:
    """What a checkpoint stores to resume the controller exactly."""
    return {"kl_coef": self.coef}
