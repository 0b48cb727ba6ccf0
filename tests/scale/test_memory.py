"""Memory savers change memory, not maths: remat policies, gradient accumulation, the chunked
cross-entropy and bf16 first moments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_config
from jaxlm import objectives
from jaxlm.data.pipeline import rows_from_windows
from jaxlm.models import factory, from_config
from jaxlm.objectives.common import chunked_token_loss, masked_token_loss
from jaxlm.train import loop, optim, sharding
from jaxlm.train import step as step_lib
from jaxlm.train.inputs import build_inputs

STYLES = {"gpt2": "clm", "llama": "clm", "bert": "mlm", "t5": "span"}


def random_batch(rows: int, seq: int, vocab: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, vocab, (rows, seq + 1)).astype(np.int32)
  segments = np.ones_like(tokens)
  segments[0, seq // 2:] = 2  # two packed documents in the first row
  return {k: jnp.asarray(v) for k, v in rows_from_windows(tokens, segments).items()}


def loss_and_grads(model, batch, loss):
  graphdef, params = nnx.split(model)
  def objective(p):
    return loss(nnx.merge(graphdef, p), batch, None)[0]
  return jax.jit(jax.value_and_grad(objective))(params)


def model_batch(style: str, remat: str, tmp_path):
  """A tiny model of `style` and a batch of its objective."""
  from jaxlm.train.inputs import build_inputs
  cfg = tiny_config(style, **{"objective": STYLES[style], "model.remat": remat})
  inputs = build_inputs(cfg, tmp_path)
  model = factory.create(from_config(cfg.model, inputs.tokenizer.vocab_size), nnx.Rngs(0))
  batch = {k: jnp.asarray(v) for k, v in inputs.train[0].items()}
  return model, batch, objectives.loss_fn_for(cfg)


@pytest.mark.parametrize("style", ["llama", "bert", "t5"])
def test_remat_policies_give_the_same_gradients(style, tmp_path):
  results = {}
  for remat in ("none", "full", "save_dots"):
    model, batch, loss = model_batch(style, remat, tmp_path)
    results[remat] = loss_and_grads(model, batch, loss)
  ref_loss, ref_grads = results["none"]
  for remat in ("full", "save_dots"):
    value, grads = results[remat]
    np.testing.assert_allclose(value, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads,
                 ref_grads)


@pytest.mark.parametrize("chunk", [0, 7])
def test_z_loss_adds_the_squared_log_normaliser_and_shrinks_it(chunk, tmp_path):
  cfg = tiny_config("llama", **{"train.loss_chunk": chunk, "train.z_loss": 0.1})
  model = factory.create(from_config(cfg.model, 128), nnx.Rngs(1))
  batch = random_batch(3, 32, 128, seed=1)
  batch["loss_mask"] = batch["loss_mask"].at[1, :5].set(0)
  value, metrics = nnx.jit(lambda m: objectives.loss_fn_for(cfg)(m, batch, None))(model)
  logits = np.asarray(nnx.jit(lambda m: m(batch["tokens"], batch["positions"],
                                          batch["segment_ids"]))(model), np.float64)
  mask = np.asarray(batch["loss_mask"], np.float64)
  log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  target_logit = np.take_along_axis(logits, np.asarray(batch["targets"])[..., None], -1)[..., 0]
  ce = ((log_z - target_logit) * mask).sum() / mask.sum()
  z = (log_z ** 2 * mask).sum() / mask.sum()
  np.testing.assert_allclose(metrics["loss"], ce, rtol=1e-5)  # the logged loss: CE alone
  np.testing.assert_allclose(metrics["z_loss"], z, rtol=1e-5)
  np.testing.assert_allclose(value, ce + 0.1 * z, rtol=1e-5)
  if chunk:
    return
  # Trained with it, the normaliser ends nearer 1 (log Z nearer 0) than without, on the
  # training text.
  final_z = {}
  for coef in (0.0, 1.0):
    run_cfg = tiny_config(**{"train.z_loss": coef, "train.steps": 30})
    loop.train(run_cfg, tmp_path / str(coef))
    first = build_inputs(run_cfg, tmp_path / str(coef)).train[0]
    text = {k: jnp.asarray(v) for k, v in first.items()}
    _, _, graphdef, params = loop.load_trained(tmp_path / str(coef))
    metrics_of = nnx.jit(lambda m: objectives.loss_fn_for(cfg)(m, text, None)[1])
    final_z[coef] = float(metrics_of(nnx.merge(graphdef, params))["z_loss"])
  # measured: 24.8 without, 18.0 with (30 steps, tied embeddings: no bias to shift log Z by)
  assert final_z[1.0] < 0.8 * final_z[0.0], final_z
  with pytest.raises(ValueError, match="train.z_loss is for the clm, sft objectives"):
    objectives.loss_fn_for(tiny_config("bert", objective="mlm", **{"train.z_loss": 1e-4}))


def test_unknown_remat_policy_is_an_error():
  with pytest.raises(ValueError, match="model.remat must be one of"):
    from_config(tiny_config(**{"model.remat": "some"}).model, 128)


@pytest.mark.parametrize("chunk", [7, 32, 1000])
def test_chunked_cross_entropy_equals_the_full_one(chunk):
  cfg = tiny_config("llama")
  model = factory.create(from_config(cfg.model, 128), nnx.Rngs(1))
  batch = random_batch(3, 32, 128, seed=1)
  batch["loss_mask"] = batch["loss_mask"].at[1, :5].set(0)
  full_loss = objectives.get("clm").loss_fn
  chunked_cfg = tiny_config("llama", **{"train.loss_chunk": chunk})
  chunked_loss = objectives.loss_fn_for(chunked_cfg)
  (v_full, g_full), (v_chunk, g_chunk) = (loss_and_grads(model, batch, f)
                                          for f in (full_loss, chunked_loss))
  np.testing.assert_allclose(v_chunk, v_full, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_chunk,
               g_full)

  @nnx.jit  # eagerly, an XLA program an op
  def both_metrics(m):
    _, full = masked_token_loss(m(batch["tokens"]), batch["targets"], batch["loss_mask"])
    hidden, _ = m.hidden(batch["tokens"])
    return full, chunked_token_loss(m.logits, hidden, batch["targets"], batch["loss_mask"],
                                    chunk)[1]

  metrics_full, metrics_chunk = both_metrics(model)
  for k in ("accuracy", "tokens"):
    np.testing.assert_allclose(metrics_chunk[k], metrics_full[k], rtol=1e-6)


def test_chunked_loss_never_builds_the_full_logits():
  """Chunking saves at least one full (B*L, V) fp32 buffer of compiled scratch memory."""
  cfg = tiny_config("gpt2", **{"model.max_seq_len": 256})
  model = factory.create(from_config(cfg.model, 4096), nnx.Rngs(0))
  batch = random_batch(4, 256, 4096)
  graphdef, params = nnx.split(model)

  def temp_bytes(chunk):
    loss = objectives.loss_fn_for(tiny_config(**{"train.loss_chunk": chunk}))
    fn = jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p), batch, None)[0])
    return jax.jit(fn).lower(params).compile().memory_analysis().temp_size_in_bytes

  full_logits = 4 * 256 * 4096 * 4  # one fp32 (B*L, V) buffer: 16.8 MB
  # Measured on CPU: 64.2 MB plain vs 35.5 MB chunked, the rest being the model's activations.
  assert temp_bytes(0) - temp_bytes(128) > full_logits


def train_params_after_one_step(grad_accum: int, batch: dict, loss_fn=None):
  cfg = tiny_config()
  model = factory.create(from_config(cfg.model, 128), nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  opt = optax.sgd(1.0)
  step = step_lib.make_train_step(graphdef, loss_fn or objectives.get("clm").loss_fn, opt,
                                  optax.constant_schedule(1.0), grad_accum=grad_accum)
  from jaxlm.train.state import TrainState
  state = TrainState(step=jnp.array(0), params=nnx.to_pure_dict(params),
                     opt_state=opt.init(nnx.to_pure_dict(params)),
                     rng=jax.random.key_data(jax.random.key(0)), nonfinite_step=jnp.array(-1))
  new_state, metrics = jax.jit(step)(state, batch, {})
  return new_state.params, metrics


def test_gradient_accumulation_equals_one_big_batch():
  batch = random_batch(8, 32, 128, seed=2)
  batch["segment_ids"] = jnp.ones_like(batch["segment_ids"])  # equal tokens per micro-batch
  batch["loss_mask"] = jnp.ones_like(batch["loss_mask"])
  batch["positions"] = jnp.broadcast_to(jnp.arange(32), (8, 32))
  one, m1 = train_params_after_one_step(1, batch)
  four, m4 = train_params_after_one_step(4, batch)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), four, one)


def test_bf16_first_moment(tmp_path):
  cfg = tiny_config(**{"optim.mu_dtype": "bfloat16"})
  mesh = sharding.make_mesh(cfg.mesh)
  setup = loop.build_model(cfg, 128, mesh)
  adam = jax.eval_shape(setup.init).opt_state[1][0]
  assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.float32)}
  bf16 = loop.train(cfg, tmp_path / "bf16")["train_loss"]
  fp32 = loop.train(tiny_config(), tmp_path / "fp32")["train_loss"]
  assert abs(bf16 - fp32) < 0.02 * fp32
  with pytest.raises(ValueError, match="optim.mu_dtype must be one of"):
    optim.make_optimizer(tiny_config(**{"optim.mu_dtype": "fp8"}).optim, 10)


def test_gradient_accumulation_weighs_micro_batches_by_their_tokens():
  """Micro-batches with very different numbers of loss tokens: the accumulated step is still
  the whole batch's per-token mean (each micro-batch weighted by its tokens)."""
  batch = random_batch(8, 32, 128, seed=3)
  mask = np.ones((8, 32), np.float32)
  mask[[0, 2], 1:] = 0.0  # micro-batch 0 of 2 (rows 0, 2, 4, 6) holds far fewer tokens
  mask[[4, 6], 3:] = 0.0
  batch["loss_mask"] = jnp.asarray(mask)
  one, m1 = train_params_after_one_step(1, batch)
  two, m2 = train_params_after_one_step(2, batch)
  np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-6)
  assert float(m2["tokens"]) == float(m1["tokens"]) == mask.sum()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), two, one)

  def with_probes(model, batch, rng, frozen=None):
    """Metrics that only some micro-batches define (like KTO's rewards of a missing label)."""
    loss, m = objectives.get("clm").loss_fn(model, batch, rng)
    m["full_only"] = jnp.where(m["tokens"] > 64, 5.0, jnp.nan)
    m["never"] = jnp.where(m["tokens"] > 10**6, 1.0, jnp.nan)
    return loss, m

  _, probed = train_params_after_one_step(2, batch, with_probes)
  np.testing.assert_allclose(probed["loss"], m1["loss"], rtol=1e-6)
  assert float(probed["full_only"]) == 5.0 and np.isnan(probed["never"])
  with pytest.raises(ValueError, match="optim.grad_accum=3 must be >= 1 and divide"):
    loop.train(tiny_config(**{"train.batch_size": 8, "optim.grad_accum": 3}), "/nonexistent/x")
