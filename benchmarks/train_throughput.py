"""Training throughput: tokens/s and MFU of jaxlm's train step on random tokens.

Same setting as the nanoGPT rows in the reference table: GPT-2 shapes, vocab 50304,
sequence 1024, AdamW, bf16 compute with fp32 parameters. MFU uses the PaLM formula
6N + 12*L*H*Q*T flops per token against the device's bf16 peak.

  python benchmarks/train_throughput.py --model gpt2-124m --batch 16
  python benchmarks/train_throughput.py --model gpt2-350m --batch 16 --model gpt2-774m ...
  python benchmarks/train_throughput.py --model gpt2-124m --batch 2 --seq 128 --steps 5  # CPU
  ... --remat full --loss-chunk 4096 --mu-dtype bfloat16   # the memory savers
  ... --scan-layers   # stacked blocks under lax.scan: one block compiled, not num_layers
  ... --optimizer muon  # lion | adafactor | muon instead of AdamW (optim.name)
  ... --experts 8 --experts-per-token 2  # each MLP a mixture of experts (MFU: active params)
  ... --experts 8 --capacity-factor 1.25  # experts as batched matmuls with a capacity
  ... --mesh data=2,expert=4  # the device mesh (mesh.*; default: data over every device)
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxlm import objectives
from jaxlm.config import base_config
from jaxlm.data.pipeline import rows_from_windows
from jaxlm.models import factory, from_config, matmul_param_count
from jaxlm.train import metrics, optim, sharding, state as state_lib, step as step_lib


def benchmark(model: str, batch: int, seq: int, steps: int, warmup: int, dtype: str,
              vocab: int, attention: str, remat: str = "none", loss_chunk: int = 0,
              mu_dtype: str = "float32", scan_layers: bool = False,
              optimizer: str = "adamw", experts: int = 0, experts_per_token: int = 2,
              capacity_factor: float = 0.0, mesh: dict[str, int] | None = None) -> dict:
  """Times `steps` train steps after `warmup` ones on `mesh` (mesh.* sizes; default: data
  parallel over every device); returns the measured figures."""
  cfg = base_config(model)
  cfg.mesh.update(mesh or {})
  cfg.model.update(vocab_size=vocab, max_seq_len=max(seq, cfg.model.max_seq_len), dtype=dtype,
                   attention_impl=attention, remat=remat, scan_layers=scan_layers,
                   num_experts=experts, experts_per_token=experts_per_token,
                   moe_capacity_factor=capacity_factor)
  cfg.train.update(batch_size=batch, steps=steps + warmup, loss_chunk=loss_chunk)
  cfg.optim.update(mu_dtype=mu_dtype, name=optimizer)
  model_cfg = from_config(cfg.model)
  mesh = sharding.make_mesh(cfg.mesh)
  opt = optim.make_optimizer(cfg.optim, cfg.train.steps)
  graphdef, init, shardings = state_lib.make_initializer(
      lambda rngs: factory.create(model_cfg, rngs), opt, 0, mesh)
  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(graphdef, objectives.loss_fn_for(cfg), opt,
                               optim.make_schedule(cfg.optim, 10)),
      shardings, sharding.batch_sharding(mesh))
  state = init()
  rng = np.random.default_rng(0)
  windows = [rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32) for _ in range(2)]
  batches = [sharding.global_batch(rows_from_windows(w, np.ones_like(w)), mesh) for w in windows]
  with jax.set_mesh(mesh), sharding.activation_rules():
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batches[0], {}).compile()  # run below: compiled once
    compile_s = time.perf_counter() - t0
    memory = metrics.compiled_memory_gib(compiled.memory_analysis())
    for i in range(warmup):
      state, m = compiled(state, batches[i % 2], {})
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(steps):
      state, m = compiled(state, batches[i % 2], {})
    jax.block_until_ready(m)
    elapsed = time.perf_counter() - t0
  tokens_s = steps * batch * seq / elapsed
  n = matmul_param_count(model_cfg, state.params)
  fpt = metrics.flops_per_token(n, model_cfg.num_layers, model_cfg.num_heads,
                                model_cfg.attention_flops_dim, seq)
  kind = jax.devices()[0].device_kind
  halved = metrics.flops_per_token(n, model_cfg.num_layers, model_cfg.num_heads,
                                   model_cfg.attention_flops_dim, seq, causal_halved=True)
  util = metrics.mfu(tokens_s, fpt, kind, jax.device_count())
  util_causal = metrics.mfu(tokens_s, halved, kind, jax.device_count())
  return dict(model=model, optimizer=optimizer, batch=batch, seq=seq, device=kind, n_devices=jax.device_count(),
              dtype=np.dtype(model_cfg.compute_dtype).name,
              step_ms=1000 * elapsed / steps, tokens_per_s=tokens_s, mfu=util,
              mfu_causal=util_causal, step_gib=memory["step"],
              temp_gib=memory["temp"],
              compile_s=compile_s, loss=float(m["loss"]))


def mesh_sizes(text: str) -> dict[str, int]:
  """"data=2,expert=4" -> {"data": 2, "expert": 4}; unknown axes are refused by name."""
  sizes = {}
  for item in filter(None, text.split(",")):
    axis, _, size = item.partition("=")
    if axis not in sharding.MESH_AXES or not size.lstrip("-").isdigit():
      raise argparse.ArgumentTypeError(f"{item!r}: want AXIS=SIZE with AXIS one of "
                                       f"{', '.join(sharding.MESH_AXES)}")
    sizes[axis] = int(size)
  return sizes


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", action="append", help="registry size (repeatable)")
  p.add_argument("--batch", type=int, action="append", help="batch per model (repeatable)")
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--dtype", default="auto", help="compute dtype (auto: bf16 on GPU/TPU)")
  p.add_argument("--vocab", type=int, default=50304)
  p.add_argument("--attention", default="auto", help="auto | xla | cudnn")
  p.add_argument("--remat", default="none", help="none | full | save_dots")
  p.add_argument("--loss-chunk", type=int, default=0, help="chunked cross-entropy (0: off)")
  p.add_argument("--mu-dtype", default="float32", help="Adam first moment: float32 | bfloat16")
  p.add_argument("--scan-layers", action="store_true", help="stacked blocks run by lax.scan")
  p.add_argument("--optimizer", default="adamw", help="adamw | lion | adafactor | muon")
  p.add_argument("--experts", type=int, default=0, help="experts per MLP (0: dense)")
  p.add_argument("--experts-per-token", type=int, default=2, help="experts a token runs through")
  p.add_argument("--capacity-factor", type=float, default=0.0, help="expert capacity (0: dropless)")
  p.add_argument("--mesh", type=mesh_sizes, default={},
                 help="mesh axis sizes, e.g. data=2,expert=4 (axes: data fsdp tensor expert "
                      "sequence; -1 takes the remaining devices)")
  args = p.parse_args()
  models = args.model or ["gpt2-124m"]
  batches = args.batch or [16] * len(models)
  if len(batches) == 1:
    batches = batches * len(models)
  print("| model | batch | seq | device | step ms | tokens/s | MFU | MFU causal-halved | step GiB "
        "| temp GiB | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for model, batch in zip(models, batches):
    r = benchmark(model, batch, args.seq, args.steps, args.warmup, args.dtype, args.vocab,
                  args.attention, args.remat, args.loss_chunk, args.mu_dtype, args.scan_layers,
                  args.optimizer, args.experts, args.experts_per_token, args.capacity_factor,
                  args.mesh)
    mfu, mfu_causal = (f"{100 * r[k]:.1f}%" if r[k] is not None else "n/a (unknown peak)"
                       for k in ("mfu", "mfu_causal"))
    name = model if args.optimizer == "adamw" else f"{model} ({args.optimizer})"
    if args.experts:
      name += f" (top-{args.experts_per_token} of {args.experts} experts"
      name += f", capacity {args.capacity_factor})" if args.capacity_factor else ", dropless)"
    print(f"| {name} | {batch} | {args.seq} | {r['n_devices']}x {r['device']} | "
          f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {mfu} | {mfu_causal} | "
          f"{r['step_gib']:.2f} | {r['temp_gib']:.2f} | {r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
