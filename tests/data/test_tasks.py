"""The shipped instruction task: correct answers, disjoint splits, corruptions, files."""

import re

import numpy as np
import pytest

from jaxlm.data import formats, tasks


def solve(prompt: str) -> tuple[str, str]:
  """(kind, answer) computed independently from the prompt text."""
  if m := re.fullmatch(r"What is (\d+)\+(\d+)\?", prompt):
    return "add", str(sum(int(x) for x in m.groups()))
  if m := re.fullmatch(r"Reverse: ([a-z]+)", prompt):
    return "reverse", "".join(reversed(m.group(1)))
  m = re.fullmatch(r"Sort: (\d(?: \d)+)", prompt)
  assert m, prompt
  return "sort", " ".join(str(x) for x in sorted(int(x) for x in m.group(1).split()))


@pytest.mark.parametrize("sizes", [{}, {"digits": 1, "str_len": 2, "list_len": 2},
                                   {"digits": 6, "str_len": 16, "list_len": 10}])
def test_answers_are_correct_and_sizes_respected(sizes):
  for split in tasks.SPLITS:
    examples = tasks.generate(600, seed=1, split=split, **sizes)
    assert len(examples) == 600
    for e in examples:
      assert (e.kind, e.answer) == solve(e.prompt)
      assert len(e.prompt) + len(e.answer) < 48
    assert {e.kind for e in examples} == set(tasks.KINDS)
  big = {"digits": 2, "str_len": 5, "list_len": 5} | sizes
  for e in tasks.generate(300, seed=2, **sizes):
    body = e.prompt.split(": ")[-1] if e.kind != "add" else e.prompt[8:-1]
    if e.kind == "add":
      assert all(int(x) < 10**big["digits"] for x in body.split("+"))
    elif e.kind == "reverse":
      assert 2 <= len(body) <= big["str_len"]
    else:
      assert 2 <= len(body.split()) <= big["list_len"]


def test_heldout_prompts_never_appear_in_training():
  train = {e.prompt for seed in (0, 1) for e in tasks.generate(3000, seed)}
  heldout = {e.prompt for seed in (0, 5) for e in tasks.generate(300, seed, split="heldout")}
  assert len(heldout) > 100 and not train & heldout
  assert all(tasks.split_of(p) == "train" for p in train)
  # The split is a property of the prompt text alone, stable across calls.
  assert [tasks.split_of(p) for p in sorted(heldout)] == ["heldout"] * len(heldout)


def test_determinism_and_mix():
  assert tasks.generate(50, 7) == tasks.generate(50, 7)
  assert tasks.generate(50, 7) != tasks.generate(50, 8)
  assert tasks.generate(20, 7) == tasks.generate(50, 7)[:20]
  assert {e.kind for e in tasks.generate(100, 0, kinds=["add"])} == {"add"}
  mixed = tasks.generate(2000, 0, kinds={"add": 3, "sort": 1, "reverse": 0})
  counts = {k: sum(e.kind == k for e in mixed) for k in tasks.KINDS}
  assert counts["reverse"] == 0 and 1300 < counts["add"] < 1700
  for bad in [dict(kinds=["mul"]), dict(kinds={"add": 0}), dict(digits=0), dict(str_len=40),
              dict(split="test")]:
    with pytest.raises(ValueError):
      tasks.generate(5, 0, **bad)


def test_corrupt_is_plausible_and_never_the_answer():
  rng = np.random.default_rng(0)
  cases = [(e.answer, e.kind) for e in tasks.generate(1500, 3)]
  cases += [("0", "add"), ("9", "add"), ("100", "add"), ("aa", "reverse"), ("zzz", "reverse"),
            ("3 3", "sort"), ("9 9 9", "sort"), ("0 0", "sort")]
  for answer, kind in cases:
    for _ in range(3):
      wrong = tasks.corrupt(answer, kind, rng)
      assert wrong != answer and not tasks.exact_match(wrong, answer)
      if kind == "add":
        assert wrong.isdigit() and abs(int(wrong) - int(answer)) in (1, 10, 100, 1000)
      elif len(set(answer.split(" ") if kind == "sort" else answer)) > 1:  # a reordering
        items = answer.split(" ") if kind == "sort" else list(answer)
        got = wrong.split(" ") if kind == "sort" else list(wrong)
        assert sorted(got) == sorted(items)
        if kind == "sort":
          assert got != sorted(got, key=int)  # out of order
  with pytest.raises(ValueError, match="unknown task kind"):
    tasks.corrupt("1", "mul", rng)


def test_exact_match_semantics():
  assert tasks.exact_match(" 95\n", "95") and tasks.exact_match("1 2 3", "\t1 2 3 ")
  for wrong, answer in [("095", "95"), ("95.", "95"), ("95 96", "95"), ("", "95"),
                        ("1  2 3", "1 2 3"), ("1,2,3", "1 2 3"), ("Dcba", "dcba")]:
    assert not tasks.exact_match(wrong, answer)
  examples = [tasks.Example("What is 1+1?", "2", "add"), tasks.Example("Sort: 2 1", "1 2", "sort")]
  assert tasks.score(["2 ", "2 1"], examples) == {"all": 0.5, "add": 1.0, "sort": 0.0}


def test_files_for_every_stage(tmp_path):
  paths = tasks.write_task_files(tmp_path / "t", n_train=200, n_heldout=30, seed=4, digits=3)
  train = tasks.generate(200, 4, digits=3)
  sft = formats.read_sft_jsonl(paths["sft"])
  assert sft == [e.conversation() for e in train]
  prefs = formats.read_preference_jsonl(paths["preference"])
  assert [p["prompt"][0]["content"] for p in prefs] == [e.prompt for e in train]
  assert all(p["chosen"] == e.answer != p["rejected"] for p, e in zip(prefs, train))
  heldout = tasks.read_examples(paths["heldout"])
  assert heldout == tasks.generate(30, 4, split="heldout", digits=3)
  text = paths["pretrain"].read_text()
  assert text.startswith(f"Q: {train[0].prompt}\nA: {train[0].answer}\nQ: ")
  assert text.count("\n") == 2 * len(train)
  assert not any(f"Q: {e.prompt}\n" in text for e in heldout)


def test_task_data_source_gives_train_and_heldout_splits():
  from jaxlm import config as configlib
  from jaxlm.data import sources
  from jaxlm.objectives import reward, sft
  cfg = configlib.load("configs/task_chain.py:sft,cpu", ["task.n_train=50", "task.n_heldout=10",
                                                         "data.source=task:sort,add"])
  corpus = sources.load_corpus("task:sort,add", task_cfg=cfg.task)
  assert len(corpus.train) == 50 and len(corpus.val) == 10
  assert all(doc.startswith("Q: ") and "\nA: " in doc for doc in corpus.train)
  train, val = sft.load_records(cfg)
  assert {c[0]["content"] for c in train}.isdisjoint({c[0]["content"] for c in val})
  pairs, _ = reward.load_records(cfg)
  assert all(p["chosen"] != p["rejected"] for p in pairs)
  with pytest.raises(ValueError, match="unknown task kinds"):
    sources.load_corpus("task:divide", task_cfg=cfg.task)
