"""One process of a CPU job (2 simulated devices each) joined through `jax.distributed`.

  python multihost_worker.py WORKDIR PROCESS_ID NUM_PROCESSES PORT
NUM_PROCESSES=1 runs the same global batch on one process with 4 devices, as the reference.
"""

import os
import sys

workdir, process_id, num_processes, port = sys.argv[1], *map(int, sys.argv[2:5])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

from conftest import tiny_config  # noqa: E402
from jaxlm.train import loop  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
overrides = {"train.steps": 4, "train.log_every": 1, "train.batch_size": 8,
             "sample.num_samples": 0, "mesh.data": 2, "mesh.fsdp": 2}
if num_processes > 1:
  overrides.update({"distributed.coordinator_address": f"localhost:{port}",
                    "distributed.num_processes": num_processes,
                    "distributed.process_id": process_id})
loop.train(tiny_config(**overrides), workdir)
assert jax.process_count() == num_processes and jax.device_count() == 4
