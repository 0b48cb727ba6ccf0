"""Multi-host start-up: `jax.distributed.initialize` from config or the cluster's environment.

Every process of a multi-host job runs the same `jaxlm train` command. Before any device is
touched, each one joins the job through JAX's own coordination service; after that
`jax.devices()` spans all hosts, `jax.process_index()` picks each host's share of the data
and only process 0 writes logs.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax

MODES = ("auto", "on", "off")

# Environment variables that mark a multi-process job, with the value that means "one process".
_JOB_MARKERS = (("JAX_COORDINATOR_ADDRESS", None), ("SLURM_NTASKS", "1"),
                ("OMPI_COMM_WORLD_SIZE", "1"), ("TPU_WORKER_HOSTNAMES", None))


def in_multiprocess_job(env: Mapping[str, str] = os.environ) -> bool:
  """True when the environment describes a job of several processes (explicit coordinator,
  SLURM or Open MPI with more than one task, a multi-host TPU slice)."""
  for name, single in _JOB_MARKERS:
    value = env.get(name)
    if value is None or value == single:
      continue
    if name == "TPU_WORKER_HOSTNAMES" and "," not in value:  # a single-host TPU VM
      continue
    return True
  return False


def initialize(dist: Mapping[str, Any]) -> bool:
  """Joins the job's processes per `config.distributed`; returns whether it did.

  `mode`: "off" never joins; "on" always does; "auto" joins when a coordinator is configured
  or the environment describes a multi-process job. Unset fields (empty address, 0 processes,
  process_id -1) are left to JAX's auto-detection (TPU, SLURM, Open MPI, Kubernetes) and to
  the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables.
  """
  mode = dist["mode"]
  if mode not in MODES:
    raise ValueError(f"distributed.mode must be one of {MODES}, got {mode!r}")
  if mode == "off" or jax.distributed.is_initialized():
    return False
  if mode == "auto" and not (dist["coordinator_address"] or in_multiprocess_job()):
    return False
  env = os.environ
  num_processes = dist["num_processes"] or int(env.get("JAX_NUM_PROCESSES", 0)) or None
  process_id = dist["process_id"] if dist["process_id"] >= 0 else (
      int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)
  # CPU hosts need gloo for cross-process collectives; accelerators ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=dist["coordinator_address"] or None,
                             num_processes=num_processes, process_id=process_id)
  return True
