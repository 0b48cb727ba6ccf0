"""Policies for RL: the decoder alone (GRPO), or with a value function (PPO).

`critic=shared`: `PolicyWithValue`, the decoder plus a scalar value head on its final hidden
states (one trunk). `critic=separate`: `PolicyWithCritic`, the decoder plus a second decoder
with a value head (`critic/...`), started from the same weights. Both subclass `Decoder`, so
an SFT checkpoint loads by parameter path and the sampler runs them unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.config import ModelConfig
from jaxlm.models.decoder import Decoder
from jaxlm.models.heads import ScalarHead
from jaxlm.models.reward import RewardModel
from jaxlm.objectives.logprobs import token_logprobs

CRITICS = ("shared", "separate")


class PolicyWithValue(Decoder):
  """Decoder + a value head on the shared trunk."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    super().__init__(cfg, rngs)
    self.value_head = ScalarHead(cfg.embed_dim, rngs=rngs)


class PolicyWithCritic(Decoder):
  """Decoder + a separate critic network (a decoder with a value head)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    super().__init__(cfg, rngs)
    self.critic = RewardModel(cfg, rngs)


def policy_class(algorithm: str, critic: str) -> type[Decoder]:
  """The model class of an RL run: a plain decoder for GRPO, one with a critic for PPO."""
  if algorithm == "grpo":
    return Decoder
  if critic not in CRITICS:
    raise ValueError(f"rl.critic must be one of {CRITICS}, got {critic!r}")
  return PolicyWithValue if critic == "shared" else PolicyWithCritic


def seed_critic(params: dict) -> dict:
  """Copies the policy's decoder weights into a separate critic (its value head stays)."""
  if "critic" not in params:
    return params
  critic = jax.tree.map(jnp.copy, {k: params[k] for k in params if k != "critic"})
  return {**params, "critic": {**critic, "value_head": params["critic"]["value_head"]}}


def response_outputs(model: Decoder, batch: dict, temperature: float, *, with_values: bool
                     ) -> tuple[jax.Array, jax.Array, jax.Array | None, dict[str, jax.Array]]:
  """(logits / temperature, log-probs of the response tokens, values or None), each over the
  N response slots (position P + t is predicted from the hidden state at P + t - 1), and a
  mixture-of-experts policy's router statistics over the rows ({} for a dense one)."""
  tokens, positions, segments = batch["tokens"], batch["positions"], batch["segment_ids"]
  n = batch["mask"].shape[1]
  p = tokens.shape[1] - n
  hidden_BxTxD, _, router_stats = model.hidden_and_router_stats(tokens, positions, segments)
  states_BxNxD = hidden_BxTxD[:, p - 1:-1]
  logits_BxNxV = model.logits(states_BxNxD) / temperature
  logp_BxN = token_logprobs(logits_BxNxV, tokens[:, p:])
  values_BxN = None
  if with_values:
    if isinstance(model, PolicyWithCritic):
      critic_BxTxD, _ = model.critic.hidden(tokens, positions, segments)
      values_BxN = model.critic.value_head(critic_BxTxD[:, p - 1:-1])
    else:
      values_BxN = model.value_head(states_BxNxD)
  return logits_BxNxV, logp_BxN, values_BxN, router_stats
