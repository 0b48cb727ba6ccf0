"""Sampling: KV-cache decoding equals recomputation (decoder-only and T5); filters; EOS; context limits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import sampling
from jaxlm.models import Decoder, EncoderDecoder, from_config, registry


# Multi-head latent attention: a query latent, values narrower than the query / key heads.
MLA = dict(kv_lora_rank=12, q_lora_rank=16, qk_rope_head_dim=4, head_dim=10, v_head_dim=6)


def make_model(style, max_seq_len=32):
  """A tiny decoder of `style`; "llama+window" is Llama with a sliding window of 5; "mla" is
  Llama with multi-head latent attention."""
  style, _, window = style.partition("+")
  mla = MLA if style == "mla" else {}
  style = "llama" if mla else style
  cfg = from_config(registry.model_config(
      "gpt2-124m", style=style, num_layers=2, num_heads=4,
      num_kv_heads=2 if style == "llama" and not mla else 0, embed_dim=32, mlp_dim=64,
      max_seq_len=max_seq_len, sliding_window=5 if window else 0, **mla), vocab_size=64)
  model = Decoder(cfg, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)


def greedy_by_recompute(model, prompt, n, context, prefix_lm=False):
  """Greedy decoding by a full forward pass over the last `context` tokens at every step;
  with `prefix_lm`, the prompt's tokens in that window attend to each other both ways.

  Rows are right-padded to one fixed shape (one compile): causal attention makes the logits
  at the last real position independent of whatever follows it.
  """
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda p, x, prefix: nnx.merge(graphdef, p)(x, prefix_BxT=prefix))
  seq = list(prompt)
  margins = []
  for _ in range(n):
    window = seq[-context:]
    row = np.zeros((1, context), np.int32)
    row[0, :len(window)] = window
    prompt_in_window = len(prompt) - (len(seq) - len(window))
    prefix = np.arange(context)[None] < prompt_in_window if prefix_lm else None
    logits = np.asarray(forward(state, jnp.asarray(row), prefix)[0, len(window) - 1])
    top2 = np.sort(logits)[-2:]
    margins.append(top2[1] - top2[0])
    seq.append(int(np.argmax(logits)))
  return seq[len(prompt):], margins


def matching_tokens(got, want, margins, tie=1e-3) -> int:
  """Asserts `got == want` token by token up to the first near-tie (top-2 margin <= `tie`,
  which a different summation order may flip); returns how many tokens were compared."""
  compared = 0
  for g, w, m in zip(got, want, margins):
    if m <= tie:
      break
    assert g == w
    compared += 1
  return compared


@nnx.jit
def forward(model, tokens_BxT, cache=None, prefix_BxT=None):
  """`model(tokens_BxT, cache=cache, prefix_BxT=prefix_BxT)`, compiled (run eagerly, each of
  its ops would be an XLA program of its own)."""
  return model(tokens_BxT, cache=cache, prefix_BxT=prefix_BxT)


def stepwise_logits(model, tokens_BxT, cache, prefill: int):
  """Logits of `tokens` fed through the KV cache: a `prefill`-token chunk, then one token at a
  time (concatenated over time)."""
  logits, cache = forward(model, tokens_BxT[:, :prefill], cache)
  chunks = [logits]
  for t in range(prefill, tokens_BxT.shape[1]):
    logits, cache = forward(model, tokens_BxT[:, t:t + 1], cache)
    chunks.append(logits)
  return jnp.concatenate(chunks, 1)


@pytest.mark.parametrize("style", ["gpt2", "llama", "llama+window", "mla", "mla+window"])
def test_cached_logits_equal_full_forward(style):
  model, _, _ = make_model(style)
  tokens = jax.random.randint(jax.random.key(0), (2, 20), 0, 64)
  full = forward(model, tokens)
  cache = model.init_cache(2, 24)
  np.testing.assert_allclose(stepwise_logits(model, tokens, cache, 9), full, atol=1e-5,
                             rtol=1e-5)


@pytest.mark.parametrize("style", ["gpt2", "llama", "llama+window", "mla"])
def test_batched_greedy_generation_matches_recomputation(style):
  model, graphdef, params = make_model(style, max_seq_len=24)
  prompts = [[5, 6, 7], list(range(10, 21)), [9]]  # different lengths: left padding
  # 20 new tokens: the first ones use the KV cache, the rest slide a 24-token window.
  out = sampling.generate(graphdef, params, prompts,
                          sampling.SamplingConfig(temperature=0.0, max_new_tokens=20),
                          jax.random.key(0), eos_id=-1)
  for prompt, got in zip(prompts, out):
    want, margins = greedy_by_recompute(model, prompt, 20, 24)
    matching_tokens(got, want, margins)


@pytest.mark.parametrize("style", ["gpt2", "llama+window", "mla+window"])
def test_a_prefix_lm_prompt_in_the_cache_sees_itself_both_ways(style):
  model, _, _ = make_model(style)
  tokens = jax.random.randint(jax.random.key(0), (2, 20), 0, 64)
  prefix = jnp.arange(20)[None] < 9  # longer than the window of 5: both limits apply
  full = forward(model, tokens, prefix_BxT=jnp.broadcast_to(prefix, (2, 20)))
  logits, cache = forward(model, tokens[:, :9], model.init_cache(2, 24), jnp.ones((2, 9), bool))
  causal_logits, _ = forward(model, tokens[:, :9], model.init_cache(2, 24))
  assert not np.allclose(logits, causal_logits, atol=1e-3)  # the mask matters
  cached = jnp.concatenate([logits, stepwise_logits(model, tokens[:, 9:], cache, 1)], 1)
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)


def test_prefix_lm_generation_matches_recomputation():
  model, graphdef, params = make_model("llama", max_seq_len=24)
  prompts = [[5, 6, 7], list(range(10, 30)), [9]]  # 4 tokens from the cache, then a window
  scfg = sampling.SamplingConfig(temperature=0.0, max_new_tokens=20, prefix_lm=True)
  out = sampling.generate(graphdef, params, prompts, scfg, jax.random.key(0), eos_id=-1)
  causal = sampling.generate(graphdef, params, prompts, dataclasses.replace(scfg, prefix_lm=False),
                             jax.random.key(0), eos_id=-1)
  assert out != causal
  compared = 0
  for prompt, got in zip(prompts, out):
    want, margins = greedy_by_recompute(model, prompt, 20, 24, prefix_lm=True)
    compared += matching_tokens(got, want, margins, tie=1e-4)  # fp32 agrees far closer
  assert compared >= 50


def test_filters_keep_the_right_tokens():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda x: (np.asarray(x) > -1e30).astype(int).tolist()[0]
  assert kept(sampling.filter_logits(logits, top_k=2, top_p=1.0)) == [1, 1, 0, 0, 0]
  # Nucleus: 0.5 + 0.2 = 0.7 < 0.8, so the third token (0.15) is needed to pass 0.8.
  assert kept(sampling.filter_logits(logits, top_k=0, top_p=0.8)) == [1, 1, 1, 0, 0]
  assert kept(sampling.filter_logits(logits, top_k=0, top_p=0.5)) == [1, 0, 0, 0, 0]
  assert kept(sampling.filter_logits(logits, top_k=4, top_p=0.75)) == [1, 1, 1, 0, 0]
  # min_p 0.3: tokens below 0.3 x 0.5 = 0.15 go (0.15 itself stays).
  assert kept(sampling.filter_logits(logits, top_k=0, top_p=1.0, min_p=0.3)) == [1, 1, 1, 0, 0]
  # ... of what top-k left, renormalised: 0.2 / 0.7 < 0.6 x 0.5 / 0.7.
  assert kept(sampling.filter_logits(logits, top_k=2, top_p=1.0, min_p=0.6)) == [1, 0, 0, 0, 0]


def test_filters_match_transformers_warpers():
  """Temperature, top-k, top-p and min-p together, as transformers' warpers chain them."""
  import torch
  from transformers.generation import logits_process as lp
  logits = np.random.default_rng(0).normal(0, 3, (64, 50)).astype(np.float32)
  for t, k, p, m in ((0.7, 10, 0.9, 0.1), (1.3, 0, 0.8, 0.05), (1.0, 20, 1.0, 0.3)):
    chain = [lp.TemperatureLogitsWarper(t)] + ([lp.TopKLogitsWarper(k)] if k else []) + [
        lp.TopPLogitsWarper(p) if p < 1 else None, lp.MinPLogitsWarper(m)]
    ref = torch.tensor(logits)
    for warper in filter(None, chain):
      ref = warper(None, ref)
    ours = sampling.filter_logits(jnp.asarray(logits) / t, k, p, m)
    np.testing.assert_array_equal(np.asarray(ours) > -1e30, np.isfinite(ref.numpy()))


def test_sampling_follows_the_distribution():
  logits = jnp.log(jnp.array([[0.6, 0.3, 0.1]] * 4000))
  cfg = sampling.SamplingConfig(temperature=1.0, top_k=2)
  draws = np.asarray(sampling.next_token(logits, jax.random.key(3), cfg))
  assert set(np.unique(draws)) == {0, 1}
  assert abs((draws == 0).mean() - 2 / 3) < 0.03


def test_generation_stops_at_eos():
  model, graphdef, params = make_model("gpt2")
  free = sampling.generate(graphdef, params, [[1, 2]], sampling.SamplingConfig(
      temperature=0.0, max_new_tokens=10), jax.random.key(0), eos_id=-1)[0]
  eos = free[3]  # make the 4th greedy token the EOS
  out = sampling.generate(graphdef, params, [[1, 2]], sampling.SamplingConfig(
      temperature=0.0, max_new_tokens=10), jax.random.key(0), eos_id=eos)[0]
  assert out == free[:free.index(eos) + 1]


def test_bad_prompts_are_clear_errors():
  _, graphdef, params = make_model("gpt2", max_seq_len=16)
  cfg = sampling.SamplingConfig(max_new_tokens=4)
  with pytest.raises(ValueError, match="longer than the model context of 16"):
    sampling.generate(graphdef, params, [list(range(17))], cfg, jax.random.key(0), eos_id=3)
  with pytest.raises(ValueError, match="empty"):
    sampling.generate(graphdef, params, [[]], cfg, jax.random.key(0), eos_id=3)
  with pytest.raises(ValueError, match="top_p"):
    sampling.SamplingConfig(top_p=0.0)


def make_t5(max_seq_len=16):
  cfg = from_config(registry.model_config(
      "t5-v1.1-small", num_layers=2, num_heads=4, head_dim=8, embed_dim=32, mlp_dim=64,
      max_seq_len=max_seq_len), vocab_size=64)
  model = EncoderDecoder(cfg, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)


def test_t5_cached_decoding_equals_teacher_forcing():
  model, _, _ = make_t5()
  inputs = jax.random.randint(jax.random.key(0), (2, 10), 1, 64)
  segments = jnp.array([[1] * 10, [1] * 6 + [0] * 4])  # row 1: encoder padding
  targets = jax.random.randint(jax.random.key(1), (2, 12), 1, 64)
  encoded = nnx.jit(lambda m: m.encode(inputs, segments))(model)
  full = nnx.jit(lambda m: m.decode(encoded, segments, targets))(model)
  cache = model.init_cache(encoded, segments, 14)
  step = nnx.jit(lambda m, x, c: m.decode_step(x, c))
  logits, cache = step(model, targets[:, :5], cache)  # a 5-token chunk, then one by one
  chunks = [logits]
  for t in range(5, 12):
    logits, cache = step(model, targets[:, t:t + 1], cache)
    chunks.append(logits)
  np.testing.assert_allclose(jnp.concatenate(chunks, 1), full, atol=1e-5, rtol=1e-5)
  assert int(cache["index"]) == 12


def test_t5_greedy_generation_matches_recomputation():
  model, graphdef, params = make_t5()
  inputs = [[5, 6, 7, 8], list(range(10, 23)), [9]]  # different lengths: right padding
  out = sampling.generate_seq2seq(graphdef, params, inputs,
                                  sampling.SamplingConfig(temperature=0.0, max_new_tokens=12),
                                  jax.random.key(0), eos_id=-1, pad_id=0)
  # Rows padded to fixed shapes (one compile): the encoder masks its padding, and the causal
  # decoder's logits at the last real position ignore whatever follows it.
  decode = jax.jit(lambda x, s, y: model(x, y, s))
  compared = 0
  for row, got in zip(inputs, out):
    assert len(got) == 12
    enc, enc_seg = np.zeros((1, 16), np.int32), np.zeros((1, 16), np.int32)
    enc[0, :len(row)], enc_seg[0, :len(row)] = row, 1
    seq, margins = [0], []  # T5's decoder starts from the pad id
    for _ in range(12):
      dec = np.zeros((1, 13), np.int32)
      dec[0, :len(seq)] = seq
      logits = np.asarray(decode(enc, enc_seg, dec)[0, len(seq) - 1])
      top2 = np.sort(logits)[-2:]
      margins.append(top2[1] - top2[0])
      seq.append(int(np.argmax(logits)))
    compared += matching_tokens(got, seq[1:], margins)
  assert compared >= 24


def test_t5_generation_stops_at_eos_and_rejects_bad_inputs():
  _, graphdef, params = make_t5()
  greedy = sampling.SamplingConfig(temperature=0.0, max_new_tokens=8)
  free = sampling.generate_seq2seq(graphdef, params, [[3, 4, 5]], greedy, jax.random.key(0),
                                   eos_id=-1)[0]
  eos = free[2]
  out = sampling.generate_seq2seq(graphdef, params, [[3, 4, 5]], greedy, jax.random.key(0),
                                  eos_id=eos)[0]
  assert out == free[:free.index(eos) + 1]
  with pytest.raises(ValueError, match="longer than the model context of 16"):
    sampling.generate_seq2seq(graphdef, params, [list(range(1, 18))], greedy, jax.random.key(0),
                              eos_id=3)
  with pytest.raises(ValueError, match="empty"):
    sampling.generate_seq2seq(graphdef, params, [[]], greedy, jax.random.key(0), eos_id=3)


@pytest.mark.parametrize("style,objective,peft", [
    ("gpt2", "clm", {"peft.method": "lora"}), ("llama", "clm", {"peft.method": "prefix"}),
    ("gpt2", "clm", {"peft.method": "adapter", "peft.adapter_size": 8}), ("t5", "span", {})])
def test_decode_model_casts_weights_once_without_changing_a_bit(style, objective, peft):
  """bf16 compute: the sampler's model, weights cast to bf16 ahead of the decode loop, gives
  the same logits bit for bit as the fp32-weight model (every layer casts before use)."""
  from conftest import tiny_config
  from jaxlm.train import loop, sharding
  cfg = tiny_config(style, objective=objective, **{"model.dtype": "bfloat16", **peft})
  setup = loop.build_model(cfg, 128, sharding.make_mesh({"data": 1}))
  params = jax.tree.map(  # nudge every weight so that zero-initialised PEFT paths count too
      lambda p: p + 0.01 * jax.random.normal(jax.random.key(1), p.shape, p.dtype), setup.init().params)
  plain, cast = nnx.merge(setup.graphdef, params), sampling.decode_model(setup.graphdef, params)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(cast, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
  tokens = jnp.arange(24).reshape(2, 12) % 100
  if style == "t5":
    np.testing.assert_array_equal(plain(tokens, tokens), cast(tokens, tokens))
  else:
    np.testing.assert_array_equal(plain(tokens), cast(tokens))
