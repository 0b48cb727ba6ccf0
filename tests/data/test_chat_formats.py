"""Chat template (ids, assistant mask, prompt/response split) and the SFT / preference readers."""

import json

import ml_collections
import pytest

from jaxlm.data import chat, formats, tokenizer as tok_lib

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse: abc"},
     {"role": "assistant", "content": "cba"}, {"role": "user", "content": "Sort: 3 1 2"},
     {"role": "assistant", "content": "1 2 3"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
]


@pytest.fixture(scope="module")
def tok():
  return tok_lib.train_tokenizer(["abcdefghijklmnopqrstuvwxyz 0123456789?+:.WRSB\n"], "char", 0)


def reference(messages, tok, bos=False):
  """Ids and mask built by hand from the documented layout."""
  roles = tok.contract.role_ids
  ids, mask = ([tok.contract.bos_id], [False]) if bos else ([], [])
  for m in messages:
    content = tok.encode(m["content"])
    learn = m["role"] == "assistant"
    ids += [roles[m["role"]]] + content + [roles["end"]]
    mask += [False] + [learn] * len(content) + [learn]
  return ids, mask


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_render_matches_reference_and_prompt_plus_response(tok, conv, bos):
  template = chat.ChatTemplate(bos=bos)
  ids, mask = template.render(conv, tok)
  assert (ids, mask) == reference(conv, tok, bos)
  prompt, reply = conv[:-1], conv[-1]["content"]
  assert template.prompt_ids(prompt, tok) + template.response_ids(reply, tok) == ids
  gen, gen_mask = template.render(conv[:-1], tok, add_generation_prompt=True)
  assert gen[-1] == tok.contract.role_ids["assistant"] and not gen_mask[-1]
  # The learned tokens are the assistant contents (their text) and one end token per reply.
  learned = [t for t, m in zip(ids, mask) if m]
  replies = [m["content"] for m in conv if m["role"] == "assistant"]
  assert tok.decode(learned) == "".join(replies)
  assert learned.count(tok.contract.role_ids["end"]) == len(replies)
  # Role tokens lie past the sentencepiece vocabulary: decoding drops them.
  assert tok.decode(ids) == "".join(m["content"] for m in conv)
  assert template.render_batch([conv, conv[:2]], tok) == [
      template.render(conv, tok), template.render(conv[:2], tok)]


def test_system_prompt_default_and_response_text(tok):
  template = chat.ChatTemplate(system_prompt="Be brief.")
  user = [{"role": "user", "content": "abc"}]
  expected = reference([{"role": "system", "content": "Be brief."}] + user, tok)[0]
  assert template.prompt_ids(user, tok) == expected + [tok.contract.role_ids["assistant"]]
  own = [{"role": "system", "content": "x"}] + user
  assert template.render(own, tok) == reference(own, tok)  # an own system message wins
  generated = template.response_ids("cba", tok) + tok.encode("junk")
  assert template.response_text(generated, tok) == "cba"
  assert template.response_text(tok.encode("ab") + [tok.contract.eos_id], tok) == "ab"


def test_from_config_and_message_errors():
  assert chat.from_config(None) == chat.ChatTemplate()
  cfg = ml_collections.ConfigDict(dict(bos=True, system_prompt="hi"))
  assert chat.from_config(cfg) == chat.ChatTemplate(bos=True, system_prompt="hi")
  with pytest.raises(ValueError, match="unknown chat template setting"):
    chat.from_config({"bos": True, "eos": True})
  with pytest.raises(ValueError, match="chat.bos must be"):
    chat.from_config({"bos": "yes"})
  for bad, match in [([], "non-empty"), ([{"role": "bot", "content": "x"}], "role 'bot'"),
                     ([{"role": "user", "content": 3}], "must be a string"), (["hi"], "message 0")]:
    with pytest.raises(ValueError, match=match):
      chat.check_messages(bad)


def write_lines(path, lines):
  path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
  return path


def test_sft_reader_accepts_both_shapes(tmp_path):
  conv = CONVERSATIONS[1]
  path = write_lines(tmp_path / "sft.jsonl", [
      {"prompt": "What is 2+2?", "response": "4", "kind": "add"}, "",
      {"messages": [dict(m, name="ignored") for m in conv]}])
  assert formats.read_sft_jsonl(path) == [CONVERSATIONS[0], conv]


@pytest.mark.parametrize("line, match", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ({"text": "x"}, "expected 'prompt' and 'response', or 'messages'"),
    ({"prompt": "x"}, "missing field 'response'"),
    ({"prompt": "x", "response": 4}, "'response' must be a string"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "message 0 has role 'bot'"),
    ({"messages": "hello"}, "non-empty list"),
    ({"messages": CONVERSATIONS[0], "prompt": "x"}, "not both"),
])
def test_sft_reader_errors_name_file_and_line(tmp_path, line, match):
  path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, "  ", line])
  with pytest.raises(ValueError, match=rf"bad.jsonl:3: .*{match}"):
    formats.read_sft_jsonl(path)


def test_preference_reader(tmp_path):
  msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "Sort: 2 1"}]
  path = write_lines(tmp_path / "pref.jsonl", [
      {"prompt": "What is 1+1?", "chosen": "2", "rejected": "3"},
      {"prompt": msgs, "chosen": "1 2", "rejected": "2 1"}])
  assert formats.read_preference_jsonl(path) == [
      {"prompt": [{"role": "user", "content": "What is 1+1?"}], "chosen": "2", "rejected": "3"},
      {"prompt": msgs, "chosen": "1 2", "rejected": "2 1"}]
  for line, match in [({"prompt": "x", "chosen": "a"}, "missing field 'rejected'"),
                      ({"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
                      ({"prompt": "x", "chosen": "a", "rejected": "a"}, "identical"),
                      ({"prompt": CONVERSATIONS[0], "chosen": "a", "rejected": "b"},
                       "must end with a user message")]:
    write_lines(path, [line])
    with pytest.raises(ValueError, match=rf"pref.jsonl:1: .*{match}"):
      formats.read_preference_jsonl(path)


def test_missing_and_empty_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    formats.read_sft_jsonl(tmp_path / "nope.jsonl")
  (tmp_path / "empty.jsonl").write_text("\n  \n")
  with pytest.raises(ValueError, match="empty.jsonl is empty"):
    formats.read_preference_jsonl(tmp_path / "empty.jsonl")
