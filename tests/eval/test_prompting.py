"""Prompting: rendering, answer extraction, majority vote, the staged methods, greedy limit."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm import sampling
from jaxlm.data import chat, tasks
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.eval import generative, prompting
from jaxlm.train.loop import load_trained

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;'?!+-\n"


@pytest.fixture(scope="module")
def tokenizer():
  return train_tokenizer([CHARS * 3], "char", 0, num_sentinels=0)


def test_extract_answer():
  assert prompting.extract_answer("  1 2 3.\nQ: more") == "1 2 3"
  assert prompting.extract_answer("42") == "42"
  text = "First 3, then 4. Therefore, the answer is 7. Or the answer is 8."
  assert prompting.extract_answer(text, r"answer is (\S+)") == "8"
  assert prompting.extract_answer(text, r"answer is \d") == "answer is 8"
  assert prompting.extract_answer(text, r"total: (\d+)") == ""


def test_majority_vote():
  assert prompting.majority_vote(["1 2", "2 1", "1 2"]) == ("1 2", 2)
  assert prompting.majority_vote(["b", "a", "a", "b"]) == ("b", 2)  # tie: first seen
  assert prompting.majority_vote(["", "", "c"]) == ("c", 1)  # empty answers do not vote
  assert prompting.majority_vote(["", ""]) == ("", 0)


def test_plain_and_chat_rendering(tokenizer):
  plain = prompting.Renderer(tokenizer)
  ids = plain.prompt_ids([("Sort: 2 1", "1 2")], "Sort: 3 1", "Let's ")
  assert tokenizer.decode(ids) == "Q: Sort: 2 1\nA: 1 2\nQ: Sort: 3 1\nA: Let's"
  assert plain.stop_id(False) == tokenizer.encode("\n")[-1]
  assert plain.stop_id(True) == tokenizer.contract.eos_id
  assert plain.reply_text(tokenizer.encode(" 1 3\nQ: next") + [tokenizer.contract.eos_id]) == "1 3"
  template = chat.ChatTemplate()
  chatty = prompting.Renderer(tokenizer, template)
  messages = [{"role": "user", "content": "Sort: 2 1"}, {"role": "assistant", "content": "1 2"},
              {"role": "user", "content": "Sort: 3 1"}]
  assert chatty.prompt_ids([("Sort: 2 1", "1 2")], "Sort: 3 1", "So") == (
      template.prompt_ids(messages, tokenizer) + tokenizer.encode("So"))


def test_prompts_end_where_the_training_text_goes_on_with_a_bpe_tokenizer():
  """A BPE tokenizer joins the space before a word to it ("A:", "▁95"): a prompt ending in
  "A: " would end in a lone space the model never saw there."""
  examples = tasks.generate(2000, 0)
  bpe = train_tokenizer([tasks.pretraining_text(examples)], "bpe", 400, num_sentinels=0)
  plain = prompting.Renderer(bpe)
  trigger = generative.Prompting().answer_trigger
  for e in examples[:20]:
    trained = bpe.encode(f"Q: {e.prompt}\nA: {e.answer}\n")
    assert trained[:len(plain.prompt_ids([], e.prompt))] == plain.prompt_ids([], e.prompt)
    reasoned = bpe.encode(f"Q: {e.prompt}\nA: {trigger} {e.answer}.")
    prompt = plain.prompt_ids([], e.prompt, f"{trigger} ")
    assert reasoned[:len(prompt)] == prompt


def test_encoder_rendering_is_the_seq2seq_input(tokenizer):
  """Encoder-decoder prompts are `objective=seq2seq` inputs: messages one per line, then EOS."""
  r = prompting.renderer("chat", tokenizer, None, family="encdec")
  eos = tokenizer.contract.eos_id
  got = r.prompt_ids([("Add: 1 2", "3")], "Add: 2 2", "Let's think step by step. ")
  assert got == tokenizer.encode("Add: 1 2\n3\nAdd: 2 2\nLet's think step by step.") + [eos]
  assert r.prompt_ids([], "Sort: 2 1") == tokenizer.encode("Sort: 2 1") + [eos]
  assert r.stop_id(False) == r.stop_id(True) == eos
  assert r.reply_text(tokenizer.encode(" 1 2 ") + [eos] + tokenizer.encode("x")) == "1 2"
  with pytest.raises(ValueError, match="BERT-style"):
    prompting.renderer("plain", tokenizer, None, family="encoder")


def test_pick_shots_never_picks_the_question():
  for i in range(5):
    shots = prompting.pick_shots(5, i, 4, seed=0, exclude_index=True)
    assert sorted(shots) == sorted(set(range(5)) - {i})
  assert prompting.pick_shots(9, 2, 3, 1, exclude_index=False) == prompting.pick_shots(
      9, 2, 3, 1, exclude_index=False)
  with pytest.raises(ValueError, match="need 5 examples"):
    prompting.pick_shots(5, 0, 5, 0, exclude_index=True)


class ScriptedGenerator:
  """Stands in for the model: replies from a script, and records every prompt it got."""

  def __init__(self, script, tokenizer):
    self.script, self.tokenizer, self.prompts = script, tokenizer, []

  def __call__(self, prompts, *, multiline, max_new):
    texts = [self.tokenizer.decode(p) for p in prompts]
    self.prompts.append(texts)
    return [self.script(t, multiline, len(self.prompts) - 1, k) for k, t in enumerate(texts)]


def run_scripted(monkeypatch, tokenizer, script, problems, pool=None, **settings):
  gen = ScriptedGenerator(script, tokenizer)
  monkeypatch.setattr(generative, "_Generator", lambda *a: gen)
  records = generative.answer(None, None, prompting.Renderer(tokenizer), problems,
                              generative.Prompting(**settings), pool=pool)
  return records, gen.prompts


def test_chain_of_thought_with_self_consistency(monkeypatch, tokenizer):
  problems = [generative.Problem("What is 2+2?", "4"), generative.Problem("What is 3+4?", "7")]
  answers = {0: [" 4.", " 5", "4"], 1: [" 7", " 8", " 9"]}  # per problem, per sample

  def script(text, multiline, call, k):
    if call == 0:  # the reasoning stage: multi-line replies
      assert multiline and text.endswith("A: Let's think step by step.")
      return f" Add them, think {k}.\nTherefore, the answer is wrong"
    assert not multiline
    return answers[k // 3][k % 3]

  records, prompts = run_scripted(monkeypatch, tokenizer, script, problems, method="cot",
                                  samples=3, temperature=0.7)
  assert len(prompts) == 2 and len(prompts[1]) == 6
  # The reasoning is cut at the answer trigger; the answer stage continues after it.
  assert prompts[1][4].endswith(
      "A: Let's think step by step. Add them, think 4. Therefore, the answer is")
  assert [r["prediction"] for r in records] == ["4", "7"]
  assert [r["agreement"] for r in records] == pytest.approx([2 / 3, 1 / 3])
  assert generative.exact_match_metrics(records)["exact_match"] == 1.0


def test_least_to_most_answers_subquestions_in_turn(monkeypatch, tokenizer):
  problems = [generative.Problem("Sort: 3 1 2", "1 2 3")]

  def script(text, multiline, call, k):
    if call == 0:
      assert text.endswith("A: To solve this, we first answer:")
      return "What is smallest? ; What is largest?;"
    if call == 1:
      assert text.endswith("Q: Sort: 3 1 2\nWhat is smallest?\nA:")
      return " 1"
    if call == 2:
      assert text.endswith("Q: Sort: 3 1 2\nWhat is smallest?\nA: 1\nQ: What is largest?\nA:")
      return "3"
    assert text.endswith("A: 1\nQ: What is largest?\nA: 3\nQ: Sort: 3 1 2\nA:")
    return "1 2 3"

  records, prompts = run_scripted(monkeypatch, tokenizer, script, problems,
                                  method="least_to_most")
  assert len(prompts) == 4
  assert records[0]["prediction"] == records[0]["samples"][0]["reply"] == "1 2 3"
  assert records[0]["samples"][0]["subquestions"] == [
      ["Sort: 3 1 2\nWhat is smallest?", "1"], ["What is largest?", "3"]]


def test_fewshot_examples_come_from_the_pool(monkeypatch, tokenizer):
  pool = [generative.Problem(f"Reverse: {w}", w[::-1], rationale="backwards")
          for w in ("ab", "cd", "ef")]
  question = [generative.Problem("Reverse: gh", "hg")]
  _, prompts = run_scripted(monkeypatch, tokenizer, lambda *a: "x", question, pool, num_fewshot=2)
  assert prompts[0][0].count("Q: Reverse: ") == 3 and prompts[0][0].endswith(
      "Q: Reverse: gh\nA:")
  assert "Reverse: ab\nA: ba\n" in prompts[0][0] or "Reverse: cd\nA: dc\n" in prompts[0][0]
  _, prompts = run_scripted(monkeypatch, tokenizer, lambda *a: "x", question, pool, method="cot",
                            num_fewshot=1)
  assert "A: Let's think step by step. backwards Therefore, the answer is " in prompts[0][0]


def test_self_consistency_needs_a_temperature():
  with pytest.raises(ValueError, match="needs a temperature"):
    generative.Prompting(samples=4)
  with pytest.raises(ValueError, match="method must be one of"):
    generative.Prompting(method="tree_of_thought")


def test_temperature_to_zero_sampling_is_greedy(trained_run):
  _, tokenizer, graphdef, params = load_trained(trained_run[0])
  prompts = [tokenizer.encode(p) for p in ("ROMEO:", "First Citizen:\nWe", "O")]
  common = dict(eos_id=tokenizer.contract.eos_id, pad_id=tokenizer.contract.pad_id)
  greedy = sampling.generate(graphdef, params, prompts,
                             sampling.SamplingConfig(temperature=0.0, max_new_tokens=12),
                             jax.random.key(0), **common)
  for seed in (1, 2):
    cold = sampling.generate(graphdef, params, prompts,
                             sampling.SamplingConfig(temperature=1e-5, max_new_tokens=12),
                             jax.random.key(seed), **common)
    assert cold == greedy
  hot = [sampling.generate(graphdef, params, prompts,
                           sampling.SamplingConfig(temperature=5.0, max_new_tokens=12),
                           jax.random.key(s), **common) for s in (1, 2)]
  assert hot[0] != hot[1]  # a real temperature does sample
  assert not np.array_equal(np.array(hot[0][0]), np.array(greedy[0]))


def test_beam_search_replies_keep_room_for_the_reply(trained_run):
  """With beams, a prompt longer than the context keeps only what leaves room for the reply,
  and the reply is the best beam of that prompt."""
  _, tokenizer, graphdef, params = load_trained(trained_run[0])
  context = nnx.merge(graphdef, params).cfg.max_seq_len
  renderer = prompting.Renderer(tokenizer)
  p = generative.Prompting(max_new_tokens=8, num_beams=3)
  question = "First Citizen: Before we proceed any further, hear me speak. " * 4
  reply = generative.replies(graphdef, params, renderer, [question], p)
  assert len(renderer.prompt_ids([], question)) > context
  ids = renderer.prompt_ids([], question)[-(context - 8):]
  best = sampling.ranked_beams(graphdef, params, [ids], sampling.SamplingConfig(
      temperature=0.0, max_new_tokens=8, num_beams=3), eos_id=renderer.stop_id(False),
      pad_id=tokenizer.contract.pad_id)[0][0][0]
  assert reply == [renderer.reply_text(best)]
  with pytest.raises(ValueError, match="beam search"):
    generative.Prompting(samples=2, temperature=0.5, num_beams=2)


def test_a_prefix_lm_run_reads_its_prompt_as_a_prefix(trained_run, monkeypatch):
  _, tokenizer, graphdef, params = load_trained(trained_run[0])
  seen, generate = [], sampling.generate
  monkeypatch.setattr(sampling, "generate",
                      lambda *args, **kw: seen.append(args[3].prefix_lm) or generate(*args, **kw))
  for objective in ("clm", "prefix_lm"):
    p = generative.Prompting(max_new_tokens=2).for_run(SimpleNamespace(objective=objective))
    generative.replies(graphdef, params, prompting.Renderer(tokenizer), ["Who?"], p)
  assert seen == [False, True]
