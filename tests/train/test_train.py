"""The trainer: learning, exact resume, NaN stops, checkpoint compatibility, no retrace."""

import json
import shutil

import chex
import jax
import numpy as np
import optax
import pytest

from conftest import tiny_config, with_sigterm_during
from jaxlm import cli, peft, sampling
from jaxlm.models import Decoder, from_config
from jaxlm.train import adapters, loop, optim, sharding, state as state_lib, step as step_lib
from jaxlm.train.checkpoint import CheckpointError, Checkpointer


def train_losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def final_params(workdir, cfg):
  _, _, _, params = loop.load_trained(workdir)
  return jax.tree.leaves(params)


def test_loss_falls_for_both_styles(trained_run, tmp_path):
  workdir, result = trained_run  # gpt2 style, 60 steps
  losses = train_losses(workdir)
  assert losses[60] < losses[5] - 0.8, losses
  llama = loop.train(tiny_config("llama", **{"train.steps": 60}), tmp_path)
  losses = train_losses(tmp_path)
  assert losses[60] < losses[5] - 0.8, losses
  assert llama["eval_loss"] < 3.5 and result["eval_loss"] < 3.5  # uniform over 65 chars: 4.17


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_resume_continues_the_same_loss_curve(style, tmp_path):
  common = {"train.log_every": 1, "model.dropout": 0.1, "optim.grad_accum": 2}
  straight = tmp_path / "straight"
  loop.train(tiny_config(style, **{**common, "train.steps": 8}), straight)
  split = tmp_path / "split"
  loop.train(tiny_config(style, **{**common, "train.steps": 8, "train.ckpt_every": 4}), split)
  # Drop the final checkpoint and the later log lines: as if the run had stopped at step 4.
  shutil.rmtree(split / "checkpoints" / "8")
  lines = (split / "metrics.jsonl").read_text().splitlines()
  (split / "metrics.jsonl").write_text("\n".join(l for l in lines if json.loads(l)["step"] <= 4)
                                       + "\n")
  result = loop.train(tiny_config(style, **{**common, "train.steps": 8}), split)
  assert result["step"] == 8
  a, b = train_losses(straight), train_losses(split)
  assert sorted(a) == sorted(b) == list(range(1, 9))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
  cfg = tiny_config(style)
  for x, y in zip(final_params(straight, cfg), final_params(split, cfg)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  cfg = tiny_config(**{"train.steps": 10, "train.ckpt_every": 4, "train.log_every": 2})
  loop.train(cfg, tmp_path)  # a good run to step 10
  before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*")}
  bad = tiny_config(**{"train.steps": 20, "train.ckpt_every": 4, "train.log_every": 2,
                       "optim.lr": 1e30, "optim.warmup_steps": 0, "optim.grad_clip": 0.0})
  with pytest.raises(loop.NonFiniteLossError, match=r"NaN/Inf at step 1[01].*step 10 is intact"):
    loop.train(bad, tmp_path)
  after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*")}
  assert after == before
  assert Checkpointer(tmp_path).latest_step() == 10


def test_checkpoint_of_a_different_model_is_a_clear_error(trained_run):
  workdir, _ = trained_run
  with pytest.raises(CheckpointError, match=r"model.embed_dim: checkpoint has 32, config has 48"):
    loop.train(tiny_config(**{"model.embed_dim": 48}), workdir)
  # Another optimizer keeps other state: named, not an Orbax tree mismatch.
  with pytest.raises(CheckpointError, match="optim.name: checkpoint has 'adamw', config has 'lion'"):
    loop.train(tiny_config(**{"optim.name": "lion", "train.steps": 80}), workdir)


def test_checkpoint_older_than_a_setting_resumes(tmp_path):
  """A checkpoint saved before a model setting existed resumes at that setting's default."""
  loop.train(tiny_config(**{"train.steps": 2}), tmp_path)
  stored = tmp_path / "checkpoints" / "2" / "config" / "metadata"
  saved = json.loads(stored.read_text())
  del saved["model"]["qk_norm"]
  stored.write_text(json.dumps(saved))
  assert "qk_norm" not in json.loads(stored.read_text())["model"]
  result = loop.train(tiny_config(**{"train.steps": 4}), tmp_path)
  assert result["step"] == 4
  with pytest.raises(CheckpointError, match="model.qk_norm: checkpoint has False, config has True"):
    loop.train(tiny_config(**{"train.steps": 6, "model.qk_norm": True}), tmp_path)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
  loop.train(tiny_config(**{"train.steps": 2}), tmp_path)
  for f in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with pytest.raises(CheckpointError, match="cannot restore checkpoint"):
    loop.train(tiny_config(**{"train.steps": 4}), tmp_path)


def test_train_step_compiles_once(tmp_path):
  from jaxlm.models import Decoder, from_config
  from jaxlm.objectives import clm
  cfg = tiny_config()
  mesh = sharding.make_mesh(cfg.mesh)
  model_cfg = from_config(cfg.model, 128)
  opt = optim.make_optimizer(cfg.optim, 10)
  graphdef, init, shardings = state_lib.make_initializer(
      lambda rngs: Decoder(model_cfg, rngs), opt, 0, mesh)
  step = chex.assert_max_traces(step_lib.make_train_step(
      graphdef, clm.loss_fn, opt, optim.make_schedule(cfg.optim, 10)), n=1)
  jitted = step_lib.jit_train_step(step, shardings, sharding.batch_sharding(mesh))
  state = init()
  rng = np.random.default_rng(0)
  for _ in range(3):
    tokens = rng.integers(0, 128, (4, 33)).astype(np.int32)
    from jaxlm.data.pipeline import rows_from_windows
    batch = sharding.global_batch(rows_from_windows(tokens, np.ones_like(tokens)), mesh)
    state, metrics = jitted(state, batch, {})
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))


def test_schedule_warmup_and_floor():
  cfg = tiny_config(**{"optim.lr": 1.0, "optim.min_lr": 0.1, "optim.warmup_steps": 10})
  sched = optim.make_schedule(cfg.optim, 110)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(60), sched(110), sched(500)],
                             [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], atol=1e-6)


def check_adapter_run(style, objective, extra, base):
  """A short adapter run from `base`: only the adapters move, in every block, and the
  adapter-only checkpoint on the base gives back the trained model."""
  workdir = base / "adapter_run"
  loop.train(tiny_config(style, **{"objective": objective, "train.steps": 10, "init_from": str(base),
                                   "peft.method": "adapter", "peft.adapter_size": 8,
                                   "optim.lr": 1e-2, **extra, "sample.num_samples": 0}), workdir)
  flat = lambda params: {peft.path_name(p): np.asarray(x)
                         for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  before, after = flat(loop.load_trained(base)[3]), flat(loop.load_trained(workdir)[3])
  added = {k for k in after if "_adapter/" in k}
  assert len(added) == 4 * 2 * (4 if style == "t5" else 2)  # 4 tensors, 2 sites, every block
  assert set(after) - added == set(before)
  for k in before:
    np.testing.assert_array_equal(after[k], before[k])
  assert all(np.abs(after[k]).max() > 0 for k in added if k.endswith("/up"))
  restored = flat(adapters.load_adapter(base, workdir / "adapter")[3])
  jax.tree.map(np.testing.assert_array_equal, restored, after)


@pytest.mark.parametrize("objective,style,extra", [
    ("mlm", "bert", {"model.type_vocab_size": 2, "model.post_norm": True}),
    pytest.param("span", "t5", {"model.num_decoder_layers": 2, "data.seq_len": 24,
                                "sample.num_samples": 1, "sample.temperature": 0.0,
                                "sample.max_new_tokens": 8,
                                "sample.prompt": "First <extra_id_0>:\nBefore we"},
                 marks=pytest.mark.slow),
    ("prefix_lm", "llama", {"sample.num_samples": 1}),
])
def test_other_pretraining_objectives_learn(objective, style, extra, tmp_path, capsys,
                                            monkeypatch):
  seen, generate = [], sampling.generate  # whether each decoder sample reads a prefix-LM prompt
  monkeypatch.setattr(sampling, "generate",
                      lambda *args, **kw: seen.append(args[3].prefix_lm) or generate(*args, **kw))
  cfg = tiny_config(style, **{"objective": objective, "train.steps": 60, **extra})
  result = loop.train(cfg, tmp_path)
  losses = train_losses(tmp_path)
  assert losses[60] < losses[5] - 0.5, losses
  if objective in ("mlm", "span"):  # Houlsby adapters on the trained encoder / encoder-decoder
    check_adapter_run(style, objective, extra, tmp_path)
  if objective == "span":  # the targets always open with <extra_id_0>: infilling has learnt it
    assert result["samples"][0].startswith("<extra_id_0>")  # the run's end-of-run sample
    capsys.readouterr()  # and `jaxlm sample` (the run's prompt: its compiled sampler)
    assert cli.main(["sample", "--workdir", str(tmp_path), "--prompt", extra["sample.prompt"],
                     "--temperature", "0", "--max_new_tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("--- sample 0 ---\n<extra_id_0>")
  if objective == "prefix_lm":  # its samples read the prompt as a prefix, as it trained
    assert seen == [True]  # the run's end-of-run sample
    assert cli.main(["sample", "--workdir", str(tmp_path), "--prompt", "First"]) == 0
    assert seen == [True, True]


def test_objective_and_model_family_must_agree(tmp_path):
  with pytest.raises(ValueError, match="objective 'mlm' needs a 'encoder' model"):
    loop.train(tiny_config("gpt2", objective="mlm"), tmp_path)


def test_init_from_starts_from_another_runs_weights(trained_run, tmp_path):
  base, _ = trained_run
  _, _, _, base_params = loop.load_trained(base)
  cfg = tiny_config(**{"init_from": str(base), "train.steps": 1, "optim.lr": 0.0,
                       "optim.min_lr": 0.0, "model.dropout": 0.1})
  loop.train(cfg, tmp_path)
  _, tok, _, params = loop.load_trained(tmp_path)
  for a, b in zip(jax.tree.leaves(base_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)  # lr 0: the weights are the base run's
  assert (tmp_path / "tokenizer.model").read_bytes() == (base / "tokenizer.model").read_bytes()
  with pytest.raises(CheckpointError, match="model.num_layers: checkpoint has 2, config has 3"):
    loop.train(tiny_config(**{"init_from": str(base), "model.num_layers": 3}), tmp_path / "x")


def test_merge_pretrained_reports_fresh_and_dropped():
  from jaxlm.train.pretrained import merge_pretrained
  fresh = {"a": np.zeros(2), "head": {"w": np.zeros(3)}}
  loaded = {"a": np.ones(2), "lm": np.ones(4)}
  merged, report = merge_pretrained(fresh, loaded)
  assert merged["a"].tolist() == [1, 1] and merged["head"]["w"].tolist() == [0, 0, 0]
  assert report.fresh == ["head/w"] and report.dropped == ["lm"]
  with pytest.raises(ValueError, match="parameter a: checkpoint has shape"):
    merge_pretrained(fresh, {"a": np.ones(3)})


def test_distillation_from_a_frozen_teacher(trained_run, tmp_path):
  teacher, _ = trained_run
  cfg = tiny_config(**{"objective": "distill", "distill.teacher": str(teacher),
                       "distill.temperature": 1.0, "train.steps": 30, "model.embed_dim": 16,
                       "model.mlp_dim": 32})
  loop.train(cfg, tmp_path)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  kl = [r["kl"] for r in rows if r["split"] == "train"]
  assert kl[-1] < 0.7 * kl[0], kl  # the student moves towards the teacher
  assert (tmp_path / "tokenizer.model").read_bytes() == (teacher / "tokenizer.model").read_bytes()
  with pytest.raises(ValueError, match="needs distill.teacher"):
    loop.train(tiny_config(objective="distill"), tmp_path / "none")


def test_a_run_saved_on_a_mesh_this_machine_lacks_still_loads(trained_run, tmp_path):
  """A run pinned to fsdp=4 (4 devices) loads on this 1-device machine: the saved layout
  yields to data parallelism over the devices there are, with the same weights."""
  workdir = tmp_path / "moved"
  shutil.copytree(trained_run[0], workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["mesh"] = {"data": 1, "fsdp": 4, "tensor": 1}
  (workdir / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.make_mesh(config["mesh"])
  _, _, _, loaded = loop.load_trained(workdir)
  _, _, _, original = loop.load_trained(trained_run[0])
  chex.assert_trees_all_equal(jax.device_get(loaded), jax.device_get(original))


def signal_during_step(monkeypatch, at_call: int) -> None:
  """The run's jitted step sends this process SIGTERM while it runs its `at_call`-th step."""
  monkeypatch.setattr(loop, "jitted_train_step", with_sigterm_during(loop.jitted_train_step,
                                                                     at_call))


def test_sigterm_on_a_checkpoint_step_saves_it_once(tmp_path, monkeypatch):
  signal_during_step(monkeypatch, at_call=2)
  cfg = tiny_config(**{"train.steps": 6, "train.ckpt_every": 2})
  result = loop.train(cfg, tmp_path)
  assert result["stopped_by"] == "SIGTERM" and result["step"] == 2
  assert Checkpointer(tmp_path).latest_step() == 2


def test_a_run_stopped_on_its_last_step_finishes_when_rerun(tmp_path, monkeypatch):
  """SIGTERM during the last step saves it; the rerun then does the final evaluation and
  writes the adapter instead of finding nothing left to do."""
  cfg = tiny_config(**{"train.steps": 3, "peft.method": "lora"})
  signal_during_step(monkeypatch, at_call=3)
  assert loop.train(cfg, tmp_path)["stopped_by"] == "SIGTERM"
  assert Checkpointer(tmp_path).latest_step() == 3 and loop.finished_step(tmp_path) is None
  assert not (tmp_path / "adapter").exists()
  monkeypatch.undo()
  result = loop.train(cfg, tmp_path)
  assert "stopped_by" not in result and "eval_loss" in result
  assert (tmp_path / "adapter").is_dir() and loop.finished_step(tmp_path) == 3
  logged = (tmp_path / "metrics.jsonl").read_text()
  # Finished: nothing more to do; the rerun reports the run's logged metrics and adds none.
  again = loop.train(cfg, tmp_path)
  last_train = [json.loads(x) for x in logged.splitlines() if '"train"' in x][-1]
  assert again["eval_loss"] == result["eval_loss"] and again["train_loss"] == last_train["loss"]
  assert (tmp_path / "metrics.jsonl").read_text() == logged


def test_logged_tokens_per_second_leave_out_evaluation_time(tmp_path, monkeypatch):
  """An evaluation (made to take 1 s here) between two logs is not counted as training."""
  import time
  evaluate = loop.evaluate

  def slow_evaluate(*args, **kwargs):
    time.sleep(1.0)
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(loop, "evaluate", slow_evaluate)
  cfg = tiny_config(**{"train.steps": 20, "train.log_every": 5, "train.eval_every": 5})
  loop.train(cfg, tmp_path)
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  speeds = {r["step"]: r["tokens_per_sec"] for r in rows if r["split"] == "train"}
  tokens_per_window = 5 * cfg.train.batch_size * cfg.data.seq_len
  # Counting a 1 s evaluation would cap a window at tokens_per_window tokens/s (measured: 8x).
  assert min(speeds[10], speeds[15], speeds[20]) > 2 * tokens_per_window, speeds


def test_resuming_with_changed_data_or_seed_names_the_changes(tmp_path, capsys):
  loop.train(tiny_config(**{"train.steps": 2, "train.ckpt_every": 2}),
             tmp_path)
  capsys.readouterr()
  loop.train(tiny_config(**{"train.steps": 3, "seed": 5, "data.val_fraction": 0.2}), tmp_path)
  out = capsys.readouterr().out
  assert "resuming step 2 with changed settings" in out
  assert "seed: checkpoint has" in out and "config has 5" in out and "data.val_fraction" in out
  assert "train.steps" not in out  # training longer is what resuming is for


def test_loading_a_run_reads_its_parameters_and_no_optimizer_state(trained_run, monkeypatch):
  params = loop.load_trained(trained_run[0])[3]
  # With SGD's (empty) state as the target, reading the saved Adam moments would fail.
  monkeypatch.setattr(optim, "make_optimizer", lambda *args, **kw: optax.sgd(0.1))
  jax.tree.map(np.testing.assert_array_equal, loop.load_trained(trained_run[0])[3], params)


def test_a_mesh_that_does_not_split_a_parameter_evenly_is_named():
  """Three tensor shards over 64 key units (2 of 4 heads x 32; an abstract mesh: no devices
  needed), before anything is allocated; two shards split everything."""
  cfg = tiny_config("llama", **{"model.embed_dim": 128, "model.mlp_dim": 96})
  model_cfg = from_config(cfg.model, vocab_size=64)
  _, abstract = state_lib.abstract_model(lambda rngs: Decoder(model_cfg, rngs))
  mesh = jax.sharding.AbstractMesh((1, 1, 3, 1, 1), sharding.MESH_AXES)
  with pytest.raises(ValueError, match=r"mesh.tensor=3 does not divide blocks/0/attn/key/"
                                       r"kernel: its dimension 1 \('kv'\) has size 64"):
    sharding.check_divisible(abstract, mesh)
  sharding.check_divisible(abstract, jax.sharding.AbstractMesh((1, 1, 2, 1, 1),
                                                               sharding.MESH_AXES))
