"""SFT packing: loss only on response targets, exact segments, counted truncation, batches."""

import numpy as np
import pytest

from jaxlm.data import chat, pipeline, tasks, tokenizer as tok_lib
from jaxlm.objectives import sft_data

PAD = 0


def example(prompt_len: int, response_len: int, start: int = 10):
  """An (ids, mask) example: a role-token-like prompt then a response, distinct ids."""
  ids = np.arange(start, start + prompt_len + response_len, dtype=np.int32)
  return ids, np.arange(len(ids)) >= prompt_len


def unpack(batch):
  """Segments of each row as (ids of the example, its loss mask over targets), in order.

  A segment's ids are its input tokens, plus its last target when it runs to the row end
  (the window's final token is only a target). Checks positions restart per segment.
  """
  out = []
  for tokens, targets, segs, pos, loss in zip(batch["tokens"], batch["targets"],
                                              batch["segment_ids"], batch["positions"],
                                              batch["loss_mask"]):
    used = segs[segs > 0]
    assert (np.diff(used) >= 0).all() and (segs[len(used):] == 0).all()  # padding only at end
    assert (loss[segs == 0] == 0).all()
    for s in np.unique(used):
      p = np.flatnonzero(segs == s)
      assert (np.diff(p) == 1).all() and (pos[p] == np.arange(len(p))).all()
      ids = tokens[p].tolist()
      if p[-1] == len(segs) - 1 and targets[-1] != PAD:
        ids.append(int(targets[-1]))
      out.append((ids, loss[p]))
  return out


def test_packed_segments_reproduce_examples_and_loss_is_on_responses():
  rng = np.random.default_rng(0)
  examples = [example(int(rng.integers(1, 9)), int(rng.integers(1, 6)), start=20 * i + 1)
              for i in range(40)]
  seq_len = 16
  batch, report = sft_data.pack_sft(examples, seq_len, PAD)
  assert report.too_long == report.dropped == report.truncated == 0 and report.kept == 40
  assert batch["tokens"].shape[1] == seq_len and batch["tokens"].dtype == np.int32
  got = unpack(batch)
  assert [ids for ids, _ in got] == [ids.tolist() for ids, _ in examples]  # none split or lost
  for (ids, mask), (_, loss) in zip(examples, got):
    # Input t carries loss iff its target t + 1 is a response token of the same example.
    np.testing.assert_array_equal(loss, np.append(mask[1:], False)[:len(loss)])
  # The loss-carrying targets, in order, are exactly the response tokens.
  flat_targets = batch["targets"][batch["loss_mask"] > 0].tolist()
  assert flat_targets == [t for ids, mask in examples for t in ids[mask].tolist()]


def test_loss_positions_do_not_depend_on_token_values():
  rng = np.random.default_rng(1)
  examples = [example(int(rng.integers(1, 7)), int(rng.integers(1, 4)), 7 * i + 1)
              for i in range(30)]
  scrambled = [(np.where(mask, ids, rng.integers(1, 500, len(ids))).astype(np.int32), mask)
               for ids, mask in examples]
  a, _ = sft_data.pack_sft(examples, 12, PAD)
  b, _ = sft_data.pack_sft(scrambled, 12, PAD)
  np.testing.assert_array_equal(a["loss_mask"], b["loss_mask"])
  assert not np.array_equal(a["tokens"], b["tokens"])
  everything, _ = sft_data.pack_sft(examples, 12, PAD, train_on_prompt=True)
  plain = pipeline.pack_documents([ids for ids, _ in examples], 12, PAD)
  np.testing.assert_array_equal(everything["loss_mask"], plain["loss_mask"])
  assert (a["loss_mask"] <= everything["loss_mask"]).all() and a["loss_mask"].sum() < plain[
      "loss_mask"].sum()


def test_truncation_policies_are_counted():
  seq_len = 9  # rows of 10 tokens
  short = example(3, 2, start=100)
  long_prompt = example(12, 3, start=200)  # 15 tokens, response fits
  long_reply = example(2, 12, start=300)  # the response alone is longer than a row
  examples = [short, long_prompt, long_reply]

  batch, report = sft_data.pack_sft(examples, seq_len, PAD, truncation="drop")
  assert (report.total, report.too_long, report.dropped, report.truncated, report.longest) == (
      3, 2, 2, 0, 15)
  assert [ids for ids, _ in unpack(batch)] == [short[0].tolist()]
  assert "2 dropped" in str(report) and "longest 15" in str(report)

  batch, report = sft_data.pack_sft(examples, seq_len, PAD, truncation="left")
  assert (report.dropped, report.truncated, report.kept) == (1, 1, 2)
  got = unpack(batch)
  assert [ids for ids, _ in got] == [short[0].tolist(), long_prompt[0][-10:].tolist()]
  kept, loss = got[1]
  learned = np.array(kept[1:])[loss[:len(kept) - 1] > 0]
  assert learned.tolist() == long_prompt[0][long_prompt[1]].tolist()  # the whole response

  # Boundary: the role token before the response must survive the cut.
  _, report = sft_data.pack_sft([example(2, 9), example(2, 10)], seq_len, PAD, truncation="left")
  assert (report.truncated, report.dropped) == (1, 1)

  batch, report = sft_data.pack_sft(examples, seq_len, PAD, truncation="right")
  assert (report.dropped, report.truncated) == (1, 1)  # long_prompt's cut leaves no response
  assert [ids for ids, _ in unpack(batch)] == [short[0].tolist(), long_reply[0][:10].tolist()]
  assert "1 truncated ('right'), 1 dropped; 2 kept" in str(report)

  _, report = sft_data.pack_sft([short], seq_len, PAD)
  assert str(report) == "SFT packing: 1 examples, 0 longer than a row of 10 tokens (longest 5)"
  with pytest.raises(ValueError, match="no SFT example left"):
    sft_data.pack_sft([long_reply], seq_len, PAD, truncation="left")
  with pytest.raises(ValueError, match="truncation must be one of"):
    sft_data.pack_sft([short], seq_len, PAD, truncation="middle")


@pytest.fixture(scope="module")
def tok():
  return tok_lib.train_tokenizer([tasks.pretraining_text(tasks.generate(300, 0))], "char", 0)


def test_chat_examples_end_to_end(tok):
  examples = tasks.generate(25, 0)
  template = chat.ChatTemplate(bos=True)
  encoded = sft_data.encode_conversations([e.conversation() for e in examples], tok, template)
  for (ids, mask), e in zip(encoded, examples):
    assert ids.tolist() == template.prompt_ids([e.conversation()[0]], tok) + template.response_ids(
        e.answer, tok)
  batch, _ = sft_data.pack_sft(encoded, 48, tok.contract.pad_id)
  learned = batch["targets"][batch["loss_mask"] > 0]
  end = tok.contract.role_ids["end"]
  assert (learned == end).sum() == len(examples)
  assert tok.decode(learned) == "".join(e.answer for e in examples)


def test_sft_batches_are_deterministic_shuffled_epochs(tok):
  convs = [e.conversation() for e in tasks.generate(60, 1)]
  template = chat.ChatTemplate()
  whole, report = sft_data.sft_batches(convs, tok, template, seq_len=32, global_batch=4, seed=3)
  assert report.kept == 60
  halves = [sft_data.sft_batches(convs, tok, template, seq_len=32, global_batch=4, seed=3,
                                 process_index=p, process_count=2)[0] for p in range(2)]
  for step in (0, 7, 1000):
    for key in ("tokens", "loss_mask", "segment_ids", "positions"):
      np.testing.assert_array_equal(whole[step][key],
                                    np.concatenate([h[step][key] for h in halves]))
  rows = whole.num_rows
  epoch = np.concatenate([whole.row_indices(s) for s in range(-(-rows * 2 // 4))])[:2 * rows]
  assert sorted(epoch[:rows]) == list(range(rows)) == sorted(epoch[rows:])  # each row once
  assert epoch[:rows].tolist() != epoch[rows:].tolist()  # reshuffled per epoch
  other = sft_data.SFTBatches(whole.rows, global_batch=4, seed=4)
  assert not np.array_equal(other[0]["tokens"], whole[0]["tokens"])
  it = pipeline.batch_iterator(whole)
  for step, fixed in enumerate(pipeline.fixed_batches(whole, 3)):
    np.testing.assert_array_equal(next(it)["tokens"], fixed["tokens"])
    np.testing.assert_array_equal(fixed["targets"], whole[step]["targets"])
  with pytest.raises(ValueError, match="not divisible"):
    sft_data.SFTBatches(whole.rows, global_batch=3, seed=0, process_count=2)
