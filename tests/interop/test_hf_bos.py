"""Tokenizers whose texts open with BOS (Llama, Gemma, Llama 3): the import reads that from the
tokenizer, documents and prompts open with BOS, and perplexity equals transformers' loss."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
import torch
from conftest import tiny_config
from hf_testing import TEXT, byte_bpe, hf_model
from tokenizers import processors

from jaxlm import cli, sampling
from jaxlm.data.hf_tokenizer import HFTokenizer, with_add_bos_token
from jaxlm.data.pipeline import tokenize_documents
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.eval import multiple_choice, perplexity, prompting
from jaxlm.train import loop
from jaxlm.train.inputs import get_tokenizer


def framed(template: str | None):
  """A byte-level BPE with <s> / </s> whose post-processor writes `template` ("<s> $A": texts
  open with BOS, as Llama's do); None: no post-processor."""
  tok = byte_bpe(300, ("<s>", "</s>", "[CLS]", "[SEP]"))
  if template:
    specials = [(s, tok.token_to_id(s)) for s in ("<s>", "</s>", "[CLS]", "[SEP]")]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
  return tok


@pytest.fixture(scope="module")
def llama_bos_dir(tmp_path_factory):
  """A Llama checkpoint whose tokenizer.json opens every text with <s>."""
  folder = tmp_path_factory.mktemp("llama_bos")
  tok = framed("<s> $A")
  model = hf_model("llama", vocab=tok.get_vocab_size())
  model.save_pretrained(folder)
  tok.save(str(folder / "tokenizer.json"))
  return model, tok, folder


def test_the_post_processor_says_whether_texts_open_with_bos():
  opens = {t: HFTokenizer(framed(t).to_str()).contract.opens_with_bos
           for t in ("<s> $A", None, "[CLS] $A [SEP]", "$A </s>")}
  assert opens == {"<s> $A": True, None: False, "[CLS] $A [SEP]": False, "$A </s>": False}
  tok = HFTokenizer(framed("<s> $A").to_str())
  c = tok.contract
  assert (c.opening, c.start_id) == ([c.bos_id], c.bos_id) and c.bos_id != c.eos_id
  # tokenizer_config.json's add_bos_token decides when it is there (Llama-2's sentencepiece
  # tokenizer.model has no post-processor).
  assert not with_add_bos_token(tok, {"add_bos_token": False}).contract.opens_with_bos
  assert with_add_bos_token(tok, {"add_bos_token": True}).contract.opens_with_bos
  assert with_add_bos_token(tok, {}).contract.opens_with_bos
  tokens, segments = tokenize_documents(tok, ["ab", "c"])
  ab, cc = tok.encode("ab"), tok.encode("c")
  assert tokens.tolist() == [c.bos_id, *ab, c.eos_id, c.bos_id, *cc, c.eos_id]
  assert segments.tolist() == [1] * (len(ab) + 2) + [2] * (len(cc) + 2)


def test_an_import_scores_and_prompts_from_bos_as_transformers_does(llama_bos_dir, tmp_path,
                                                                    monkeypatch, capsys):
  model, rust, folder = llama_bos_dir
  work = tmp_path / "work"
  assert cli.main(["convert", "--from-hf", str(folder), "--workdir", str(work)]) == 0
  out = capsys.readouterr().out
  assert "texts open with BOS: yes" in out and "--config.chat.bos=True" in out
  assert json.loads((work / "config.json").read_text())["chat"]["bos"] is True
  _, tok, graphdef, params = loop.load_trained(work)
  bos = tok.contract.bos_id
  assert tok.contract.opens_with_bos

  doc = TEXT.splitlines()[0]
  ids = rust.encode(doc).ids  # transformers' input: <s> text
  assert ids[0] == bos and len(ids) < model.config.max_position_embeddings
  with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
  # The import pads the vocabulary (mask, chat roles) with the mean head row, whose logit is
  # the mean logit: the reference distribution includes those rows too.
  padded = torch.cat([logits, logits.mean(-1, keepdim=True).expand(-1, tok.vocab_size - 300)], -1)
  nll = -torch.log_softmax(padded, -1)[torch.arange(len(ids) - 1), ids[1:]].sum().item()
  got = perplexity.perplexity(graphdef, params, tok, [doc])
  assert got["tokens"] == len(ids) - 1
  np.testing.assert_allclose(got["perplexity"], math.exp(nll / (len(ids) - 1)), rtol=1e-4)

  # Prompts open with BOS too: sampling, plain-text questions, multiple-choice contexts.
  prompts, generate = [], sampling.generate
  monkeypatch.setattr(sampling, "generate",
                      lambda *a, **kw: prompts.extend(a[2]) or generate(*a, **kw))
  sampling.sample_text(graphdef, params, tok, ["To be", ""],
                       sampling.SamplingConfig(max_new_tokens=2), jax.random.key(0))
  assert prompts == [[bos, *tok.encode("To be")], [bos]]
  assert prompting.Renderer(tok).prompt_ids([], "Who?")[:2] == [bos, *tok.encode("Q")]
  (context, _), = multiple_choice.continuation_requests(tok, [("To be", " or")])
  assert context == [bos, *tok.encode("To be")]

  # A run from the import without its chat.bos is told how to keep it.
  monkeypatch.undo()
  saved = json.loads((work / "config.json").read_text())["model"]
  loop.train(tiny_config("llama", **{f"model.{k}": v for k, v in saved.items()},
                         **{"init_from": str(work), "data.tokenizer.num_sentinels": 0,
                            "train.steps": 1}),
             tmp_path / "tuned")
  assert "--config.chat.bos=True keeps its chat markup" in capsys.readouterr().out


def test_runs_from_an_import_keep_its_add_bos_token(tmp_path):
  """A sentencepiece import (Llama-2's tokenizer.model) opens texts with BOS as its kept
  tokenizer_config.json says, and so do the runs down its init_from chain."""
  imported, tuned, plain = tmp_path / "import", tmp_path / "tuned", tmp_path / "plain"
  for folder in (imported, tuned, plain):
    folder.mkdir()
    train_tokenizer([TEXT], "char", 0, num_sentinels=0).save(folder / "tokenizer.model")
  (imported / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
  (tuned / "config.json").write_text(json.dumps({"init_from": str(imported)}))
  for parent, opens in ((imported, True), (tuned, True), (plain, False)):
    tok = get_tokenizer(tiny_config(init_from=str(parent)), tmp_path / "new", None)
    assert tok.contract.opens_with_bos == opens
  assert get_tokenizer(tiny_config(), tuned, None).contract.opens_with_bos  # resuming "tuned"
