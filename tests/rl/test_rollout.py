"""Rollout pieces: fixed-shape layout, log-probs and reward-model scores under left padding
equal those of the same sequences unpadded, and the critic starts from the policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.models import from_config
from jaxlm.models.decoder import Decoder
from jaxlm.models.reward import RewardModel
from jaxlm.objectives.logprobs import token_logprobs
from jaxlm.rl import models, rewards, rollout
from jaxlm.sampling import SamplingConfig

from conftest import tiny_config

PAD, EOS = 0, 3


def _model(cls, seed=0):
  cfg = from_config(tiny_config().model, 64)
  return cls(cfg, nnx.Rngs(seed))


def test_sample_responses_layout_and_sequence_batch():
  graphdef, params = nnx.split(_model(Decoder))
  prompts = [[5, 6, 7], [8, 9]]
  resp, mask = rollout.sample_responses(graphdef, params, prompts, SamplingConfig(
      temperature=1.0, max_new_tokens=6), jax.random.key(0), eos_id=EOS, pad_id=PAD)
  assert resp.shape == mask.shape == (2, 6)
  for r, m in zip(resp, mask):
    n = int(m.sum())
    assert m[:n].all() and not m[n:].any()  # a prefix
    assert EOS not in r[:n - 1].tolist() and (n == 6 or r[n - 1] == EOS)
  batch = rollout.sequence_batch(prompts, resp, mask, 4, PAD)
  np.testing.assert_array_equal(batch["tokens"][1, :4], [PAD, PAD, 8, 9])
  np.testing.assert_array_equal(batch["segment_ids"][1], np.r_[[0, 0, 1, 1], mask[1]])
  assert batch["positions"][1, 2] == 0 and batch["positions"][1, 4] == 2


def test_logprobs_and_values_ignore_left_padding():
  model = _model(models.PolicyWithValue)
  model.value_head.proj.kernel.set_value(jax.random.normal(jax.random.key(1), (32, 1)))
  graphdef, params = nnx.split(model)
  prompts = [[5, 6, 7, 8, 9], [10, 11]]
  resp = np.array([[12, 13, 14, EOS], [15, 16, EOS, PAD]], np.int32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int32)
  batch = rollout.sequence_batch(prompts, resp, mask, 6, PAD)
  logp, values = rollout.policy_logprobs(graphdef, params, {k: jnp.asarray(v) for k, v in
                                                            batch.items()},
                                         temperature=0.7, with_values=True)
  hidden_of = nnx.jit(lambda m, s: m.hidden(s)[0])  # eagerly, an XLA program an op
  for b in range(2):
    seq = jnp.asarray([prompts[b] + resp[b][mask[b] == 1].tolist()])
    hidden = hidden_of(model, seq)
    p, n = len(prompts[b]), int(mask[b].sum())
    ref_logp = token_logprobs(model.logits(hidden)[:, p - 1:-1] / 0.7, seq[:, p:])[0]
    np.testing.assert_allclose(logp[b, :n], ref_logp, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values[b, :n], model.value_head(hidden[:, p - 1:-1])[0],
                               rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(logp[b, n:]) == 0)


def test_reward_model_scores_left_padded_as_unpadded():
  rm = _model(RewardModel)
  rm.value_head.proj.kernel.set_value(jax.random.normal(jax.random.key(2), (32, 1)))
  graphdef, params = nnx.split(rm)
  prompts = [[5, 6, 7], [8]]
  resp = np.array([[9, EOS, PAD], [10, 11, EOS]], np.int32)
  mask = np.array([[1, 1, 0], [1, 1, 1]], np.int32)
  batch = rollout.sequence_batch(prompts, resp, mask, 4, PAD)
  got = rewards.model_reward(graphdef, params)(batch, None, None)
  score = nnx.jit(lambda m, s: m.score(s))  # eagerly, an XLA program an op
  for b in range(2):
    seq = jnp.asarray([prompts[b] + resp[b][mask[b] == 1].tolist()])
    np.testing.assert_allclose(got[b], score(rm, seq)[0], rtol=1e-4, atol=1e-5)


def test_separate_critic_starts_from_policy_weights():
  params = nnx.to_pure_dict(nnx.split(_model(models.PolicyWithCritic))[1])
  seeded = models.seed_critic(params)
  for path, leaf in jax.tree_util.tree_flatten_with_path(seeded["blocks"])[0]:
    other = seeded["critic"]["blocks"]
    for k in path:
      other = other[k.key if hasattr(k, "key") else k.idx]
    np.testing.assert_array_equal(leaf, other)
  np.testing.assert_array_equal(seeded["critic"]["value_head"]["proj"]["kernel"],
                                params["critic"]["value_head"]["proj"]["kernel"])


def test_value_loss_trains_only_the_critic_when_separate():
  """With a separate critic the value loss has no gradient on the policy's weights; with a
  shared trunk it does."""
  prompts, resp = [[5, 6, 7]], np.array([[8, 9, EOS]], np.int32)
  host = rollout.sequence_batch(prompts, resp, np.ones_like(resp), 4, PAD)
  batch = {k: jnp.asarray(v) for k, v in host.items()}
  for cls, policy_grad_expected in ((models.PolicyWithCritic, False),
                                    (models.PolicyWithValue, True)):
    model = _model(cls)
    head = model.critic.value_head if cls is models.PolicyWithCritic else model.value_head
    head.proj.kernel.set_value(jax.random.normal(jax.random.key(3), (32, 1)))
    graphdef, params = nnx.split(model)

    def value_loss(p):
      _, _, values, _ = models.response_outputs(nnx.merge(graphdef, p), batch, 1.0,
                                             with_values=True)
      return jnp.sum(jnp.square(values - 1.0))

    grads = nnx.to_pure_dict(jax.jit(jax.grad(value_loss))(params))
    policy_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["blocks"]))
    assert (policy_norm > 0) == policy_grad_expected, cls
    if cls is models.PolicyWithCritic:
      assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["critic"])) > 0
