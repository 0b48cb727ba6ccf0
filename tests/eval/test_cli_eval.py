"""`jaxlm eval`: tasks from configs/eval and custom JSONL, JSON results, clear errors."""

import json
import math

import pytest

from jaxlm import cli
from jaxlm.eval import perplexity, runner, task_config, win_rate
from jaxlm.train.loop import load_trained


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def test_perplexity_task_writes_json_next_to_the_checkpoint(trained_run, capsys):
  workdir, _ = trained_run
  code = cli.main(["eval", "--workdir", str(workdir), "--task", "shakespeare_ppl",
                   "--config.perplexity.max_tokens=300", "--config.batch_size=8"])
  out = capsys.readouterr().out
  assert code == 0
  result = json.loads((workdir / "eval" / "shakespeare_ppl.json").read_text())
  m = result["metrics"]
  assert result["kind"] == "perplexity" and result["step"] == 60 and m["tokens"] == 300
  assert m["perplexity"] == pytest.approx(math.exp(m["nll_per_token"]))
  cfg = task_config.load("shakespeare_ppl")
  _, tokenizer, graphdef, params = load_trained(workdir)
  again = perplexity.perplexity(graphdef, params, tokenizer, runner.corpus_docs(cfg, cfg.source),
                                max_tokens=300, batch_size=8)
  assert m["perplexity"] == pytest.approx(again["perplexity"], rel=1e-6)
  assert "perplexity" in out and f"{m['perplexity']:.4f}" in out and "wrote" in out


def test_custom_jsonl_multiple_choice(trained_run, tmp_path, capsys):
  workdir, _ = trained_run
  data = write_jsonl(tmp_path / "mc.jsonl", [
      {"context": "ROMEO:\nGood", "choices": [" night", " xqzj"], "gold": 0},
      {"context": "JULIET:\nO Romeo,", "choices": [" Romeo", " zzzz", " qqq"], "gold": 0},
      {"context": "KING:\nWhat", "choices": [" say", " ww"], "gold": 1}])
  assert cli.main(["eval", "--workdir", str(workdir), "--task", "configs/eval/shakespeare_cloze.py",
                   f"--config.source=jsonl:{data}", "--config.name=my_mc"]) == 0
  result = json.loads((workdir / "eval" / "my_mc.json").read_text())
  records = result["records"]
  assert len(records) == 3 and result["metrics"]["questions"] == 3
  assert result["metrics"]["acc"] == pytest.approx(
      sum(r["pick"] == r["gold"] for r in records) / 3)
  assert all(r["pick"] == max(range(len(r["logprobs"])), key=r["logprobs"].__getitem__)
             for r in records)
  assert "acc_norm" in capsys.readouterr().out


def test_custom_jsonl_generative_plain_prompts(trained_run, tmp_path):
  workdir, _ = trained_run
  data = write_jsonl(tmp_path / "gen.jsonl", [
      {"prompt": "Who art thou?", "answer": "A man", "kind": "who"},
      {"prompt": "What say you?", "response": "Nothing", "kind": "what"}])
  assert cli.main(["eval", "--workdir", str(workdir), "--task", "task_exact_match:plain,fewshot",
                   f"--config.source=jsonl:{data}", "--config.prompt.num_fewshot=1",
                   "--config.prompt.max_new_tokens=6"]) == 0
  result = json.loads((workdir / "eval" / "task_exact_match_plain_fewshot.json").read_text())
  assert set(result["metrics"]) == {"exact_match", "exact_match/what", "exact_match/who",
                                    "agreement", "questions"}
  first = result["records"][0]
  assert first["answer"] == "A man" and first["prediction"] == first["samples"][0]["answer"]


def test_win_rate_plumbing_with_a_stand_in_judge(trained_run, tmp_path, monkeypatch):
  import jaxlm.eval.reward_scores as reward_scores
  workdir, _ = trained_run
  judged = []

  def judge(rm, prompts, responses):
    judged.append((rm, list(responses)))
    return [float(len(r)) for r in responses]

  monkeypatch.setattr(reward_scores, "score_texts", judge)
  data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "answer": ""} for p in
                                           ("Speak.", "Who goes there?", "Stand!", "Hark.")])
  cfg = task_config.load("task_win_rate", [
      f"source=jsonl:{data}", f"win_rate.reference={workdir}", f"win_rate.reward_model={workdir}",
      "prompt.format=plain", "prompt.max_new_tokens=5"])
  result = runner.run(workdir, cfg)
  # Greedy policy and reference are the same run: identical replies, every prompt a tie.
  assert judged[0] == judged[1] and judged[0][0] == str(workdir)
  m = result["metrics"]
  assert (m["ties"], m["n"], m["win_rate"]) == (4, 4, 0.5)
  assert (m["ci_low"], m["ci_high"]) == pytest.approx(win_rate.wilson_interval(0.5, 4))
  assert json.loads((workdir / "eval" / "task_win_rate.json").read_text())["metrics"] == m


def test_bad_tasks_get_one_clear_line(trained_run, tmp_path, capsys):
  workdir, _ = trained_run
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "choices": ["b", "c"], "gold": 2}])
  assert cli.main(["eval", "--workdir", str(workdir), "--task", "shakespeare_cloze",
                   f"--config.source=jsonl:{bad}"]) == 2
  assert "bad.jsonl:1: field 'gold' must be an index into 'choices'" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(workdir), "--task", "shakespeare_ppl",
                   "--config.perplexity.strid=3"]) == 2
  assert "unknown config key 'perplexity.strid'" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(workdir), "--task", "no_such_task"]) == 2
  assert "eval task 'no_such_task'" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(workdir), "--task", "task_win_rate"]) == 2
  assert "win_rate.reference='runs/task_sft' is not a jaxlm workdir" in capsys.readouterr().err
