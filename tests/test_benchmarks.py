"""The benchmark scripts run (at their smallest shapes), so a GPU session never finds them
broken: each returns positive figures of the shape it was asked for."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import peft_memory  # noqa: E402
import ppo_iteration  # noqa: E402
import rollout_throughput  # noqa: E402
import speculative_decoding  # noqa: E402
import train_throughput  # noqa: E402


def test_train_throughput_runs():
  out = train_throughput.benchmark("llama-tiny", batch=2, seq=32, steps=2, warmup=1,
                                   dtype="auto", vocab=256, attention="auto", loss_chunk=16)
  assert out["tokens_per_s"] > 0 and out["batch"] == 2 and out["step_gib"] > 0
  mesh = train_throughput.mesh_sizes("data=1,expert=1")
  assert mesh == {"data": 1, "expert": 1}
  muon = train_throughput.benchmark("llama-tiny", batch=2, seq=32, steps=1, warmup=1,
                                    dtype="auto", vocab=256, attention="auto", optimizer="muon",
                                    experts=4, experts_per_token=2, mesh=mesh)
  assert muon["tokens_per_s"] > 0 and muon["optimizer"] == "muon"
  with pytest.raises(argparse.ArgumentTypeError, match="'experts=2': want AXIS=SIZE"):
    train_throughput.mesh_sizes("data=2,experts=2")


@pytest.mark.slow
def test_peft_memory_shows_lora_saves_memory():
  lora = peft_memory.measure("llama-tiny", "lora", batch=2, seq=32, run_steps=1, vocab=512)
  full = peft_memory.measure("llama-tiny", "none", batch=2, seq=32, run_steps=1, vocab=512)
  assert 0 < lora["total_gib"] < full["total_gib"] and lora["step_s"] > 0, (lora, full)


def test_rollout_throughput_runs_every_row_to_its_length():
  out = rollout_throughput.benchmark("gpt2-124m", batch=2, prompt=8, new=8, vocab=256,
                                     tiny=True, repeats=1)
  assert out["tokens_per_sec"] > 0 and (out["batch"], out["new"]) == (2, 8)
  beams = rollout_throughput.benchmark("gpt2-124m", batch=2, prompt=8, new=8, vocab=256,
                                       tiny=True, repeats=1, num_beams=3)
  assert beams["beam_tokens_per_sec"] == pytest.approx(3 * beams["tokens_per_sec"], rel=1e-3)
  # Latent attention: its cache per token is the latent plus the rotary key, per layer.
  latent = rollout_throughput.benchmark(
      "gpt2-124m", batch=2, prompt=8, new=8, vocab=256, tiny=True, repeats=1,
      overrides=("model.style=llama", "model.kv_lora_rank=32", "model.qk_rope_head_dim=16"))
  assert latent["cache_per_token"] == 4 * (32 + 16)
  assert out["cache_per_token"] == 4 * 2 * 256  # keys and values of width 256 per layer


def test_speculative_decoding_benchmark_runs(trained_run):
  """The run as its own draft: every drafted token accepted, outputs equal (checked inside)."""
  workdir = str(trained_run[0])
  out = speculative_decoding.benchmark(workdir, workdir, prompt="O", batch=2, new=12, gamma=3,
                                       temperature=0.0, repeats=1)
  assert out["acceptance"] == 1.0 and out["tokens_per_target_pass"] == 4.0
  assert out["plain_tokens_per_sec"] > 0 and out["speculative_tokens_per_sec"] > 0


@pytest.mark.slow
def test_ppo_iteration_reports_the_split():
  out = ppo_iteration.measure(tiny=True, iterations=2)
  assert out["iterations_timed"] == 1 and out["response_length"] == 16.0
  assert all(out[k] > 0 for k in ppo_iteration.SPLIT)


def test_gpu_session_script_parses():
  subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_session.sh")], check=True)
