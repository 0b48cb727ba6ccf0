"""LoRA on mixtures of experts as PEFT adapters: the attention, a shared expert and (where
transformers' router is an nn.Linear, Mixtral's) the router load with `peft` onto the
transformers model and give jaxlm's logits; a router PEFT cannot adapt is refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import nnx

from hf_testing import VOCAB, hf_model, random_batch
from jaxlm.interop import hf, hf_config_export, hf_peft
from jaxlm.models.stacking import flatten
from jaxlm.peft.lora import apply_lora


def lora_model(variant: str, targets: str, folder):
  """(transformers model saved in `folder`, its jaxlm import with LoRA on `targets` and
  random B factors, the flat jaxlm parameters, the imported HF config)."""
  reference = hf_model(variant)
  reference.save_pretrained(folder)
  cfg, params, hf_cfg = hf.load_hf(folder)
  model = hf.build_model(cfg, params)
  assert apply_lora(model, targets, 4, 8.0, nnx.Rngs(1))
  rng = np.random.default_rng(0)
  for path, leaf in nnx.iter_graph(model):
    if path and path[-1] == "lora_b":
      leaf[...] = jnp.asarray(rng.normal(size=leaf[...].shape).astype(np.float32) * 0.1)
  flat = {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(model))).items()}
  return reference, model, flat, cfg, hf_cfg


@pytest.mark.parametrize("variant,targets", [
    ("qwen2_moe", r"attn/(query|value)$|mlp/shared/(up|down)$|mlp/shared_gate$"),
    ("mixtral", r"attn/value$|mlp/router$"),
    ("olmoe", r"attn/(query|key)$"),
    # DeepSeek-V3: the latent projections, whose output rows jaxlm holds reordered (the
    # rotary dimensions first, their interleaved pairs as halves). Not its shared expert:
    # peft's checkpoint conversion puts an adapter named for shared_experts.down_proj on the
    # routed experts.
    ("deepseek_v3", r"attn/(query_up|kv_down|kv_up|out)$")])
def test_moe_lora_adapters_load_with_peft(variant, targets, tmp_path):
  reference, model, flat, cfg, hf_cfg = lora_model(variant, targets, tmp_path / "base")
  folder = hf_peft.save_adapter(tmp_path / "adapter", cfg, flat, rank=4, alpha=8.0,
                                base_model=str(tmp_path / "base"), hf_cfg=hf_cfg)
  tuned = peft.PeftModel.from_pretrained(reference, str(folder)).eval()
  tokens, mask = random_batch(VOCAB)
  ours = np.asarray(jax.jit(lambda t, m: model(t, None, m))(jnp.asarray(tokens),
                                                           jnp.asarray(mask, jnp.int32)))
  with torch.no_grad():
    ref = tuned(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
    with tuned.disable_adapter():
      plain = tuned(input_ids=torch.tensor(tokens),
                    attention_mask=torch.tensor(mask)).logits.numpy()
  valid = mask.astype(bool)
  assert np.abs(ours - ref)[valid].max() < 1e-4
  assert np.abs(plain - ref)[valid].max() > 1e-3  # the adapter changes the outputs
  read, _ = hf_peft.read_adapter(folder, cfg, hf_cfg)  # and reads back as it was
  for path, leaf in read.items():
    np.testing.assert_allclose(leaf, flat[path], atol=1e-6, err_msg=path)


def test_a_router_peft_cannot_adapt_is_named(tmp_path):
  _, _, flat, cfg, hf_cfg = lora_model("qwen2_moe", r"mlp/router$", tmp_path / "base")
  with pytest.raises(ValueError, match="router .* no PEFT adapter form for qwen2_moe.*merge-lora"):
    hf_peft.adapter_tensors(cfg, flat, 8.0, hf_config_export.hf_config(cfg, hf_cfg))
