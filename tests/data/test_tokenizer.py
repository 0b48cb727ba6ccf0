"""Tokenizers: exact round-trip of the corpus, the token contract, caching, bad files."""

import pytest

from jaxlm.data import sentinels, sources, tokenizer as tok_lib


@pytest.fixture(scope="module")
def corpus_text():
  return sources.embedded_text("tinyshakespeare")


def test_char_model_round_trips_the_whole_corpus(corpus_text):
  tok = tok_lib.train_tokenizer([corpus_text], "char", 0)
  ids = tok.encode(corpus_text)
  assert len(ids) == len(corpus_text) == 1_115_394  # one token per character
  assert tok.decode(ids) == corpus_text
  assert tok.contract.base_size == 65 + 4  # 65 distinct characters + pad/unk/bos/eos


def test_characters_only_in_long_lines_still_get_pieces(corpus_text):
  """A line longer than sentencepiece's sentence limit (4192 bytes) is still learned from."""
  long_line = corpus_text[:5000].replace("\n", " ") + "QZ\u00e9\n"
  tok = tok_lib.train_tokenizer(["short line\n" * 50 + long_line], "char", 0)
  ids = tok.encode("QZ\u00e9")
  assert tok.contract.unk_id not in ids and tok.decode(ids) == "QZ\u00e9"
  tok = tok_lib.train_tokenizer([long_line * 3], "char", 0)  # only long lines: not an error
  assert tok.decode(tok.encode(long_line)) == long_line


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_models_round_trip_whitespace_and_newlines(kind, corpus_text):
  tok = tok_lib.train_tokenizer([corpus_text[:200_000]], kind, 512)
  text = "  ROMEO:\n\tWhat,  ho!\n\n  Nay   then,\nfarewell.  "
  assert tok.decode(tok.encode(text)) == text
  assert len(tok.encode(text)) < len(text)


def test_token_contract():
  c = tok_lib.TokenContract(base_size=32000, pad_id=0, unk_id=2, bos_id=1, eos_id=1,
                            num_sentinels=100)
  assert c.sentinel_id(0) == 32099 and c.sentinel_id(99) == 32000  # T5 numbering
  assert c.mask_id == 32100
  assert sorted(c.role_ids.values()) == [32101, 32102, 32103, 32104]
  assert c.vocab_size == 32128 and c.vocab_size % 128 == 0
  with pytest.raises(IndexError):
    c.sentinel_id(100)
  small = tok_lib.TokenContract(69, 0, 1, 2, 3, num_sentinels=0)
  assert small.mask_id == 69 and small.vocab_size == 128


def test_cache_returns_the_same_model(tmp_path, corpus_text):
  texts = [corpus_text[:50_000]]
  first = tok_lib.load_or_train(texts, "bpe", 400, cache_dir=tmp_path)
  assert len(list(tmp_path.glob("*.model"))) == 1
  second = tok_lib.load_or_train(texts, "bpe", 400, cache_dir=tmp_path)
  assert first.model_proto == second.model_proto


def test_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match="empty corpus"):
    tok_lib.train_tokenizer(["", "  \n"], "bpe", 100)
  with pytest.raises(ValueError, match="kind"):
    tok_lib.train_tokenizer(["abc"], "wordpiece", 100)
  with pytest.raises(FileNotFoundError):
    tok_lib.Tokenizer.load(tmp_path / "missing.model")
  (tmp_path / "bad.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="not a readable sentencepiece model"):
    tok_lib.Tokenizer.load(tmp_path / "bad.model")


def test_too_small_subword_vocabulary_is_a_clear_error():
  with pytest.raises(ValueError, match="cannot train a bpe tokenizer of 100 pieces"):
    tok_lib.train_tokenizer(["some text to learn from\n" * 50], "bpe", 100)


def test_sentinel_markup_round_trips(corpus_text):
  tok = tok_lib.train_tokenizer([corpus_text[:50_000]], "char", 0, num_sentinels=10)
  text = "<extra_id_0>To be, or<extra_id_1> not<extra_id_9>"
  ids = sentinels.encode(tok, text)
  c = tok.contract
  assert ids[0] == c.sentinel_id(0) == c.base_size + 9 and ids[-1] == c.sentinel_id(9) == c.base_size
  assert ids[1:-1].count(c.sentinel_id(1)) == 1
  assert sentinels.decode(tok, ids) == text
  assert tok.decode(ids) == "To be, or not"  # plain decoding drops them
  with pytest.raises(ValueError, match=r"<extra_id_10> in the text, but the tokenizer has 10"):
    sentinels.encode(tok, "a<extra_id_10>")
