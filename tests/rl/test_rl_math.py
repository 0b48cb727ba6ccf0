"""RL math against independent references: GAE by a reverse loop, clipped losses by hand,
KL estimators by their definitions and the exact KL, group advantages by their invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlm.rl import advantages, kl, losses, rewards, rollout


def gae_reference(rewards, values, lengths, gamma, lam):
  """Textbook GAE, one row and one step at a time, over each row's valid prefix."""
  adv = np.zeros_like(rewards)
  for b, n in enumerate(lengths):
    last = 0.0
    for t in reversed(range(n)):
      next_v = values[b, t + 1] if t + 1 < n else 0.0
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
  returns = adv + values * (np.arange(rewards.shape[1])[None] < np.array(lengths)[:, None])
  return adv, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_matches_reverse_loop(gamma, lam):
  rng = np.random.default_rng(0)
  b, n = 6, 9
  rewards = rng.normal(size=(b, n)).astype(np.float32)
  values = rng.normal(size=(b, n)).astype(np.float32)
  lengths = [9, 1, 4, 7, 2, 5]
  mask = (np.arange(n)[None] < np.array(lengths)[:, None]).astype(np.int32)
  adv, ret = advantages.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                            gamma=gamma, lam=lam)
  ref_adv, ref_ret = gae_reference(rewards, values, lengths, gamma, lam)
  np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, ref_ret * mask, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(adv)[mask == 0] == 0)


def test_clipped_policy_loss_hand_values():
  # ratios 1.5, 0.5, 1.1, 0.7 with advantages +1, +1, -2, -2 and clip 0.2:
  #   r=1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped)   r=0.5, A=+1: max(-0.5, -0.8) = -0.5
  #   r=1.1, A=-2: max(2.2, 2.2) = 2.2                 r=0.7, A=-2: max(1.4, 1.6) = 1.6 (clipped)
  ratio = np.array([[1.5, 0.5, 1.1, 0.7]], np.float32)
  old = np.full_like(ratio, -1.0)
  logp = old + np.log(ratio)
  adv = np.array([[1.0, 1.0, -2.0, -2.0]], np.float32)
  mask = np.ones_like(ratio)
  loss, m = losses.clipped_policy_loss(logp, old, adv, mask, 0.2)
  np.testing.assert_allclose(loss, (-1.2 - 0.5 + 2.2 + 1.6) / 4, rtol=1e-5)
  np.testing.assert_allclose(m["clip_frac"], 0.5)
  np.testing.assert_allclose(m["approx_kl"], np.mean(ratio - 1 - np.log(ratio)), rtol=1e-5)
  # a masked-out position changes nothing
  mask2 = np.array([[1, 1, 1, 0]], np.float32)
  loss2, _ = losses.clipped_policy_loss(logp, old, adv, mask2, 0.2)
  np.testing.assert_allclose(loss2, (-1.2 - 0.5 + 2.2) / 3, rtol=1e-5)


def test_clipped_value_loss_hand_values():
  # old 0, returns 1, clip 0.2: v=0.5 -> max(0.25, 0.64) = 0.64 (clipped wins);
  # v=1.5 -> max(0.25, 0.64) = 0.64; v=0.1 -> max(0.81, 0.81) = 0.81; v=-1 (old 0, R=-1)
  # -> max(0, 0.64) = 0.64
  values = np.array([[0.5, 1.5, 0.1, -1.0]], np.float32)
  old = np.zeros_like(values)
  returns = np.array([[1.0, 1.0, 1.0, -1.0]], np.float32)
  loss, m = losses.clipped_value_loss(values, old, returns, np.ones_like(values), 0.2)
  np.testing.assert_allclose(loss, 0.5 * (0.64 + 0.64 + 0.81 + 0.64) / 4, rtol=1e-5)
  np.testing.assert_allclose(m["value_clip_frac"], 0.75)


def test_kl_estimators_match_definitions_and_exact_kl():
  rng = np.random.default_rng(1)
  logp = np.log(rng.uniform(0.05, 1, 50)).astype(np.float32)
  ref = np.log(rng.uniform(0.05, 1, 50)).astype(np.float32)
  r = ref - logp
  np.testing.assert_allclose(kl.kl_estimate(logp, ref, "k1"), logp - ref, rtol=1e-6)
  np.testing.assert_allclose(kl.kl_estimate(logp, ref, "k2"), 0.5 * r**2, rtol=1e-6)
  np.testing.assert_allclose(kl.kl_estimate(logp, ref, "k3"), np.exp(r) - 1 - r, rtol=1e-5,
                             atol=1e-7)
  assert np.all(np.asarray(kl.kl_estimate(logp, ref, "k3")) >= 0)
  # k1 and k3 are unbiased: their means over samples from p approach the exact KL(p || q)
  p = jax.nn.softmax(jnp.array([1.0, 0.2, -0.5, 0.0, 0.8]))
  q = jax.nn.softmax(jnp.array([0.5, 0.5, 0.0, -0.3, 0.2]))
  exact = float(jnp.sum(p * (jnp.log(p) - jnp.log(q))))
  x = jax.random.categorical(jax.random.key(0), jnp.log(p), shape=(200_000,))
  for name in ("k1", "k3"):
    est = float(kl.kl_estimate(jnp.log(p)[x], jnp.log(q)[x], name).mean())
    assert abs(est - exact) < 0.01 * max(exact, 0.1), (name, est, exact)
  with pytest.raises(ValueError, match="unknown KL estimator"):
    kl.kl_estimate(logp, ref, "k4")


def test_group_advantages_zero_mean_unit_std_and_constant_group_zero():
  scores = np.array([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0, 0.5, 2.0, -1.0, 4.0], np.float32)
  adv = np.asarray(advantages.group_advantages(jnp.asarray(scores), 4)).reshape(3, 4)
  for g in (0, 2):
    np.testing.assert_allclose(adv[g].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(adv[g].std(), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(adv[1], 0.0)
  # std_ddof=1: the sample std (TRL's torch.std) is 1 instead; a constant group still gets 0.
  sample = np.asarray(advantages.group_advantages(jnp.asarray(scores), 4, std_ddof=1))
  sample = sample.reshape(3, 4)
  for g in (0, 2):
    np.testing.assert_allclose(sample[g].std(ddof=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(sample[g], adv[g] * np.sqrt(3 / 4), rtol=1e-4)
  np.testing.assert_array_equal(sample[1], 0.0)
  with pytest.raises(ValueError, match="groups of 5"):
    advantages.group_advantages(jnp.asarray(scores), 5)
  with pytest.raises(ValueError, match="std_ddof"):
    advantages.group_advantages(jnp.asarray(scores), 4, std_ddof=2)


def test_group_advantages_without_or_with_one_std():
  """Dr. GRPO's centred scores ("none") and one batch-wide std ("batch"), by hand."""
  scores = np.array([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 5.0], np.float32)
  centred = np.array([0.5, -0.5, -0.5, 0.5, -0.5, -0.5, -0.5, 1.5], np.float32)
  none = advantages.group_advantages(jnp.asarray(scores), 4, scale="none")
  np.testing.assert_allclose(none, centred, atol=1e-6)
  batch = advantages.group_advantages(jnp.asarray(scores), 4, scale="batch")
  np.testing.assert_allclose(batch, centred / scores.std(), rtol=1e-5)
  with pytest.raises(ValueError, match="scale"):
    advantages.group_advantages(jnp.asarray(scores), 4, scale="groups")


def test_leave_one_out_baseline_is_the_other_samples_mean():
  """RLOO's advantage, by a loop over each sample and the others of its group."""
  rng = np.random.default_rng(3)
  scores = rng.normal(size=12).astype(np.float32)
  for g in (2, 3, 4):
    want = np.array([s - np.delete(grp, i).mean() for grp in scores.reshape(-1, g)
                     for i, s in enumerate(grp)])
    loo = advantages.group_advantages(jnp.asarray(scores), g, scale="none",
                                      baseline="leave_one_out")
    np.testing.assert_allclose(loo, want, rtol=1e-5, atol=1e-6)
    scaled = advantages.group_advantages(jnp.asarray(scores), g, baseline="leave_one_out")
    std = np.repeat(scores.reshape(-1, g).std(1), g)
    np.testing.assert_allclose(scaled, want / (std + 1e-6), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="baseline"):
    advantages.group_advantages(jnp.asarray(scores), 4, baseline="median")


def test_clip_higher_raises_only_the_upper_bound():
  # clip 0.2, clip_high 0.28: r=1.5, A=+1 is clipped at 1.28 (not 1.2); r=0.5, A=-1 at 0.8.
  ratio = np.array([[1.5, 0.5, 1.25]], np.float32)
  old = np.zeros_like(ratio)
  adv = np.array([[1.0, -1.0, 1.0]], np.float32)
  terms, clipped, _ = losses.clipped_policy_terms(np.log(ratio), old, adv, 0.2, 0.28)
  np.testing.assert_allclose(terms, [[-1.28, 0.8, -1.25]], rtol=1e-6)
  np.testing.assert_array_equal(clipped, [[True, True, False]])
  symmetric, _, _ = losses.clipped_policy_terms(np.log(ratio), old, adv, 0.2)
  np.testing.assert_allclose(symmetric, [[-1.2, 0.8, -1.2]], rtol=1e-6)


def test_informative_groups_come_first_in_sampled_order():
  # groups of 2: [1, 1] alike, [0, 1] differ, [2, 2] alike, [3, 0] differ, [5, 5] alike
  scores = np.array([1, 1, 0, 1, 2, 2, 3, 0, 5, 5], np.float32)
  np.testing.assert_array_equal(advantages.informative_groups(scores, 2, 2), [2, 3, 6, 7])
  # three groups: both informative ones, then the first alike group, in sampled order
  np.testing.assert_array_equal(advantages.informative_groups(scores, 2, 3), [0, 1, 2, 3, 6, 7])
  with pytest.raises(ValueError, match="cannot keep 6 groups of 5"):
    advantages.informative_groups(scores, 2, 6)


def test_overlong_penalty_by_hand():
  # 16 new tokens at most, buffer 4: no penalty up to 12 tokens, then 0.25 per token to 1.0.
  lengths = np.array([3, 12, 13, 14, 16])
  np.testing.assert_allclose(rewards.overlong_penalty(lengths, 16, 4, 1.0),
                             [0, 0, 0.25, 0.5, 1.0])
  np.testing.assert_allclose(rewards.overlong_penalty(lengths, 16, 4, 2.0)[-1], 2.0)
  np.testing.assert_array_equal(rewards.overlong_penalty(lengths, 16, 0, 1.0), 0.0)


def test_loss_aggregations_by_hand():
  # response 0: tokens 1, 2, 3 (mean 2); response 1: token 6 then padding; N = 4 slots.
  x = np.array([[1.0, 2.0, 3.0, 9.0], [6.0, 9.0, 9.0, 9.0]], np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
  np.testing.assert_allclose(losses.aggregate(x, mask, "sequence"), (2.0 + 6.0) / 2)
  np.testing.assert_allclose(losses.aggregate(x, mask, "token"), 12.0 / 4)
  np.testing.assert_allclose(losses.aggregate(x, mask, "constant"), 12.0 / 8)
  with pytest.raises(ValueError, match="aggregation"):
    losses.aggregate(x, mask, "tokens")


def test_whiten_masked():
  x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  w = np.asarray(advantages.whiten(x, mask))
  ref = (np.array([1.0, 2.0, 3.0]) - 2.0) / np.std([1.0, 2.0, 3.0])
  np.testing.assert_allclose(w[0, :3], ref, rtol=1e-5)
  assert w[0, 3] == 0


def test_adaptive_kl_controller_follows_ziegler():
  fixed = kl.KLController(0.1)
  fixed.update(5.0, 64)
  assert fixed.coef == 0.1
  c = kl.KLController(0.1, target=6.0, horizon=1000)
  c.update(9.0, 100)  # error clipped to +0.2: 0.1 * (1 + 0.2 * 0.1)
  np.testing.assert_allclose(c.coef, 0.1 * 1.02)
  c.update(5.4, 100)  # error -0.1: * (1 - 0.01)
  np.testing.assert_allclose(c.coef, 0.1 * 1.02 * 0.99)
  with pytest.raises(ValueError, match="horizon"):
    kl.KLController(0.1, target=1.0, horizon=0)


def test_token_rewards_kl_per_token_score_at_last_token():
  logp = jnp.array([[-1.0, -2.0, -0.5, 0.0]])
  ref = jnp.array([[-1.5, -1.0, -0.5, -9.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  rewards, kl_tok = rollout.token_rewards(jnp.array([3.0]), logp, ref, mask, 0.1, "k1")
  np.testing.assert_allclose(kl_tok, [[0.5, -1.0, 0.0, 0.0]])
  np.testing.assert_allclose(rewards, [[-0.05, 0.1, 3.0, 0.0]], rtol=1e-6)


def test_grpo_kl_is_finite_when_padding_logprobs_are_extreme(monkeypatch):
  """Padding slots carry ref_logp 0; a pad token the policy finds very unlikely there must not
  overflow k3 into a NaN loss or gradient (the mask alone cannot stop inf x 0)."""
  vocab, pad = 5, 0
  tokens_BxN = jnp.array([[3, 2, pad, pad], [1, 4, 2, pad]])
  mask_BxN = (tokens_BxN != pad).astype(jnp.float32)

  def outputs(logits_BxNxV, batch, temperature, *, with_values):
    del batch, with_values
    logits_BxNxV = logits_BxNxV / temperature
    return logits_BxNxV, jnp.take_along_axis(jax.nn.log_softmax(logits_BxNxV),
                                             tokens_BxN[..., None], -1)[..., 0], None, {}

  monkeypatch.setattr(losses, "response_outputs", outputs)
  rl = ml_collections.ConfigDict(dict(temperature=1.0, clip_ratio=0.2, clip_ratio_high=0.0,
                                      loss_agg="sequence", ent_coef=0.0))
  logits = jnp.zeros((2, 4, vocab)).at[..., pad].set(-200.0)  # pad log-prob about -200
  old_logp = outputs(logits, None, 1.0, with_values=False)[1] * mask_BxN
  batch = {"mask": mask_BxN, "old_logp": old_logp, "ref_logp": old_logp - 0.1 * mask_BxN,
           "advantages": jnp.array([[1.0] * 4, [-1.0] * 4]) * mask_BxN,
           "kl_coef": jnp.full((2,), 0.05)}
  loss_fn = losses.make_grpo_loss(rl)
  (loss, metrics), grads = jax.value_and_grad(lambda x: loss_fn(x, batch, None), has_aux=True)(
      logits)
  assert np.isfinite(float(loss)) and bool(jnp.isfinite(grads).all())
  r = -0.1  # ref - logp on every response token
  np.testing.assert_allclose(float(metrics["kl_ref_k3"]), np.exp(r) - 1 - r, rtol=1e-4)
