"""Runs in a subprocess with 8 simulated CPU devices (MESH_WORKER_DEVICES; the device count
is fixed at start-up).

  python mesh_worker.py grads OUT.npz STYLE   one step's loss and gradients on several meshes
  python mesh_worker.py straight ROOT         6 steps on a data-parallel mesh, checkpoints at 3, 6
  python mesh_worker.py moved ROOT            its step-3 checkpoint resumed on this process's
                                              devices as an FSDP x tensor mesh
  python mesh_worker.py rows ROOT             host rows split over the batch axes, and sampling
                                              with each device decoding only its rows
  python mesh_worker.py accum ROOT            micro-batches of gradient accumulation stay
                                              split over every device
  python mesh_worker.py optimizers ROOT       Lion, Adafactor and Muon take the same step
                                              on an FSDP x tensor mesh as on one device
"""

import dataclasses
import os
import shutil
import sys

DEVICES = int(os.environ.get("MESH_WORKER_DEVICES", "8"))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from conftest import tiny_config  # noqa: E402
from jaxlm import global_rows, objectives, sampling  # noqa: E402
from jaxlm.eval import scoring  # noqa: E402
from jaxlm.train import loop, sharding  # noqa: E402
from jaxlm.train.inputs import build_inputs  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# The decoders run on every kind of mesh: pure data, data x FSDP, all three, FSDP x tensor,
# and with the sequence split (context parallelism, the 5th axis) beside data or FSDP x tensor.
MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4), (2, 1, 1, 1, 4),
          (1, 2, 2, 1, 2)]
# The other styles, option sets and PEFT change which parameters there are, whose sharding is
# over fsdp and tensor: the meshes that split both (with and without data parallelism) test them.
VARIANT_MESHES = [(1, 1, 1), (2, 2, 2), (1, 2, 4)]
# Mixtures of experts also split their 4 experts over an `expert` axis (the 4th): alone with
# data parallelism, and with fsdp and tensor.
EXPERT_MESHES = [(2, 1, 1, 4), (1, 2, 2, 2)]
EVERY_MESH = ("gpt2", "llama", "mla")
OBJECTIVES = {"gpt2": "clm", "llama": "clm", "neox": "clm", "bert": "mlm", "t5": "span"}
# "STYLE+METHOD": that model with PEFT; its added parameters are sharded by their names too
# ("STYLE+scan+METHOD": on stacked layers, its factors with a leading `layers` axis; a prefix
# runs the layers by `lax.scan` with their stacked KV caches).
PEFT = {"lora": {"peft.targets": "(query|value|up)$"}, "adapter": {"peft.adapter_size": 8},
        "prefix": {"peft.prefix_len": 4, "peft.prefix_hidden": 8}}
# "STYLE+scan": that model's option set with its blocks stacked (a leading `layers` axis) and
# run by `lax.scan`, 4 layers (2 repeats of Gemma's sliding / global pair; T5: both stacks).
SCAN = {"model.scan_layers": True, "model.num_layers": 4}
# Every sharded dimension divides by 4: heads 4 (kv 4), embed 32, mlp 64, vocab 128.
MODEL = {"model.num_heads": 4, "model.num_kv_heads": 4, "train.batch_size": 8}
# Plain "llama" runs with the Qwen / Llama 3 / Mistral / Gemma options (replicated per-head
# norms, q/k/v biases, scaled RoPE, a sliding window on every other layer with its own RoPE
# theta, sandwich norms, softcaps, scaled embeddings, gated tanh-GELU);
# "llama+lora" keeps the plain Llama layout.
MOE = {"model.num_experts": 4, "model.experts_per_token": 2, "model.router_z_coef": 1e-3}
OPTIONS = {"llama": {"model.qk_norm": True, "model.qkv_bias": True, "model.rope_scaling": "llama3",
                     "model.rope_factor": 4.0, "model.rope_original_max_len": 32,
                     "model.sliding_window": 8, "model.sliding_global_every": 2,
                     "model.rope_local_theta": 100.0, "model.sandwich_norm": True,
                     "model.attn_softcap": 5.0, "model.logit_softcap": 10.0,
                     "model.embed_scale": True, "model.mlp_activation": "gelu_tanh",
                     "model.query_pre_attn_scalar": 4.0},
           # GPT-NeoX / Pythia: partial rotary (half of each head), parallel attention and MLP
           "neox": {"model.rope_fraction": 0.5, "model.parallel_residual": True,
                    "model.use_bias": True},
           # Phi: GPT-NeoX's layout with one shared norm, a biased head, per-head LayerNorms
           "phi": {"model.rope_fraction": 0.5, "model.parallel_residual": True,
                   "model.shared_norm": True, "model.head_bias": True, "model.qk_norm": True,
                   "model.use_bias": True, "model.mlp_activation": "gelu_tanh"},
           # Llama with a mixture of 4 experts, 2 per token, and both router losses: dropless
           # with a gated shared expert (Qwen2-MoE's) and whole-projection q/k norms (OLMoE's,
           # split over tensor as the heads), or DeepSeek-V3-like: with a capacity (that drops
           # some of the assignments), its router bias (its gradient: the whole batch's
           # expert loads, however the batch is split) and multi-head latent attention (the
           # latent expansions split over tensor as the heads, values narrower than keys)
           # Llama with multi-head latent attention: a query latent, values wider than the
           # query / key heads, on every mesh (the sequence split gathers expanded keys)
           "mla": {"model.kv_lora_rank": 8, "model.q_lora_rank": 8, "model.qk_rope_head_dim": 4,
                   "model.head_dim": 6, "model.v_head_dim": 10},
           "moe": {**MOE, "model.shared_expert_dim": 32, "model.shared_expert_gate": True,
                   "model.qk_norm": True, "model.qk_norm_full": True},
           "moe_capacity": {**MOE, "model.moe_capacity_factor": 1.0, "model.router_bias": True,
                            "model.kv_lora_rank": 8, "model.q_lora_rank": 8,
                            "model.qk_rope_head_dim": 4, "model.v_head_dim": 4}}
STYLE_OF = {"phi": "neox", "moe": "llama", "moe_capacity": "llama", "mla": "llama"}  # option sets named after a model rather than a style


def expected_spec(variable) -> jax.sharding.PartitionSpec:
  return sharding.logical_to_spec(variable.get_metadata().get("out_sharding"))


def grads(out: str, workdir: str, styles: list[str]) -> None:
  results = {}
  for name in styles:
    variant, *methods = name.split("+")
    extra = OPTIONS.get(variant, {})
    for method in methods:
      if method == "scan":
        extra = {**extra, **SCAN}
      else:  # PEFT keeps the plain layout unless scanned too
        extra = {**(extra if "scan" in methods else {}), "peft.method": method, **PEFT[method]}
    style = STYLE_OF.get(variant, variant)
    cfg = tiny_config(style, objective=OBJECTIVES[style], **MODEL, **extra)
    inputs = build_inputs(cfg, workdir)
    loss_fn = objectives.loss_fn_for(cfg)
    # Meshes the model cannot split over are named before any work: 4 experts over 8
    # devices (with the parameters' shapes), 36 positions over 8.
    bad = {"moe": ({"mesh.expert": 8}, "mesh.expert=8 does not divide blocks/0/mlp/down/kernel:"
                                       " its dimension 0 ('expert') has size 4"),
           "gpt2": ({"mesh.sequence": 8, "data.seq_len": 36},
                    "mesh.sequence=8 must divide data.seq_len=36")}
    if name in bad:
      overrides, message = bad[name]
      bad_cfg = tiny_config(style, **MODEL, **extra, **{"mesh.data": 1, **overrides})
      try:
        _, _, _, bad_mesh = loop.start_run(bad_cfg, os.path.join(workdir, "bad"), 8,
                                           "train.batch_size")
        loop.build_model(bad_cfg, inputs.tokenizer.vocab_size, bad_mesh)
        raise AssertionError(f"{overrides} started")
      except ValueError as e:
        assert message in str(e), e
    local = inputs.train[0]
    reference = None
    meshes = MESHES if name in EVERY_MESH else VARIANT_MESHES
    for shape in meshes + (EXPERT_MESHES if variant.startswith("moe") else []):
      devices = jax.devices()[:int(np.prod(shape))]
      mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), devices)
      setup = loop.build_model(cfg, inputs.tokenizer.vocab_size, mesh)
      abstract = nnx.split(nnx.eval_shape(lambda: nnx.merge(setup.graphdef, jax.eval_shape(
          setup.init).params)))[1]
      if reference is None:
        reference = jax.device_get(setup.init().params)
        # A decisive router: no token's top-k may flip with the summation order of a mesh.
        reference = jax.tree_util.tree_map_with_path(
            lambda path, x: x * 50 if "router" in jax.tree_util.keystr(path) else x, reference)
      params = jax.device_put(reference, setup.shardings.params)  # identical values everywhere
      # Layout: every leaf is sharded as its logical names and the rules say.
      specs = jax.tree.map(expected_spec, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
      flat_specs = jax.tree_util.tree_leaves_with_path(
          nnx.to_pure_dict(specs), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
      flat_params = dict(jax.tree_util.tree_leaves_with_path(params))
      for path, spec in flat_specs:
        got = flat_params[path].sharding.spec
        assert tuple(got) + (None,) * (len(spec) - len(got)) == tuple(spec), (shape, path, got, spec)
      batch = sharding.global_batch(local, mesh)

      def value_and_grad(p, b):
        return jax.value_and_grad(
            lambda q: loss_fn(nnx.merge(setup.graphdef, q), b, None)[0])(p)

      with jax.set_mesh(mesh), sharding.activation_rules():
        step = jax.jit(value_and_grad)
        loss, g = step(params, batch)
        if variant == "moe_capacity" and len(shape) == 4:
          # Expert parallelism: the dispatched rows move to their experts' devices and back.
          assert "all-to-all" in step.lower(params, batch).compile().as_text(), shape
      results[f"{name}/{'x'.join(map(str, shape))}/loss"] = np.asarray(loss)
      for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(g)):
        results[f"{name}/{'x'.join(map(str, shape))}/{jax.tree_util.keystr(path)}"] = leaf
  np.savez(out, **results)


COMMON = {**MODEL, "train.steps": 6, "train.log_every": 1, "train.ckpt_every": 3}


def straight(root: str) -> None:
  loop.train(tiny_config(**COMMON, **{"mesh.data": -1}), os.path.join(root, "straight"))


def moved(root: str) -> None:
  target = os.path.join(root, "moved")
  shutil.copytree(os.path.join(root, "straight"), target)
  shutil.rmtree(os.path.join(target, "checkpoints", "6"))
  os.remove(os.path.join(target, "metrics.jsonl"))
  loop.train(tiny_config(**COMMON, **{"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": -1}),
             target)


def rows(root: str) -> None:
  """`global_rows` places each row on exactly the devices the batch sharding names;
  sampling under a batch sharding gives the unsharded tokens while each device decodes only
  its rows (per-device flops of the compiled sampler a fraction of the unsharded one's), and
  so does beam search; and
  evaluation scores split over the parameters' mesh equal the unsharded scores."""
  host = np.arange(13 * 3).reshape(13, 3)
  for shape, shards in (((4, 2, 1), 8), ((2, 2, 2), 4), ((1, 1, 8), 1)):
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))
    rows_sharding = sharding.batch_sharding(mesh)
    assert global_rows.row_shards(rows_sharding) == shards, shape
    filled = np.stack(global_rows.fill_rows(host, rows_sharding))
    assert len(filled) == global_rows.padded_rows(13, rows_sharding) == -(-13 // shards) * shards
    placed = global_rows.place(filled, rows_sharding)
    assert placed.shape == filled.shape
    for shard in placed.addressable_shards:
      np.testing.assert_array_equal(shard.data, filled[shard.index])
      assert shard.data.shape[0] == len(filled) // shards
    np.testing.assert_array_equal(global_rows.fetch(placed), filled)

  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 100, rng.integers(2, 9)).tolist() for _ in range(13)]
  scfg = sampling.SamplingConfig(temperature=1.0, max_new_tokens=10)
  for style in ("gpt2", "t5"):
    cfg = tiny_config(style, objective=OBJECTIVES[style], **MODEL,
                      **{"mesh.data": 4, "mesh.fsdp": 2})
    mesh = sharding.make_mesh(cfg.mesh)
    setup = loop.build_model(cfg, 128, mesh)
    params, rows_sharding = setup.init().params, sharding.batch_sharding(mesh)
    generate = sampling.generate if style == "gpt2" else sampling.generate_seq2seq
    whole = generate(setup.graphdef, jax.device_get(params), prompts, scfg, jax.random.key(3),
                     eos_id=1)
    split = generate(setup.graphdef, params, prompts, scfg, jax.random.key(3), eos_id=1,
                     batch_sharding=rows_sharding)
    assert split == whole, style
    beams = dataclasses.replace(scfg, num_beams=3, max_new_tokens=6)
    whole, split = (sampling.ranked_beams(setup.graphdef, p, prompts, beams, eos_id=1,
                                          batch_sharding=s)
                    for p, s in ((jax.device_get(params), None), (params, rows_sharding)))
    assert [[t for t, _ in row] for row in split] == [[t for t, _ in row] for row in whole]
    np.testing.assert_allclose([[s for _, s in row] for row in split],
                               [[s for _, s in row] for row in whole], rtol=1e-5)
    if style == "gpt2":  # the decoder's compiled sampler, whole batch vs split rows
      tokens, segments = sampling.left_pad(global_rows.fill_rows(prompts, rows_sharding), 16, 0)
      flops = {}
      for name, args in (("whole", (jax.device_get(params), tokens, segments)),
                         ("split", (params, *global_rows.place((tokens, segments),
                                                               rows_sharding)))):
        compiled = sampling._generate.lower(setup.graphdef, *args, jax.random.key(0), cfg=scfg,
                                            eos_id=1, pad_id=0).compile()
        flops[name] = compiled.cost_analysis()["flops"]
      # Evaluation splits its rows over the devices that hold the parameters, by itself.
      assert sharding.rows_sharding_of(params) == rows_sharding
      assert sharding.rows_sharding_of(jax.device_get(params)) is None
      requests = [(p[:-2] or [1], p[-2:]) for p in prompts]
      whole_scores = scoring.loglikelihoods(setup.graphdef, jax.device_get(params), requests,
                                            batch_size=6)
      split_scores = scoring.loglikelihoods(setup.graphdef, params, requests, batch_size=6)
      np.testing.assert_allclose([s.logprob for s in split_scores],
                                 [s.logprob for s in whole_scores], rtol=1e-5)
      assert flops["split"] < flops["whole"] / 4, flops


def accum(root: str) -> None:
  """Gradient accumulation on a data x fsdp mesh: each micro-batch is split over every device
  (a device's flops per micro-batch about 1/k of the whole batch's, not all of them with the
  micro-batch computed on 1/k of the devices), and the step's loss and update equal the
  unaccumulated step's."""
  flops, results = {}, {}
  for k in (1, 2, 4):
    cfg = tiny_config(**{**MODEL, "mesh.data": 4, "mesh.fsdp": 2, "train.batch_size": 16,
                         "optim.grad_accum": k})
    mesh = sharding.make_mesh(cfg.mesh)
    setup = loop.build_model(cfg, 128, mesh)
    inputs = build_inputs(cfg, os.path.join(root, f"accum{k}"))
    batch = sharding.global_batch(inputs.train[0], mesh)
    step = loop.jitted_train_step(setup, objectives.loss_fn_for(cfg), mesh, grad_accum=k)
    state = setup.init()
    compiled = step.lower(state, batch, {}).compile()
    flops[k] = compiled.cost_analysis()["flops"]
    new_state, metrics = compiled(state, batch, {})
    results[k] = (float(metrics["loss"]), jax.device_get(new_state.params))
  print("per-device flops by grad_accum", flops, file=sys.stderr)
  for k in (2, 4):
    # XLA's cost analysis counts the accumulation loop's body once: one micro-batch (measured
    # 0.52 / 0.34 of the whole batch's flops for k = 2 / 4, 0.88 / 0.76 with contiguous blocks).
    assert flops[k] < (1 / k + 0.35) * flops[1], flops
    np.testing.assert_allclose(results[k][0], results[1][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 results[k][1], results[1][1])


def optimizers(root: str) -> None:
  """Each optimizer's state is laid out on the mesh (moments like their parameters, Adafactor's
  factored statistics replicated) and two steps there equal two steps on one device."""
  for name in ("lion", "adafactor", "muon"):
    results = {}
    for shape in ((1, 1, 1), (2, 2, 2)):
      cfg = tiny_config("llama", **{**MODEL, "optim.name": name, "model.scan_layers": True})
      mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)),
                                jax.devices()[:int(np.prod(shape))])
      setup = loop.build_model(cfg, 128, mesh)
      inputs = build_inputs(cfg, os.path.join(root, name))
      step = loop.jitted_train_step(setup, objectives.loss_fn_for(cfg), mesh)
      state = setup.init()
      for leaf, want in zip(jax.tree.leaves(state.opt_state),
                            jax.tree.leaves(setup.shardings.opt_state)):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (name, leaf.shape)
      for i in range(2):
        state, _ = step(state, sharding.global_batch(inputs.train[i], mesh), {})
      results[shape] = jax.device_get(state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=name),
                 results[(2, 2, 2)], results[(1, 1, 1)])


if __name__ == "__main__":
  mode, target = sys.argv[1], sys.argv[2]
  if mode == "grads":
    grads(target, os.path.dirname(target), sys.argv[3:])
  else:
    {"straight": straight, "moved": moved, "rows": rows, "accum": accum,
     "optimizers": optimizers}[mode](target)
