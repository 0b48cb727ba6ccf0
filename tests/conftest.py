"""Shared fixtures: tiny configs on the embedded corpus and one trained run reused by tests."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite compiles hundreds of tiny programs whose run time is negligible: LLVM's
# optimisation passes cost more than they save (about a fifth of the suite's time), and
# compiles under a second are worth caching too (in the ignored .cache/jax, shared by the
# xdist workers). Set before any backend starts, so test subprocesses get the same.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(__file__), "..", ".cache", "jax"))

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxlm import config as configlib  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def with_sigterm_during(make_step, at_call: int):
  """A wrapper of `loop.jitted_train_step` (given as `make_step`) whose step sends this
  process SIGTERM while it runs its `at_call`-th step (at_call 0: never)."""
  import signal

  def jitted(*args, **kwargs):
    step, calls = make_step(*args, **kwargs), []

    def step_with_signal(*a):
      calls.append(1)
      if len(calls) == at_call:
        os.kill(os.getpid(), signal.SIGTERM)
      return step(*a)
    return step_with_signal
  return jitted


def tiny_config(style: str = "gpt2", **overrides):
  """A 2-layer model on the embedded corpus with a char tokenizer: seconds per run on CPU."""
  c = configlib.load("configs/shakespeare_char.py:cpu")
  c.model.update(style=style, num_layers=2, num_heads=4, num_kv_heads=2 if style == "llama" else 0,
                 embed_dim=32, mlp_dim=64, max_seq_len=32, use_bias=style == "gpt2")
  c.data.seq_len = 32
  c.train.update(steps=20, batch_size=4, log_every=5, eval_every=0, eval_batches=2,
                 ckpt_every=0, progress=False, async_checkpoints=False)
  c.sample.update(num_samples=0, max_new_tokens=8)  # tests that read a run's samples ask
  c.optim.update(warmup_steps=5, lr=3e-3)
  configlib.apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
  return c


@pytest.fixture(autouse=True, scope="session")
def _jaxlm_cache(tmp_path_factory):
  """Tokenizer and pre-pass caches in the session's temp dir, set before any other fixture."""
  os.environ["JAXLM_CACHE"] = str(tmp_path_factory.getbasetemp() / "jaxlm_cache")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """A short trained run (workdir, result) shared by sampling and CLI tests."""
  from jaxlm.train import loop
  workdir = tmp_path_factory.mktemp("trained")
  result = loop.train(tiny_config(**{"train.steps": 60}), workdir)
  return workdir, result


@pytest.fixture(scope="session")
def task_chain(tmp_path_factory):
  """pretrain -> SFT -> RM -> DPO on the shipped task (tiny): (run folders, data files)."""
  from jaxlm.data import tasks
  from jaxlm.train import loop
  root = tmp_path_factory.mktemp("chain")
  files = tasks.write_task_files(root / "data", n_train=600, n_heldout=50, seed=0,
                                 kinds=("sort",), list_len=4)
  common = {"model.embed_dim": 48, "model.mlp_dim": 96, "data.seq_len": 32,
            "model.max_seq_len": 32, "sample.num_samples": 0, "train.log_every": 5}
  runs = {name: root / name for name in ("pretrain", "sft", "reward", "dpo")}
  loop.train(tiny_config(**{**common, "data.source": f"text:{files['pretrain']}",
                            "train.steps": 40}), runs["pretrain"])
  loop.train(tiny_config(**{**common, "objective": "sft", "data.source": f"jsonl:{files['sft']}",
                            "init_from": str(runs["pretrain"]), "train.steps": 60,
                            "train.batch_size": 8}), runs["sft"])
  loop.train(tiny_config(**{**common, "objective": "reward", "init_from": str(runs["sft"]),
                            "data.source": f"jsonl:{files['preference']}", "train.steps": 60,
                            "train.batch_size": 8}), runs["reward"])
  loop.train(tiny_config(**{**common, "objective": "dpo", "init_from": str(runs["sft"]),
                            "data.source": f"jsonl:{files['preference']}", "train.steps": 30,
                            "train.batch_size": 8, "dpo.beta": 0.5, "train.log_every": 1}),
             runs["dpo"])
  return runs, files
