"""Shipped-task evaluations on the post-training chain's runs (SFT, reward model, DPO)."""

import pytest

from jaxlm.data import tasks
from jaxlm.eval import runner, task_config
from jaxlm.eval.reward_scores import score_texts
from jaxlm.eval.tasks import exact_match


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
  wins = sum(r["policy_score"] > r["reference_score"] for r in records)
  ties = sum(r["policy_score"] == r["reference_score"] for r in records)
  assert m["win_rate"] == pytest.approx((wins + ties / 2) / 16)
