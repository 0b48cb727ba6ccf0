"""Pipeline: example type semantics, determinism across process counts, resumable iterators."""

import json

import numpy as np
import pytest

from jaxlm.data import pipeline, sources, tokenizer as tok_lib


@pytest.fixture(scope="module")
def char_tok():
  return tok_lib.train_tokenizer(["abcdefgh xyz\n"], "char", 0)


def test_tokenize_documents_appends_eos_and_numbers_segments(char_tok):
  tokens, segments = pipeline.tokenize_documents(char_tok, ["ab", "xyz"])
  eos = char_tok.contract.eos_id
  assert tokens.tolist() == char_tok.encode("ab") + [eos] + char_tok.encode("xyz") + [eos]
  assert segments.tolist() == [1, 1, 1, 2, 2, 2, 2]


def test_rows_shift_targets_and_restart_positions_at_documents():
  tokens = np.array([[10, 11, 12, 13, 14, 15]])
  segs = np.array([[1, 1, 2, 2, 2, 3]])
  row = pipeline.rows_from_windows(tokens, segs)
  assert row["tokens"].tolist() == [[10, 11, 12, 13, 14]]
  assert row["targets"].tolist() == [[11, 12, 13, 14, 15]]
  assert row["positions"].tolist() == [[0, 1, 0, 1, 2]]
  # Predicting the first token of the next document is masked out.
  assert row["loss_mask"].tolist() == [[1, 0, 1, 1, 0]]


def test_pack_documents_pads_and_separates():
  batch = pipeline.pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=5, pad_id=0)
  assert batch["tokens"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
  assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]]
  assert batch["loss_mask"].tolist() == [[1, 1, 0, 1, 0], [1, 1, 1, 0, 0]]
  with pytest.raises(ValueError, match="does not fit"):
    pipeline.pack_documents([list(range(10))], seq_len=5, pad_id=0)


def test_batches_are_a_pure_function_of_seed_and_step():
  tokens = np.arange(1000, dtype=np.int32)
  segs = np.ones_like(tokens)
  one = pipeline.WindowBatches(tokens, segs, seq_len=16, global_batch=8, seed=3)
  halves = [pipeline.WindowBatches(tokens, segs, seq_len=16, global_batch=8, seed=3,
                                   process_index=p, process_count=2) for p in range(2)]
  for step in (0, 5, 123):
    whole = one[step]
    joined = np.concatenate([h[step]["tokens"] for h in halves])
    np.testing.assert_array_equal(whole["tokens"], joined)
    np.testing.assert_array_equal(whole["targets"][:, :-1], whole["tokens"][:, 1:])
  assert not np.array_equal(one[0]["tokens"], one[1]["tokens"])
  other_seed = pipeline.WindowBatches(tokens, segs, seq_len=16, global_batch=8, seed=4)
  assert not np.array_equal(one[0]["tokens"], other_seed[0]["tokens"])


def test_iterator_resumes_from_saved_state():
  tokens = np.arange(500, dtype=np.int32)
  batches = pipeline.WindowBatches(tokens, np.ones_like(tokens), seq_len=8, global_batch=2, seed=0)
  it = pipeline.batch_iterator(batches)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # must survive JSON (saved with checkpoints)
  expected = [next(it)["tokens"] for _ in range(2)]
  resumed = pipeline.batch_iterator(batches, state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["tokens"], want)
  np.testing.assert_array_equal(expected[0], batches[3]["tokens"])


def test_too_little_data_is_a_clear_error():
  with pytest.raises(ValueError, match="fewer than one row"):
    pipeline.WindowBatches(np.arange(5), np.ones(5), seq_len=8, global_batch=1, seed=0)


def test_sources_and_their_errors(tmp_path):
  corpus = sources.load_corpus("embedded:tinyshakespeare")
  full = sources.embedded_text("tinyshakespeare")
  assert corpus.train[0] + corpus.val[0] == full
  assert len(corpus.train[0]) == int(len(full) * 0.9)
  (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": "three"}\n')
  docs = sources.load_corpus(f"jsonl:{tmp_path / 'a.jsonl'}", val_fraction=0.34)
  assert docs.train == ["one", "two"] and docs.val == ["three"]
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "x.txt").write_text("hello")
  assert sources.load_corpus(f"text:{tmp_path / 'd'}", val_fraction=0.0).train == ["hello"]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.load_corpus(f"text:{tmp_path / 'missing.txt'}")
  (tmp_path / "empty.txt").write_text("  \n")
  with pytest.raises(ValueError, match="is empty"):
    sources.load_corpus(f"text:{tmp_path / 'empty.txt'}")
  (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: no field 'text'"):
    sources.load_corpus(f"jsonl:{tmp_path / 'bad.jsonl'}")
  with pytest.raises(ValueError, match="unknown data source"):
    sources.load_corpus("s3://bucket")
