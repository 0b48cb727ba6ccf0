#!/usr/bin/env bash
# Every GPU figure the open issues ask for, on a lent H100 / H200. `bash gpu_session.sh PART...`
# runs the named parts in this file's order (throughput rollout ppo peft shakespeare
# shakespeare_cudnn open_weights scan optimizers moe mla); with none, all but the last six. A `device` call may
# run 10 minutes and a session has about 15 device minutes, start-up included: split the open
# issues' figures over two calls, `throughput rollout ppo` and then `shakespeare`. Each part
# writes its rows as it ends, so a call cut short keeps the parts it finished. The machine
# reaches no registry; the wheels it lacks:
#
#   mkdir -p .whl && cp ../shared/wheels/gpu-py312/*.whl .whl/ && echo /.whl/ >> .git/info/exclude
#   device run, carry [".whl"]:
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#     export PYTHONPATH=/tmp/site:$PWD; bash benchmarks/gpu_session.sh
#
# Prints markdown rows for benchmarks/RESULTS.md and the experiments' READMEs; copies them
# to $OUT (the device tool's output folder) when it is set.
set -uo pipefail
parts=("${@:-all}")
named() { [[ " ${parts[*]} " == *" $1 "* ]]; }  # asked for by name
want() { named all || named "$1"; }
out="${OUT:-benchmarks/gpu_out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  | tee -a "$out/device.txt"

# Issue 6: training throughput against nanoGPT x 1.25 (580k / 227k / 101k tokens/s).
want throughput && python3 benchmarks/train_throughput.py --model gpt2-124m --batch 16 --model gpt2-124m --batch 32 \
  --model gpt2-350m --batch 16 --model gpt2-774m --batch 8 | tee "$out/throughput.md"
want throughput && python3 benchmarks/train_throughput.py --model gpt2-124m --batch 32 --loss-chunk 8192 \
  | tee "$out/throughput_chunked.md"

# Not in `all`: training throughput at the open-weight shapes (Qwen2.5-0.5B, Llama-3.2-1B).
named open_weights && python3 benchmarks/train_throughput.py --vocab 151936 \
  --model qwen2.5-0.5b --batch 16 | tee "$out/open_weights_qwen.md" && \
  python3 benchmarks/train_throughput.py --vocab 128256 --model llama3.2-1b --batch 8 \
  | tee "$out/open_weights_llama.md" && \
  python3 benchmarks/train_throughput.py --vocab 262144 --model gemma3-1b --batch 8 \
  | tee "$out/open_weights_gemma.md"

# Not in `all`: stacked, scanned layers at 124M and 774M (compile time and tokens/s beside the
# per-layer rows above).
named scan && python3 benchmarks/train_throughput.py --model gpt2-124m --batch 32 \
  --model gpt2-774m --batch 8 --scan-layers | tee "$out/throughput_scan.md"

# Not in `all`: the other optimizers' step time at 124M (Muon's Newton-Schulz matmuls, Lion's
# single moment, Adafactor's factored statistics) beside AdamW's rows above.
for opt in lion adafactor muon; do
  named optimizers && python3 benchmarks/train_throughput.py --model gpt2-124m --batch 32 \
    --optimizer "$opt" | tee "$out/throughput_$opt.md"
done

# Not in `all`: GPT-2 124M with 8 experts, 2 per token, in every block (MFU on the active
# parameters): dropless grouped matmuls (XLA's ragged dot, then JAX's Triton kernel for it)
# and a capacity of 1.25 (batched matmuls).
named moe && python3 benchmarks/train_throughput.py --model gpt2-124m --batch 16 --experts 8 \
  | tee "$out/throughput_moe.md"
named moe && JAX_RAGGED_DOT_USE_GPU_PALLAS_TRITON_LOWERING=true python3 \
  benchmarks/train_throughput.py --model gpt2-124m --batch 16 --experts 8 \
  | tee "$out/throughput_moe_triton.md"
named moe && python3 benchmarks/train_throughput.py --model gpt2-124m --batch 16 --experts 8 \
  --capacity-factor 1.25 | tee "$out/throughput_moe_capacity.md"

# Issue 8: rollout sampling, GPT-2 124M shape, batch 64, 64-token prompts, 256 new tokens.
want rollout && python3 benchmarks/rollout_throughput.py | tee "$out/rollout.md"
# The same shape with 4 beams (beam search keeps and reorders every beam's KV cache).
want rollout && python3 benchmarks/rollout_throughput.py --num_beams 4 | tee -a "$out/rollout.md"
# Not in `all`: decoding with multi-head latent attention against multi-head attention at the
# 124M shape in the Llama style, batch 64, 64-token prompts, 1024 new tokens: the latent cache
# keeps 256 + 32 numbers per token and layer, MHA's 2 x 768.
named mla && python3 benchmarks/rollout_throughput.py --new 1024 --set model.style=llama \
  | tee "$out/rollout_mla.md"
named mla && python3 benchmarks/rollout_throughput.py --new 1024 --set model.style=llama \
  --set model.kv_lora_rank=256 --set model.qk_rope_head_dim=32 | tee -a "$out/rollout_mla.md"

# Issue 8: PPO iteration split (rollout / scoring / update) at that shape, 64 prompts x 256.
want ppo && python3 benchmarks/ppo_iteration.py | tee "$out/ppo_iteration.md"

# Issue 5: LoRA vs full fine-tuning memory and step time at 350M.
want peft && python3 benchmarks/peft_memory.py --model gpt2-350m --batch 8 --seq 512 --run 10 \
  | tee "$out/peft_memory.md"

# Issues 6 and 9: nanoGPT's shakespeare_char recipe, 5000 steps with evals, wall time.
# `shakespeare`: the recipe as nanoGPT runs it (attention dropout 0.2: XLA attention);
# `shakespeare_cudnn`: the same without attention dropout, so attention runs on cuDNN.
shakespeare_run() {  # name, extra overrides...
  local name="$1"; shift
  local start=$(date +%s)
  python3 -m jaxlm.cli train --config configs/shakespeare_char.py --workdir "/tmp/$name" \
    --config.train.progress=False "$@" 2>&1 | tail -n 30 | tee "$out/$name.txt"
  echo "wall_s $(( $(date +%s) - start ))" | tee -a "$out/$name.txt"
  cp "/tmp/$name/metrics.jsonl" "$out/${name}_metrics.jsonl" 2>/dev/null || true
}
want shakespeare && shakespeare_run shakespeare
named shakespeare_cudnn && shakespeare_run shakespeare_cudnn \
  --config.model.attention_dropout=0.0
