"""Auxiliary-loss-free balancing (`model.router_bias`, DeepSeek-V3): the bias's gradient is
its expert's load minus the mean while the loss keeps its value, the train step moves each
bias by the rate against the sign of that overload (the whole batch's, under gradient
accumulation too) outside the gradient norm, and a run without a balance loss ends far more
balanced than one without the bias."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_config
from jaxlm.models import decoder, moe, stacking
from jaxlm.models.config import ModelConfig
from jaxlm.objectives import common
from jaxlm.train import loop, optim, step as step_lib
from jaxlm.train.state import TrainState
from test_moe import moe_config, sharp_layer

RATE = 0.01


def test_the_hook_is_zero_and_its_gradient_is_each_experts_overload():
  layer = sharp_layer(moe_config(router_bias=True))
  x = jax.random.normal(jax.random.key(1), (3, 7, 32))
  real = jnp.ones((3, 7), jnp.int32).at[2, 4:].set(0)  # padding counts in no load

  value, grads = nnx.value_and_grad(lambda m: m(x, real)[1][moe.BIAS_HOOK])(layer)
  grad = grads["router_bias"][...]
  _, _, experts = layer.route(x.reshape(-1, 32))
  picks = np.asarray(experts)[np.asarray(real).reshape(-1) > 0]
  loads = np.bincount(picks.ravel(), minlength=4) / len(picks)  # assignments per real token
  assert float(value) == 0.0
  np.testing.assert_allclose(grad, loads - loads.mean(), atol=1e-6)
  assert np.abs(loads - loads.mean()).max() > 0.1  # a sharp router is far from balanced
  # The objective's value is the plain one: the hook adds 0 and is not logged.
  loss, metrics = moe.with_router_losses(layer, jnp.float32(2.0), {}, layer(x, real)[1])
  assert float(loss) == pytest.approx(2.0 + 0.01 * float(metrics[moe.BALANCE]))
  assert moe.BIAS_HOOK not in metrics


def batch_of(cfg: ModelConfig, rows: int, seed: int = 0) -> dict:
  tokens = jax.random.randint(jax.random.key(seed), (rows, 17), 0, cfg.vocab_size)
  return dict(tokens=tokens[:, :-1], targets=tokens[:, 1:],
              loss_mask=jnp.ones((rows, 16), jnp.float32),
              positions=jnp.broadcast_to(jnp.arange(16), (rows, 16)),
              segment_ids=jnp.ones((rows, 16), jnp.int32))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_train_step_moves_each_bias_by_the_rate_against_its_overload(scan_layers):
  cfg = moe_config(router_bias=True, router_aux_coef=0.0, scan_layers=scan_layers,
                   num_experts=8)
  graphdef, state = nnx.split(decoder.Decoder(cfg, nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  trainable = jax.tree.map(lambda _: True, params)
  settings = tiny_config().optim.to_dict()
  settings.update(router_bias_rate=RATE, grad_clip=1e-3, warmup_steps=0, schedule="constant")
  opt = optim.make_optimizer(settings, 10, trainable)
  batch = batch_of(cfg, 8)
  train_state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params),
      rng=jax.random.key_data(jax.random.key(0)), nonfinite_step=jnp.full((), -1, jnp.int32))
  loss_fn = lambda model, b, rng, frozen=None: common.lm_loss(model, b, rng)
  grads = jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch, None)[0])(params)

  biases = lambda tree: {k: v for k, v in stacking.flatten(tree).items()
                         if k.endswith(f"mlp/{moe.ROUTER_BIAS}")}
  outcomes = []
  for accum in (1, 2):
    step = step_lib.make_train_step(graphdef, loss_fn, opt, lambda _: 1e-3, grad_accum=accum,
                                    trainable=trainable)
    new, metrics = jax.jit(step)(train_state, batch, {})
    outcomes.append((biases(new.params), metrics))
  for (name, g) in biases(grads).items():
    expected = -RATE * np.sign(np.asarray(g))
    assert np.abs(np.asarray(g)).max() > 1e-3, name  # loads differ from the mean
    for moved, _ in outcomes:  # the sign of the whole batch's overload, accumulated or not
      np.testing.assert_allclose(moved[name], expected, atol=1e-7, err_msg=name)
  # The gradient norm (and so the clipping) leaves the biases out.
  np.testing.assert_allclose(outcomes[0][1]["grad_norm"],
                             optax.tree.norm(moe.without_router_biases(grads)), rtol=1e-5)
  assert float(optax.tree.norm(grads)) > float(outcomes[0][1]["grad_norm"])


def last_violation(tmp_path, name: str, **overrides) -> float:
  cfg = tiny_config("llama", **{"model.num_experts": 8, "model.experts_per_token": 2,
                                "model.router_aux_coef": 0.0, "model.router_scoring": "sigmoid",
                                "train.steps": 120, "train.log_every": 10, **overrides})
  loop.train(cfg, tmp_path / name)
  train = [r for r in map(json.loads, open(tmp_path / name / "metrics.jsonl"))
           if r.get("split") == "train"]
  return float(np.mean([r[moe.MAX_VIOLATION] for r in train[-3:]]))


def test_without_a_balance_loss_the_bias_keeps_routing_balanced(tmp_path):
  """8 experts, 2 per token, no balance loss: the plain router collapses onto few experts
  (MaxVio 3 = all on 2 of 8), the biased one ends far nearer even."""
  plain = last_violation(tmp_path, "plain")
  biased = last_violation(tmp_path, "biased", **{"model.router_bias": True,
                                                 "optim.router_bias_rate": RATE})
  assert plain > 2.0
  assert biased < 1.0


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="router_bias balances a mixture"):
    moe_config(num_experts=0, router_bias=True)
  with pytest.raises(ValueError, match="router_bias_rate must be >= 0"):
    settings = tiny_config().optim.to_dict()
    optim.make_optimizer({**settings, "router_bias_rate": -1.0}, 10,
                         {"mlp": {"router_bias": True}})
