"""PEFT methods vs full fine-tuning: compiled train-step memory, compile time (and step time
when run).

  python benchmarks/peft_memory.py --model gpt2-350m --batch 8 --seq 512            # compile only
  python benchmarks/peft_memory.py --model gpt2-124m --batch 4 --seq 128 --run 5    # also time it
  python benchmarks/peft_memory.py --method prefix --method prompt --scan-layers    # other methods

Memory comes from XLA's `compiled.memory_analysis()` of the jitted step (arguments, outputs
and temporaries), so a 350M model can be analysed on a CPU without allocating it.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxlm import objectives
from jaxlm.config import base_config
from jaxlm.data.pipeline import rows_from_windows
from jaxlm.train import loop, metrics, sharding


METHOD_NAMES = {"none": "full", "lora": "lora (q,v; r=8)", "prefix": "prefix (16 slots)",
                "prompt": "prompt (16 tokens)", "adapter": "adapter (64)"}


def measure(model: str, method: str, batch: int, seq: int, run_steps: int,
            vocab: int = 50304, scan_layers: bool = False) -> dict:
  """Compiled memory (GiB), compile seconds and, if `run_steps`, seconds per step for one
  PEFT method (the config's default settings of it)."""
  cfg = base_config(model)
  cfg.model.update(vocab_size=vocab, max_seq_len=max(seq, cfg.model.max_seq_len),
                   scan_layers=scan_layers)
  cfg.data.seq_len = seq
  cfg.train.update(batch_size=batch)
  cfg.peft.method = method
  mesh = sharding.make_mesh(cfg.mesh)
  setup = loop.build_model(cfg, vocab, mesh)
  train_step = loop.jitted_train_step(setup, objectives.loss_fn_for(cfg), mesh)
  abstract = jax.eval_shape(setup.init)
  windows = np.random.default_rng(0).integers(0, vocab, (batch, seq + 1), dtype=np.int32)
  batch_np = rows_from_windows(windows, np.ones_like(windows))
  batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch_np.items()}
  t0 = time.perf_counter()
  compiled = train_step.lower(abstract, batch_abstract, {}).compile()
  mem = metrics.compiled_memory_gib(compiled.memory_analysis())
  out = dict(model=model, method=method, compile_s=time.perf_counter() - t0,
             temp_gib=mem["temp"], total_gib=mem["step"])
  if run_steps:
    state, gb = setup.init(), sharding.global_batch(batch_np, mesh)
    state, m = compiled(state, gb, {})
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(run_steps):
      state, m = compiled(state, gb, {})
    jax.block_until_ready(m)
    out["step_s"] = (time.perf_counter() - t0) / run_steps
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="gpt2-350m")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--run", type=int, default=0, help="also time this many steps")
  p.add_argument("--method", action="append",
                 help="peft.method (repeatable; default: none and lora)")
  p.add_argument("--scan-layers", action="store_true", help="stacked blocks run by lax.scan")
  args = p.parse_args()
  print(f"device: {jax.devices()[0].device_kind}")
  print("| model | method | step memory GiB (args + temp + out - aliased) | temp GiB | "
        "compile s | step s |")
  print("|---|---|---|---|---|---|")
  for method in args.method or ["none", "lora"]:
    r = measure(args.model, method, args.batch, args.seq, args.run,
                scan_layers=args.scan_layers)
    step = f"{r['step_s']:.3f}" if "step_s" in r else "not run"
    name = METHOD_NAMES.get(method, method) + (", scanned" if args.scan_layers else "")
    print(f"| {r['model']} | {name} | {r['total_gib']:.2f} | {r['temp_gib']:.2f} | "
          f"{r['compile_s']:.1f} | {step} |", flush=True)


if __name__ == "__main__":
  main()
