"""Short CPU PPO / GRPO runs on a synthetic reward (the count of one token in the response)
raise the mean reward, and a run resumed halfway repeats the uninterrupted one exactly."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from jaxlm import cli
from jaxlm.rl import trainer
from jaxlm.train.checkpoint import CheckpointError

from conftest import tiny_config


def rl_config(objective: str, steps: int, **overrides):
  """A tiny policy from scratch on sort prompts, rewarded per "1" it writes."""
  return tiny_config(**{
      "objective": objective, "data.source": "task:sort", "task.n_train": 200,
      "task.n_heldout": 20, "rl.reward": "token_count", "rl.reward_token": "1",
      "rl.prompts_per_iter": 8, "rl.group_size": 1 if objective == "ppo" else 4,
      "rl.minibatch_size": 8, "rl.prompt_len": 24, "rl.max_new_tokens": 8, "rl.epochs": 2,
      "train.steps": steps, "optim.lr": 1e-2, "optim.schedule": "constant",
      "optim.warmup_steps": 1, **overrides})


def rewards_of(workdir) -> list[float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["reward"] for r in rows if r["split"] == "train"]


def check_run(final: dict, workdir, objective: str) -> None:
  """The reward rose by a clear margin and every logged quantity is finite."""
  r = rewards_of(workdir)
  assert len(r) == 20
  # out of 8 tokens; a random policy writes "1" about 8/128 of the time (mean ~0.06)
  assert np.mean(r[-5:]) > np.mean(r[:5]) + 2.0, r
  for key in ("kl", "entropy", "clip_frac", "approx_kl", "response_length",
              "rollout_tokens_per_sec", "time_rollout_s", "time_scoring_s", "time_update_s"):
    assert np.isfinite(final[key]), key
  if objective == "ppo":
    assert np.isfinite(final["value_loss"]) and np.isfinite(final["explained_variance"])


@pytest.mark.slow
def test_ppo_raises_synthetic_reward(tmp_path):
  check_run(trainer.train(rl_config("ppo", 20), tmp_path), tmp_path, "ppo")


@pytest.mark.slow
def test_grpo_variants_raise_synthetic_reward(tmp_path):
  """Dr. GRPO (centred scores, constant normaliser) with RLOO's leave-one-out baseline, DAPO's
  clip-higher, dynamic sampling (twice the groups sampled, those with a signal trained on) and
  overlong shaping."""
  final = trainer.train(rl_config("grpo", 20, **{
      "rl.scale_rewards": "none", "rl.baseline": "leave_one_out", "rl.loss_agg": "constant",
      "rl.clip_ratio_high": 0.28,
      "rl.oversample": 2.0, "rl.overlong_buffer": 2, "rl.overlong_penalty": 0.5}), tmp_path)
  check_run(final, tmp_path, "grpo")
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if r["split"] == "train"]
  # of the 16 sampled groups, the 8 trained on hold every group with a signal
  assert all(r["zero_std_frac"] == max(0.0, 1 - 2 * (1 - r["sampled_zero_std_frac"]))
             for r in train)


@pytest.mark.slow
def test_grpo_from_the_command_line_raises_synthetic_reward(tmp_path, capsys):
  """`jaxlm train --config configs/task_chain.py:grpo` with a tiny model and no init_from."""
  overrides = {
      "init_from": "", "model.num_layers": 2, "model.num_heads": 4, "model.embed_dim": 32, "model.mlp_dim": 64,
      "model.max_seq_len": 32, "data.source": "task:sort", "task.n_train": 200,
      "task.n_heldout": 20, "rl.reward": "token_count", "rl.reward_token": "1",
      "rl.prompts_per_iter": 8, "rl.group_size": 4, "rl.minibatch_size": 8, "rl.prompt_len": 24,
      "rl.max_new_tokens": 8, "rl.epochs": 2, "rl.no_eos_penalty": 0.0, "rl.eval_every": 0,
      "train.steps": 20, "train.progress": False, "train.async_checkpoints": False,
      "optim.lr": 1e-2, "optim.min_lr": 1e-2, "optim.warmup_steps": 1}
  code = cli.main(["train", "--config", "configs/task_chain.py:grpo", "--workdir", str(tmp_path),
                   *[f"--config.{k}={v}" for k, v in overrides.items()]])
  assert code == 0
  final = dict(line.split("=", 1) for line in
               capsys.readouterr().out.split("final: ")[-1].strip().split(", "))
  assert int(final["iteration"]) == 20
  check_run({k: float(v) for k, v in final.items()}, tmp_path, "grpo")
  # `jaxlm sample` opens the policy of an RL run: prompted with "Sort: ", it still writes text.
  assert cli.main(["sample", "--workdir", str(tmp_path), "--prompt", "Sort: 3 1 2",
                   "--max_new_tokens", "6", "--num_samples", "1"]) == 0
  assert "--- sample 0 ---\nSort: 3 1 2" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
  """4 iterations straight vs the same run's checkpoint at iteration 2 resumed to 4."""
  settings = {"rl.kl_target": 0.05, "rl.kl_horizon": 40,
              "train.ckpt_every": 2, "train.keep_checkpoints": 5}
  straight = trainer.train(rl_config("ppo", 4, **settings), tmp_path / "a")
  b = tmp_path / "b"
  (b / "checkpoints").mkdir(parents=True)
  shutil.copytree(tmp_path / "a" / "checkpoints" / "2", b / "checkpoints" / "2")
  for name in ("config.json", "tokenizer.model"):
    shutil.copy(tmp_path / "a" / name, b / name)
  resumed = trainer.train(rl_config("ppo", 4, **settings), b)
  timing = ("time", "tokens_per_sec")
  clean = lambda m: {k: v for k, v in m.items() if not any(t in k for t in timing)}
  assert clean(straight) == clean(resumed)
  lines = lambda d: [clean(json.loads(x)) for x in (d / "metrics.jsonl").read_text().splitlines()]
  assert lines(tmp_path / "a")[2:] == lines(b)
  assert len({m["kl_coef"] for m in lines(tmp_path / "a")}) == 4  # adaptive, restored exactly
  jax.tree.map(np.testing.assert_array_equal, trainer.load_policy(tmp_path / "a")[3],
               trainer.load_policy(b)[3])
  with pytest.raises(CheckpointError, match="reference"):  # resuming needs the same reference
    trainer.train(rl_config("ppo", 6, **settings, init_from=str(tmp_path / "a")), b)


def test_bad_settings_are_named(tmp_path):
  with pytest.raises(ValueError, match="group_size"):
    trainer.train(rl_config("grpo", 1, **{"rl.group_size": 1}), tmp_path)
  with pytest.raises(ValueError, match="minibatch_size"):
    trainer.train(rl_config("ppo", 1, **{"rl.minibatch_size": 3}), tmp_path)
  with pytest.raises(ValueError, match="reward_token"):
    trainer.train(rl_config("ppo", 1, **{"rl.reward_token": "11"}), tmp_path)
  with pytest.raises(ValueError, match="rl.loss_agg"):
    trainer.train(rl_config("grpo", 1, **{"rl.loss_agg": "tokens"}), tmp_path)
  with pytest.raises(ValueError, match="off-policy"):
    trainer.train(rl_config("ppo", 1, **{"rl.top_p": 0.9}), tmp_path)
  with pytest.raises(ValueError, match="rl.scale_rewards"):
    trainer.train(rl_config("grpo", 1, **{"rl.scale_rewards": "std"}), tmp_path)
  with pytest.raises(ValueError, match="rl.std_ddof must be 0"):
    trainer.train(rl_config("grpo", 1, **{"rl.std_ddof": 2}), tmp_path)
  with pytest.raises(ValueError, match="rl.baseline must be one of"):
    trainer.train(rl_config("grpo", 1, **{"rl.baseline": "loo"}), tmp_path)
  with pytest.raises(ValueError, match="clip_ratio_high"):
    trainer.train(rl_config("grpo", 1, **{"rl.clip_ratio_high": 0.1}), tmp_path)
  with pytest.raises(ValueError, match="rl.oversample"):
    trainer.train(rl_config("ppo", 1, **{"rl.oversample": 2.0}), tmp_path)
  with pytest.raises(ValueError, match="rl.overlong_buffer"):
    trainer.train(rl_config("grpo", 1, **{"rl.overlong_buffer": 9}), tmp_path)
  # Missing prompts fail before a folder is left behind.
  with pytest.raises(FileNotFoundError, match="no_prompts.jsonl"):
    trainer.train(rl_config("grpo", 1, **{"data.source": "jsonl:/no_prompts.jsonl"}),
                  tmp_path / "fresh")
  assert not (tmp_path / "fresh").exists()
