"""Two CPU processes joined by `jax.distributed` train (language modelling and PPO) like one
process with all devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxlm.train import distributed

WORKER = Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(workdir: Path, process_id: int, num_processes: int, port: int,
           objective: str = "clm") -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  return subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(process_id),
                           str(num_processes), str(port), objective], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_both(tmp_path: Path, objective: str) -> list[str]:
  """Two joined processes (tmp_path/multi) and the one-process reference (tmp_path/single)."""
  port = free_port()
  procs = [launch(tmp_path / "multi", i, 2, port, objective) for i in range(2)]
  procs.append(launch(tmp_path / "single", 0, 1, 0, objective))
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


def losses(workdir: Path) -> list[float]:
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  outputs = run_both(tmp_path, "clm")
  assert "model:" in outputs[0] and "model:" not in outputs[1]  # only process 0 logs
  multi, single = losses(tmp_path / "multi"), losses(tmp_path / "single")
  assert len(multi) == len(single) == 4
  np.testing.assert_allclose(multi, single, rtol=1e-5)
  steps = sorted(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [4]


@pytest.mark.slow
def test_ppo_on_two_processes_agrees_with_one(tmp_path):
  """Rollouts, scoring and minibatch updates of PPO through `jax.distributed`: every logged
  quantity (reward, KL, losses, gradient norm, ...) equals the one-process run's."""
  run_both(tmp_path, "ppo")
  rows = {name: [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]
          for name in ("multi", "single")}
  assert len(rows["multi"]) == len(rows["single"]) == 2
  for multi, single in zip(rows["multi"], rows["single"]):
    keys = [k for k, v in single.items() if isinstance(v, float) and "time" not in k
            and "per_sec" not in k]
    assert {"loss", "policy_loss", "value_loss", "grad_norm", "score"} <= set(keys)
    np.testing.assert_allclose([multi[k] for k in keys], [single[k] for k in keys],
                               rtol=1e-5, atol=1e-7)
  assert rows["single"][0]["score"] != 0.0  # the no-EOS penalty makes the scores non-trivial


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path):
  """SIGTERM reaches process 1 only (during step 3): both leave the loop after step 4 (the
  next comparison) and save that step together, instead of one waiting on the other."""
  port = free_port()
  procs = [launch(tmp_path, i, 2, port, "stop") for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  results = [json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) for out in outputs]
  assert results[0] == {"step": 4, "stopped_by": "a stop signal to another process"}
  assert results[1] == {"step": 4, "stopped_by": "SIGTERM"}
  steps = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps == ["4"]


def test_multiprocess_job_detection():
  assert not distributed.in_multiprocess_job({})
  assert not distributed.in_multiprocess_job({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "a"})
  assert distributed.in_multiprocess_job({"SLURM_NTASKS": "4"})
  assert distributed.in_multiprocess_job({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert distributed.in_multiprocess_job({"TPU_WORKER_HOSTNAMES": "a,b"})
  assert not distributed.initialize({"mode": "off", "coordinator_address": "x:1",
                                     "num_processes": 2, "process_id": 0})
  with pytest.raises(ValueError, match="distributed.mode must be one of"):
    distributed.initialize({"mode": "maybe", "coordinator_address": "", "num_processes": 0,
                            "process_id": -1})
