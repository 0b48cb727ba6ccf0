"""Log-likelihood scoring and perplexity against a direct forward pass of the model."""

import functools
import math

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm.eval import multiple_choice, perplexity, scoring
from jaxlm.train.loop import load_trained


@pytest.fixture(scope="module")
def trained(trained_run):
  _, tokenizer, graphdef, params = load_trained(trained_run[0])
  return tokenizer, graphdef, params


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens_1xT):
  return nnx.merge(graphdef, params)(tokens_1xT)


def direct_logprobs(graphdef, params, ids):
  """log p(ids[t] | ids[:t]) for t >= 1: one forward pass, log_softmax, gather. The input is
  right-padded to 32 tokens (one compilation); causality keeps the real positions exact."""
  n = len(ids) - 1
  logits = np.asarray(_forward(graphdef, params, np.asarray([ids[:-1] + [0] * (32 - n)],
                                                            np.int32)), np.float64)[0, :n]
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  return logp[np.arange(n), ids[1:]]


def test_continuation_loglikelihood_is_the_sum_of_its_token_logprobs(trained):
  tokenizer, graphdef, params = trained
  context, continuation = tokenizer.encode("ROMEO:\nWhat"), tokenizer.encode(" light is this")
  expected = direct_logprobs(graphdef, params, context + continuation)[-len(continuation):].sum()
  ids = context + continuation
  logits = np.asarray(_forward(graphdef, params, np.asarray([ids[:-1]], np.int32)))[0]
  greedy_ref = bool((np.argmax(logits, -1)[-len(continuation):] == continuation).all())
  # Alone, in a batch with rows of other buckets, and with another batch size: same value.
  others = [(tokenizer.encode("a" * n), tokenizer.encode("b")) for n in (2, 20, 30)]
  alone = scoring.loglikelihoods(graphdef, params, [(context, continuation)], batch_size=1)[0]
  mixed = scoring.loglikelihoods(graphdef, params, others + [(context, continuation)],
                                 batch_size=3)[-1]
  for s in (alone, mixed):
    assert s.num_tokens == len(continuation)
    assert s.is_greedy == greedy_ref
    np.testing.assert_allclose(s.logprob, expected, rtol=1e-5, atol=1e-5)


def test_long_context_is_cut_from_the_left(trained):
  tokenizer, graphdef, params = trained
  context = tokenizer.encode("First Citizen:\nBefore we proceed any further, hear me speak.")
  continuation = tokenizer.encode(" All")
  window = scoring.make_row(context, continuation, 32)[0]
  assert len(window) == 32
  cut = (context + continuation)[-33:]
  expected = direct_logprobs(graphdef, params, cut)[-len(continuation):].sum()
  got = scoring.loglikelihoods(graphdef, params, [(context, continuation)])[0]
  np.testing.assert_allclose(got.logprob, expected, rtol=1e-5, atol=1e-5)


def test_one_compilation_per_bucket(trained):
  tokenizer, graphdef, params = trained
  requests = [(tokenizer.encode("x" * n), tokenizer.encode("yz")) for n in range(1, 14)]
  scoring.loglikelihoods(graphdef, params, requests[:1], batch_size=4)
  before = scoring.compile_count()
  scoring.loglikelihoods(graphdef, params, requests, batch_size=4)  # every row fits bucket 16
  assert scoring.compile_count() == before
  assert [scoring.bucket_length(n, 64) for n in (1, 16, 17, 33, 100)] == [16, 16, 32, 64, 64]


def test_perplexity_is_exp_of_mean_token_nll(trained):
  tokenizer, graphdef, params = trained
  docs = ["To be, or not to be", "Good morrow, cousin.\nHow now!",
          "Now is the winter of our discontent made glorious summer by this sun of York"]
  eos = tokenizer.contract.eos_id
  nll = []
  for doc in docs:
    ids = [eos] + tokenizer.encode(doc)
    for start in range(1, len(ids), 32):  # score 32 tokens at a time, with all the context
      end = min(start + 32, len(ids))   # that fits (a model context of 32 tokens)
      nll += list(-direct_logprobs(graphdef, params, ids[max(0, end - 33):end])[start - end:])
  got = perplexity.perplexity(graphdef, params, tokenizer, docs, batch_size=4)
  assert got["tokens"] == len(nll) == sum(len(d) for d in docs)  # char tokenizer
  np.testing.assert_allclose(got["perplexity"], math.exp(np.mean(nll)), rtol=1e-5)
  np.testing.assert_allclose(got["bits_per_byte"], np.sum(nll) / math.log(2) / len("".join(docs)),
                             rtol=1e-5)
  strided = perplexity.perplexity(graphdef, params, tokenizer, docs[2:], stride=8)
  assert strided["tokens"] == len(docs[2])  # every token scored once, with more context


def test_rolling_requests_cover_every_token_once():
  reqs = perplexity.rolling_requests(list(range(10, 30)), 3, context=8, stride=5)
  assert [t for _, cont in reqs for t in cont] == list(range(10, 30))
  stream = [3, *range(10, 30)]
  for ctx, cont in reqs:
    assert len(ctx) + len(cont) - 1 <= 8
    start = stream.index(cont[0])
    assert stream[start - len(ctx):start] == ctx
  with pytest.raises(ValueError, match="stride must be in"):
    perplexity.rolling_requests([1, 2], 3, context=8, stride=9)


def test_acc_norm_divides_by_characters():
  questions = [multiple_choice.Question("q", ("ab", "abcdef"), gold=1),
               multiple_choice.Question("q", (" x", " yy", " zzz"), gold=0)]
  # Q1: acc picks "ab" (-3 > -6); per character -1.5 < -1.0 so acc_norm picks "abcdef".
  # Q2: lls -2, -2.5, -4 -> acc picks 0; per char -1, -0.833, -1.333 -> acc_norm picks 1.
  got = multiple_choice.choice_metrics([[-3.0, -6.0], [-2.0, -2.5, -4.0]], questions)
  assert got == {"acc": 0.5, "acc_norm": 0.5, "questions": 2}
  got = multiple_choice.choice_metrics([[-3.0, -6.0]], questions[:1])
  assert (got["acc"], got["acc_norm"]) == (0.0, 1.0)


def test_cloze_is_deterministic_and_its_gold_is_the_next_line():
  text = "\n".join(f"line number {i:03d} of the text" for i in range(100))
  a = multiple_choice.cloze_from_text(text, 10, seed=3, num_choices=4, context_lines=2)
  assert a == multiple_choice.cloze_from_text(text, 10, seed=3, num_choices=4, context_lines=2)
  assert a != multiple_choice.cloze_from_text(text, 10, seed=4, num_choices=4, context_lines=2)
  lines = text.split("\n")
  for q in a:
    previous = q.context.rstrip("\n").split("\n")[-1]
    assert q.choices[q.gold] == lines[lines.index(previous) + 1]
    assert len(set(q.choices)) == 4


def test_multiple_choice_records_match_direct_scores(trained):
  tokenizer, graphdef, params = trained
  qs = [multiple_choice.Question("KING:\nWhat say", (" you", " thee", "!"), 0),
        multiple_choice.Question("Ay, my", (" lord", " lady"), 1)]
  metrics, records = multiple_choice.evaluate(graphdef, params, tokenizer, qs, num_fewshot=1,
                                              separator="\n")
  for i, (q, r) in enumerate(zip(qs, records)):
    shot = qs[1 - i]  # the only other question is the one example
    assert r["prompt"] == shot.context + shot.choices[shot.gold] + "\n" + q.context
    ctx = tokenizer.encode(r["prompt"])
    for choice, lp in zip(q.choices, r["logprobs"]):
      n = len(tokenizer.encode(choice))
      expected = direct_logprobs(graphdef, params, ctx + tokenizer.encode(choice))[-n:].sum()
      np.testing.assert_allclose(lp, expected, rtol=1e-5, atol=1e-5)
  expected_acc = np.mean([int(np.argmax(r["logprobs"])) == q.gold for q, r in zip(qs, records)])
  assert metrics["acc"] == expected_acc


@pytest.mark.parametrize("style", ["bert", "t5"])
def test_scoring_an_encoder_or_encoder_decoder_is_a_clear_error(style):
  """Their forward pass takes other arguments than a decoder's: scoring one must not return
  numbers."""
  from conftest import tiny_config
  from jaxlm.models import factory, from_config
  graphdef, params = nnx.split(factory.create(from_config(tiny_config(style).model, 64),
                                              nnx.Rngs(0)))
  with pytest.raises(ValueError, match=f"this is a {'encoder' if style == 'bert' else 'encdec'}"):
    scoring.loglikelihoods(graphdef, params, [([5, 6], [7])])


def test_choices_are_cut_from_the_joined_text_not_encoded_alone(trained):
  """A tokenizer that opens every separately encoded text with a word-boundary token (as
  Llama-2's does) must not put one before a choice that continues the context."""
  tokenizer = trained[0]
  boundary = tokenizer.contract.unk_id  # stands for a word-boundary piece no text here holds

  class BoundaryPrefixed:
    contract = tokenizer.contract

    def encode(self, text):
      return [boundary] + tokenizer.encode(text)

    def encode_batch(self, texts):
      return [self.encode(t) for t in texts]

  prefixed = BoundaryPrefixed()
  pairs = [("KING:\nWhat say", " you"), ("Ay, my", " lord")]
  for (context, choice), (ctx, cont) in zip(
      pairs, multiple_choice.continuation_requests(prefixed, pairs)):
    assert ctx + cont == prefixed.encode(context + choice) and ctx == prefixed.encode(context)
    assert cont == tokenizer.encode(choice) and boundary not in cont
