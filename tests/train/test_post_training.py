"""The post-training chain on the shipped verifiable task: pretrain -> SFT -> RM -> DPO.

Tiny models and few steps: each objective must improve its own metric, runs chain through
`init_from`, and the DPO reference is the frozen SFT run.
"""

import json

import numpy as np
import pytest

from conftest import tiny_config
from jaxlm.data import tasks
from jaxlm.train import loop


@pytest.fixture
def chain(task_chain):
  return task_chain


def metric(workdir, name, split="train"):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r[name] for r in rows if r["split"] == split and name in r]


def test_sft_lowers_the_response_loss(chain):
  runs, _ = chain
  losses = metric(runs["sft"], "loss")
  assert losses[-1] < losses[0] - 0.5, losses


def test_reward_model_learns_to_prefer_correct_answers(chain):
  runs, _ = chain
  acc = metric(runs["reward"], "accuracy")
  assert np.mean(acc[-3:]) > np.mean(acc[:1]) and np.mean(acc[-3:]) > 0.6, acc


def test_dpo_starts_at_log2_and_improves(chain):
  runs, _ = chain
  losses = metric(runs["dpo"], "loss")
  accs = metric(runs["dpo"], "rewards/accuracies")
  # The policy starts equal to the frozen SFT reference: loss log 2 on the first steps.
  assert abs(losses[0] - np.log(2)) < 1e-4, losses
  assert np.mean(losses[-5:]) < losses[0] - 0.05 and np.mean(accs[-5:]) > 0.5, (losses, accs)


def test_cached_reference_matches_the_frozen_reference(chain, tmp_path, capsys):
  runs, files = chain
  common = {"model.embed_dim": 48, "model.mlp_dim": 96, "data.seq_len": 32,
            "model.max_seq_len": 32, "train.log_every": 1,
            "objective": "dpo", "init_from": str(runs["sft"]), "train.steps": 3,
            "data.source": f"jsonl:{files['preference']}", "train.batch_size": 8, "dpo.beta": 0.5}
  loop.train(tiny_config(**{**common, "dpo.reference_mode": "frozen"}), tmp_path / "frozen")
  # The chain's DPO run used the cached pre-pass: its first steps must agree with the frozen one.
  np.testing.assert_allclose(metric(tmp_path / "frozen", "loss"), metric(runs["dpo"], "loss")[:3],
                             rtol=1e-4)
  capsys.readouterr()
  loop.train(tiny_config(**common), tmp_path / "again")  # same data: all from the cache
  assert "reference pre-pass: 0 of" in capsys.readouterr().out


def test_orpo_widens_the_odds_ratio_and_rpo_adds_the_nll(chain, tmp_path):
  runs, files = chain
  common = {"model.embed_dim": 48, "model.mlp_dim": 96, "data.seq_len": 32,
            "model.max_seq_len": 32, "train.log_every": 1, "init_from": str(runs["sft"]),
            "objective": "dpo", "data.source": f"jsonl:{files['preference']}",
            "train.batch_size": 8}
  # ORPO needs no reference: no pre-pass, and the SFT run is only the starting point.
  loop.train(tiny_config(**{**common, "dpo.loss": "orpo", "dpo.beta": 0.5, "train.steps": 20}),
             tmp_path / "orpo")
  odds = metric(tmp_path / "orpo", "log_odds_ratio")
  nll, losses = metric(tmp_path / "orpo", "nll_loss"), metric(tmp_path / "orpo", "loss")
  assert np.mean(odds[-5:]) > np.mean(odds[:5]) + 0.1, odds
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
  assert min(nll) > 0 and all(l > n for l, n in zip(losses, nll))  # the odds term is > 0
  # RPO: DPO plus alpha x the chosen NLL; the policy starts at the reference, DPO at log 2.
  loop.train(tiny_config(**{**common, "dpo.beta": 0.5, "dpo.rpo_alpha": 2.0, "train.steps": 2}),
             tmp_path / "rpo")
  loss, nll = metric(tmp_path / "rpo", "loss")[0], metric(tmp_path / "rpo", "nll_loss")[0]
  assert nll > 0 and abs(loss - (np.log(2) + 2.0 * nll)) < 1e-4, (loss, nll)


def test_kto_starts_at_one_half_and_separates_good_from_bad_replies(chain, tmp_path):
  runs, files = chain
  # The preference pairs, read as unpaired replies: each pair's chosen one desirable.
  common = {"model.embed_dim": 48, "model.mlp_dim": 96, "data.seq_len": 32,
            "model.max_seq_len": 32, "train.log_every": 1, "init_from": str(runs["sft"]),
            "objective": "kto", "data.source": f"jsonl:{files['preference']}",
            "train.batch_size": 8, "kto.beta": 0.5}
  loop.train(tiny_config(**{**common, "train.steps": 20}), tmp_path / "kto")
  losses, kl = metric(tmp_path / "kto", "loss"), metric(tmp_path / "kto", "kl")
  margins = metric(tmp_path / "kto", "rewards/margins")
  # The policy starts at the reference: r = z0 = 0 and every reply costs 1 - s(0) = 1/2.
  assert abs(losses[0] - 0.5) < 1e-4 and kl[0] < 1e-4, (losses, kl)
  assert np.mean(losses[-5:]) < losses[0] - 0.01 and np.mean(margins[-5:]) > 0.1, (losses, margins)
  # The reference evaluated in the step gives the pre-pass's losses.
  loop.train(tiny_config(**{**common, "train.steps": 2, "kto.reference_mode": "frozen"}),
             tmp_path / "frozen")
  np.testing.assert_allclose(metric(tmp_path / "frozen", "loss"), losses[:2], rtol=1e-4)


def test_bad_preference_settings_are_named_before_any_work(chain, tmp_path):
  runs, files = chain
  for overrides, message in [({"dpo.loss": "kto"}, "unknown preference loss 'kto'"),
                             ({"dpo.loss": "orpo", "dpo.rpo_alpha": 1.0}, "ORPO already"),
                             ({"dpo.loss": "robust", "dpo.label_smoothing": 0.5}, "label noise"),
                             ({"dpo.reference_mode": "live"}, "dpo.reference_mode must be"),
                             ({"objective": "kto", "init_from": ""}, "kto needs a reference")]:
    with pytest.raises(ValueError, match=message):
      loop.train(tiny_config(**{"objective": "dpo", "init_from": str(runs["sft"]),
                                "data.source": f"jsonl:{files['preference']}", **overrides}),
                 tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_greedy_exact_match_runs_on_heldout(chain):
  from jaxlm.eval.tasks import exact_match
  runs, files = chain
  result = exact_match(runs["sft"], tasks.read_examples(files["heldout"])[:16])
  assert 0.0 <= result["all"] <= 1.0 and set(result) == {"all", "sort"}


def test_reward_model_scores_texts_from_python_and_cli(chain, capsys):
  from jaxlm import cli
  from jaxlm.eval.reward_scores import score_texts
  runs, files = chain
  examples = tasks.read_examples(files["heldout"])[:20]
  rng = np.random.default_rng(0)
  good = score_texts(runs["reward"], [e.prompt for e in examples], [e.answer for e in examples])
  bad = score_texts(runs["reward"], [e.prompt for e in examples],
                    [tasks.corrupt(e.answer, e.kind, rng) for e in examples])
  assert np.mean(np.array(good) > np.array(bad)) > 0.5
  assert cli.main(["score", "--workdir", str(runs["reward"]), "--prompt", examples[0].prompt,
                   "--response", examples[0].answer, "--response", "x"]) == 0
  assert capsys.readouterr().out.count("\t") == 2
  assert cli.main(["score", "--workdir", str(runs["sft"]), "--prompt", "a", "--response", "b"]) == 2


def test_chat_sampling_and_distillation_on_the_task(chain, tmp_path, capsys):
  from jaxlm import cli
  runs, files = chain
  assert cli.main(["sample", "--workdir", str(runs["sft"]), "--chat", "--prompt", "Sort: 3 1",
                   "--temperature", "0", "--max_new_tokens", "8"]) == 0
  assert "--- sample 0 ---" in capsys.readouterr().out
  cfg = tiny_config(**{"objective": "distill", "distill.teacher": str(runs["pretrain"]),
                       "data.source": f"text:{files['pretrain']}", "train.steps": 30,
                       "model.embed_dim": 16, "model.mlp_dim": 32, "data.seq_len": 32,
                       "model.max_seq_len": 32})
  loop.train(cfg, tmp_path)
  kl = metric(tmp_path, "kl")
  assert kl[-1] < 0.7 * kl[0], kl
