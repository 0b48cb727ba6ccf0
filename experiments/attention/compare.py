"""Multi-head latent attention against multi-head, grouped-query and multi-query attention on
nanoGPT's shakespeare_char CPU recipe, by final eval loss and KV cache per position.

  python experiments/attention/compare.py [--out experiments/attention/runs] [--only NAME ...]

Every run is `configs/shakespeare_char.py:cpu` (4 layers, width 128, 4 heads of 32, block 64,
batch 12, 2000 steps, AdamW lr 1e-3 cosine) in the Llama style (RoPE, RMSNorm, SwiGLU of 512),
with the overrides below, evaluated on 50 validation batches. Finished runs are reused.
Writes results.json next to the runs (each with its cache numbers per position and layer and
its parameter count) and prints a markdown table.
"""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from jaxlm.models import decoder, from_config
from jaxlm.scaling import variants
from jaxlm.train import loop

RECIPE = "configs/shakespeare_char.py:cpu"
COMMON = ("train.progress=False", "train.eval_batches=50", "model.style=llama",
          "model.mlp_dim=512")
# name -> overrides. Cache numbers per position and layer: MHA 2 x 4 heads x 32 = 256, GQA
# with 2 KV heads 128, MQA 64; MLA its latent plus the 16 rotary dimensions it shares.
RUNS: dict[str, tuple[str, ...]] = {
    "mha": (),
    "gqa2": ("model.num_kv_heads=2",),
    "mqa": ("model.num_kv_heads=1",),
    "mla_r64": ("model.kv_lora_rank=64", "model.qk_rope_head_dim=16"),
    "mla_r32": ("model.kv_lora_rank=32", "model.qk_rope_head_dim=16"),
    # Follow-ups: a second seed of mha and mla_r64 (the noise), and mla_r64 with wider query /
    # key heads (16 rotary + 32 expanded dimensions, values still 32; DeepSeek's are 64 + 128
    # and 128): the cache is the same, the expanded keys cost parameters only.
    "mha_seed2": ("seed=2",),
    "mla_r64_seed2": ("model.kv_lora_rank=64", "model.qk_rope_head_dim=16", "seed=2"),
    "mla_r64_qk48": ("model.kv_lora_rank=64", "model.qk_rope_head_dim=16", "model.head_dim=48",
                     "model.v_head_dim=32"),
}


def cache_and_params(workdir: Path) -> tuple[int, int]:
  """(KV cache numbers per position and layer, parameter count) of the model a run trained."""
  saved, tokenizer, graphdef, params = loop.load_trained(workdir)
  cfg = from_config(saved.model, tokenizer.vocab_size)
  cache = nnx.merge(graphdef, params).init_cache(1, 1)
  per_position = sum(x[0, 0].size for x in cache["k"] + cache["v"]) // cfg.num_layers
  return per_position, decoder.param_count(params)


def main() -> None:
  out, only = variants.parse_args(__doc__, "experiments/attention/runs", RUNS)
  results = variants.train_variants(RECIPE, RUNS, out, common=COMMON, only=only)
  for name in only:
    results[name]["cache_per_position"], results[name]["params"] = cache_and_params(out / name)
  (out / "results.json").write_text(json.dumps(results, indent=2))
  print(variants.markdown_table(results))
  for name in only:
    r = results[name]
    print(f"{name}: cache {r['cache_per_position']} per position and layer, "
          f"{r['params']:,} parameters")


if __name__ == "__main__":
  main()
