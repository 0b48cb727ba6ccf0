"""Trainable token rows (`peft.trainable_tokens`, PEFT's `trainable_token_indices`): a fresh
model equals the base, only the named rows (and the adapter) move in training while the table
stays bit-identical, `init_from` re-copies the rows, "chat" resolves to the chat template's
tokens, and an export carries the trained rows as PEFT's or in the merged table."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft as hf_peft_lib
import pytest
import torch
import transformers
from flax import nnx

from conftest import tiny_config
from jaxlm import peft
from jaxlm.data import chat, tasks
from jaxlm.interop import hf_peft, workdir as convert
from jaxlm.models import decoder
from jaxlm.models.config import ModelConfig
from jaxlm.peft import token_rows
from jaxlm.train import loop, pretrained

IDS = (3, 7, 60)


def model_config(style: str) -> ModelConfig:
  return ModelConfig(vocab_size=64, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=48,
                     max_seq_len=16, dtype="float32", style=style,
                     tie_embeddings=style == "gpt2")


@pytest.mark.parametrize("style", ["gpt2", "llama"])  # tied head, untied head
def test_the_rows_replace_the_tables_rows_in_lookup_and_tied_head(style):
  settings = {"method": "lora", "targets": "attn/query$", "rank": 2, "alpha": 4.0,
              "trainable_tokens": ",".join(map(str, IDS))}
  base = decoder.Decoder(model_config(style), nnx.Rngs(0))
  tokens = jnp.array([[1, 3, 5, 7, 9, 60, 2, 3]])
  before = base(tokens)
  model = peft.wrap(base, settings, nnx.Rngs(1))
  np.testing.assert_array_equal(model(tokens), before)  # a fresh model is the base
  new_rows = jax.random.normal(jax.random.key(2), (3, 32))
  model.embed.token_rows[...] = new_rows
  table = np.asarray(model.embed.embedding[...]).copy()
  table[list(IDS)] = new_rows
  reference = decoder.Decoder(model_config(style), nnx.Rngs(0))
  reference.embed.embedding[...] = jnp.asarray(table)
  np.testing.assert_allclose(model(tokens), reference(tokens), atol=1e-6)
  assert np.abs(np.asarray(model(tokens) - before)).max() > 1e-3
  # Gradients reach the rows, not the table.
  grads = nnx.grad(lambda m: m(tokens).sum(), argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
  assert np.abs(np.asarray(grads["embed"]["token_rows"][...])).min() > 0


def test_bad_settings_are_refused():
  base = decoder.Decoder(model_config("llama"), nnx.Rngs(0))
  lora = {"method": "lora", "targets": "attn/query$", "rank": 2, "alpha": 4.0}
  with pytest.raises(ValueError, match="past the vocabulary of 64"):
    peft.wrap(base, {**lora, "trainable_tokens": "3,64"}, nnx.Rngs(1))
  with pytest.raises(ValueError, match="comma-separated token ids"):
    token_rows.parse("3,seven")
  with pytest.raises(ValueError, match="distinct ids"):
    token_rows.parse("3,3")
  with pytest.raises(ValueError, match="resolves it against the run's tokenizer"):
    token_rows.parse("chat")
  with pytest.raises(ValueError, match="beside an adapter"):
    peft.check_method({"method": "freeze", "trainable_tokens": "3"})


def test_init_from_recopies_the_rows_from_the_loaded_table():
  settings = {"method": "lora", "targets": "attn/query$", "rank": 2, "alpha": 4.0,
              "trainable_tokens": "3,7"}
  fresh = nnx.to_pure_dict(nnx.state(peft.wrap(decoder.Decoder(model_config("llama"),
                                                                nnx.Rngs(0)), settings,
                                               nnx.Rngs(1))))
  loaded = nnx.to_pure_dict(nnx.state(decoder.Decoder(model_config("llama"), nnx.Rngs(5))))
  merged, report = pretrained.merge_pretrained(fresh, loaded)
  params = peft.after_init_from(merged, report.loaded, settings, 0)
  np.testing.assert_array_equal(params["embed"]["token_rows"],
                                loaded["embed"]["embedding"][np.array([3, 7])])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  """pretrain -> LoRA SFT with the chat template's token rows trained beside it."""
  root = tmp_path_factory.mktemp("token_rows")
  files = tasks.write_task_files(root / "data", n_train=200, n_heldout=10, seed=0,
                                 kinds=("sort",), list_len=4)
  common = {"data.seq_len": 32, "model.max_seq_len": 32, "train.log_every": 5}
  loop.train(tiny_config(**common, **{"data.source": f"text:{files['pretrain']}",
                                      "train.steps": 10}), root / "pretrain")
  loop.train(tiny_config(**common, **{
      "objective": "sft", "data.source": f"jsonl:{files['sft']}", "init_from": root / "pretrain",
      "train.steps": 15, "peft.method": "lora", "peft.rank": 2, "peft.alpha": 4.0,
      "peft.trainable_tokens": "chat", "optim.lr": 1e-2}), root / "sft")
  return root


def test_a_run_trains_the_chat_rows_and_nothing_else_of_the_table(tuned):
  cfg, tok, _, params = loop.load_trained(tuned / "sft")
  role_ids = sorted(tok.contract.role_ids.values())
  assert role_ids == sorted(chat.ChatTemplate().special_ids(tok))
  saved = json.loads((tuned / "sft" / "config.json").read_text())
  assert saved["peft"]["trainable_tokens"] == ",".join(map(str, role_ids))
  _, _, _, base = loop.load_trained(tuned / "pretrain")
  np.testing.assert_array_equal(params["embed"]["embedding"], base["embed"]["embedding"])
  moved = np.abs(np.asarray(params["embed"]["token_rows"])
                 - np.asarray(base["embed"]["embedding"])[role_ids]).max(axis=1)
  assert (moved > 1e-3).all()  # every chat row trained


def test_an_export_carries_the_rows_in_the_adapter_or_the_merged_table(tuned, tmp_path):
  """As PEFT's `trainable_token_indices` beside the LoRA (the exported base keeps its own
  rows, and reading the adapter back gives the same rows), or written into the table of a
  merged export; both give the run's logits."""
  cfg, tok, graphdef, params = loop.load_trained(tuned / "sft")
  _, _, _, pretrained_params = loop.load_trained(tuned / "pretrain")
  role_ids = sorted(tok.contract.role_ids.values())
  tokens = np.array([[role_ids[1], 5, 9, 11, role_ids[2], 20, 21, role_ids[3]]])
  ours = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(tokens)))
  summary = convert.export_hf(tuned / "sft", tmp_path / "hf")
  base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  base_table = np.asarray(pretrained_params["embed"]["embedding"])
  np.testing.assert_allclose(base.get_input_embeddings().weight.detach().numpy()[role_ids],
                             base_table[role_ids], atol=1e-6)
  adapter_cfg = json.loads((tmp_path / "hf" / "adapter" / "adapter_config.json").read_text())
  assert adapter_cfg["trainable_token_indices"] == role_ids
  tuned_hf = hf_peft_lib.PeftModel.from_pretrained(base, summary["adapter"]).eval()
  with torch.no_grad():
    np.testing.assert_allclose(ours, tuned_hf(input_ids=torch.tensor(tokens)).logits.numpy(),
                               atol=1e-4)
  back, settings = hf_peft.read_adapter(
      tmp_path / "hf" / "adapter", nnx.merge(graphdef, params).cfg,
      json.loads((tmp_path / "hf" / "config.json").read_text()))
  np.testing.assert_allclose(back[token_rows.ROWS], params["embed"]["token_rows"], atol=1e-6)
  assert settings["trainable_tokens"] == ",".join(map(str, role_ids))

  convert.export_hf(tuned / "sft", tmp_path / "merged", merge_lora=True)
  merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
  np.testing.assert_allclose(merged.get_input_embeddings().weight.detach().numpy()[role_ids],
                             params["embed"]["token_rows"], atol=1e-6)
  with torch.no_grad():
    np.testing.assert_allclose(ours, merged(input_ids=torch.tensor(tokens)).logits.numpy(),
                               atol=1e-4)
