"""Data parallelism on 8 simulated CPU devices follows the single-device loss curve."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from conftest import tiny_config
from jaxlm.train import loop

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, "tests")
    import jax
    assert jax.device_count() == 8, jax.devices()
    from conftest import tiny_config
    from jaxlm.train import loop
    cfg = tiny_config(**{"train.steps": 6, "train.log_every": 1, "train.batch_size": 8,
                         "mesh.data": -1})
    loop.train(cfg, sys.argv[1])
""")


def losses(workdir):
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  return [r["loss"] for r in rows if r["split"] == "train"]


def test_eight_way_data_parallel_equals_one_device(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "sharded")], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loop.train(tiny_config(**{"train.steps": 6, "train.log_every": 1, "train.batch_size": 8}),
             tmp_path / "single")
  sharded, single = losses(tmp_path / "sharded"), losses(tmp_path / "single")
  assert len(sharded) == len(single) == 6
  np.testing.assert_allclose(sharded, single, rtol=2e-5)
