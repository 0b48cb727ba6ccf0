"""The device mesh and the one table of logical-axis rules.

Parallelism is a `jax.sharding.Mesh` with axes `data`, `fsdp`, `tensor`, `expert` and
`sequence`.
Parameters carry logical axis names (set in `jaxlm.models.layers`); `LOGICAL_RULES` maps each
name to mesh axes. A data-only mesh is plain data parallelism; the same code runs on one CPU
or a pod. The batch is split over data x fsdp x expert; a mixture of experts' kernels are
split over `expert` (expert parallelism, GShard's), and its capacity routing moves each
expert's tokens to the devices that hold it (an all-to-all the partitioner inserts between
the two layouts; see `jaxlm.models.moe`). Without experts, `expert` is more data parallelism.
`sequence` splits the activations along the sequence (context parallelism): each device
holds its share of the positions through every layer, and a decoder's attention gathers the
keys and values of the whole sequence for its queries.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.core.spmd
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "expert", "sequence")
BATCH_AXES = ("data", "fsdp", "expert")

# logical name -> mesh axis (or axes); names not listed are replicated.
LOGICAL_RULES: dict[str, Any] = {
    "batch": BATCH_AXES,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv": "tensor",
    "mlp": "tensor",
    "expert": "expert",
}


# Activations: the batch over data x fsdp x expert, the sequence over `sequence` (context
# parallelism; a decoder's attention gathers the keys and values), the hidden dimension
# whole (FSDP gathers weights, not activations), attention heads and logits split over
# tensor like their projections; the rows dispatched to experts split over `expert` by
# expert, their batch over data x fsdp only.
ACTIVATION_RULES: dict[str, Any] = {
    "batch": BATCH_AXES,
    "expert_batch": ("data", "fsdp"),
    "act_expert": "expert",
    "act_seq": "sequence",
    "act_heads": "tensor",
    "act_embed": None,
    "act_vocab": "tensor",
}


def activation_rules(rules: Mapping[str, Any] = ACTIVATION_RULES):
  """Context in which `jaxlm.models.layers.constrain` pins activations to their mesh axes."""
  return flax.core.spmd.logical_axis_rules(tuple(rules.items()))


def make_mesh(mesh_cfg: Mapping[str, int], devices: list | None = None) -> Mesh:
  """A mesh with axes data x fsdp x tensor x expert x sequence (a size left out is 1); one size
  may be -1 to take the remaining devices."""
  devices = devices if devices is not None else jax.devices()
  sizes = [int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def mesh_for_saved(mesh_cfg: Mapping[str, int]) -> Mesh:
  """A mesh to load a saved run on: its own when this machine's devices fit it, else data
  parallelism over all devices. (A saved layout only matters for speed and memory: Orbax
  reshards the checkpoint onto whatever mesh it is restored to.)"""
  try:
    return make_mesh(mesh_cfg)
  except ValueError:
    return make_mesh({"data": -1})


def logical_to_spec(names: tuple[str | None, ...] | None,
                    rules: Mapping[str, Any] = LOGICAL_RULES) -> P:
  """PartitionSpec of a tensor whose dimensions carry these logical names."""
  if not names:
    return P()
  return P(*(rules.get(n) if n else None for n in names))


def param_specs(abstract_state: nnx.State, rules: Mapping[str, Any] = LOGICAL_RULES) -> dict:
  """Pure-dict tree of PartitionSpecs from the logical names on each variable."""
  def spec(v):
    return v.replace(logical_to_spec(v.get_metadata().get("out_sharding"), rules))
  specs = jax.tree.map(spec, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(specs)


def check_divisible(abstract_state: nnx.State, mesh: Mesh,
                    rules: Mapping[str, Any] = LOGICAL_RULES) -> None:
  """Raises ValueError naming a parameter dimension that its mesh axes do not split evenly
  (e.g. mesh.tensor=3 over 128 attention units), before anything is allocated."""
  flat = nnx.to_flat_state(abstract_state)
  for path, variable in flat:
    names = variable.get_metadata().get("out_sharding") or ()
    for dim, (name, size) in enumerate(zip(names, variable.shape)):
      axes = rules.get(name) if name else None
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      shards = math.prod(mesh.shape[a] for a in axes)
      if size % shards:
        split = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
        raise ValueError(f"{split} does not divide {'/'.join(map(str, path))}: its dimension "
                         f"{dim} ({name!r}) has size {size}; pick mesh sizes that divide the "
                         "model's dimensions")


def named(mesh: Mesh, specs: Any) -> Any:
  """NamedShardings on `mesh` for a tree of PartitionSpecs."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch rows split over the data and fsdp axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def rows_sharding_of(params: Any) -> NamedSharding | None:
  """The batch sharding on the mesh `params` are laid out on, so that evaluation and
  sampling split their rows over the devices that hold a loaded run (None when the
  parameters are not on a jaxlm mesh: plain arrays, one device)."""
  leaves = jax.tree.leaves(params)
  placed = getattr(leaves[0], "sharding", None) if leaves else None
  if not isinstance(placed, NamedSharding) or not set(BATCH_AXES) <= set(placed.mesh.axis_names):
    return None
  return batch_sharding(placed.mesh)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
