"""Rollouts: sample responses from the policy, then score them token by token.

Sampling is `jaxlm.sampling.generate` (jitted, KV cache, left padding, temperature / top-k /
top-p); its variable-length outputs are laid out at a fixed shape so every later program
compiles once: the prompt left-padded to `prompt_len`, then `max_new_tokens` response slots
whose `mask` is 1 up to and including the stop token. One forward pass of the policy gives
old log-probs (and values), one of the frozen reference its log-probs.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm import sampling
from jaxlm.models.heads import last_token_index
from jaxlm.rl.kl import kl_estimate
from jaxlm.rl.models import response_outputs


def sample_responses(graphdef: nnx.GraphDef, params: Any, prompts: Sequence[Sequence[int]],
                     scfg: sampling.SamplingConfig, rng: jax.Array, *, eos_id: int,
                     pad_id: int, batch_sharding: Any = None) -> tuple[np.ndarray, np.ndarray]:
  """(responses_BxN, mask_BxN), N = `scfg.max_new_tokens`: sampled ids (pad after the stop
  token) and 1 on each response's tokens up to and including its stop token. With
  `batch_sharding`, each device samples only its share of the rows."""
  out = sampling.generate(graphdef, params, prompts, scfg, rng, eos_id=eos_id, pad_id=pad_id,
                          batch_sharding=batch_sharding)
  n = scfg.max_new_tokens
  responses = np.full((len(out), n), pad_id, np.int32)
  mask = np.zeros((len(out), n), np.int32)
  for i, row in enumerate(out):
    responses[i, :len(row)], mask[i, :len(row)] = row, 1
  return responses, mask


def sequence_batch(prompts: Sequence[Sequence[int]], responses_BxN: np.ndarray,
                   mask_BxN: np.ndarray, prompt_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """Full sequences (tokens, positions, segment_ids: (B, prompt_len + N)) and the mask."""
  too_long = [i for i, p in enumerate(prompts) if len(p) > prompt_len]
  if too_long:
    raise ValueError(f"prompts {too_long[:5]} are longer than rl.prompt_len={prompt_len} tokens")
  tokens_BxP, segments_BxP = sampling.left_pad(prompts, prompt_len, pad_id)
  segments = np.concatenate([segments_BxP, mask_BxN], axis=1).astype(np.int32)
  return {"tokens": np.concatenate([tokens_BxP, responses_BxN], axis=1).astype(np.int32),
          "positions": np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32),
          "segment_ids": segments, "mask": mask_BxN.astype(np.int32)}


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "with_values"))
def policy_logprobs(graphdef: nnx.GraphDef, params: Any, batch: dict, *, temperature: float,
                    with_values: bool) -> tuple[jax.Array, jax.Array | None]:
  """Log-probs (B, N) of the response tokens under `params` at `temperature` (the sampling
  distribution), and the values (B, N) when `with_values`; 0 off the mask."""
  _, logp, values, _ = response_outputs(nnx.merge(graphdef, params), batch, temperature,
                                     with_values=with_values)
  mask = batch["mask"].astype(bool)
  return jnp.where(mask, logp, 0.0), None if values is None else jnp.where(mask, values, 0.0)


def token_rewards(scores_B: jax.Array, logp_BxN: jax.Array, ref_logp_BxN: jax.Array,
                  mask_BxN: jax.Array, kl_coef: float | jax.Array,
                  estimator: str = "k1") -> tuple[jax.Array, jax.Array]:
  """(rewards, kl), (B, N): -kl_coef x KL at every response token, plus the sequence score
  at its last token (Ziegler et al. 2019); both 0 off the mask."""
  mask = mask_BxN.astype(jnp.float32)
  kl_BxN = kl_estimate(logp_BxN, ref_logp_BxN, estimator) * mask
  last_B = last_token_index(mask_BxN)
  at_last_BxN = jax.nn.one_hot(last_B, mask_BxN.shape[1], dtype=jnp.float32)
  return -kl_coef * kl_BxN + scores_B[:, None] * at_last_BxN, kl_BxN
