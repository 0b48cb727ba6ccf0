"""Speculative decoding speed: new tokens/s of a trained run decoding alone and with a
smaller trained run (same tokenizer) drafting `--gamma` tokens a round.

Both decode the same prompts to exactly `--new` tokens (no stop token); each figure is the
best of `--repeats` timed calls after a warm-up call that compiles. Greedy by default, where
the two outputs must be equal (checked); `--temperature` > 0 samples.

  python benchmarks/speculative_decoding.py --target runs/big --draft runs/small
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxlm import sampling, speculative
from jaxlm.models import param_count
from jaxlm.rl.trainer import load_run


def best_time(run, repeats: int) -> tuple[float, float, object]:
  """(first call seconds, best of `repeats` later calls, last result)."""
  t0 = time.perf_counter()
  run()
  first = time.perf_counter() - t0
  times, out = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t0)
  return first, min(times), out


def benchmark(target: str, draft: str, *, prompt: str, batch: int, new: int, gamma: int,
              temperature: float, repeats: int) -> dict:
  """Times plain and speculative decoding of `batch` copies of `prompt`; returns the figures."""
  _, tokenizer, graphdef, params = load_run(target)
  _, _, draft_graphdef, draft_params = load_run(draft)
  ids = sampling.prompt_ids(tokenizer, [prompt]) * batch
  cfg = sampling.SamplingConfig(temperature=temperature, max_new_tokens=new)
  key = jax.random.key(0)
  plain_first, plain_s, plain = best_time(
      lambda: sampling.generate(graphdef, params, ids, cfg, key, eos_id=-1), repeats)
  spec_first, spec_s, (spec, counts) = best_time(
      lambda: speculative.generate(graphdef, params, draft_graphdef, draft_params, ids, cfg, key,
                                   gamma=gamma, eos_id=-1), repeats)
  if temperature == 0.0:
    assert spec == plain, "greedy speculative decoding must give the target's greedy output"
  assert all(len(row) == new for row in spec)
  return {"target_params": param_count(params), "draft_params": param_count(draft_params),
          "batch": batch, "new": new, "gamma": gamma, "temperature": temperature,
          "device": jax.devices()[0].device_kind,
          "plain_tokens_per_sec": round(batch * new / plain_s, 1),
          "speculative_tokens_per_sec": round(batch * new / spec_s, 1),
          "speedup": round(plain_s / spec_s, 3), "acceptance": round(counts["acceptance"], 4),
          "tokens_per_target_pass": round(counts["tokens_per_target_pass"], 3),
          "first_call_s": {"plain": round(plain_first, 2), "speculative": round(spec_first, 2)},
          "sample": tokenizer.decode(np.asarray(spec[0]).tolist())[:80]}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--target", required=True, help="workdir of the model to decode")
  p.add_argument("--draft", required=True, help="workdir of a smaller model, same tokenizer")
  p.add_argument("--prompt", default="ROMEO:")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--new", type=int, default=200)
  p.add_argument("--gamma", type=int, default=4)
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  print(benchmark(args.target, args.draft, prompt=args.prompt, batch=args.batch, new=args.new,
                  gamma=args.gamma, temperature=args.temperature, repeats=args.repeats))


if __name__ == "__main__":
  main()
