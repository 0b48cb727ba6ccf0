"""Short SFT runs with adapters, prefix- and prompt-tuning on the task chain's pre-trained
model: the held-out loss falls, only the added parameters move, the log states the counts,
the saved adapter alone restores the trained model, and cached generation equals
recomputation."""

import contextlib
import io
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from jaxlm import peft, sampling
from jaxlm.train import adapters, loop
from test_sampling import greedy_by_recompute, matching_tokens

METHODS = {
    "adapter": {"peft.adapter_size": 8, "peft.adapter_placement": "both", "optim.lr": 1e-2},
    "prefix": {"peft.prefix_len": 4, "peft.prefix_hidden": 32, "optim.lr": 1e-1},
    "prompt": {"peft.prompt_len": 8, "optim.lr": 1e-1},
}
STEPS = 40
ADDED = {"adapter": "_adapter/", "prefix": "prefix/", "prompt": "soft_prompt/"}


@pytest.fixture(scope="module")
def peft_runs(task_chain, tmp_path_factory):
  """(base, {method: (workdir, printed output)}): SFT runs from the chain's pre-trained model,
  evaluated on fixed held-out batches after every step (the first eval sees the initial model:
  warmup makes the first update zero)."""
  chain, files = task_chain
  base = chain["pretrain"]
  runs = {}
  for method, overrides in METHODS.items():
    workdir = tmp_path_factory.mktemp(method)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      loop.train(tiny_config(**{
          "peft.method": method, "objective": "sft", "init_from": str(base),
          "data.source": f"jsonl:{files['sft']}", "train.steps": STEPS, "train.batch_size": 8,
          "train.eval_every": 1, "train.eval_batches": 4, "model.embed_dim": 48,
          "model.mlp_dim": 96, "data.seq_len": 32, "model.max_seq_len": 32,
          **overrides}), workdir)
    runs[method] = workdir, printed.getvalue()
  return base, runs


def flat(params) -> dict:
  return {peft.path_name(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("method", list(METHODS))
def test_run_lowers_the_loss_trains_only_the_added_parameters_and_logs_counts(peft_runs, method):
  base, runs = peft_runs
  workdir, printed = runs[method]
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r["loss"] for r in rows if r["split"] == "eval"]
  assert len(evals) == STEPS and evals[-1] < evals[0] - 0.05, evals
  before = flat(loop.load_trained(base)[3])
  after = flat(loop.load_trained(workdir)[3])
  added = {n for n in after if ADDED[method] in n}
  assert added and set(after) == set(before) | added
  for name in before:
    np.testing.assert_array_equal(after[name], before[name], err_msg=name)
  if method == "adapter":  # `up` starts at zero
    assert all(np.abs(after[n]).max() > 0 for n in added if n.endswith("/up"))
  n_added, n_total = sum(after[n].size for n in added), sum(v.size for v in after.values())
  line = re.search(r"trainable: ([\d,]+) of ([\d,]+) parameters \(([\d.]+)%\)", printed)
  assert line, printed
  assert int(line[1].replace(",", "")) == n_added and int(line[2].replace(",", "")) == n_total
  assert abs(float(line[3]) - 100 * n_added / n_total) < 1e-3


@pytest.mark.parametrize("method", list(METHODS))
def test_adapter_only_checkpoint_restores_the_trained_model(peft_runs, method):
  base, runs = peft_runs
  workdir, _ = runs[method]
  adapter_dir = workdir / "adapter"
  _, _, graphdef, trained = loop.load_trained(workdir)
  _, _, graphdef2, restored = adapters.load_adapter(base, adapter_dir)
  tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 60)
  forward = lambda g, p: nnx.merge(g, p)(tokens)
  np.testing.assert_array_equal(jax.jit(forward, static_argnums=0)(graphdef2, restored),
                                jax.jit(forward, static_argnums=0)(graphdef, trained))
  size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
  step_dir = workdir / "checkpoints" / str(STEPS)  # the final checkpoint: params + Adam state
  assert size(adapter_dir) < size(step_dir) / 4, (size(adapter_dir), size(step_dir))


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_trained_cached_greedy_generation_equals_recomputation(peft_runs, method):
  _, runs = peft_runs
  _, tokenizer, graphdef, params = loop.load_trained(runs[method][0])
  model = nnx.merge(graphdef, params)
  prompts = [tokenizer.encode("Sort: 3 1"), tokenizer.encode("Sort: 9 4 7 2")]
  # 30 new tokens: the first ones from the KV cache, the rest from a sliding 32-token window.
  got = sampling.generate(graphdef, params, prompts,
                          sampling.SamplingConfig(temperature=0.0, max_new_tokens=30),
                          jax.random.key(0), eos_id=-1)
  compared = 0
  for prompt, out in zip(prompts, got):
    want, margins = greedy_by_recompute(model, prompt, 30, 32)
    compared += matching_tokens(out, want, margins)
  assert compared >= 20


def test_prompt_tuning_starts_from_rows_of_the_pretrained_vocabulary(task_chain, tmp_path):
  """Lester et al.'s sampled-vocabulary init: with init_from, every virtual token starts as a
  row of the pre-trained embedding table (not of the table the model was built with)."""
  chain, files = task_chain
  loop.train(tiny_config(**{
      "peft.method": "prompt", "peft.prompt_len": 8, "objective": "sft",
      "init_from": str(chain["pretrain"]), "data.source": f"jsonl:{files['sft']}",
      "train.steps": 1, "optim.lr": 0.0, "optim.min_lr": 0.0, "train.batch_size": 8,
      "model.embed_dim": 48, "model.mlp_dim": 96, "data.seq_len": 32,
      "model.max_seq_len": 32}), tmp_path)
  table = flat(loop.load_trained(tmp_path)[3])["soft_prompt/table"]
  vocab = flat(loop.load_trained(chain["pretrain"])[3])["embed/embedding"]
  assert table.shape == (8, 48)
  for row in table:
    assert np.any(np.all(vocab == row, axis=1))
