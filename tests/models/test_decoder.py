"""Decoder semantics: causality and document isolation by gradient, sizes, styles, axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.models import (Decoder, from_config, layers, matmul_param_count, param_count,
                          registry)


def tiny(style: str, **kw):
  base = dict(style=style, num_layers=2, num_heads=4, num_kv_heads=2 if style == "llama" else 0,
              embed_dim=32, mlp_dim=64, max_seq_len=16)
  if style == "neox":  # Pythia's options: partial rotary, parallel attention and MLP
    base.update(rope_fraction=0.5, parallel_residual=True)
  return from_config(registry.model_config("gpt2-124m", **{**base, **kw}), vocab_size=64)


def input_jacobian(model, tokens, segment_ids=None, prefix_BxT=None):
  """|d logits[t] / d embedding[s]| summed over features: (T, S)."""
  emb = model.embed(tokens)
  def logits_from(e):
    model_copy = nnx.merge(*nnx.split(model))
    model_copy.embed = _FixedEmbed(e, model.embed)
    return model_copy(tokens, segment_ids_BxT=segment_ids, prefix_BxT=prefix_BxT)[0].sum(-1)
  jac = jax.jit(jax.jacrev(logits_from))(emb)  # (T, 1, S, D); eagerly, an XLA program an op
  return jnp.abs(jac[:, 0]).sum(-1)


class _FixedEmbed(nnx.Module):
  """Returns given embeddings (so gradients flow to them) but still attends with the table."""

  def __init__(self, e, embed):
    self.e = nnx.Variable(e)
    self.table = embed

  def __call__(self, tokens):
    return self.e[...]

  def attend(self, x):
    return self.table.attend(x)


@pytest.mark.parametrize("style", ["gpt2", "llama", "neox"])
def test_causal_by_gradient(style):
  model = Decoder(tiny(style), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (1, 8), 0, 64)
  jac = np.asarray(input_jacobian(model, tokens))
  future = np.triu(np.ones((8, 8), bool), k=1)
  assert np.all(jac[future] == 0.0)
  assert np.all(jac[~future] > 0.0)


def test_sliding_window_by_gradient():
  """With a window of 3, each of the 2 layers reaches 2 positions back: 4 in all."""
  model = Decoder(tiny("llama", sliding_window=3), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (1, 10), 0, 64)
  jac = np.asarray(input_jacobian(model, tokens))
  t, s = np.indices((10, 10))
  seen = (s <= t) & (s >= t - 4)
  assert np.all(jac[~seen] == 0.0) and np.all(jac[seen] > 0.0)


def test_sliding_window_with_attention_dropout_is_the_same_window():
  """The attention-dropout path (XLA by hand) masks the window as the fused call does."""
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 9, 4, 8))
  fused = layers.dot_product_attention(q, k, v, None, causal=True, impl="xla", window=3)
  by_hand = layers.dot_product_attention(q, k, v, None, causal=True, impl="xla", window=3,
                                         dropout_rate=1e-12, dropout_rng=jax.random.key(1))
  full = layers.dot_product_attention(q, k, v, None, causal=True, impl="xla")
  np.testing.assert_allclose(by_hand, fused, rtol=1e-5, atol=1e-6)
  # the first 3 queries see all their keys either way; later ones lose the far keys
  np.testing.assert_allclose(full[:, :3], fused[:, :3], rtol=1e-5, atol=1e-6)
  assert not np.allclose(full[:, 3:], fused[:, 3:], atol=1e-3)


@pytest.mark.parametrize("style", ["gpt2", "llama", "neox"])
def test_packed_documents_do_not_see_each_other(style):
  model = Decoder(tiny(style), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(2), (1, 8), 0, 64)
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
  jac = np.asarray(input_jacobian(model, tokens, segments))
  same = segments[0][:, None] == segments[0][None, :]
  assert np.all(jac[~same] == 0.0)


def test_named_sizes_match_published_counts():
  cfg = from_config(registry.model_config("gpt2-124m"), vocab_size=50304)
  _, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))))
  params = nnx.to_pure_dict(state)
  assert param_count(params) == 124_475_904
  assert matmul_param_count(cfg, params) == 123_689_472  # nanoGPT's "123.69M" (no wpe)
  with pytest.raises(KeyError, match="unknown model size"):
    registry.model_config("gpt5")


def test_llama_style_structure():
  cfg = tiny("llama")
  model = Decoder(cfg, nnx.Rngs(0))
  assert not hasattr(model, "pos_embed") and hasattr(model, "head")
  assert isinstance(model.final_norm, nnx.RMSNorm)
  assert model.blocks[0].attn.key.kernel[...].shape == (32, 2 * 8)  # 2 kv heads of 8
  assert model.blocks[0].attn.query.bias is None
  gpt = Decoder(tiny("gpt2"), nnx.Rngs(0))
  assert hasattr(gpt, "pos_embed") and not hasattr(gpt, "head")
  assert isinstance(gpt.final_norm, nnx.LayerNorm)


@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "qkv_bias": True}])
def test_every_parameter_has_logical_axes(options):
  cfg = tiny("llama", **options)
  _, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))))
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for v in leaves:
    names = v.get_metadata().get("out_sharding")
    assert names is not None and len(names) == v.get_value().ndim, v


def test_bad_model_configs():
  with pytest.raises(ValueError, match="multiple of"):
    tiny("llama", num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="style"):
    tiny("mamba")
  with pytest.raises(ValueError, match="smaller than the tokenizer"):
    from_config(registry.model_config("gpt2-124m", vocab_size=10), vocab_size=64)
  with pytest.raises(ValueError, match="only the llama and neox styles use"):
    tiny("gpt2", rope_scaling="linear", rope_factor=2.0)
  with pytest.raises(ValueError, match="only the llama and neox styles use"):
    tiny("bert", rope_fraction=0.5)
  with pytest.raises(ValueError, match="even number of dimensions"):
    tiny("neox", rope_fraction=0.1)
  with pytest.raises(ValueError, match="parallel_residual is for decoders"):
    tiny("t5", parallel_residual=True)
  with pytest.raises(ValueError, match="rope_low_freq_factor"):
    tiny("llama", rope_scaling="llama3", rope_low_freq_factor=4.0, rope_high_freq_factor=1.0)
  with pytest.raises(ValueError, match="rope_scaling must be one of"):
    tiny("llama", rope_scaling="dynamic")
  with pytest.raises(ValueError, match="rope_beta_slow"):
    tiny("llama", rope_scaling="yarn", rope_factor=4.0, rope_beta_fast=1.0, rope_beta_slow=32.0)
  with pytest.raises(ValueError, match="rotary_dim / 2 = 4 numbers each"):  # head size 8
    tiny("llama", rope_scaling="longrope", rope_short_factor=[1.0] * 4, rope_long_factor=[2.0])
  with pytest.raises(ValueError, match="and other scalings neither"):
    tiny("llama", rope_short_factor=[1.0] * 4, rope_long_factor=[2.0] * 4)
  with pytest.raises(ValueError, match="for the llama style"):
    tiny("gpt2", sandwich_norm=True)
  with pytest.raises(ValueError, match="needs model.sliding_window"):
    tiny("llama", sliding_global_every=2)
  with pytest.raises(ValueError, match="mlp_activation"):
    tiny("llama", mlp_activation="tanh")
  with pytest.raises(ValueError, match="shared_norm needs model.parallel_residual"):
    tiny("llama", shared_norm=True)
  with pytest.raises(ValueError, match="head_bias is for decoders with an untied"):
    tiny("gpt2", head_bias=True)


def test_shared_norm_is_a_parallel_block_with_both_norms_equal():
  """Phi's block, x + attn(n(x)) + mlp(n(x)), has no MLP norm and equals GPT-NeoX's
  parallel block whose MLP norm is a copy of the attention norm; its head has a bias."""
  phi = Decoder(tiny("neox", shared_norm=True, head_bias=True, qk_norm=True), nnx.Rngs(0))
  assert not hasattr(phi.blocks[0], "mlp_norm") and phi.head.bias[...].shape == (64,)
  phi.head.bias[...] = jax.random.normal(jax.random.key(5), (64,))
  for block in phi.blocks:  # norms away from their ones / zeros init, so copying matters
    block.attn_norm.scale[...] = 1 + 0.3 * jax.random.normal(jax.random.key(6), (32,))
    block.attn_norm.bias[...] = 0.3 * jax.random.normal(jax.random.key(7), (32,))
  neox = Decoder(tiny("neox", head_bias=True, qk_norm=True), nnx.Rngs(1))
  nnx.update(neox, nnx.state(phi))
  for a, b in zip(neox.blocks, phi.blocks):
    a.mlp_norm.scale[...], a.mlp_norm.bias[...] = b.attn_norm.scale[...], b.attn_norm.bias[...]
  tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, 64)
  np.testing.assert_allclose(neox(tokens), phi(tokens), rtol=1e-5, atol=1e-5)
  neox.blocks[0].mlp_norm.bias[...] += 0.5  # the MLP's own norm is what the copy stood for
  assert not np.allclose(neox(tokens), phi(tokens), atol=1e-3)


def test_prefix_is_bidirectional_and_the_rest_causal():
  model = Decoder(tiny("llama"), nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(3), (1, 8), 0, 64)
  jac = np.asarray(input_jacobian(model, tokens, prefix_BxT=jnp.arange(8)[None] < 3))
  allowed = np.tril(np.ones((8, 8), bool))
  allowed[:3, :3] = True  # the prefix sees all of itself
  assert np.all(jac[~allowed] == 0.0) and np.all(jac[allowed] > 0.0)


def test_writing_past_the_kv_cache_is_an_error():
  """Eagerly, a write that would clamp onto the last slots raises; one that fits does not."""
  model = Decoder(tiny("llama"), nnx.Rngs(0))
  tokens = jnp.ones((1, 3), jnp.int32)
  _, cache = model(tokens, cache=model.init_cache(1, 5))
  with pytest.raises(ValueError, match="5 slots; writing 3 tokens at slot 3"):
    model(tokens, cache=cache)
  _, cache = model(tokens[:, :2], cache=cache)
  assert int(cache["index"]) == 5
