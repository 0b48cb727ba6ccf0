"""The same step on any mesh shape: data, FSDP and tensor parallelism on 8 simulated devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("mesh_worker.py")
STYLES = ("gpt2", "llama", "neox", "bert", "t5")


def run_worker(*args: str, devices: int = 8) -> str:
  """Runs the worker; returns what it printed on stderr (XLA's warnings among it)."""
  env = {**os.environ, "MESH_WORKER_DEVICES": str(devices)}
  proc = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True,
                        timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("style", [*STYLES, "phi", "llama+lora", "gpt2+adapter", "t5+scan",
                                   "llama+scan+lora", "gpt2+scan+prefix", "moe",
                                   "moe_capacity+scan", "mla"])
def test_one_step_is_the_same_on_every_mesh_and_params_follow_the_rules(style, tmp_path):
  out = tmp_path / "grads.npz"
  log = run_worker("grads", str(out), style)  # also asserts every parameter's sharding spec
  # No layout the partitioner can only reach by replicating a tensor (e.g. a lookup in a
  # table split along `embed`, whose rows then have to move to a batch split). Dropless
  # experts are the exception: they sort the whole batch's tokens by expert, across the
  # batch split (a capacity routes each sequence's own).
  if style != "moe":
    assert "Involuntary full rematerialization" not in log, log[-4000:]
  results = np.load(out)
  reference = {k.split("/", 2)[2]: results[k] for k in results if k.startswith(f"{style}/1x1x1/")}
  assert len(reference) > 10
  meshes = {k.split("/")[1] for k in results} - {"1x1x1"}
  # The decoders on every kind of mesh; the rest on the meshes that split fsdp and tensor
  # ("llama+scan+lora" holds every parameter of the stacked Llama option set, and its factors).
  every = {"8x1x1", "2x4x1", "2x2x2", "1x2x4", "2x1x1x1x4", "1x2x2x1x2"}
  experts = {"2x1x1x4", "1x2x2x2"} if style.startswith("moe") else set()
  assert meshes == (every if style in ("gpt2", "llama", "mla") else {"2x2x2", "1x2x4"}) | experts, meshes
  for mesh in meshes:
    for name, ref in reference.items():
      np.testing.assert_allclose(results[f"{style}/{mesh}/{name}"], ref, rtol=2e-4, atol=1e-6,
                                 err_msg=f"{style} {mesh} {name}")


def train_losses(workdir: Path) -> dict[int, float]:
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.mark.slow
def test_checkpoint_restores_onto_a_different_mesh_and_continues(tmp_path):
  """Saved on 8 devices as (8, 1, 1), resumed on 4 devices as (1, 2, 2)."""
  run_worker("straight", str(tmp_path))
  run_worker("moved", str(tmp_path), devices=4)
  straight, moved = train_losses(tmp_path / "straight"), train_losses(tmp_path / "moved")
  assert sorted(straight) == [1, 2, 3, 4, 5, 6] and sorted(moved) == [4, 5, 6]
  np.testing.assert_allclose([moved[s] for s in (4, 5, 6)], [straight[s] for s in (4, 5, 6)],
                             rtol=1e-4)


@pytest.mark.slow
def test_rows_split_over_the_batch_axes_and_each_device_samples_its_own(tmp_path):
  """8 devices: every row on the devices the batch sharding names, and sharded sampling
  (decoder and encoder-decoder, 13 prompts padded to the shards) equal to unsharded."""
  run_worker("rows", str(tmp_path))


@pytest.mark.slow
def test_accumulated_micro_batches_stay_split_over_every_device(tmp_path):
  """8 devices, grad_accum 1 / 2 / 4: per-device flops about the same and the same step."""
  run_worker("accum", str(tmp_path))


@pytest.mark.slow
def test_every_optimizer_takes_the_same_step_on_a_mesh(tmp_path):
  """Lion, Adafactor and Muon (stacked Llama blocks) on a 2x2x2 mesh vs one device."""
  run_worker("optimizers", str(tmp_path))
