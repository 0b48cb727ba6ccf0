"""Mixture of experts: the routed MLP against a plain loop over each token's experts, the
router losses against closed forms and transformers' `load_balancing_loss_func`, padding,
the active-parameter count, and runs that train (loss down, experts kept in use)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from conftest import tiny_config
from jaxlm import peft
from jaxlm.models import decoder, matmul_param_count, moe, param_count, registry
from jaxlm.models.config import ModelConfig
from jaxlm.models.reward import RewardModel
from jaxlm.objectives import common, distill, dpo, kto, prefix_lm, reward
from jaxlm.peft.lora import apply_lora
from jaxlm.rl import losses
from jaxlm.train import loop


def moe_config(style: str = "llama", **overrides) -> ModelConfig:
  return ModelConfig(**{**dict(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32,
                                mlp_dim=48, max_seq_len=32, dtype="float32", style=style,
                                num_experts=4, experts_per_token=2), **overrides})


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def reference_moe(layer: moe.MoE, x_NxD: np.ndarray, capacity: int = 0
                  ) -> tuple[np.ndarray, float]:
  """Each token through its top-k experts one at a time, in float64 (plus the shared expert,
  times its sigmoid gate), and the share of assignments dropped: with a `capacity`, each
  expert takes the first that many assignments, every token's first choice before any
  second choice."""
  cfg = layer.cfg
  w = {name: np.asarray(getattr(layer, name).kernel[...], np.float64)
       for name in ("up", "down") + (("gate",) if cfg.gated_mlp else ())}
  router = np.asarray(layer.router.kernel[...], np.float64)
  bias = np.asarray(layer.router_bias[...], np.float64) if cfg.router_bias else 0.0
  picks = []
  for x in x_NxD.astype(np.float64):
    logits = x @ router
    if cfg.router_scoring == "sigmoid":
      probs = 1 / (1 + np.exp(-logits))
    else:
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
    picking = probs + bias  # the bias only picks
    if cfg.router_groups > 1:  # only from the best groups, by their two best scores
      group = picking.reshape(cfg.router_groups, -1)
      group_scores = np.sort(group, -1)[:, -cfg.router_group_top:].sum(-1)
      best = np.argsort(-group_scores)[:cfg.router_groups_per_token]
      picking = np.where(np.isin(np.arange(cfg.router_groups), best)[:, None], group,
                         -np.inf).reshape(-1)
    picked = np.argsort(-picking)[:cfg.experts_per_token]
    weights = probs[picked] / (probs[picked].sum() if cfg.moe_renormalize else 1.0)
    picks.append(zip(picked, weights * cfg.router_scale))
  picks = [list(p) for p in picks]
  taken = np.zeros(cfg.num_experts, int)
  out, dropped = np.zeros_like(x_NxD, np.float64), 0

  def mlp(x, w):
    if cfg.gated_mlp:  # SwiGLU
      gate = x @ w["gate"]
      return (gate / (1 + np.exp(-gate)) * (x @ w["up"])) @ w["down"]
    return gelu_tanh(x @ w["up"]) @ w["down"]

  for choice in range(cfg.experts_per_token):
    for n, x in enumerate(x_NxD.astype(np.float64)):
      e, weight = picks[n][choice]
      if capacity and taken[e] == capacity:
        dropped += 1
        continue
      taken[e] += 1
      out[n] += weight * mlp(x, {name: m[e] for name, m in w.items()})
  if cfg.shared_expert_dim:
    shared = {name: np.asarray(getattr(layer.shared, name).kernel[...], np.float64)
              for name in w}
    gate = (1 / (1 + np.exp(-x_NxD.astype(np.float64) @ np.asarray(
        layer.shared_gate.kernel[...], np.float64))) if cfg.shared_expert_gate else 1.0)
    out += gate * mlp(x_NxD.astype(np.float64), shared)
  return out, dropped / (len(x_NxD) * cfg.experts_per_token)


def sharp_layer(cfg: ModelConfig) -> moe.MoE:
  """A MoE layer whose router is far from ties and whose outputs are of order 1."""
  layer = moe.MoE(cfg, 0.02, nnx.Rngs(0))
  layer.router.kernel[...] = layer.router.kernel[...] * 50
  mlps = [layer] + ([layer.shared] if cfg.shared_expert_dim else [])
  for mlp in mlps:
    for name in ("up", "down") + (("gate",) if cfg.gated_mlp else ()):
      getattr(mlp, name).kernel[...] = getattr(mlp, name).kernel[...] * 10
  if cfg.shared_expert_gate:  # gates spread over (0, 1)
    layer.shared_gate.kernel[...] = layer.shared_gate.kernel[...] * 50
  return layer


@pytest.mark.parametrize("style,k,renormalize,extra", [
    ("llama", 2, True, {}), ("llama", 1, False, {}), ("gpt2", 3, True, {}),
    ("llama", 2, False, dict(shared_expert_dim=40, shared_expert_gate=True)),
    ("gpt2", 1, False, dict(shared_expert_dim=24)),
    ("llama", 2, True, dict(router_scoring="sigmoid", router_scale=2.5)),
    ("llama", 3, False, dict(router_scoring="sigmoid")),
    ("llama", 2, True, dict(router_scoring="sigmoid", router_bias=True)),
    ("gpt2", 1, False, dict(router_bias=True))])
def test_each_token_gets_the_weighted_sum_of_its_top_k_experts(style, k, renormalize, extra):
  """Softmax or sigmoid (DeepSeek-V3) scores, scaled or not, with or without a shared
  expert, with or without a router bias that picks experts but does not weigh them."""
  layer = sharp_layer(moe_config(style, experts_per_token=k, moe_renormalize=renormalize,
                                 **extra))
  if extra.get("router_bias"):  # of the scores' size, so it changes some picks
    layer.router_bias[...] = jax.random.uniform(jax.random.key(2), (4,), maxval=0.6)
  x = jax.random.normal(jax.random.key(1), (3, 7, 32))
  y, stats = nnx.jit(lambda m, x: m(x))(layer, x)
  ref, _ = reference_moe(layer, np.asarray(x).reshape(-1, 32))
  np.testing.assert_allclose(np.asarray(y), ref.reshape(3, 7, 32), rtol=1e-4, atol=1e-6)
  assert np.abs(ref).max() > 0.1
  assert set(stats) == {moe.BALANCE, moe.ROUTER_Z, moe.MAX_VIOLATION} | (
      {moe.BIAS_HOOK} if extra.get("router_bias") else set())
  if extra.get("shared_expert_dim"):
    assert np.abs(np.asarray(layer.shared_expert(x))).max() > 0.1


@pytest.mark.parametrize("top,extra", [
    (2, dict(router_scoring="sigmoid", router_bias=True)),  # DeepSeek-V3's
    (1, dict(router_scoring="softmax", moe_renormalize=False))])  # DeepSeek-V2's
def test_group_limited_routing_picks_only_from_each_tokens_best_groups(top, extra):
  """Node- / device-limited routing: 8 experts in 4 groups, 3 picks from the best 2 groups,
  a group scored by its best 2 (V3) or its best (V2); it changes some tokens' picks from the
  unlimited top 3, and the group score some tokens' groups."""
  cfg = moe_config(num_experts=8, experts_per_token=3, router_groups=4,
                   router_groups_per_token=2, router_group_top=top, **extra)
  layer = sharp_layer(cfg)
  if cfg.router_bias:
    layer.router_bias[...] = jax.random.uniform(jax.random.key(2), (8,), maxval=0.3)
  x = jax.random.normal(jax.random.key(1), (6, 16, 32))
  y, _ = nnx.jit(lambda m, x: m(x))(layer, x)
  ref, _ = reference_moe(layer, np.asarray(x).reshape(-1, 32))
  np.testing.assert_allclose(np.asarray(y), ref.reshape(6, 16, 32), rtol=1e-4, atol=1e-6)
  _, _, grouped = layer.route(x.reshape(-1, 32))
  assert np.all([len(set(row)) <= 2 for row in np.asarray(grouped) // 2])
  for other in (dict(router_groups=1, router_groups_per_token=1),
                dict(router_group_top=3 - top)):
    layer.cfg = dataclasses.replace(cfg, **other)
    _, _, picks = layer.route(x.reshape(-1, 32))
    assert np.any(np.sort(np.asarray(grouped), -1) != np.sort(np.asarray(picks), -1)), other


def test_group_limited_routing_settings_that_do_not_fit_are_refused():
  with pytest.raises(ValueError, match="equal groups of at least router_group_top=2"):
    moe_config(num_experts=8, router_groups=3)
  with pytest.raises(ValueError, match="must hold experts_per_token=3"):
    moe_config(num_experts=8, experts_per_token=3, router_groups=4)
  with pytest.raises(ValueError, match="router_group_top=0 must be >= 1"):
    moe_config(num_experts=8, router_groups=4, router_groups_per_token=2, router_group_top=0)


@pytest.mark.parametrize("factor,capacity", [(0.25, 1), (0.5, 2), (1.0, 4), (2.0, 7)])
def test_a_capacity_drops_the_assignments_past_it_first_choices_first(factor, capacity):
  # Each sequence routes its own 7 tokens x 2 picks over 4 experts: capacity
  # ceil(factor x 14 / 4); at 2 = E / k every assignment fits, as dropless; at 0.25 at most 4
  # of the 14 do.
  layer = sharp_layer(moe_config(moe_capacity_factor=factor))
  x = jax.random.normal(jax.random.key(1), (3, 7, 32))
  y, stats = nnx.jit(lambda m, x: m(x))(layer, x)
  rows = [reference_moe(layer, np.asarray(row), capacity) for row in x]
  np.testing.assert_allclose(np.asarray(y), np.stack([out for out, _ in rows]), rtol=1e-4,
                             atol=1e-6)
  dropped = np.mean([share for _, share in rows])
  np.testing.assert_allclose(stats[moe.DROPPED], dropped, atol=1e-6)
  if capacity == 1:
    assert dropped >= 10 / 14
  if factor >= 2.0:
    np.testing.assert_allclose(y, nnx.jit(lambda m, x: m(x, dropless=True))(layer, x)[0],
                               rtol=1e-5, atol=1e-6)


def test_kv_cache_decoding_is_dropless():
  tight = decoder.Decoder(moe_config(moe_capacity_factor=0.25), nnx.Rngs(0))
  dropless = decoder.Decoder(moe_config(), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 64)
  cached = nnx.jit(lambda m, t: m(t, cache=m.init_cache(2, 12))[0])
  full = nnx.jit(lambda m, t: m(t))
  np.testing.assert_allclose(cached(tight, tokens), full(dropless, tokens), rtol=1e-5,
                             atol=1e-6)
  assert np.abs(np.asarray(full(tight, tokens) - full(dropless, tokens))).max() > 1e-4


def test_bad_mixture_configs_are_named():
  with pytest.raises(ValueError, match="experts_per_token must be in"):
    moe_config(experts_per_token=5)
  with pytest.raises(ValueError, match="router would learn nothing"):
    moe_config(experts_per_token=1)
  with pytest.raises(ValueError, match="num_experts must be >= 0 and is for decoders"):
    moe_config("bert")
  with pytest.raises(ValueError, match="moe_capacity_factor must be >= 0"):
    moe_config(moe_capacity_factor=-1.0)
  with pytest.raises(ValueError, match="shared_expert_dim must be >= 0 and needs num_experts"):
    moe_config(num_experts=0, shared_expert_dim=16)
  with pytest.raises(ValueError, match="shared_expert_gate gates the shared expert"):
    moe_config(shared_expert_gate=True)
  with pytest.raises(ValueError, match="qk_norm_full sets how the query / key norms span"):
    moe_config(qk_norm_full=True)
  with pytest.raises(ValueError, match="router_scoring must be one of"):
    moe_config(router_scoring="relu")
  with pytest.raises(ValueError, match="router_scale > 0"):
    moe_config(router_scale=0.0)


def test_router_losses_in_closed_form():
  # A uniform router: every P_e = 1 / E and the picks sum to k per token, so the balance loss
  # is k however the picks fall; the z-loss is log(E)^2.
  n, e, k = 10, 4, 2
  experts = jnp.asarray(np.random.default_rng(0).integers(0, e, (n, k)))
  stats = moe.router_losses(jnp.zeros((n, e)), experts, jnp.ones(n, bool))
  np.testing.assert_allclose(stats[moe.BALANCE], k, rtol=1e-6)
  np.testing.assert_allclose(stats[moe.ROUTER_Z], np.log(e) ** 2, rtol=1e-6)
  loads = np.bincount(np.asarray(experts).ravel(), minlength=e)  # MaxVio: max / mean - 1
  np.testing.assert_allclose(stats[moe.MAX_VIOLATION], loads.max() / (n * k / e) - 1, rtol=1e-6)
  # Sigmoid scores (DeepSeek-V3): zero logits score every expert 1/2, normalised 1 / E: k.
  stats = moe.router_losses(jnp.zeros((n, e)), experts, jnp.ones(n, bool), "sigmoid")
  np.testing.assert_allclose(stats[moe.BALANCE], k, rtol=1e-6)
  # Every token sent to expert 0 with probability ~1 (k = 1): E x 1 x 1, the worst case.
  collapsed = jnp.tile(jnp.array([30.0, 0.0, 0.0, 0.0]), (n, 1))
  stats = moe.router_losses(collapsed, jnp.zeros((n, 1), jnp.int32), jnp.ones(n, bool))
  np.testing.assert_allclose(stats[moe.BALANCE], e, rtol=1e-6)
  np.testing.assert_allclose(stats[moe.MAX_VIOLATION], e - 1, rtol=1e-6)
  # Even loads: no violation.
  even = jnp.stack([jnp.arange(n) % e, (jnp.arange(n) + 1) % e], axis=1)[:8]
  stats = moe.router_losses(jnp.zeros((8, e)), even, jnp.ones(8, bool))
  np.testing.assert_allclose(stats[moe.MAX_VIOLATION], 0.0, atol=1e-7)


def test_balance_loss_equals_transformers_with_padding():
  rng = np.random.default_rng(1)
  b, t, e, k = 2, 6, 4, 2
  logits = rng.normal(size=(b * t, e)).astype(np.float32) * 3
  mask = np.ones((b, t), np.int64)
  mask[1, 4:] = 0
  experts = jax.lax.top_k(jnp.asarray(logits), k)[1]
  ours = moe.router_losses(jnp.asarray(logits), experts, jnp.asarray(mask.reshape(-1) > 0))
  ref = load_balancing_loss_func((torch.tensor(logits),), e, k, torch.tensor(mask))
  np.testing.assert_allclose(ours[moe.BALANCE], ref.item(), rtol=1e-5)


def test_padding_leaves_the_router_statistics_unchanged():
  model = decoder.Decoder(moe_config(), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 64)
  forward = nnx.jit(lambda m, t, s: m(t, None, s, router_stats=True))
  _, real = forward(model, tokens[:, :6], jnp.ones((2, 6), jnp.int32))
  padded = jnp.concatenate([jnp.ones((2, 6), jnp.int32), jnp.zeros((2, 3), jnp.int32)], 1)
  _, with_padding = forward(model, tokens, padded)
  for name in real:
    np.testing.assert_allclose(with_padding[name], real[name], rtol=1e-5, err_msg=name)
  _, unmasked = forward(model, tokens, jnp.ones((2, 9), jnp.int32))
  assert abs(float(unmasked[moe.ROUTER_Z]) - float(real[moe.ROUTER_Z])) > 1e-6


@pytest.mark.parametrize("chunk", [0, 5])
def test_the_objective_adds_the_weighted_router_losses_to_the_cross_entropy(chunk):
  model = decoder.Decoder(moe_config(router_aux_coef=0.1, router_z_coef=0.01), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(3), (2, 9), 0, 64)
  batch = dict(tokens=tokens[:, :-1], targets=tokens[:, 1:], loss_mask=jnp.ones((2, 8)),
               positions=jnp.broadcast_to(jnp.arange(8), (2, 8)),
               segment_ids=jnp.ones((2, 8), jnp.int32))
  loss, metrics = nnx.jit(lambda m, b: common.lm_loss(m, b, None, chunk=chunk))(model, batch)
  logits = model(batch["tokens"])
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1).mean()
  np.testing.assert_allclose(metrics["loss"], ce, rtol=1e-5)
  np.testing.assert_allclose(
      loss, ce + 0.1 * metrics[moe.BALANCE] + 0.01 * metrics[moe.ROUTER_Z], rtol=1e-5)
  # The router learns through its weights on the experts' outputs and through both losses.
  grads = nnx.jit(nnx.grad(lambda m: common.lm_loss(m, batch, None, chunk=chunk)[0]))(model)
  assert np.abs(np.asarray(grads["blocks"][0]["mlp"]["router"]["kernel"][...])).min() > 0


def rows(seed: int, prefix: str = "") -> dict[str, jax.Array]:
  """Two 8-token rows of a side `prefix` (response on the last 5 positions, row 1 padded)."""
  tokens = jax.random.randint(jax.random.key(seed), (2, 9), 0, 64)
  segments = jnp.ones((2, 8), jnp.int32).at[1, 6:].set(0)
  mask = (jnp.arange(8) >= 3) & (segments > 0)
  out = dict(tokens=tokens[:, :-1], targets=tokens[:, 1:], loss_mask=mask.astype(jnp.float32),
             positions=jnp.broadcast_to(jnp.arange(8), (2, 8)), segment_ids=segments)
  return {f"{prefix}{k}": v for k, v in out.items()}


@pytest.mark.parametrize("objective", ["prefix_lm", "dpo", "kto", "distill", "grpo", "reward"])
def test_the_other_objectives_add_the_trained_models_router_losses(objective):
  """The prefix LM (with its bidirectional prefix), DPO (both sides' tokens), KTO (the
  completions, not z0's rows), distillation (the student), GRPO (prompts and responses) and
  the reward model (both sides) add the weighted router losses of the trained model's own
  forward pass."""
  coefs = {"model.router_aux_coef": 0.1, "model.router_z_coef": 0.01}
  cfg = tiny_config("llama", objective=objective, **{"model.num_experts": 4, **coefs})
  model_cfg = ModelConfig(**{**cfg.model.to_dict(), "vocab_size": 64})
  model_class = RewardModel if objective == "reward" else decoder.Decoder
  model = model_class(model_cfg, nnx.Rngs(0))
  teacher = decoder.Decoder(moe_config(num_experts=0, mlp_dim=64), nnx.Rngs(1))
  pair = ("chosen_", "rejected_")
  routed_rows = {"dpo": pair, "reward": pair, "kto": ("completion_",)}.get(objective, ("",))
  batch = {k: v for i, prefix in enumerate(routed_rows + (("kl_",) if objective == "kto" else ()))
           for k, v in rows(i, prefix).items()}
  if objective == "kto":
    batch["desirable"] = jnp.array([1, 0])
  prefix = {}
  if objective == "prefix_lm":
    prefix = dict(prefix_BxT=jnp.broadcast_to(jnp.arange(8) < 3, (2, 8)))
    batch["prefix"] = prefix["prefix_BxT"]
  elif objective == "grpo":  # 3 prompt tokens, 5 response slots
    zeros = jnp.zeros((2, 5))
    batch.update(mask=zeros + 1, old_logp=zeros - 4.0, ref_logp=zeros - 4.0,
                 advantages=zeros + jnp.array([[1.0], [-1.0]]), kl_coef=jnp.full((2,), 0.05))
  elif objective in ("dpo", "kto"):  # cached reference log-probs
    batch.update({f"{p}ref": jnp.array([-9.0, -8.0]) for p in routed_rows + ("kl_",)})
  frozen = {"teacher": teacher}
  make = {"dpo": dpo.make_loss_fn, "kto": kto.make_loss_fn, "distill": distill.make_loss_fn,
          "grpo": lambda c: losses.make_grpo_loss(c.rl),
          "prefix_lm": lambda c: prefix_lm.loss_fn, "reward": reward.make_loss_fn}[objective]
  loss, metrics = nnx.jit(lambda m, b: make(cfg)(m, b, None, frozen))(model, batch)
  cfg.model.update(router_aux_coef=0.0, router_z_coef=0.0)
  plain = model_class(ModelConfig(**{**cfg.model.to_dict(), "vocab_size": 64}), nnx.Rngs(0))
  plain_loss, _ = nnx.jit(lambda m, b: make(cfg)(m, b, None, frozen))(plain, batch)
  routed = {k: jnp.concatenate([batch[p + k] for p in routed_rows])
            for k in ("tokens", "positions", "segment_ids")}
  _, stats = model(routed["tokens"], routed["positions"], routed["segment_ids"],
                   router_stats=True, **prefix)
  for name in (moe.BALANCE, moe.ROUTER_Z):
    np.testing.assert_allclose(metrics[name], stats[name], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(loss - plain_loss, 0.1 * stats[moe.BALANCE] + 0.01 *
                             stats[moe.ROUTER_Z], rtol=1e-4)
  assert float(stats[moe.BALANCE]) > 1.0


def test_flops_count_the_active_experts_only():
  cfg = moe_config(num_experts=8, experts_per_token=2)
  dense = ModelConfig(**{**cfg.__dict__, "num_experts": 0})
  params = nnx.state(decoder.Decoder(cfg, nnx.Rngs(0)), nnx.Param)
  dense_params = nnx.state(decoder.Decoder(dense, nnx.Rngs(0)), nnx.Param)
  expert_mlp = 3 * 32 * 48  # one SwiGLU expert
  router = 32 * 8
  assert param_count(params) == param_count(dense_params) + 2 * (7 * expert_mlp + router)
  assert matmul_param_count(cfg, params) == (
      matmul_param_count(dense, dense_params) + 2 * (expert_mlp + router))
  # A gated shared expert of width 40 runs on every token: it and its gate are all active.
  shared = ModelConfig(**{**cfg.__dict__, "shared_expert_dim": 40, "shared_expert_gate": True})
  shared_params = nnx.state(decoder.Decoder(shared, nnx.Rngs(0)), nnx.Param)
  assert matmul_param_count(shared, shared_params) == (
      matmul_param_count(cfg, params) + 2 * (3 * 32 * 40 + 32))


def test_a_moe_run_lowers_its_loss_and_logs_the_router_losses(tmp_path):
  """The language-model loss falls, the balance loss (k = 2 when balanced) stays near
  balanced and is in the objective: the logged loss is the cross-entropy alone."""
  cfg = tiny_config("llama", **{"model.num_experts": 4, "model.experts_per_token": 2,
                                "model.router_z_coef": 1e-3, "train.steps": 30})
  result = loop.train(cfg, tmp_path)
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train = [r for r in rows if r.get("split") == "train"]
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  assert all(2.0 <= r[moe.BALANCE] < 2.5 for r in train)
  assert all(r[moe.ROUTER_Z] > 0 for r in train)
  assert result["step"] == 30


@pytest.mark.parametrize("name,vocab,total,active", [("qwen1.5-moe-a2.7b", 151936, 14.3, 2.7),
                                                     ("olmoe-1b-7b", 50304, 6.9, 1.3)])
def test_open_mixtures_run_their_published_active_parameters(name, vocab, total, active):
  """Qwen1.5-MoE-A2.7B (4 of 60 experts and a shared expert) and OLMoE-1B-7B (8 of 64):
  the published total parameters and those activated per token (counting the embedding
  table, as their cards do), in billions."""
  cfg = ModelConfig(**{**registry.model_config(name).to_dict(), "vocab_size": vocab})
  _, state = nnx.split(nnx.eval_shape(lambda: decoder.Decoder(cfg, nnx.Rngs(0))))
  params = nnx.to_pure_dict(state)
  assert round(param_count(params) / 1e9, 1) == total
  assert round((matmul_param_count(cfg, params) + vocab * cfg.embed_dim) / 1e9, 1) == active


def test_lora_adapts_the_router_and_the_shared_expert():
  """LoRA finds the router and the shared expert's linears (not the stacked routed experts);
  with B at zero the adapted mixture is the base one."""
  cfg = moe_config(shared_expert_dim=16, shared_expert_gate=True)
  tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, 64)
  model = decoder.Decoder(cfg, nnx.Rngs(0))
  base = np.asarray(model(tokens))
  paths = apply_lora(model, r"mlp/(router|shared/(gate|up|down)|shared_gate)$", 4, 8.0,
                     nnx.Rngs(1))
  assert sorted(paths) == sorted(f"blocks/{i}/mlp/{name}" for i in range(2) for name in (
      "router", "shared/gate", "shared/up", "shared/down", "shared_gate"))
  np.testing.assert_allclose(np.asarray(model(tokens)), base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prefix_and_prompt_tuning_add_the_router_losses_and_they_reach_the_prefix(method):
  """PEFT prefixes and soft prompts run the mixture through a cache of the forward pass's own:
  its router statistics still come back, over the real tokens, and the balance loss trains
  the prefix (the router itself is frozen)."""
  model = peft.wrap(decoder.Decoder(moe_config(router_aux_coef=0.1), nnx.Rngs(0)),
                    dict(method=method, prefix_len=3, prompt_len=3, prefix_hidden=0,
                         prompt_hidden=0), nnx.Rngs(1))
  batch = rows(5)
  loss, metrics = nnx.jit(lambda m, b: common.lm_loss(m, b, None))(model, batch)
  assert float(metrics[moe.BALANCE]) > 1.0
  np.testing.assert_allclose(loss, metrics["loss"] + 0.1 * metrics[moe.BALANCE], rtol=1e-5)
  _, padded = model(batch["tokens"], batch["positions"], batch["segment_ids"].at[1].set(0),
                    router_stats=True)
  assert abs(float(padded[moe.BALANCE]) - float(metrics[moe.BALANCE])) > 1e-6
  balance = nnx.jit(nnx.grad(lambda m: common.lm_loss(m, batch, None)[1][moe.BALANCE]))(model)
  prefix = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(balance))
            if method in jax.tree_util.keystr(path)]
  assert prefix and max(float(jnp.abs(g).max()) for g in prefix) > 0


def test_experts_every_other_layer_average_their_statistics_over_those_layers():
  """Switch's layout (moe_every=2): layers 1 and 3 are mixtures, 0 and 2 dense MLPs of their
  own width; the router statistics are the means over the two mixtures (as the scanned model
  gives them), and the flops count the active experts of those layers only."""
  cfg = moe_config(num_layers=4, moe_every=2, moe_dense_mlp_dim=40)
  model = decoder.Decoder(cfg, nnx.Rngs(0))
  assert [isinstance(model.blocks[i].mlp, moe.MoE) for i in range(4)] == [False, True] * 2
  assert model.blocks[0].mlp.up.kernel.shape == (32, 40)
  tokens = jax.random.randint(jax.random.key(6), (2, 9), 0, 64)
  forward = nnx.jit(lambda m, t: m(t, router_stats=True))
  _, stats = forward(model, tokens)
  x, positions = model.embed(tokens), jnp.broadcast_to(jnp.arange(9), (2, 9))
  per_layer = []
  for i in range(4):
    block = model.blocks[i]
    x, _, block_stats = block(x, positions, None, None, None)
    assert bool(block_stats) == block.routed
    if block.routed:
      per_layer.append(block_stats)
  for name in (moe.BALANCE, moe.ROUTER_Z):
    np.testing.assert_allclose(stats[name], np.mean([s[name] for s in per_layer]), rtol=1e-5)
  scanned = decoder.Decoder(ModelConfig(**{**cfg.__dict__, "scan_layers": True}), nnx.Rngs(0))
  for name, value in forward(scanned, tokens)[1].items():
    np.testing.assert_allclose(value, stats[name], rtol=1e-5, err_msg=name)
  params = nnx.state(model, nnx.Param)
  every = moe_config(num_layers=4)
  every_params = nnx.state(decoder.Decoder(every, nnx.Rngs(0)), nnx.Param)
  expert_mlp, dense_mlp = 3 * 32 * 48, 3 * 32 * 40
  assert matmul_param_count(cfg, params) == matmul_param_count(every, every_params) - 2 * (
      2 * expert_mlp + 32 * 4) + 2 * dense_mlp


def test_the_first_layers_can_stay_dense():
  """DeepSeek's first_k_dense_replace (moe_first_dense=2): layers 0 and 1 dense MLPs of their
  own width, the others mixtures; no layer left a mixture, or stacking such layers, is an
  error."""
  cfg = moe_config(num_layers=4, moe_first_dense=2, moe_dense_mlp_dim=40)
  model = decoder.Decoder(cfg, nnx.Rngs(0))
  assert [isinstance(model.blocks[i].mlp, moe.MoE) for i in range(4)] == [False, False, True, True]
  assert model.blocks[1].mlp.up.kernel.shape == (32, 40)
  with pytest.raises(ValueError, match="leave none of the 4 layers a mixture"):
    moe_config(num_layers=4, moe_first_dense=4)
  with pytest.raises(ValueError, match="moe_first_dense makes the first layers differ"):
    moe_config(num_layers=4, moe_first_dense=2, scan_layers=True)
  with pytest.raises(ValueError, match="all for a mixture"):
    moe_config(num_experts=0, moe_first_dense=1)
