"""DoRA: one layer's output and gradients against PEFT's DoRA (torch), exactness at init,
merging, magnitudes renormed after init_from, and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxlm import peft
from jaxlm.models import Decoder, from_config, registry
from jaxlm.models.stacking import flatten
from jaxlm.peft import lora

DORA = dict(method="lora", targets=r"attn/(query|value)$|mlp/up$", rank=4, alpha=8.0,
            use_dora=True, include="", exclude="")


def small(style="llama"):
  return from_config(registry.model_config(
      "gpt2-124m", style=style, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64,
      max_seq_len=16), vocab_size=64)


def perturbed(params, seed=0):
  """Pure-dict params with every DoRA leaf moved off its initial value."""
  rng = np.random.default_rng(seed)

  def move(path, x):
    name = path[-1].key
    if name in ("lora_a", "lora_b"):
      return jnp.asarray(rng.normal(0, 0.3, x.shape), x.dtype)
    if name == "lora_magnitude":
      return x * jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(move, params)


def test_layer_output_and_gradients_match_peft():
  """y and the gradients of <y, c> with respect to A, B and the magnitude, against PEFT's
  DoRA on a torch Linear with the same weights (its column norms detached, as ours)."""
  import peft as hf_peft
  torch.manual_seed(0)
  d_in, d_out, r, alpha = 6, 5, 3, 6.0
  holder = torch.nn.Sequential(torch.nn.Linear(d_in, d_out))
  ref = hf_peft.get_peft_model(holder, hf_peft.LoraConfig(
      r=r, lora_alpha=alpha, target_modules=["0"], use_dora=True))
  layer = ref.base_model.model[0]
  rng = np.random.default_rng(0)
  with torch.no_grad():
    layer.lora_A["default"].weight.copy_(torch.tensor(rng.normal(0, 0.5, (r, d_in))))
    layer.lora_B["default"].weight.copy_(torch.tensor(rng.normal(0, 0.5, (d_out, r))))
    layer.lora_magnitude_vector["default"].weight.mul_(
        torch.tensor(rng.uniform(0.5, 1.5, d_out), dtype=torch.float32))
  x, cot = rng.normal(size=(4, d_in)), rng.normal(size=(4, d_out))
  y_ref = ref(torch.tensor(x, dtype=torch.float32))
  (y_ref * torch.tensor(cot, dtype=torch.float32)).sum().backward()

  base = nnx.Linear(d_in, d_out, rngs=nnx.Rngs(0))
  base.kernel.set_value(jnp.asarray(layer.base_layer.weight.detach().numpy().T))
  base.bias.set_value(jnp.asarray(layer.base_layer.bias.detach().numpy()))
  ours = lora.LoRALinear(base, r, alpha, nnx.Rngs(1), dora=True)
  np.testing.assert_allclose(  # initialised to the base weight's column norms, as PEFT's
      ours.lora_magnitude[...], np.linalg.norm(layer.base_layer.weight.detach().numpy(), axis=1),
      rtol=1e-6)
  ours.lora_a.set_value(jnp.asarray(layer.lora_A["default"].weight.detach().numpy().T))
  ours.lora_b.set_value(jnp.asarray(layer.lora_B["default"].weight.detach().numpy().T))
  ours.lora_magnitude.set_value(
      jnp.asarray(layer.lora_magnitude_vector["default"].weight.detach().numpy()))
  np.testing.assert_allclose(ours(jnp.asarray(x, jnp.float32)), y_ref.detach().numpy(),
                             rtol=1e-5, atol=1e-6)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(x, jnp.float32)) * cot),
                   argnums=nnx.DiffState(0, nnx.LoRAParam))(ours)
  np.testing.assert_allclose(grads.lora_a[...], layer.lora_A["default"].weight.grad.numpy().T,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads.lora_b[...], layer.lora_B["default"].weight.grad.numpy().T,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads.lora_magnitude[...],
                             layer.lora_magnitude_vector["default"].weight.grad.numpy(),
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_fresh_dora_is_the_base_model_and_merges_exactly(scan):
  """At init (B = 0, m = ||W||_c) the model is the base model; after training-like moves its
  merged kernels give the same logits in a model without adapters; unmerging is refused."""
  cfg = small()
  if scan:
    import dataclasses
    cfg = dataclasses.replace(cfg, scan_layers=True)
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
  base = Decoder(cfg, nnx.Rngs(0))
  wrapped = peft.wrap(Decoder(cfg, nnx.Rngs(0)), DORA, nnx.Rngs(1))
  np.testing.assert_allclose(wrapped(tokens), base(tokens), rtol=1e-5, atol=1e-5)
  graphdef, state = nnx.split(wrapped)
  params = perturbed(nnx.to_pure_dict(state))
  assert sum(k.endswith("/lora_magnitude") for k in flatten(params)) == (1 if scan else 2) * 3
  want = nnx.merge(graphdef, params)(tokens)
  assert np.abs(np.asarray(want - base(tokens))).max() > 1e-2  # the adapter does something
  scale = DORA["alpha"] / DORA["rank"]
  merged = lora.merge_params(params, scale)
  np.testing.assert_allclose(nnx.merge(nnx.split(base)[0], merged)(tokens), want, rtol=1e-4,
                             atol=1e-4)
  with pytest.raises(ValueError, match="cannot be split back"):
    lora.unmerge_params(merged, lora.adapter_params(params), scale)


def test_magnitudes_follow_weights_loaded_from_another_run():
  """init_from replaces the kernels after the magnitudes were set from the random ones: the
  magnitudes of loaded kernels are reset to their norms, so the fresh adapter is exact again;
  a magnitude loaded itself (resuming an adapter) is kept."""
  cfg = small()
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
  pretrained = Decoder(cfg, nnx.Rngs(7))
  graphdef, state = nnx.split(peft.wrap(Decoder(cfg, nnx.Rngs(0)), DORA, nnx.Rngs(1)))
  params = nnx.to_pure_dict(state)
  loaded = flatten(nnx.to_pure_dict(nnx.split(pretrained)[1]))
  overlaid = jax.tree_util.tree_map_with_path(
      lambda p, x: loaded.get(peft.path_name(p), x), params)
  assert np.abs(np.asarray(nnx.merge(graphdef, overlaid)(tokens) - pretrained(tokens))).max() > 1e-3
  fixed = peft.after_init_from(overlaid, set(loaded), DORA, seed=0)
  np.testing.assert_allclose(nnx.merge(graphdef, fixed)(tokens), pretrained(tokens), rtol=1e-5,
                             atol=1e-5)
  name = "blocks/0/attn/query/lora_magnitude"
  kept = peft.after_init_from(overlaid, set(loaded) | {name}, DORA, seed=0)
  np.testing.assert_array_equal(flatten(kept)[name], flatten(overlaid)[name])


def test_dora_and_rslora_are_lora_options():
  with pytest.raises(ValueError, match="use_dora is a LoRA variant"):
    peft.check_method({**DORA, "method": "adapter"})
  with pytest.raises(ValueError, match="use_rslora is a LoRA variant"):
    peft.check_method({**DORA, "use_dora": False, "use_rslora": True, "method": "prefix"})
  assert peft.lora_scale_of({**DORA, "use_rslora": True}) == 8.0 / 2.0  # alpha / sqrt(4)
  assert peft.lora_scale_of(DORA) == 8.0 / 4
