"""LoRA (Hu et al. 2021) as explicit tree surgery over a model.

`apply_lora` swaps every `nnx.Linear` whose path matches a regex for a `LoRALinear` that
keeps the same `kernel` and `bias` variables (so parameter paths, checkpoints and `init_from`
are unchanged) and adds `lora_a` (in, r; random) and `lora_b` (r, out; zero) as
`nnx.LoRAParam` variables: y = x W + b + (alpha / r) x A B (rsLoRA, Kalajdzievski 2023:
alpha / sqrt(r), so the update's scale does not shrink as the rank grows). With B = 0 the model
is exactly the base model. With `dropout` > 0 the LoRA input path is dropped out,
y = x W + b + (alpha / r) drop(x) A B, when a key is passed as `rng=` (the decoder's blocks
pass one per layer in training, as `keyed_dropout` asks them to); without a key it is exact.
`merge_params` folds the update into the kernels for export or fast inference,
`unmerge_params` undoes it, and `adapter_params` is the adapter alone.

DoRA (Liu et al. 2024; `dora=True`) adds `lora_magnitude` m (out,), initialised to the column
norms of W, and rescales each output column of the adapted weight to it:
W' = m * (W + s A B) / ||W + s A B||_c. The norms are treated as constants (no gradient
flows through them: the paper's section 4.3, as PEFT does). With dropout, the dropped input
takes the LoRA and the rescaling path, the undropped one the base path, as in PEFT:
y = x W + b + (g - 1) drop(x) W + g s drop(x) A B with g = m / ||W + s A B||_c.
"""

from __future__ import annotations

import re
from typing import Any, Collection

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models import layers
from jaxlm.models.stacking import flatten, path_name
from jaxlm.peft.params import decoder_of, new_param


class LoRALinear(nnx.Module):
  """A linear layer with a low-rank trainable update; `kernel`/`bias` come from the base."""

  def __init__(self, base: nnx.Linear, rank: int, alpha: float, rngs: nnx.Rngs,
               dropout: float = 0.0, dora: bool = False, rslora: bool = False):
    # A stacked linear (`model.scan_layers`) has a leading `layers` axis: its factors get one
    # too, and `lax.scan` hands each layer its own slice.
    *lead, d_in, d_out = base.kernel.get_value().shape
    names = base.kernel.get_metadata().get("out_sharding") or (None,) * (len(lead) + 2)
    lead_names, (in_name, out_name) = tuple(names[:-2]), names[-2:]
    self.kernel, self.bias = base.kernel, base.bias
    self.dtype = base.dtype
    self.scale = lora_scale(alpha, rank, rslora)
    self.keyed_dropout = dropout
    init_a = nnx.initializers.kaiming_uniform(batch_axis=tuple(range(len(lead))))
    self.lora_a = new_param(init_a, (*lead_names, in_name, None), rngs.params(),
                            (*lead, d_in, rank))
    self.lora_b = new_param(nnx.initializers.zeros_init(), (*lead_names, None, out_name),
                            rngs.params(), (*lead, rank, d_out))
    self.lora_magnitude = new_param(lambda *_: column_norms(base.kernel.get_value()),
                                    (*lead_names, out_name), None, (*lead, d_out)) if dora else None

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    dt = self.dtype or x.dtype
    x = x.astype(dt)
    xw = x @ self.kernel[...].astype(dt)
    y = xw if self.bias is None else xw + self.bias[...].astype(dt)
    x_in = layers.dropout(x, self.keyed_dropout, rng)
    update = (x_in @ self.lora_a[...].astype(dt)) @ self.lora_b[...].astype(dt)
    if self.lora_magnitude is None:
      return y + self.scale * update
    norms = jax.lax.stop_gradient(column_norms(adapted_kernel(
        self.kernel[...], self.lora_a[...], self.lora_b[...], self.scale)))
    g = (self.lora_magnitude[...] / norms).astype(dt)
    xw_in = xw if x_in is x else x_in @ self.kernel[...].astype(dt)
    return y + (g - 1) * xw_in + g * self.scale * update

  def effective_kernel(self) -> jax.Array:
    """The (in, out) kernel the layer's input-to-output map equals without dropout: W + s A B,
    DoRA's rescaling applied (`layers.linear_kernel` reads it)."""
    magnitude = None if self.lora_magnitude is None else self.lora_magnitude[...]
    return merged_kernel(self.kernel[...], self.lora_a[...], self.lora_b[...], self.scale,
                         magnitude)


def lora_scale(alpha: float, rank: int, rslora: bool = False) -> float:
  """The factor s of the update s A B: alpha / r, or alpha / sqrt(r) with rsLoRA."""
  return alpha / (rank ** 0.5 if rslora else rank)


def column_norms(kernel: jax.Array) -> jax.Array:
  """The L2 norm of each output column of an (..., in, out) kernel: (..., out), float32."""
  return jnp.linalg.norm(kernel.astype(jnp.float32), axis=-2)


def adapted_kernel(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """W + s A B in float32."""
  f32 = jnp.float32
  return kernel.astype(f32) + scale * (a.astype(f32) @ b.astype(f32))


def merged_kernel(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float,
                  magnitude: jax.Array | None = None) -> jax.Array:
  """The kernel a layer without LoRA needs to compute what the adapted one does: W + s A B,
  with DoRA's `magnitude` each column rescaled to it."""
  w = adapted_kernel(kernel, a, b, scale)
  if magnitude is None:
    return w
  return w * (magnitude / column_norms(w))[..., None, :]


def _linears(model: nnx.Module):
  """(path string, parent module, attribute name, linear) for every nnx.Linear."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Linear) and path:
      parent = model
      for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
      yield "/".join(map(str, path)), parent, path[-1], node


def apply_lora(model: nnx.Module, targets: str, rank: int, alpha: float,
               rngs: nnx.Rngs, dropout: float = 0.0, dora: bool = False,
               rslora: bool = False) -> list[str]:
  """Puts LoRA (DoRA with `dora`; scaled by alpha / sqrt(rank) with `rslora`) on the linears
  whose path matches `targets` (re.search); returns their paths.

  `dropout` > 0 needs a decoder, whose blocks hand the LoRA layers their dropout keys.
  """
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"peft.dropout must be in [0, 1), got {dropout}")
  if dropout > 0:
    decoder_of(model, "lora with peft.dropout > 0").keyed_dropout = dropout
  pattern = re.compile(targets)
  linears = list(_linears(model))
  chosen = [(p, parent, name, lin) for p, parent, name, lin in linears if pattern.search(p)]
  if not chosen:  # name the model's linears once per kind, not once per layer
    kinds = sorted({re.sub(r"(blocks|stack)/\d+/", "", p) for p, *_ in linears})
    raise ValueError(f"peft.targets={targets!r} matches no linear layer; the model's are "
                     + ", ".join(kinds))
  for _, parent, name, linear in chosen:
    setattr(parent, name, LoRALinear(linear, rank, alpha, rngs, dropout, dora, rslora))
  return [p for p, *_ in chosen]


LEAVES = ("lora_a", "lora_b", "lora_magnitude")  # what LoRA / DoRA add beside a kernel


def renorm_magnitudes(params: Any, loaded: Collection[str], scale: float) -> Any:
  """`params` with each DoRA magnitude that was not itself loaded reset to the column norms
  of its adapted kernel when that kernel was (`loaded`: paths taken from another run), so the
  fresh adapter leaves the loaded model unchanged, as at init."""
  leaves = flatten(params)
  fresh = {}
  for name in leaves:
    layer = name[:-len("/lora_magnitude")]
    if name.endswith("/lora_magnitude") and name not in loaded and f"{layer}/kernel" in loaded:
      fresh[name] = column_norms(adapted_kernel(leaves[f"{layer}/kernel"],
                                                leaves[f"{layer}/lora_a"],
                                                leaves[f"{layer}/lora_b"], scale))
  return jax.tree_util.tree_map_with_path(lambda p, x: fresh.get(path_name(p), x), params)


def merge_params(params: dict, scale: float) -> dict:
  """Base-model parameters with every LoRA update folded in (`merged_kernel`), LoRA leaves
  dropped: what a model built without LoRA loads for export or fast inference."""
  if not isinstance(params, dict):
    return params
  if "lora_a" in params:
    merged = {k: v for k, v in params.items() if k not in LEAVES}
    merged["kernel"] = merged_kernel(params["kernel"], params["lora_a"], params["lora_b"], scale,
                                     params.get("lora_magnitude")).astype(params["kernel"].dtype)
    return merged
  return {k: merge_params(v, scale) for k, v in params.items()}


def unmerge_params(merged: dict, adapter: dict, scale: float) -> dict:
  """The inverse of `merge_params` for LoRA: base kernels (W - s A B) plus the adapter's
  leaves. A merged DoRA kernel has lost the norms it was divided by: ValueError."""
  if not isinstance(adapter, dict) or not adapter:
    return merged
  if "lora_magnitude" in adapter:
    raise ValueError("a merged DoRA kernel cannot be split back into base and adapter (its "
                     "column norms are gone); keep the unmerged parameters")
  if "lora_a" in adapter:
    out = dict(merged)
    out["kernel"] = merged["kernel"] - scale * adapter["lora_a"] @ adapter["lora_b"]
    return {**out, "lora_a": adapter["lora_a"], "lora_b": adapter["lora_b"]}
  return {k: unmerge_params(v, adapter.get(k, {}), scale) for k, v in merged.items()}


def adapter_params(params: dict) -> dict:
  """The LoRA leaves alone (a small tree to save, or to apply onto a base later)."""
  if not isinstance(params, dict):
    return {}
  if "lora_a" in params:
    return {k: params[k] for k in LEAVES if k in params}
  out = {k: adapter_params(v) for k, v in params.items()}
  return {k: v for k, v in out.items() if v}
