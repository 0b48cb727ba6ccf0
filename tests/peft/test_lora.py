"""LoRA and freezing: exactness at init, frozen bits, optimizer state, merge / unmerge, no
gradient computed for a frozen weight."""

import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_config
from jaxlm import objectives, peft
from jaxlm.data.pipeline import rows_from_windows
from jaxlm.models import Decoder, from_config, registry
from jaxlm.peft import lora
from jaxlm.train import loop, sharding

LORA = dict(method="lora", targets=r"attn/(query|value)$", rank=4, alpha=8.0, include="",
            exclude="")


def small(style="gpt2"):
  return from_config(registry.model_config(
      "gpt2-124m", style=style, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64,
      max_seq_len=16), vocab_size=64)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_lora_with_zero_b_is_exactly_the_base_model(style):
  cfg = small(style)
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
  base = Decoder(cfg, nnx.Rngs(0))
  wrapped = peft.wrap(Decoder(cfg, nnx.Rngs(0)), LORA, nnx.Rngs(1))
  assert isinstance(wrapped.blocks[0].attn.query, lora.LoRALinear)
  assert not isinstance(wrapped.blocks[0].attn.key, lora.LoRALinear)
  np.testing.assert_array_equal(base(tokens), wrapped(tokens))
  # Parameter paths of the base are unchanged; LoRA adds lora_a / lora_b beside kernel.
  params = nnx.to_pure_dict(nnx.split(wrapped)[1])
  base_keys = set(nnx.to_pure_dict(nnx.split(base)[1])["blocks"][0]["attn"]["query"])
  assert set(params["blocks"][0]["attn"]["query"]) == base_keys | {"lora_a", "lora_b"}


def test_default_lora_on_gpt2_124m_trains_under_one_percent():
  cfg = from_config(registry.model_config("gpt2-124m"), vocab_size=50304)
  model = nnx.eval_shape(lambda: peft.wrap(Decoder(cfg, nnx.Rngs(0)), {**LORA, "rank": 8},
                                           nnx.Rngs(1)))
  state = nnx.split(model)[1]
  trainable, total = peft.counts(nnx.to_pure_dict(state), peft.trainable_mask(state, LORA))
  assert trainable == 12 * 2 * (768 * 8 + 8 * 768) and trainable / total < 0.01
  # Base parameters named by peft.include train beside the adapter (not those excluded).
  mask = peft.trainable_mask(state, {**LORA, "include": "embed|final_norm", "exclude": "bias"})
  with_embed, _ = peft.counts(nnx.to_pure_dict(state), mask)
  assert with_embed == trainable + 50304 * 768 + 1024 * 768 + 768


@pytest.fixture(scope="module")
def lora_run(task_chain, tmp_path_factory):
  """LoRA SFT on the shipped task, starting from the chain's pre-trained model."""
  runs, files = task_chain
  workdir = tmp_path_factory.mktemp("lora")
  overrides = {f"peft.{k}": v for k, v in LORA.items()}
  loop.train(tiny_config(**{**overrides, "objective": "sft", "init_from": str(runs["pretrain"]),
                            "data.source": f"jsonl:{files['sft']}", "train.steps": 60,
                            "train.log_every": 5, "optim.lr": 1e-2, "model.embed_dim": 48,
                            "model.mlp_dim": 96, "data.seq_len": 32, "model.max_seq_len": 32,
                            "sample.num_samples": 0}), workdir)
  return runs["pretrain"], workdir


def test_lora_run_lowers_the_loss_and_leaves_the_base_bit_identical(lora_run):
  base, workdir = lora_run
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert losses[-1] < losses[0] - 0.2, losses
  _, _, _, base_params = loop.load_trained(base)
  _, _, _, params = loop.load_trained(workdir)
  merged_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  base_flat = {peft.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(base_params)[0]}
  for path, value in merged_paths:
    name = peft.path_name(path)
    if "lora_" in name:
      continue
    np.testing.assert_array_equal(np.asarray(value), np.asarray(base_flat[name]), err_msg=name)
  assert np.abs(np.asarray(params["blocks"][0]["attn"]["query"]["lora_b"])).max() > 0


def test_only_trainable_leaves_have_optimizer_state(lora_run):
  _, workdir = lora_run
  cfg, tok, _, _ = loop.load_trained(workdir)
  from jaxlm.train import sharding
  setup = loop.build_model(cfg, tok.vocab_size, sharding.make_mesh(cfg.mesh))
  opt_state = jax.eval_shape(setup.init).opt_state
  n_trainable, _ = peft.counts(jax.eval_shape(setup.init).params, setup.trainable)
  moments = sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim > 0)
  assert moments == 2 * n_trainable  # Adam mu and nu, nothing for frozen leaves


def test_merged_equals_unmerged(lora_run):
  _, workdir = lora_run
  cfg, _, graphdef, params = loop.load_trained(workdir)
  model = nnx.merge(graphdef, params)
  scale = peft.lora_scale_of(cfg.peft)
  merged = lora.merge_params(params, scale)
  base_model = Decoder(model.cfg, nnx.Rngs(0))
  base_graphdef = nnx.split(base_model)[0]
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 60)
  want = model(tokens)
  np.testing.assert_allclose(nnx.merge(base_graphdef, merged)(tokens), want, atol=1e-5, rtol=1e-5)
  restored = lora.unmerge_params(merged, lora.adapter_params(params), scale)
  np.testing.assert_allclose(nnx.merge(graphdef, restored)(tokens), want, atol=1e-5, rtol=1e-5)


def test_freeze_trains_only_matching_paths(trained_run, tmp_path):
  base, _ = trained_run  # the char-level Shakespeare run
  loop.train(tiny_config(**{"peft.method": "freeze", "peft.include": r"blocks/1/",
                            "peft.exclude": r"norm", "init_from": str(base),
                            "train.steps": 3}), tmp_path)
  _, _, _, before = loop.load_trained(base)
  _, _, _, after = loop.load_trained(tmp_path)
  changed = {peft.path_name(p) for (p, a), (_, b) in zip(
      jax.tree_util.tree_flatten_with_path(after)[0],
      jax.tree_util.tree_flatten_with_path(before)[0]) if not np.array_equal(a, b)}
  assert changed and all(n.startswith("blocks/1/") and "norm" not in n for n in changed)
  # LoRA with base parameters trained beside it (the embedding): those and the factors move.
  loop.train(tiny_config(**{**{f"peft.{k}": v for k, v in LORA.items()},
                            "peft.include": "^embed/embedding$", "init_from": str(base),
                            "train.steps": 3}), tmp_path / "lora_embed")
  after = loop.load_trained(tmp_path / "lora_embed")[3]
  changed = {peft.path_name(p) for (p, a), (_, b) in zip(
      jax.tree_util.tree_flatten_with_path(lora.merge_params(after, 0.0))[0],
      jax.tree_util.tree_flatten_with_path(before)[0]) if not np.array_equal(a, b)}
  assert changed == {"embed/embedding"}
  with pytest.raises(ValueError, match="peft.method"):
    peft.wrap(Decoder(small(), nnx.Rngs(0)), {**LORA, "method": "ia3"}, nnx.Rngs(0))
  with pytest.raises(ValueError, match="matches no linear"):
    peft.wrap(Decoder(small(), nnx.Rngs(0)), {**LORA, "targets": "nothing"}, nnx.Rngs(0))


def compiled_step(cfg, vocab: int = 64):
  """(setup, one random batch, the train step compiled for it) of config `cfg`."""
  mesh = sharding.make_mesh(cfg.mesh)
  setup = loop.build_model(cfg, vocab, mesh)
  windows = np.random.default_rng(0).integers(0, vocab, (4, cfg.data.seq_len + 1), np.int32)
  batch = sharding.global_batch(rows_from_windows(windows, np.ones_like(windows)), mesh)
  step = loop.jitted_train_step(setup, objectives.loss_fn_for(cfg), mesh)
  with jax.set_mesh(mesh), sharding.activation_rules():
    return setup, batch, step.lower(jax.eval_shape(setup.init), batch, {}).compile()


def test_a_lora_step_computes_no_gradient_of_a_frozen_weight():
  # Backpropagation through a frozen weight needs the activations' gradient (2N flops a
  # token), not the weight's own (another 2N): a LoRA step on every projection costs about
  # 4N of full fine-tuning's 6N, as the flops behind the run's MFU say, and XLA's cost
  # analysis agrees. Its grad_norm is the LoRA factors' alone.
  wide = {"model.embed_dim": 64, "model.mlp_dim": 256, "model.vocab_size": 64}
  everywhere = {"peft.method": "lora", "peft.rank": 2,
                "peft.targets": "attn/(query|key|value|out)$|mlp/(up|down)$"}
  full_setup, _, full = compiled_step(tiny_config(**wide))
  setup, batch, step = compiled_step(tiny_config(**wide, **everywhere))
  measured = step.cost_analysis()["flops"] / full.cost_analysis()["flops"]
  predicted = [loop.model_flops_per_token(s, jax.eval_shape(s.init).params, 32)
               for s in (setup, full_setup)]
  assert measured < 0.8 and measured == pytest.approx(predicted[0] / predicted[1], abs=0.03)

  state = setup.init()
  loss_fn = objectives.loss_fn_for(tiny_config(**wide, **everywhere))
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0)
  grads = jax.jit(jax.grad(lambda p: loss_fn(nnx.merge(setup.graphdef, p), batch, key,
                                             frozen={})[0]))(state.params)
  trained = [g for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(setup.trainable)) if t]
  _, metrics = step(state, batch, {})
  np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(trained), rtol=1e-5)
  assert float(metrics["grad_norm"]) < 0.8 * float(optax.tree.norm(grads))  # frozen ones count
