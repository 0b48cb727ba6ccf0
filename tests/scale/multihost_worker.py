"""One process of a CPU job (2 simulated devices each) joined through `jax.distributed`.

  python multihost_worker.py WORKDIR PROCESS_ID NUM_PROCESSES PORT [clm|ppo|stop]
NUM_PROCESSES=1 runs the same global batch on one process with 4 devices, as the reference.
`ppo`: a short PPO run (rollouts, then minibatch updates) instead of language modelling.
`stop`: process 1 alone gets SIGTERM during step 3; prints the run's result as JSON.
"""

import os
import sys

workdir, process_id, num_processes, port = sys.argv[1], *map(int, sys.argv[2:5])
objective = sys.argv[5] if len(sys.argv) > 5 else "clm"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

from conftest import tiny_config  # noqa: E402
from jaxlm.train import loop  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
overrides = {"train.steps": 4, "train.log_every": 1, "train.batch_size": 8,
             "mesh.data": 2, "mesh.fsdp": 2}
if num_processes > 1:
  overrides.update({"distributed.coordinator_address": f"localhost:{port}",
                    "distributed.num_processes": num_processes,
                    "distributed.process_id": process_id})
if objective == "ppo":
  from jaxlm.rl import trainer  # noqa: E402
  overrides.update({
      "objective": "ppo", "data.source": "task:sort", "task.n_train": 64, "task.n_heldout": 8,
      "rl.reward": "token_count", "rl.reward_token": "1", "rl.prompts_per_iter": 8,
      "rl.minibatch_size": 4, "rl.prompt_len": 24, "rl.max_new_tokens": 6, "rl.epochs": 1,
      "rl.no_eos_penalty": 1.0, "rl.eval_every": 0, "train.steps": 2, "optim.lr": 1e-2})
  trainer.train(tiny_config(**overrides), workdir)
elif objective == "stop":
  import json  # noqa: E402

  from conftest import with_sigterm_during  # noqa: E402

  loop.jitted_train_step = with_sigterm_during(loop.jitted_train_step,
                                               at_call=3 if process_id == 1 else 0)
  overrides.update({"train.steps": 40, "train.log_every": 2})
  result = loop.train(tiny_config(**overrides), workdir)
  print("RESULT", json.dumps({k: result.get(k) for k in ("step", "stopped_by")}))
else:
  loop.train(tiny_config(**overrides), workdir)
assert jax.process_count() == num_processes and jax.device_count() == 4
