"""Runs in a subprocess with 8 simulated CPU devices (MESH_WORKER_DEVICES; the device count
is fixed at start-up).

  python mesh_worker.py grads OUT.npz STYLE   one step's loss and gradients on several meshes
  python mesh_worker.py straight ROOT         6 steps on a data-parallel mesh, checkpoints at 3, 6
  python mesh_worker.py moved ROOT            its step-3 checkpoint resumed on this process's
                                              devices as an FSDP x tensor mesh
"""

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
from jaxlm import objectives  # noqa: E402
from jaxlm.train import loop, sharding  # noqa: E402
from jaxlm.train.inputs import build_inputs  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]
OBJECTIVES = {"gpt2": "clm", "llama": "clm", "bert": "mlm", "t5": "span"}
# "STYLE+METHOD": that model with PEFT; its added parameters are sharded by their names too.
PEFT = {"lora": {"peft.targets": "(query|value|up)$"}, "adapter": {"peft.adapter_size": 8}}
# Every sharded dimension divides by 4: heads 4 (kv 4), embed 32, mlp 64, vocab 128.
MODEL = {"model.num_heads": 4, "model.num_kv_heads": 4, "train.batch_size": 8}


def expected_spec(variable) -> jax.sharding.PartitionSpec:
  return sharding.logical_to_spec(variable.get_metadata().get("out_sharding"))


def grads(out: str, workdir: str, styles: list[str]) -> None:
  results = {}
  for name in styles:
    style, _, method = name.partition("+")
    extra = {"peft.method": method, **PEFT[method]} if method else {}
    cfg = tiny_config(style, objective=OBJECTIVES[style], **MODEL, **extra)
    inputs = build_inputs(cfg, workdir)
    loss_fn = objectives.loss_fn_for(cfg)
    local = inputs.train[0]
    reference = None
    for shape in MESHES:
      devices = jax.devices()[:int(np.prod(shape))]
      mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), devices)
      setup = loop.build_model(cfg, inputs.tokenizer.vocab_size, mesh)
      abstract = nnx.split(nnx.eval_shape(lambda: nnx.merge(setup.graphdef, jax.eval_shape(
          setup.init).params)))[1]
      if reference is None:
        reference = jax.device_get(setup.init().params)
      params = jax.device_put(reference, setup.shardings.params)  # identical values everywhere
      # Layout: every leaf is sharded as its logical names and the rules say.
      flat_specs = jax.tree_util.tree_leaves_with_path(
          jax.tree.map(expected_spec, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)
                       ).to_pure_dict(), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
      flat_params = dict(jax.tree_util.tree_leaves_with_path(params))
      for path, spec in flat_specs:
        got = flat_params[path].sharding.spec
        assert tuple(got) + (None,) * (len(spec) - len(got)) == tuple(spec), (shape, path, got, spec)
      batch = sharding.global_batch(local, mesh)

      def value_and_grad(p, b):
        return jax.value_and_grad(
            lambda q: loss_fn(nnx.merge(setup.graphdef, q), b, None)[0])(p)

      with jax.set_mesh(mesh), sharding.activation_rules():
        loss, g = jax.jit(value_and_grad)(params, batch)
      results[f"{name}/{'x'.join(map(str, shape))}/loss"] = np.asarray(loss)
      for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(g)):
        results[f"{name}/{'x'.join(map(str, shape))}/{jax.tree_util.keystr(path)}"] = leaf
  np.savez(out, **results)


COMMON = {**MODEL, "train.steps": 6, "train.log_every": 1, "train.ckpt_every": 3,
          "sample.num_samples": 0}


def straight(root: str) -> None:
  loop.train(tiny_config(**COMMON, **{"mesh.data": -1}), os.path.join(root, "straight"))


def moved(root: str) -> None:
  target = os.path.join(root, "moved")
  shutil.copytree(os.path.join(root, "straight"), target)
  shutil.rmtree(os.path.join(target, "checkpoints", "6"))
  os.remove(os.path.join(target, "metrics.jsonl"))
  loop.train(tiny_config(**COMMON, **{"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": -1}),
             target)


if __name__ == "__main__":
  mode, target = sys.argv[1], sys.argv[2]
  if mode == "grads":
    grads(target, os.path.dirname(target), sys.argv[3:])
  else:
    {"straight": straight, "moved": moved}[mode](target)
