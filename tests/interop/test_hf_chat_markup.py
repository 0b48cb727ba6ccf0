"""Open-weight chat markup (`chat.format=chatml|llama3|gemma|phi4`) against transformers'
`apply_chat_template` with those families' published templates, and through `jaxlm convert`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers
from conftest import tiny_config
from hf_testing import TEXT, byte_bpe, hf_model

from jaxlm import cli
from jaxlm.data import chat, chat_markup
from jaxlm.data.hf_tokenizer import HFTokenizer
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.interop import workdir as convert
from jaxlm.train import loop

# Qwen2-Instruct's template (default system prompt when the conversation has none).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Meta-Llama-3-Instruct's template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
# Gemma 2 instruct's template (no system role; user and model turns alternate).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
    "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
# Phi-4's template (microsoft/phi-4).
PHI4_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'system') %}"
    "{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% elif (message['role'] == 'user') %}"
    "{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% elif (message['role'] == 'assistant') %}"
    "{{'<|im_start|>assistant<|im_sep|>' + message['content'] + '<|im_end|>'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}")
FAMILIES = {
    "chatml": (CHATML_TEMPLATE, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
               dict(system_prompt="You are a helpful assistant.")),
    "llama3": (LLAMA3_TEMPLATE, ("<|begin_of_text|>", "<|end_of_text|>",
                                 "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), {}),
    "gemma": (GEMMA_TEMPLATE, ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), {}),
    "phi4": (PHI4_TEMPLATE, ("<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|im_sep|>"), {}),
}
CONVERSATIONS = [
    [{"role": "user", "content": "To be, or not to be?"},
     {"role": "assistant", "content": "that is the question"}],
    [{"role": "system", "content": "Whether 'tis nobler"},
     {"role": "user", "content": "in the mind\nto suffer"},
     {"role": "assistant", "content": " or not to be,\n"},
     {"role": "user", "content": "the question: "},
     {"role": "assistant", "content": "To be"}],
]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
  """(format, our template, our tokenizer, transformers tokenizer) of one family."""
  fmt = request.param
  hf_template, specials, settings = FAMILIES[fmt]
  rust = byte_bpe(320, specials)
  hf_tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=rust, bos_token=specials[0], eos_token=specials[1],
      chat_template=hf_template)
  return fmt, chat.ChatTemplate(format=fmt, **settings), HFTokenizer(rust.to_str()), hf_tok


def speakable(template: chat.ChatTemplate, conversation: list[dict]) -> list[dict]:
  """`conversation` without its system message when the markup has no system role."""
  return [m for m in conversation if template.markup.system or m["role"] != "system"]


def hf_ids(hf_tok, messages, add_generation_prompt: bool) -> list[int]:
  """The ids transformers gives for the rendered template text."""
  text = hf_tok.apply_chat_template(messages, tokenize=False,
                                    add_generation_prompt=add_generation_prompt)
  return hf_tok.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_markup_equals_the_published_template(family, conversation):
  """Prompts are the family template's ids exactly; a whole conversation too, less the
  newline ChatML and Gemma write after the last stop token (a reply ends at its stop token,
  as in generation)."""
  fmt, template, tok, hf_tok = family
  conversation = speakable(template, conversation)
  prompt = conversation[:-1]
  assert template.prompt_ids(prompt, tok) == hf_ids(hf_tok, prompt, True)
  whole, _ = template.render(conversation, tok)
  ref = hf_ids(hf_tok, conversation, False)
  newline = template.markup.separator == "\n"
  assert whole == (ref[:-1] if newline else ref)
  if newline:
    assert hf_tok.decode(ref[-1:]) == "\n"
  assert template.render_batch([conversation], tok) == [template.render(conversation, tok)]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_mask_is_reply_contents_and_stop_tokens(family, conversation):
  """The learned tokens are each assistant content (as the markup writes it) and its stop
  token; a prompt plus a reply is the rendered conversation."""
  _, template, tok, _ = family
  conversation = speakable(template, conversation)
  ids, mask = template.render(conversation, tok)
  stop = template.stop_id(tok)
  learned = [i for i, m in zip(ids, mask) if m]
  expected = []
  for m in conversation:
    if m["role"] == "assistant":
      expected += tok.encode(template.content(m["content"])) + [stop]
  assert learned == expected
  reply = conversation[-1]["content"]
  assert (template.prompt_ids(conversation[:-1], tok) + template.response_ids(reply, tok)
          == ids)
  assert template.response_text(template.response_ids(reply, tok) + [5, 6], tok) == (
      template.content(reply))


def test_markup_needs_its_special_tokens_and_known_formats(task_files):
  tok = train_tokenizer([task_files["pretrain"].read_text()], "char", 0, num_sentinels=0)
  with pytest.raises(ValueError, match=r"special token <\|im_start\|>"):
    chat.ChatTemplate(format="chatml").prompt_ids([{"role": "user", "content": "hi"}], tok)
  with pytest.raises(ValueError, match="formats"):
    chat.from_config({"format": "vicuna"})
  with pytest.raises(ValueError, match="begin_of_text"):
    chat.from_config({"format": "llama3", "bos": True})
  with pytest.raises(ValueError, match="no system role"):
    chat.from_config({"format": "gemma", "system_prompt": "Be brief."})
  gemma = chat.ChatTemplate(format="gemma")
  with pytest.raises(ValueError, match="no system role"):
    gemma.messages(CONVERSATIONS[1])


def test_detect_reads_the_family_from_its_template():
  assert chat_markup.detect(CHATML_TEMPLATE) == "chatml"
  assert chat_markup.detect(LLAMA3_TEMPLATE) == "llama3"
  assert chat_markup.detect(GEMMA_TEMPLATE) == "gemma"
  assert chat_markup.detect(PHI4_TEMPLATE) == "phi4"  # ChatML's tokens, not ChatML's markup
  assert chat_markup.detect("{{ messages[0]['content'] }}") is None
  assert chat_markup.detect(None) is None


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
  from jaxlm.data import tasks
  return tasks.write_task_files(tmp_path_factory.mktemp("task"), n_train=40, n_heldout=4,
                                seed=0, kinds=("sort",), list_len=3)


@pytest.fixture(scope="module")
def chatml_import(tmp_path_factory):
  """(HF folder, its tokenizer_config, jaxlm import) of a Qwen2 model whose
  tokenizer_config.json has a ChatML template."""
  root = tmp_path_factory.mktemp("chatml")
  folder = root / "hf"
  rust = byte_bpe(300, FAMILIES["chatml"][1])
  hf_model("qwen2", vocab=rust.get_vocab_size()).save_pretrained(folder)
  rust.save(str(folder / "tokenizer.json"))
  tok_cfg = {"chat_template": CHATML_TEMPLATE, "eos_token": "<|im_end|>"}
  (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
  convert.import_hf(folder, root / "work")
  return folder, tok_cfg, root / "work"


def test_import_takes_the_chat_format_and_export_keeps_it(chatml_import, tmp_path, capsys):
  """The import gets chat.format=chatml (printed for fine-tuning), samples in it, and
  exports tokenizer_config.json back."""
  folder, tok_cfg, work = chatml_import
  assert cli.main(["convert", "--from-hf", str(folder), "--workdir", str(tmp_path / "w")]) == 0
  printed = capsys.readouterr().out
  assert "--config.chat.format=chatml" in printed and "chat.format=chatml: the chatml" in printed
  cfg, tok, _, _ = loop.load_trained(work)
  assert cfg.chat.format == "chatml"
  assert chat.from_config(cfg.chat).stop_id(tok) == tok.tok.token_to_id("<|im_end|>")
  assert cli.main(["sample", "--workdir", str(work), "--chat", "--prompt", TEXT[:12],
                   "--max_new_tokens", "4", "--temperature", "0"]) == 0
  convert.export_hf(work, tmp_path / "out")
  assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == tok_cfg


@pytest.mark.slow  # a short SFT run from the import: ~10 s idle
def test_sft_in_the_imports_markup(chatml_import, task_files, tmp_path, capsys):
  """SFT from the import in its ChatML markup trains on the replies; a run in jaxlm's role
  tokens is told how to keep the markup; the export of the tuned run keeps the file."""
  _, tok_cfg, work = chatml_import
  info = json.loads((work / "config.json").read_text())
  model = {f"model.{k}": v for k, v in info["model"].items() if k != "dtype"}
  base = {**model, "objective": "sft", "data.source": f"jsonl:{task_files['sft']}",
          "init_from": str(work), "data.seq_len": 48, "model.max_seq_len": 64,
          "data.tokenizer.num_sentinels": 0, "train.steps": 4, "train.batch_size": 4,
          "train.log_every": 2}
  result = loop.train(tiny_config(**base, **{"chat.format": "chatml"}), tmp_path / "sft")
  assert np.isfinite(result["train_loss"])
  assert "keeps its chat markup" not in capsys.readouterr().out
  convert.export_hf(tmp_path / "sft", tmp_path / "out")
  assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text()) == tok_cfg
  loop.train(tiny_config(**{**base, "train.steps": 1}), tmp_path / "roles")
  assert "--config.chat.format=chatml keeps its chat markup" in capsys.readouterr().out


def test_import_without_the_markup_tokens_keeps_jaxlm_roles(tmp_path):
  """A ChatML template over a tokenizer without <|im_start|> leaves jaxlm's role tokens."""
  rust = byte_bpe(300)
  fmt, reason = convert.chat_format_of({"chat_template": CHATML_TEMPLATE},
                                       HFTokenizer(rust.to_str()))
  assert fmt == chat_markup.JAXLM and "<|im_start|>" in reason
  assert convert.chat_format_of(None, HFTokenizer(rust.to_str()))[0] == chat_markup.JAXLM


@pytest.mark.slow  # two GRPO iterations from the import: ~10 s idle
def test_grpo_from_the_import_samples_in_its_markup(chatml_import, tmp_path):
  """GRPO from the ChatML import keeps the import's tokenizer.json (the policy loads back with
  it) and prompts end with the ChatML generation header."""
  from jaxlm.rl import trainer
  _, _, work = chatml_import
  info = json.loads((work / "config.json").read_text())
  model = {f"model.{k}": v for k, v in info["model"].items() if k != "dtype"}
  cfg = tiny_config(**{
      **model, "objective": "grpo", "init_from": str(work), "chat.format": "chatml",
      "data.source": "task:sort", "data.tokenizer.num_sentinels": 0, "task.n_train": 40,
      "task.n_heldout": 4, "rl.reward": "token_count", "rl.reward_token": "1",
      "rl.prompts_per_iter": 4, "rl.group_size": 2, "rl.minibatch_size": 8,
      "rl.prompt_len": 32, "rl.max_new_tokens": 6, "train.steps": 2, "model.max_seq_len": 64})
  final = trainer.train(cfg, tmp_path / "grpo")
  assert np.isfinite(final["reward"]) and np.isfinite(final["kl"])
  assert not (tmp_path / "grpo" / "tokenizer.model").exists()
  run_cfg, tok, _, _ = trainer.load_run(tmp_path / "grpo")
  assert isinstance(tok, HFTokenizer)
  prompt = chat.from_config(run_cfg.chat).prompt_ids([{"role": "user", "content": "hi"}], tok)
  header = tok.encode("\n<|im_start|>assistant\n")
  assert prompt[-len(header):] == header
