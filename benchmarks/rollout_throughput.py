"""Rollout sampling throughput: new tokens/s of the RL sampler on random prompts.

The policy is a randomly initialised decoder (GPT-2 124M shape, vocab 50304 by default);
every row generates exactly `--new` tokens (no stop token), at temperature 1, through
`jaxlm.rl.rollout.sample_responses` (jitted KV-cache decoding, left-padded prompts). The
figure is batch x new tokens / wall time of one call, after a warm-up call that compiles.
The peer figure is Hugging Face generate on an H100 (15,286 tok/s, see shared/references.md).
With `--num_beams K`, beam search (`sampling.generate`) instead: every beam runs to the limit
too; tokens/s counts the returned tokens (batch x new), beam_tokens_per_sec all K beams'.
`--set KEY=VALUE` overrides the config (`model.style=llama`, `model.kv_lora_rank=64`, ...);
`cache_per_token` is the KV cache's numbers per token over all layers.

  python benchmarks/rollout_throughput.py                      # 124M, batch 64, 64 + 256
  python benchmarks/rollout_throughput.py --tiny               # a CPU-sized shape
  python benchmarks/rollout_throughput.py --tiny --num_beams 4
  python benchmarks/rollout_throughput.py --tiny --set model.style=llama \
      --set model.kv_lora_rank=64 --set model.qk_rope_head_dim=32   # latent attention
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from jaxlm.config import apply_overrides, base_config
from jaxlm.models import factory, from_config, param_count
from jaxlm.rl.rollout import sample_responses
from jaxlm.sampling import SamplingConfig, generate

TINY = dict(num_layers=4, num_heads=4, embed_dim=256, mlp_dim=1024)


def benchmark(model: str, batch: int, prompt: int, new: int, vocab: int, tiny: bool,
              repeats: int, num_beams: int = 1, overrides: tuple[str, ...] = ()) -> dict:
  """Times `repeats` rollouts after one warm-up; returns the measured figures."""
  cfg = base_config(model)
  cfg.model.update(vocab_size=vocab, max_seq_len=max(prompt + new, 64))
  if tiny:
    cfg.model.update(**TINY)
  apply_overrides(cfg, overrides)
  model_cfg = from_config(cfg.model)
  module = factory.create(model_cfg, nnx.Rngs(0))
  cache = module.init_cache(1, 1)
  cache_per_token = sum(x[0, 0].size for x in cache["k"] + cache["v"])
  graphdef, params = nnx.split(module)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, vocab, prompt).tolist() for _ in range(batch)]
  if num_beams > 1:
    scfg = SamplingConfig(temperature=0.0, max_new_tokens=new, num_beams=num_beams)
    run = lambda i: generate(graphdef, params, prompts, scfg, jax.random.key(i), eos_id=-1)
    lengths = lambda out: [len(row) for row in out]
  else:
    scfg = SamplingConfig(temperature=1.0, max_new_tokens=new)
    run = lambda i: sample_responses(graphdef, params, prompts, scfg, jax.random.key(i),
                                     eos_id=-1, pad_id=0)
    lengths = lambda out: out[1].sum(axis=1).tolist()
  t0 = time.perf_counter()
  run(0)
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    out = run(i + 1)
    times.append(time.perf_counter() - t0)
    assert lengths(out) == [new] * batch, "every row should generate all new tokens"
  best = min(times)
  return {"model": "tiny" if tiny else model, "overrides": " ".join(overrides),
          "params": param_count(params), "cache_per_token": cache_per_token, "batch": batch,
          "prompt": prompt, "new": new, "num_beams": num_beams,
          "device": jax.devices()[0].device_kind, "first_call_s": round(compile_s, 2),
          "rollout_s": round(best, 3), "tokens_per_sec": round(batch * new / best, 1),
          "beam_tokens_per_sec": round(batch * num_beams * new / best, 1)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="gpt2-124m")
  # name -> (default, --tiny's default); a value given on the command line wins over both
  sizes = {"batch": (64, 8), "prompt": (64, 16), "new": (256, 64), "vocab": (50304, 512)}
  for name, (full, _) in sizes.items():
    p.add_argument(f"--{name}", type=int, default=None, help=f"default {full}")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--num_beams", type=int, default=1, help="> 1: beam search instead")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a config override, e.g. model.kv_lora_rank=64 (repeatable)")
  p.add_argument("--tiny", action="store_true",
                 help=f"a CPU-sized model {TINY}, batch 8, 16-token prompts, 64 new tokens, "
                      "vocab 512 (unless given)")
  args = p.parse_args()
  for name, defaults in sizes.items():
    if getattr(args, name) is None:
      setattr(args, name, defaults[args.tiny])
  print(benchmark(args.model, args.batch, args.prompt, args.new, args.vocab, args.tiny,
                  args.repeats, args.num_beams, tuple(args.set)))


if __name__ == "__main__":
  main()
