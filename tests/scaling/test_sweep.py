"""A tiny IsoFLOP sweep end to end: planning, runs, resuming, the table, printed commands."""

import json
import shlex
import shutil

import numpy as np
import pytest

from jaxlm import cli, config as configlib
from jaxlm.train.checkpoint import checkpoint_steps
from jaxlm.models import param_count
from jaxlm.scaling import plan, sweep, table
from jaxlm.train import loop

TOKENS_PER_STEP = 4 * 32
SWEEP = '''
from jaxlm.scaling.plan import default_sweep

def get_config(arg=None):
  c = default_sweep()
  c.train_config = "configs/shakespeare_char.py:cpu"
  c.overrides = ("train.batch_size=4", "data.seq_len=32", "model.max_seq_len=32",
                 "train.eval_batches=2", "train.log_every=2", "train.progress=False",
                 "train.sample_every=0", "sample.num_samples=0", "train.async_checkpoints=False")
  c.sizes = (dict(num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32),
             dict(num_layers=1, embed_dim=24, num_heads=2, mlp_dim=48))
  c.compute_budgets = (5e7, 1e8)
  c.min_steps = 2
  c.ckpts_per_run = 2
  return c
'''


@pytest.fixture
def tiny_sweep(tmp_path):
  path = tmp_path / "tiny_sweep.py"
  path.write_text(SWEEP)
  return str(path), tmp_path / "sweep"


def test_plan_follows_d_equals_c_over_6n(tiny_sweep):
  spec, root = tiny_sweep
  runs, notes = sweep.prepare(plan.load_sweep(spec), root)
  assert len(runs) == 4 and not notes
  for run in runs:
    assert run.steps == round(run.budget / (6 * run.params_total) / TOKENS_PER_STEP)
    assert run.tokens == run.steps * TOKENS_PER_STEP
    assert run.compute == pytest.approx(6 * run.params_total * run.tokens)
    # Non-embedding: total less the token table (tied head) and the position table.
    d = configlib.load("configs/shakespeare_char.py:cpu", run.overrides).model.embed_dim
    assert run.params_total - run.params_nonembed == (256 + 32) * d
  grid, _ = sweep.prepare(plan.load_sweep(spec, ["kind=grid", "token_budgets=(1280, 2560)"]),
                          root)
  assert sorted((r.name.split("_")[0], r.tokens) for r in grid) == [
      ("D1.28e3", 1280), ("D1.28e3", 1280), ("D2.56e3", 2560), ("D2.56e3", 2560)]
  with pytest.raises(ValueError, match="compute_params must be one of"):
    plan.load_sweep(spec, ["compute_params=embedding"])


@pytest.mark.slow
def test_sweep_runs_resumes_and_writes_the_table(tiny_sweep):
  spec, root = tiny_sweep
  cfg = plan.load_sweep(spec)
  runs, _ = sweep.prepare(cfg, root)
  # An interrupted third run: trained to a checkpoint halfway, then stopped.
  third = runs[2]
  half = third.steps // 2
  loop.train(configlib.load(cfg.train_config, [*third.overrides, f"train.steps={half}"]),
             root / third.name)
  logs = []
  rows, stopped = sweep.run_sweep(cfg, root, limit=2, log=logs.append)
  assert stopped == "limit" and [r["run"] for r in rows] == [r.name for r in runs[:2]]
  assert len(table.read_table(root / "results.csv")["run"]) == 2

  logs = []
  rows, stopped = sweep.run_sweep(cfg, root, log=logs.append)
  assert stopped is None and sum("finished, skipped" in line for line in logs) == 2
  train_steps = [json.loads(line)["step"] for line in (root / third.name / "metrics.jsonl")
                 .read_text().splitlines() if json.loads(line)["split"] == "train"]
  assert train_steps == sorted(set(train_steps))  # resumed at `half`, not restarted
  assert train_steps[-1] == third.steps and min(s for s in train_steps if s > half) <= half + 2

  columns = table.read_table(root / "results.jsonl")
  assert list(columns["run"]) == [r.name for r in runs]
  np.testing.assert_array_equal(columns["tokens"], [r.tokens for r in runs])
  np.testing.assert_allclose(columns["compute"], 6 * columns["params_total"] * columns["tokens"])
  np.testing.assert_array_equal(columns["compute_budget"], [r.budget for r in runs])
  assert np.all(columns["best_eval_loss"] <= columns["final_eval_loss"])
  assert np.all(columns["final_eval_loss"] < np.log(256))  # better than uniform over the vocab
  assert np.all(columns["wall_s"] > 0) and np.all(columns["tokens_per_sec"] > 0)
  assert len(set(columns["config_hash"])) == 4
  # The counted parameters are the trained model's.
  _, _, _, params = loop.load_trained(root / runs[0].name)
  assert columns["params_total"][0] == param_count(params)
  csv_columns = table.read_table(root / "results.csv")
  np.testing.assert_allclose(csv_columns["final_eval_loss"], columns["final_eval_loss"])

  # A third pass trains nothing; a changed run config is an error naming the run.
  logs = []
  sweep.run_sweep(cfg, root, log=logs.append)
  assert sum("finished, skipped" in line for line in logs) == 4
  with pytest.raises(ValueError, match="finished with another config"):
    sweep.run_sweep(plan.load_sweep(spec, ["overrides=('optim.lr=0.1',)"]), root, log=logs.append)


def test_print_commands_reproduce_each_run(tiny_sweep, capsys):
  spec, root = tiny_sweep
  assert cli.main(["sweep", "--config", spec, "--workdir", str(root), "--print-commands"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  cfg = plan.load_sweep(spec)
  runs, _ = sweep.prepare(cfg, root)
  assert len(lines) == 4
  for line, run in zip(lines, runs):
    argv = shlex.split(line)
    assert argv[:5] == ["jaxlm", "train", "--config", cfg.train_config, "--workdir"]
    assert argv[5] == str(root / run.name)
    rest, overrides = cli.split_overrides(argv[2:])
    assert plan.config_hash(configlib.load(rest[1], overrides)) == plan.config_hash(
        plan.run_config(cfg, run))
  # `--config.run.KEY=V` reaches every run's command; `--config.KEY=V` changes the sweep.
  assert cli.main(["sweep", "--config", spec, "--workdir", str(root), "--print-commands",
                   "--config.run.optim.lr=0.0123", "--config.compute_budgets=(1e8,)"]) == 0
  changed = capsys.readouterr().out.strip().splitlines()
  assert len(changed) == 2 and all("--config.optim.lr=0.0123" in line for line in changed)
  # A run done by a scheduler's `jaxlm train` is collected without training again.
  assert cli.main(shlex.split(lines[0])[1:]) == 0
  rows, stopped = sweep.run_sweep(cfg, root, limit=0, log=lambda _: None)
  assert stopped == "limit" and [r["run"] for r in rows] == [runs[0].name]
  assert np.isnan(rows[0]["wall_s"])


def test_shipped_sweep_configs(tmp_path, monkeypatch, capsys):
  tiny = plan.load_sweep("configs/sweeps/isoflop_tiny.py")
  runs, notes = sweep.prepare(tiny, tmp_path / "tiny")
  assert len(runs) == 15 and not notes
  assert all(abs(r.compute / r.budget - 1) < 0.01 for r in runs)
  monkeypatch.delenv("JAXLM_SWEEP_DATA", raising=False)
  gpu = plan.load_sweep(f"configs/sweeps/isoflop_gpu.py:text:{tmp_path}/no_corpus")
  assert "data.source=embedded:tinyshakespeare" in gpu.overrides
  assert "falling back to embedded:tinyshakespeare" in capsys.readouterr().err
  (tmp_path / "corpus.txt").write_text("some text\n")
  gpu = plan.load_sweep(f"configs/sweeps/isoflop_gpu.py:text:{tmp_path}/corpus.txt")
  assert f"data.source=text:{tmp_path}/corpus.txt" in gpu.overrides


@pytest.mark.slow
def test_cooldown_sweep_branches_from_one_trunk_and_equals_separate_runs(tiny_sweep):
  """Token budgets of 20, 30 and 40 steps with 20% cooldowns: one 40-step trunk, the shorter
  runs cooled down from its steps 16 and 24, each equal to the same run trained alone."""
  spec, root = tiny_sweep
  cfg = plan.load_sweep(spec, ["kind=grid", "token_budgets=(2560, 3840, 5120)",
                               "sizes=({'num_layers': 1, 'embed_dim': 16, 'num_heads': 2, "
                               "'mlp_dim': 32},)", "cooldown_fraction=0.2", "evals_per_run=2"])
  runs, _ = sweep.prepare(cfg, root)
  assert [(r.steps, r.branch_step, bool(r.trunk)) for r in runs] == [
      (20, 16, True), (30, 24, True), (40, 0, False)]
  resolved = [plan.run_config(cfg, r) for r in runs]
  assert {c.optim.warmup_steps for c in resolved} == {2}  # one warmup: the same stable phase
  assert all(c.optim.schedule == "wsd" and c.optim.decay_steps == c.train.steps for c in resolved)
  with pytest.raises(ValueError, match="cannot be independent jobs"):
    sweep.commands(cfg, root)

  logs = []
  rows, stopped = sweep.run_sweep(cfg, root, log=logs.append)
  assert stopped is None and len(rows) == 3
  assert "cooldown sweep: 50 steps trained for the 90 of separate runs" in logs
  read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
  trunk_steps = [r["step"] for r in read(root / runs[2].name) if r["split"] == "train"]
  assert trunk_steps == sorted(set(trunk_steps)) and trunk_steps[-1] == 40
  # Independent reference: the 30-step run trained alone from step 0.
  alone = root.parent / "alone"
  loop.train(resolved[1], alone)
  strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "split")}
                        for r in rows]
  branch = strip(read(root / runs[1].name))
  assert branch[0]["step"] == 26  # its first log (every 2 steps) after the trunk's step 24
  reference = [r for r in strip(read(alone)) if r["step"] > 24]
  assert len(branch) == len(reference)
  for got, want in zip(branch, reference):
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in got], [want[k] for k in got], rtol=1e-5,
                               err_msg=str(want))
  # Rerun: every run finished, nothing trained.
  logs = []
  sweep.run_sweep(cfg, root, log=logs.append)
  assert sum("finished, skipped" in line for line in logs) == 3
  # A branch whose trunk no longer holds its checkpoint (the trunk kept its newest ones)
  # trains in full, and is counted so.
  shutil.rmtree(root / runs[0].name)
  assert 16 not in checkpoint_steps(root / runs[2].name)
  logs = []
  sweep.run_sweep(cfg, root, log=logs.append)
  assert any("trains in full" in line for line in logs)
  assert "cooldown sweep: 66 steps trained for the 90 of separate runs" in logs
