"""Multi-head latent attention: a float64 reference of the paper's equations, the latent KV
cache (its size, and decoding through it under LoRA), causality, and refused settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import peft
from jaxlm.models import Decoder, from_config, registry
from jaxlm.models.latent_attention import LatentAttention
from jaxlm.peft.lora import apply_lora

T, D, N = 7, 24, 3


def mla_config(**overrides):
  fields = dict(style="llama", num_layers=2, num_heads=N, embed_dim=D, mlp_dim=32,
                max_seq_len=32, kv_lora_rank=10, q_lora_rank=12, qk_rope_head_dim=4,
                head_dim=10, v_head_dim=6, rope_theta=50.0)
  return from_config(registry.model_config("gpt2-124m", **{**fields, **overrides}),
                     vocab_size=64)


def rms(x, g, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g


def rope(x_TxNxP, theta):
  """Rotate-half RoPE at positions 0..T-1 over all of x's last dimension."""
  half = x_TxNxP.shape[-1] // 2
  angle = np.arange(len(x_TxNxP))[:, None] * theta ** (-np.arange(half) / half)
  cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
  x1, x2 = x_TxNxP[..., :half], x_TxNxP[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def reference(attn: LatentAttention, x_TxD: np.ndarray) -> np.ndarray:
  """DeepSeek-V2's MLA (section 2.1) in float64 from the module's weights, causal."""
  cfg = attn.cfg
  w = lambda m: np.asarray(m.kernel[...], np.float64)  # noqa: E731
  g = lambda m: np.asarray(m.scale[...], np.float64)  # noqa: E731
  r, p, h, eps = cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.head_size, cfg.norm_eps
  if cfg.q_lora_rank:
    q = rms(x_TxD @ w(attn.query_down), g(attn.query_down_norm), eps) @ w(attn.query_up)
  else:
    q = x_TxD @ w(attn.query)
  q = q.reshape(T, N, h)
  q = np.concatenate([rope(q[..., :p], cfg.rope_theta), q[..., p:]], -1)
  down = x_TxD @ w(attn.kv_down)
  c = rms(down[:, :r], g(attn.kv_down_norm), eps)
  k_rope = rope(down[:, None, r:], cfg.rope_theta)
  kv = (c @ w(attn.kv_up)).reshape(T, N, -1)
  k = np.concatenate([np.broadcast_to(k_rope, (T, N, p)), kv[..., :h - p]], -1)
  v = kv[..., h - p:]
  scores = np.einsum("tnh,snh->nts", q, k) / np.sqrt(h)
  scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("nts,snv->tnv", probs, v).reshape(T, -1) @ w(attn.out)


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": 0}, {"v_head_dim": 14}],
                         ids=["query-latent", "full-query", "values-wider-than-keys"])
def test_both_ways_of_attending_match_a_float64_reference(overrides):
  cfg = mla_config(**overrides)
  attn = LatentAttention(cfg, nnx.Rngs(0))
  x = np.asarray(jax.random.normal(jax.random.key(1), (T, D)), np.float64)
  want = reference(attn, x)
  positions = jnp.arange(T)[None]
  segments = jnp.ones((1, T), jnp.int32)
  expanded, _ = attn(jnp.asarray(x[None], jnp.float32), positions, segments, None)
  np.testing.assert_allclose(expanded[0], want, atol=2e-5, rtol=1e-4)
  # Through the latent cache (the absorbed form), as a prefill of all T positions.
  cache = Decoder(cfg, nnx.Rngs(0)).init_cache(1, T + 3)
  absorbed, (latent, rope_key) = attn(jnp.asarray(x[None], jnp.float32), positions, segments,
                                      (cache["k"][0], cache["v"][0], cache["segment_ids"]
                                       .at[:, :T].set(1), cache["index"]))
  np.testing.assert_allclose(absorbed[0], want, atol=2e-5, rtol=1e-4)
  assert latent.shape == (1, T + 3, 1, cfg.kv_lora_rank)
  assert rope_key.shape == (1, T + 3, 1, cfg.qk_rope_head_dim)


def test_the_cache_keeps_a_latent_and_one_rotary_key_per_position():
  cfg = mla_config()
  cache = Decoder(cfg, nnx.Rngs(0)).init_cache(2, 16)
  per_position = sum(x[0, 0].size for x in cache["k"] + cache["v"]) / cfg.num_layers
  assert per_position == cfg.kv_lora_rank + cfg.qk_rope_head_dim  # 14
  assert 2 * N * cfg.head_size == 60  # what per-head keys and values would take


def test_an_output_depends_on_no_later_position():
  attn = LatentAttention(mla_config(), nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (1, T, D))

  def output_at(x, t):
    out, _ = attn(x, jnp.arange(T)[None], jnp.ones((1, T), jnp.int32), None)
    return out[0, t].sum()

  for t in (0, 3):
    g = jax.grad(output_at)(x, t)[0]
    assert np.all(np.asarray(g[t + 1:]) == 0)
    assert np.all(np.abs(np.asarray(g[:t + 1])).sum(-1) > 0)


@nnx.jit
def forward(model, tokens, cache=None):
  return model(tokens, cache=cache)


@pytest.mark.parametrize("dora", [False, True])
def test_decoding_through_the_cache_under_lora_equals_the_full_forward(dora):
  """The absorbed form reads the LoRA- or DoRA-adapted latent expansion (not its base
  kernel): with a nonzero update and, for DoRA, moved magnitudes, decoding still equals the
  full forward."""
  model = Decoder(mla_config(), nnx.Rngs(0))
  paths = apply_lora(model, r"(kv_up|query_up)$", rank=2, alpha=4.0, rngs=nnx.Rngs(1),
                     dora=dora)
  assert len(paths) == 4
  graphdef, state = nnx.split(model)
  moved = ("lora_b", "lora_magnitude")
  state = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.3 if any(m in jax.tree_util.keystr(path) for m in moved) else x,
      state)
  model = nnx.merge(graphdef, state)
  tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, 64)
  full = forward(model, tokens)
  base = forward(Decoder(mla_config(), nnx.Rngs(0)), tokens)
  assert not np.allclose(full, base, atol=1e-3)  # the update matters
  logits, cache = forward(model, tokens[:, :5], model.init_cache(2, 12))
  steps = [logits]
  for t in range(5, 12):
    logits, cache = forward(model, tokens[:, t:t + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"kv_lora_rank": 0}, "needs model.kv_lora_rank > 0"),
    ({"qk_rope_head_dim": 3}, "must be even"),
    ({"qk_rope_head_dim": 10}, "below the query / key head size"),
    ({"num_kv_heads": 1}, "num_kv_heads"),
    ({"qk_norm": True}, "qk_norm"),
    ({"rope_fraction": 0.5}, "rope_fraction"),
    ({"style": "gpt2"}, "llama-style decoders"),
])
def test_settings_that_make_no_latent_attention_are_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    mla_config(**overrides)


def test_prefix_tuning_is_refused_with_a_latent_cache():
  model = Decoder(mla_config(), nnx.Rngs(0))
  with pytest.raises(ValueError, match="peft.method=prompt"):
    peft.wrap(model, {"method": "prefix", "prefix_len": 2, "prefix_hidden": 0}, nnx.Rngs(0))


def test_lora_targets_that_match_nothing_name_the_latent_projections():
  """The default targets (query|value) name no layer of a model with a query latent: the
  error lists the projections there are."""
  model = Decoder(mla_config(), nnx.Rngs(0))
  with pytest.raises(ValueError, match="attn/kv_down, attn/kv_up, attn/out, attn/query_down, "
                                       "attn/query_up"):
    apply_lora(model, r"attn/(query|value)$", rank=2, alpha=4.0, rngs=nnx.Rngs(1))
