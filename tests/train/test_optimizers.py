"""The optimizers (AdamW, Lion, Adafactor, Muon) and the warmup-stable-decay schedule against
closed forms and optax's own Adafactor."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_config
from jaxlm.models import factory, from_config
from jaxlm.train import loop, optim


def settings(**overrides) -> dict:
  base = dict(tiny_config().optim)
  return {**base, "warmup_steps": 10, "lr": 1.0, "min_lr": 0.1, **overrides}


@pytest.mark.parametrize("shape", ["linear", "sqrt"])
def test_wsd_holds_the_rate_then_cools_down_over_the_last_fraction(shape):
  sched = optim.make_schedule(settings(schedule="wsd", cooldown_fraction=0.2,
                                       cooldown_shape=shape), 110)
  # warmup to step 10, stable to 110 - 22 = 88, cooldown to 0.1 at 110, constant after
  drop = lambda progress: np.sqrt(progress) if shape == "sqrt" else progress
  for step, want in [(5, 0.5), (10, 1.0), (50, 1.0), (88, 1.0), (99, 1 - 0.9 * drop(0.5)),
                     (110, 0.1), (130, 0.1)]:
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6, err_msg=str(step))
  # The stable part does not depend on the run's length: a long run's checkpoint at step 40
  # continues as the 50-step run's cooldown.
  short = optim.make_schedule(settings(schedule="wsd", cooldown_shape=shape), 50)
  np.testing.assert_allclose([float(short(s)) for s in range(41)],
                             [float(sched(s)) for s in range(41)])
  assert float(short(45)) < 1.0
  with pytest.raises(ValueError, match="cooldown_fraction"):
    optim.make_schedule(settings(schedule="wsd", cooldown_fraction=0.95), 110)
  with pytest.raises(ValueError, match="cooldown_shape"):
    optim.make_schedule(settings(schedule="wsd", cooldown_shape="cosine"), 110)


def model_params(**overrides) -> dict:
  cfg = tiny_config("llama", **overrides)
  model = factory.create(from_config(cfg.model, 64), nnx.Rngs(0))
  return nnx.to_pure_dict(nnx.split(model)[1])


def first_update(name: str, params: dict, grads: dict, **overrides) -> dict:
  opt = optim.make_optimizer(settings(name=name, schedule="constant", warmup_steps=0,
                                      grad_clip=0.0, lr=0.01, **overrides), 10)
  return opt.update(grads, opt.init(params), params)[0]


def random_like(params: dict, seed: int = 0) -> dict:
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_lion_steps_by_the_gradients_sign_with_decoupled_decay():
  params = model_params()
  grads = random_like(params)
  update = first_update("lion", params, grads, weight_decay=0.5)
  kernel = ("blocks", 0, "mlp", "up", "kernel")
  norm = ("blocks", 0, "attn_norm", "scale")
  get = lambda tree, path: functools.reduce(lambda node, key: node[key], path, tree)
  # lr * (sign(g) + wd * p) on matrices, lr * sign(g) on norm scales (no decay)
  np.testing.assert_allclose(get(update, kernel), -0.01 * (np.sign(get(grads, kernel))
                                                           + 0.5 * get(params, kernel)), rtol=1e-5)
  np.testing.assert_allclose(get(update, norm), -0.01 * np.sign(get(grads, norm)), rtol=1e-6)


@pytest.mark.parametrize("scan,experts", [(False, 0), (True, 0), (True, 4)])
def test_muon_orthogonalises_the_block_matrices_and_adams_the_rest(scan, experts):
  params = model_params(**({"model.scan_layers": True} if scan else {}),
                        **({"model.num_experts": experts} if experts else {}))
  rng = np.random.default_rng(0)

  def skewed(x):
    """A gradient far from orthogonal: singular values over two orders of magnitude."""
    if x.ndim < 2:
      return jnp.asarray(rng.normal(size=x.shape))
    u, _, vt = np.linalg.svd(rng.normal(size=x.shape), full_matrices=False)
    return jnp.asarray((u * np.logspace(0, -2, u.shape[-1])) @ vt)

  grads = jax.tree.map(skewed, params)
  update = first_update("muon", params, grads, weight_decay=0.0)
  is_dims = lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers)
  dims = jax.tree.leaves(optim.muon_dimensions(params), is_leaf=is_dims)
  named = jax.tree_util.tree_flatten_with_path(update)[0]
  assert len(named) == len(dims)
  muon = []
  for (path, u), g, d in zip(named, jax.tree.leaves(grads), dims):
    name = jax.tree_util.keystr(path)
    if d is None:
      # Nesterov Adam's first step, bias-corrected: -lr (1 + b1 / (1 + b1)) g / (|g| + eps)
      b1, eps = settings()["b1"], settings()["eps"]
      np.testing.assert_allclose(u, -0.01 * (1 + b1 / (1 + b1)) * g / (np.abs(g) + eps),
                                 rtol=1e-4, atol=1e-7, err_msg=name)
      continue
    muon.append(name)
    scale = -0.01 * optim.MUON_RMS * np.sqrt(max(u.shape[-2:]))
    for m in np.asarray(u).reshape(-1, *u.shape[-2:]):  # each layer's (expert's) matrix
      # -lr * 0.2 * sqrt(max fan) * (about) the orthogonal factor of the gradient
      s = np.linalg.svd(m / scale, compute_uv=False)
      assert 0.5 < s.min() and s.max() < 1.3, (name, s.min(), s.max())
  # q, k, v, o, gate, up, down of each block (of the one stacked block when scanned), and a
  # mixture's router
  assert len(muon) == (8 if experts else 7) * (1 if scan else 2), muon
  assert not any("embed" in name or "norm" in name for name in muon), muon


def test_adafactor_is_optaxs_with_decay_scaled_by_the_learning_rate():
  params = model_params(**{"model.embed_dim": 256, "model.mlp_dim": 512})
  grads = random_like(params)
  ours = first_update("adafactor", params, grads, weight_decay=0.0)
  reference = optax.adafactor(0.01)
  theirs = reference.update(grads, reference.init(params), params)[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), ours, theirs)
  decayed = first_update("adafactor", params, grads, weight_decay=0.1)
  mask = optim.decay_mask(params)
  jax.tree.map(lambda d, o, p, m: np.testing.assert_allclose(
      d - o, -0.01 * 0.1 * p * m, rtol=1e-4, atol=1e-8), decayed, ours, params, mask)
  # The second moment is factored: rows + columns of each large matrix, not its entries.
  opt = optim.make_optimizer(settings(name="adafactor"), 10)
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert count(opt.init(params)) < 0.1 * count(params)
  # With momentum: an EMA of the updates, as optax's (two steps at a constant rate).
  opt = optim.make_optimizer(settings(name="adafactor", schedule="constant", warmup_steps=0,
                                      grad_clip=0.0, lr=0.01, weight_decay=0.0,
                                      adafactor_momentum=0.9), 10)
  reference = optax.adafactor(0.01, momentum=0.9)
  states = opt.init(params), reference.init(params)
  for g in (grads, random_like(params, seed=1)):
    (ours, s0), (theirs, s1) = opt.update(g, states[0], params), reference.update(
        g, states[1], params)
    states = s0, s1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), ours,
                 theirs)
  with pytest.raises(ValueError, match="adafactor keeps no first moment"):
    optim.make_optimizer(settings(name="adafactor", mu_dtype="bfloat16"), 10)
  with pytest.raises(ValueError, match="optim.name must be one of"):
    optim.make_optimizer(settings(name="sgd"), 10)


# AdamW at 3e-3 goes from 5.48 to 3.43 in these 30 steps (measured); Lion wants a smaller
# rate, Adafactor's relative steps (lr x the parameter's RMS) a larger one.
@pytest.mark.parametrize("name,lr", [("lion", 1e-3), ("adafactor", 5e-2), ("muon", 3e-3)])
def test_each_optimizer_trains(name, lr, tmp_path):
  cfg = tiny_config(**{"optim.name": name, "optim.lr": lr, "optim.min_lr": lr / 10,
                       "optim.schedule": "wsd", "train.steps": 30, "train.log_every": 5})
  loop.train(cfg, tmp_path)
  losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if '"train"' in x]
  assert losses[-1] < losses[0] - 1.0, losses


def test_a_branch_from_a_wsd_runs_checkpoint_is_the_shorter_run(tmp_path):
  """`train.branch_from=LONG:STEP` continues the long run's state: a 15-step WSD run branched
  at step 12 of a 30-step one logs what the 15-step run trained alone logs after step 12."""
  common = {"optim.schedule": "wsd", "train.log_every": 1, "train.keep_checkpoints": 10}
  loop.train(tiny_config(**common, **{"train.steps": 30, "train.ckpt_every": 6}),
             tmp_path / "long")
  loop.train(tiny_config(**common, **{"train.steps": 15}), tmp_path / "alone")
  branched = tiny_config(**common, **{"train.steps": 15,
                                      "train.branch_from": f"{tmp_path / 'long'}:12"})
  loop.train(branched, tmp_path / "branch")
  read = lambda run: [{k: v for k, v in json.loads(x).items() if k != "tokens_per_sec"}
                      for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
  after = [m for m in read("alone") if m["step"] > 12]
  assert [m["step"] for m in read("branch")] == [m["step"] for m in after] != []
  for got, want in zip(read("branch"), after):
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
  for spec, error, message in [
      (f"{tmp_path / 'long'}:13", FileNotFoundError, "no checkpoint at step 13"),
      ("nowhere", ValueError, "must be WORKDIR:STEP")]:
    with pytest.raises(error, match=message):
      loop.train(tiny_config(**{"train.branch_from": spec}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
