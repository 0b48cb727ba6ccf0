"""Shipped-task evaluations on the post-training chain's runs (SFT, reward model, DPO, PPO)."""

import json

import pytest
from conftest import tiny_config

from jaxlm.data import tasks
from jaxlm.eval import runner, task_config
from jaxlm.eval.reward_scores import score_texts
from jaxlm.eval.tasks import exact_match
from jaxlm.rl import trainer
from jaxlm.train import loop


@pytest.mark.slow
def test_exact_match_and_win_rate_on_the_chain(task_chain):
  runs, files = task_chain
  source = [f"source=jsonl:{files['heldout']}", "limit=16"]
  gen = runner.run(runs["sft"], task_config.load("task_exact_match", source))
  heldout = tasks.read_examples(files["heldout"])[:16]
  assert gen["metrics"]["exact_match"] == exact_match(runs["sft"], heldout)["all"]
  assert gen["metrics"]["exact_match/sort"] == gen["metrics"]["exact_match"]

  cfg = task_config.load("task_win_rate", source + [
      f"win_rate.reference={runs['sft']}", f"win_rate.reward_model={runs['reward']}"])
  result = runner.run(runs["dpo"], cfg)
  m, records = result["metrics"], result["records"]
  assert m["n"] == 16 and m["wins"] + m["ties"] + m["losses"] == 16
  assert m["ci_low"] <= m["win_rate"] <= m["ci_high"]
  prompts = [r["prompt"] for r in records]
  rescored = score_texts(runs["reward"], prompts, [r["policy"] for r in records])
  assert rescored == pytest.approx([r["policy_score"] for r in records], abs=1e-5)
  # batches of 3 (other buckets and padding) score every text the same
  assert score_texts(runs["reward"], prompts, [r["policy"] for r in records],
                     batch_size=3) == pytest.approx(rescored, abs=1e-5)
  wins = sum(r["policy_score"] > r["reference_score"] for r in records)
  ties = sum(r["policy_score"] == r["reference_score"] for r in records)
  assert m["win_rate"] == pytest.approx((wins + ties / 2) / 16)


@pytest.mark.slow
def test_ppo_on_the_reward_model_tracks_the_verifier_and_evaluates(task_chain, tmp_path):
  """PPO against the chain's reward model logs the verifier's exact match beside the reward
  on held-out prompts; `jaxlm eval` opens the PPO run and agrees with it."""
  runs, _ = task_chain
  task = {"task.n_train": 200, "task.n_heldout": 16, "task.list_len": 4}
  cfg = tiny_config(**{
      "objective": "ppo", "init_from": str(runs["sft"]), "model.embed_dim": 48,
      "model.mlp_dim": 96, "model.max_seq_len": 32, "data.seq_len": 32,
      "data.source": "task:sort", **task, "rl.reward": "model",
      "rl.reward_model": str(runs["reward"]), "rl.prompts_per_iter": 8, "rl.minibatch_size": 8,
      "rl.prompt_len": 16, "rl.max_new_tokens": 12, "rl.epochs": 1, "rl.eval_every": 1,
      "rl.eval_prompts": 16, "train.steps": 2, "train.progress": False})
  final = trainer.train(cfg, tmp_path)
  rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [0, 1, 2]
  _, heldout = trainer.load_prompts(cfg)
  # iteration 0 is the SFT policy: its greedy exact match, measured independently
  assert evals[0]["exact_match"] == pytest.approx(exact_match(runs["sft"], heldout)["all"])
  source = ["source=task:sort", *(f"{k}={v}" for k, v in task.items()), "prompt.max_new_tokens=12"]
  gen = runner.run(tmp_path, task_config.load("task_exact_match", source))
  assert gen["metrics"]["exact_match"] == pytest.approx(final["eval_exact_match"])
  with pytest.raises(ValueError, match="training cannot start from it"):
    loop.train(tiny_config(**{"init_from": str(tmp_path)}), tmp_path / "x")
