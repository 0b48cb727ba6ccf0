"""KTO: the loss against the paper's formula in numpy, and the unpaired rows with their
mismatched KL rows."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jaxlm.data import chat, formats, tokenizer as tok_lib
from jaxlm.objectives import kto
from jaxlm.objectives.preference_data import side
from jaxlm.objectives.preference_losses import kto_loss


def np_kto(pol, ref, pol_kl, ref_kl, good, beta, wd, wu):
  """Ethayarajh et al. 2024, eq. 8 with TRL's batch estimate of z0, in float64."""
  z0 = max(0.0, float(np.mean(pol_kl - ref_kl)))
  r = pol - ref
  v = np.where(good, wd / (1 + np.exp(-beta * (r - z0))), wu / (1 + np.exp(-beta * (z0 - r))))
  lam = np.where(good, wd, wu)
  return float(np.mean(lam - v)), z0


@pytest.mark.parametrize("beta,wd,wu,kl_shift", [(0.1, 1.0, 1.0, 3.0), (0.5, 1.0, 1.33, 2.0),
                                                  (2.0, 0.8, 1.0, -5.0)])
def test_loss_and_metrics_match_numpy(beta, wd, wu, kl_shift):
  rng = np.random.default_rng(int(beta * 10))
  pol, ref = rng.normal(-30, 6, 16), rng.normal(-30, 6, 16)
  ref_kl = rng.normal(-60, 6, 16)
  pol_kl = ref_kl + kl_shift + rng.normal(0, 1, 16)  # kl_shift < 0: z0 is clamped to 0
  good = rng.random(16) < 0.6
  loss, m = kto_loss(*(jnp.asarray(x, jnp.float32) for x in (pol, ref, pol_kl, ref_kl)),
                     jnp.asarray(good), beta=beta, desirable_weight=wd, undesirable_weight=wu)
  want, z0 = np_kto(pol, ref, pol_kl, ref_kl, good, beta, wd, wu)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(m["kl"]), z0, rtol=1e-5, atol=1e-5)
  if kl_shift < 0:
    assert float(m["kl"]) == 0.0
  np.testing.assert_allclose(float(m["rewards/chosen"]), beta * (pol - ref)[good].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(m["rewards/rejected"]), beta * (pol - ref)[~good].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(m["desirable_fraction"]), good.mean())
  # A batch of one label leaves the other label's metrics undefined, not 0.
  _, m = kto_loss(*(jnp.asarray(x, jnp.float32) for x in (pol, ref, pol_kl, ref_kl)),
                  jnp.ones(16, bool), beta=beta)
  assert np.isnan(float(m["rewards/rejected"])) and np.isnan(float(m["logps/rejected"]))
  assert np.isfinite(float(m["rewards/chosen"])) and np.isnan(float(m["rewards/margins"]))


def test_gradient_reaches_only_the_replies():
  rng = np.random.default_rng(0)
  pol, ref, pol_kl, ref_kl = (jnp.asarray(rng.normal(-20, 3, 8), jnp.float32) for _ in range(4))
  good = jnp.asarray([1, 0] * 4)

  @jax.jit
  def f(pol, ref, pol_kl):
    return kto_loss(pol, ref, pol_kl, ref_kl, good, beta=0.3)[0]

  g_pol, g_ref, g_kl = jax.grad(f, argnums=(0, 1, 2))(pol, ref, pol_kl)
  # z0 is a constant (the paper: no gradient through the reference point) and so is the reference
  assert not np.asarray(g_kl).any() and not np.asarray(g_ref).any()
  # raising a desirable reply's log-prob lowers the loss, an undesirable one's raises it
  assert (np.asarray(g_pol)[0::2] < 0).all() and (np.asarray(g_pol)[1::2] > 0).all()


def test_records_unpaired_and_pairs_split_in_two(tmp_path):
  assert formats.parse_unpaired({"prompt": "q", "completion": "a", "label": False}, "x") == [
      {"prompt": [{"role": "user", "content": "q"}], "completion": "a", "label": False}]
  pair = formats.parse_unpaired({"prompt": "q", "chosen": "a", "rejected": "b"}, "x")
  assert [(r["completion"], r["label"]) for r in pair] == [("a", True), ("b", False)]
  for bad in ({"prompt": "q", "completion": "a", "label": "yes"}, {"prompt": "q", "completion": "a"}):
    with pytest.raises(ValueError, match="x: field 'label' must be true"):
      formats.parse_unpaired(bad, "x")
  path = tmp_path / "kto.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in [
      {"prompt": "ab", "completion": "ba", "label": True},
      {"prompt": "ca", "chosen": "ac", "rejected": "aa"},
      {"prompt": "bc", "completion": "bb", "label": False}]) + "\n")
  train, val = kto.load_records(tiny_config(**{"objective": "kto", "data.source": f"jsonl:{path}",
                                               "data.val_fraction": 0.0}))
  assert [(r["completion"], r["label"]) for r in train] == [
      ("ba", True), ("ac", True), ("aa", False), ("bb", False)] and val == []


def test_kl_rows_pair_each_prompt_with_another_prompts_reply():
  replies = [{"prompt": [{"role": "user", "content": q}], "completion": a, "label": lab}
             for q, a, lab in (("ab", "ba", True), ("ab", "bb", False), ("ca", "ac", True),
                               ("ca", "cc", False), ("bc", "cb", True))]
  partner = kto.kl_partners(replies)
  assert partner.tolist() == [2, 2, 4, 4, 0]
  tok = tok_lib.train_tokenizer(["abc " * 20], "char", 0)
  cfg = tiny_config(**{"objective": "kto", "data.seq_len": 16, "train.batch_size": 5})
  rows = kto.build_batches(replies, cfg=cfg, tokenizer=tok, seed=0).rows
  assert rows["desirable"].tolist() == [1, 0, 1, 0, 1]
  own, kl = side(rows, "completion"), side(rows, "kl")
  template = chat.from_config(cfg.chat)
  for i, j in enumerate(partner):
    # the KL row's reply tokens are the partner's reply, after this example's own prompt
    reply = lambda r, k: r["targets"][k][r["loss_mask"][k] > 0].tolist()
    assert reply(kl, i) == reply(own, j)
    prompt_len = len(template.prompt_ids(replies[i]["prompt"], tok))
    assert (kl["tokens"][i, :prompt_len] == own["tokens"][i, :prompt_len]).all()
  with pytest.raises(ValueError, match="at least two different prompts"):
    kto.kl_partners(replies[:2])


def test_bad_kto_settings_are_named():
  with pytest.raises(ValueError, match="kto.beta must be > 0"):
    kto.make_loss_fn(tiny_config(**{"objective": "kto", "kto.beta": 0.0}))
  with pytest.raises(ValueError, match="kto needs a reference: set kto.reference or init_from"):
    kto.precompute(tiny_config(**{"objective": "kto"}))
  with pytest.raises(ValueError, match="kto.reference_mode must be cached or frozen"):
    kto.frozen_models(tiny_config(**{"objective": "kto", "kto.reference_mode": "live",
                                     "init_from": "/somewhere"}))
