"""LoRA dropout, adapters, prefix- and prompt-tuning on tiny models, against references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import peft
from jaxlm.models import Decoder, Encoder, from_config, layers, registry
from jaxlm.models import factory
from jaxlm.peft import adapters, lora, params as peft_params
from test_sampling import stepwise_logits

BASE = dict(method="none", targets=r"attn/(query|value)$", rank=4, alpha=8.0, include="",
            exclude="")


def small(style="gpt2", **kw):
  return from_config(registry.model_config(
      "gpt2-124m", style=style, num_layers=2, num_heads=4,
      num_kv_heads=2 if style == "llama" else 0, embed_dim=32, mlp_dim=64, max_seq_len=32, **kw), vocab_size=64)


def wrapped(style="gpt2", **peft_cfg):
  return peft.wrap(Decoder(small(style), nnx.Rngs(0)), {**BASE, **peft_cfg}, nnx.Rngs(1))


def randomize(model, names, seed=0, std=0.1):
  """Sets the named PEFT variables to random values (so their path matters)."""
  for i, (path, var) in enumerate(nnx.iter_graph(model)):
    if isinstance(var, nnx.LoRAParam) and path[-1] in names:
      var.set_value(std * jax.random.normal(jax.random.key(seed + i), var[...].shape))
  return model


TOKENS = jax.random.randint(jax.random.key(0), (2, 12), 0, 64)


# --- LoRA dropout ---------------------------------------------------------------------------

def test_lora_dropout_matches_hand_computation_on_the_lora_path_only():
  base = layers.dense(8, 6, ("embed", "heads"), bias=True, dtype=jnp.float32, rngs=nnx.Rngs(0))
  layer = lora.LoRALinear(base, rank=2, alpha=4.0, rngs=nnx.Rngs(1), dropout=0.25)
  layer.lora_b.set_value(jax.random.normal(jax.random.key(2), (2, 6)))
  x = np.asarray(jax.random.normal(jax.random.key(3), (3, 8)))
  key = jax.random.key(4)
  keep = np.asarray(jax.random.bernoulli(key, 0.75, x.shape))
  w, b = np.asarray(base.kernel[...]), np.asarray(base.bias[...])
  a, bb = np.asarray(layer.lora_a[...]), np.asarray(layer.lora_b[...])
  want = x @ w + b + 2.0 * (np.where(keep, x / 0.75, 0.0) @ a @ bb)
  np.testing.assert_allclose(layer(jnp.asarray(x), rng=key), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layer(jnp.asarray(x)), x @ w + b + 2.0 * (x @ a @ bb), rtol=1e-5,
                             atol=1e-5)  # no key: evaluation, exact


def test_lora_dropout_in_the_model():
  key = jax.random.key(7)
  off = randomize(wrapped(method="lora"), {"lora_b"})
  on = randomize(wrapped(method="lora", dropout=0.3), {"lora_b"})
  # Rate 0: a key changes nothing; evaluation (no key) is unaffected by the rate.
  np.testing.assert_array_equal(off(TOKENS, dropout_rng=key), off(TOKENS))
  np.testing.assert_array_equal(on(TOKENS), off(TOKENS))
  # Rate > 0 with a key: outputs differ from evaluation, reproducibly, and per key.
  train = on(TOKENS, dropout_rng=key)
  assert np.abs(np.asarray(train - on(TOKENS))).max() > 1e-3
  np.testing.assert_array_equal(train, on(TOKENS, dropout_rng=key))
  assert np.abs(np.asarray(train - on(TOKENS, dropout_rng=jax.random.key(8)))).max() > 1e-3
  # With B = 0 the LoRA path adds nothing, so dropout on it leaves the base path untouched.
  fresh = wrapped(method="lora", dropout=0.3)
  np.testing.assert_array_equal(fresh(TOKENS, dropout_rng=key), fresh(TOKENS))


# --- adapters -------------------------------------------------------------------------------

@pytest.mark.parametrize("style,placement", [("gpt2", "both"), ("llama", "attn"),
                                             ("llama", "mlp")])
def test_fresh_adapters_are_exactly_the_base_model(style, placement):
  base = Decoder(small(style), nnx.Rngs(0))
  model = wrapped(style, method="adapter", adapter_size=8, adapter_placement=placement)
  np.testing.assert_array_equal(model(TOKENS), base(TOKENS))
  state = nnx.split(model)[1]
  mask = peft.trainable_mask(state, {**BASE, "method": "adapter"})
  trainable, total = peft.counts(nnx.to_pure_dict(state), mask)
  per_adapter = 32 * 8 + 8 + 8 * 32 + 32
  sites = {"both": 2, "attn": 1, "mlp": 1}[placement]
  assert trainable == 2 * sites * per_adapter
  assert total == trainable + sum(x.size for x in jax.tree.leaves(nnx.split(base)[1]))
  block = nnx.to_pure_dict(state)["blocks"][0]
  assert ("attn_adapter" in block) == (placement != "mlp")
  assert ("mlp_adapter" in block) == (placement != "attn")


@pytest.mark.parametrize("name", ["bert-tiny", "t5-v1.1-small"])
def test_adapters_in_encoder_and_encoder_decoder_blocks(name):
  """Fresh adapters leave BERT / T5 exactly as they were; random ones change the output, in
  every block (both T5 stacks), also through T5's cached decoding."""
  cfg = from_config(registry.model_config(name, num_layers=2, num_heads=4, head_dim=8,
                                          embed_dim=32, mlp_dim=64, max_seq_len=32),
                    vocab_size=64)
  args = (TOKENS, TOKENS) if name.startswith("t5") else (TOKENS,)
  base = factory.create(cfg, nnx.Rngs(0))
  model = peft.wrap(factory.create(cfg, nnx.Rngs(0)), {**BASE, "method": "adapter",
                                                      "adapter_size": 8,
                                                      "adapter_placement": "both"},
                    nnx.Rngs(1))
  np.testing.assert_array_equal(model(*args), base(*args))
  blocks = peft_params.blocks_of(model)
  assert len(blocks) == (4 if name.startswith("t5") else 2)
  for block, repeats in blocks:
    assert repeats == 0  # per-layer blocks
    assert isinstance(block.attn_adapter, adapters.Adapter)
    assert isinstance(block.mlp_adapter, adapters.Adapter)
  randomize(model, {"up", "up_bias"})
  assert not np.allclose(model(*args), base(*args), atol=1e-3)
  if name.startswith("t5"):  # the cached decoder steps go through the adapters too
    encoded = model.encode(TOKENS)
    cache = model.init_cache(encoded, None, TOKENS.shape[1])
    np.testing.assert_allclose(model.decode_step(TOKENS, cache)[0], model(*args), atol=1e-5,
                               rtol=1e-5)


def test_t5_prompt_equals_the_base_model_on_prepended_tokens():
  """T5 as Lester et al. prompt-tune it: a soft prompt set to the embeddings of tokens w makes
  the prompt model on right-padded x equal the base model on [w, x], in teacher forcing and
  in cached decoding (the virtual tokens join each row's segment, so padding stays out)."""
  cfg = from_config(registry.model_config("t5-v1.1-small", num_layers=2, num_heads=4,
                                          head_dim=8, embed_dim=32, mlp_dim=64,
                                          max_seq_len=32), vocab_size=64)
  base = factory.create(cfg, nnx.Rngs(0))
  model = peft.wrap(factory.create(cfg, nnx.Rngs(0)), {**BASE, "method": "prompt",
                                                      "prompt_len": 4}, nnx.Rngs(1))
  w = jax.random.randint(jax.random.key(1), (4,), 0, 64)
  model.soft_prompt.table.set_value(base.embed(w))
  x = TOKENS[:, :9]
  x_segments = jnp.array([[1] * 9, [1] * 6 + [0] * 3])
  wx = jnp.concatenate([jnp.broadcast_to(w, (2, 4)), x], 1)
  wx_segments = jnp.concatenate([jnp.ones((2, 4), jnp.int32), x_segments], 1)
  y = TOKENS[:, 9:]
  np.testing.assert_allclose(model(x, y, x_segments), base(wx, y, wx_segments), atol=1e-5,
                             rtol=1e-5)
  cache = model.init_cache(model.encode(x, x_segments), x_segments, y.shape[1])
  want = base.init_cache(base.encode(wx, wx_segments), wx_segments, y.shape[1])
  np.testing.assert_allclose(model.decode_step(y, cache)[0], base.decode_step(y, want)[0],
                             atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="needs a decoder .* or an encoder-decoder"):
    peft.wrap(factory.create(from_config(registry.model_config(
        "bert-tiny", num_layers=1, num_heads=4, head_dim=8, embed_dim=32, mlp_dim=64,
        max_seq_len=32), vocab_size=64), nnx.Rngs(0)), {**BASE, "method": "prompt",
                                                        "prompt_len": 4}, nnx.Rngs(1))


def test_adapter_matches_hand_computation():
  adapter = randomize(adapters.Adapter(6, 3, nnx.Rngs(0)), {"up", "up_bias", "down_bias"})
  h = np.asarray(jax.random.normal(jax.random.key(1), (2, 4, 6)))
  p = {k: np.asarray(getattr(adapter, k)[...]) for k in ("down", "down_bias", "up", "up_bias")}
  z = h @ p["down"] + p["down_bias"]
  gelu = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
  np.testing.assert_allclose(adapter(jnp.asarray(h)), h + gelu @ p["up"] + p["up_bias"],
                             rtol=1e-5, atol=1e-5)


# --- prefix- and prompt-tuning --------------------------------------------------------------

@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_prefix_equals_the_base_model_continuing_after_the_prefix_tokens(style):
  """Prefix keys/values taken from the base model's cache of some tokens w: the prefix
  model on x must equal the base model reading x after w (an independent, plain-cache path),
  and every packed document must see the prefix but not the other documents."""
  w = jax.random.randint(jax.random.key(1), (1, 5), 0, 64)
  x = jax.random.randint(jax.random.key(2), (1, 7), 0, 64)
  y = jax.random.randint(jax.random.key(3), (1, 4), 0, 64)

  @nnx.jit
  def run(base, model):
    _, cache = base(w, cache=base.init_cache(1, 12))
    kv = lambda c: jnp.stack([layer[0, :5].reshape(5, -1) for layer in c])
    keys, values = kv(cache["k"]), kv(cache["v"])
    model.prefix.keys.set_value(keys)
    model.prefix.values.set_value(values)
    want, _ = base(x, jnp.arange(7)[None], cache=cache)
    # Packed: [x | y] with segments 1, 2 and restarting positions.
    packed = model(jnp.concatenate([x, y], 1),
                   jnp.concatenate([jnp.arange(7), jnp.arange(4)])[None],
                   jnp.array([[1] * 7 + [2] * 4]))
    return want, model(x), packed, model(y)

  want, got, packed, alone = run(Decoder(small(style), nnx.Rngs(0)),
                                 wrapped(style, method="prefix", prefix_len=5))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[:, :7], want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[:, 7:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_prompt_equals_the_base_model_on_prepended_tokens(style):
  """A soft prompt set to the input embeddings of tokens w: the prompt model on x must equal
  the base model on [w, x] (dropping w's outputs), with x at positions 0.. in both; w sits at
  -V..-1 under RoPE, while GPT-2 style puts w's position embeddings into the soft prompt."""
  w = jax.random.randint(jax.random.key(1), (4,), 0, 64)
  x = jax.random.randint(jax.random.key(2), (2, 9), 0, 64)
  w_positions = jnp.arange(4) if style == "gpt2" else jnp.arange(-4, 0)

  @nnx.jit
  def run(base, model):
    soft = base.embed(w)
    if style == "gpt2":
      soft = soft + base.pos_embed(w_positions)
    model.soft_prompt.table.set_value(soft)
    tokens = jnp.concatenate([jnp.broadcast_to(w, (2, 4)), x], 1)
    positions = jnp.broadcast_to(jnp.concatenate([w_positions, jnp.arange(9)]), (2, 13))
    return model(x), base(tokens, positions)[:, 4:]

  got, want = run(Decoder(small(style), nnx.Rngs(0)), wrapped(style, method="prompt", prompt_len=4))
  assert got.shape == (2, 9, 64)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style,peft_cfg", [
    ("gpt2", dict(method="prefix", prefix_len=3, prefix_hidden=16)),
    ("llama", dict(method="prefix", prefix_len=3)),
    ("gpt2", dict(method="prompt", prompt_len=3)),
    ("llama", dict(method="prompt", prompt_len=3, prompt_hidden=8))])
def test_cached_logits_equal_the_full_forward(style, peft_cfg):
  @nnx.jit
  def run(model):
    cache = model.init_cache(2, 14)
    start = (cache["k"][0].shape[1], cache["index"])
    return model(TOKENS), stepwise_logits(model, TOKENS[:, :12], cache, 5), start

  full, cached, (slots, index) = run(randomize(wrapped(style, **peft_cfg), {"w2", "b2"}))
  assert slots == 3 + 14 and int(index) == 3  # the prefix takes the first 3 slots
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)


def test_prefix_gradients_reach_only_the_prefix_parameters():
  model = wrapped("llama", method="prefix", prefix_len=3, prefix_hidden=8)
  graphdef, state = nnx.split(model)
  grads = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p)(TOKENS).sum()))(nnx.to_pure_dict(state))
  flat = {peft.path_name(k): np.abs(np.asarray(v)).max()
          for k, v in jax.tree_util.tree_flatten_with_path(grads["prefix"])[0]}
  assert set(flat) == {"table", "w1", "b1", "w2", "b2"} and all(v > 0 for v in flat.values())


# --- configuration errors and the gpt2-124m fractions ---------------------------------------

def test_bad_peft_settings_are_clear_errors():
  with pytest.raises(ValueError, match="peft.method must be one of"):
    wrapped(method="ia3")
  with pytest.raises(ValueError, match="adapter_placement"):
    wrapped(method="adapter", adapter_placement="ffn")
  with pytest.raises(ValueError, match="prefix_len"):
    wrapped(method="prefix", prefix_len=0)
  with pytest.raises(ValueError, match="peft.dropout"):
    wrapped(method="lora", dropout=1.0)
  with pytest.raises(ValueError, match="needs a decoder"):
    cfg = from_config(registry.model_config("gpt2-124m", style="bert", num_layers=1, num_heads=2,
                                            embed_dim=16, mlp_dim=32, max_seq_len=8),
                      vocab_size=32)
    peft.wrap(Encoder(cfg, nnx.Rngs(0)), {**BASE, "method": "prompt"}, nnx.Rngs(0))
  with pytest.raises(ValueError, match="prefix-LM"):
    wrapped(method="prefix", prefix_len=2)(TOKENS, prefix_BxT=jnp.zeros(TOKENS.shape, bool))


# (settings, trainable count by hand, bound on the trainable fraction). The prefix MLP is a
# training-time reparameterisation: it makes the prefix larger to train than to keep.
@pytest.mark.parametrize("peft_cfg,want,bound", [
    (dict(method="lora", rank=8), 12 * 2 * (768 * 8 + 8 * 768), 0.01),
    (dict(method="adapter", adapter_size=64, adapter_placement="both"),
     12 * 2 * (768 * 64 + 64 + 64 * 768 + 768), 0.02),
    (dict(method="adapter", adapter_size=16, adapter_placement="mlp"),
     12 * (768 * 16 + 16 + 16 * 768 + 768), 0.01),
    (dict(method="prefix", prefix_len=16), 2 * 12 * 16 * 768, 0.01),
    (dict(method="prefix", prefix_len=16, prefix_hidden=512),
     16 * 768 + 768 * 512 + 512 + (512 + 1) * 2 * 12 * 768, 0.08),
    (dict(method="prompt", prompt_len=16), 16 * 768, 0.0001),
    (dict(method="prompt", prompt_len=16, prompt_hidden=128),
     16 * 768 + 768 * 128 + 128 + 128 * 768 + 768, 0.01)])
def test_trainable_fraction_on_gpt2_124m(peft_cfg, want, bound):
  cfg = from_config(registry.model_config("gpt2-124m"), vocab_size=50304)
  full = {**BASE, **peft_cfg}
  model = nnx.eval_shape(lambda: peft.wrap(Decoder(cfg, nnx.Rngs(0)), full, nnx.Rngs(1)))
  state = nnx.split(model)[1]
  trainable, total = peft.counts(nnx.to_pure_dict(state), peft.trainable_mask(state, full))
  assert trainable == want
  base_total = 124_475_904  # GPT-2 small with the vocabulary padded to 50304
  assert total == base_total + want
  assert trainable / total < bound
