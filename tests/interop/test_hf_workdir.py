"""`jaxlm convert` workdirs: import with a tokenizer, sample, fine-tune (full SFT and LoRA),
export back to transformers and the LoRA adapter to PEFT."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from conftest import tiny_config
from flax import nnx
from hf_testing import TEXT, byte_bpe, hf_model, jitted, random_batch
from tokenizers import Tokenizer as RustTokenizer, models, pre_tokenizers, trainers

from jaxlm import cli
from jaxlm.data import tasks
from jaxlm.data.hf_tokenizer import HFTokenizer
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.eval import tasks as eval_tasks
from jaxlm.interop import hf, hf_peft, workdir as convert
from jaxlm.objectives import mlm
from jaxlm.peft.lora import apply_lora
from jaxlm.train import loop

def test_llama3_special_tokens_frame_documents():
  """Llama 3's tokenizer.json names its ends <|begin_of_text|> / <|end_of_text|>."""
  tok = byte_bpe(300, ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"))
  ours = HFTokenizer(tok.to_str())
  assert ours.contract.bos_id == tok.token_to_id("<|begin_of_text|>")
  assert ours.contract.eos_id == tok.token_to_id("<|end_of_text|>")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  """A GPT-2 checkpoint with a byte-level BPE tokenizer.json (vocabulary not a multiple of 128)."""
  folder = tmp_path_factory.mktemp("gpt2_bpe")
  tok = byte_bpe(300)
  model = hf_model("gpt2", vocab=tok.get_vocab_size())
  model.save_pretrained(folder)
  tok.save(str(folder / "tokenizer.json"))
  return model, folder


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
  """The shipped sort task as SFT data (jsonl) and pre-training text."""
  return tasks.write_task_files(tmp_path_factory.mktemp("task"), n_train=300, n_heldout=10,
                                seed=0, kinds=("sort",), list_len=4)


def with_char_tokenizer(family: str, folder, task_files):
  """(model, folder): an HF checkpoint of `family` with a character sentencepiece model."""
  tok = train_tokenizer([task_files["pretrain"].read_text()], "char", 0, num_sentinels=0)
  model = hf_model(family, vocab=tok.vocab_size)
  model.save_pretrained(folder)
  tok.save(folder / "tokenizer.model")
  return model, folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, task_files):
  """A Llama checkpoint with a character sentencepiece tokenizer.model."""
  return with_char_tokenizer("llama", tmp_path_factory.mktemp("llama_sp"), task_files)


@pytest.mark.parametrize("scan", [False, True])  # True: imported into stacked, scanned layers
def test_gpt2_convert_sample_and_export(scan, gpt2_dir, tmp_path, capsys):
  model, folder = gpt2_dir
  v = model.config.vocab_size
  work = tmp_path / "work"
  assert cli.main(["convert", "--from-hf", str(folder), "--workdir", str(work)]
                  + ["--scan-layers"] * scan) == 0
  assert {"config.json", "tokenizer.json", "hf_config.json", "checkpoints"} <= {
      p.name for p in work.iterdir()}
  cfg, tok, graphdef, params = loop.load_trained(work)
  assert cfg.model.scan_layers == scan and ("stack" in params) == scan
  assert isinstance(tok, HFTokenizer) and tok.decode(tok.encode(TEXT)) == TEXT
  jax_model = nnx.merge(graphdef, params)
  assert jax_model.cfg.vocab_size == tok.vocab_size == 384  # padded for mask + chat roles
  tokens, mask = random_batch(v)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  ours = np.asarray(jitted(jax_model)(jnp.asarray(tokens), None, jnp.asarray(mask, jnp.int32)))
  valid = mask.astype(bool)
  assert np.abs(ours[..., :v] - ref)[valid].max() < 1e-4

  assert cli.main(["sample", "--workdir", str(work), "--prompt", "To be", "--max_new_tokens", "4",
                   "--temperature", "0"]) == 0
  assert "--- sample 0 ---\nTo be" in capsys.readouterr().out

  out = tmp_path / "hf_out"
  assert cli.main(["convert", "--to-hf", str(work), "--out", str(out)]) == 0
  assert json.loads((out / "config.json").read_text())["vocab_size"] == v  # padding trimmed
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  with torch.no_grad():
    again = reloaded(input_ids=torch.tensor(tokens),
                     attention_mask=torch.tensor(mask)).logits.numpy()
  assert np.abs(again - ref)[valid].max() < 1e-5
  assert (out / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()


def test_missing_tokenizer_is_a_clear_error(tmp_path):
  hf_model("bert").save_pretrained(tmp_path / "bert")
  assert cli.main(["convert", "--from-hf", str(tmp_path / "bert"), "--workdir",
                   str(tmp_path / "w")]) == 2
  assert not (tmp_path / "w" / "checkpoints").exists()


def logits_with_and_without_adapter(tuned, tokens, mask) -> tuple[np.ndarray, np.ndarray]:
  """A PEFT model's logits on a padded batch, with its adapter and with it disabled."""
  with torch.no_grad():
    ref = tuned(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
    with tuned.disable_adapter():
      plain = tuned(input_ids=torch.tensor(tokens),
                    attention_mask=torch.tensor(mask)).logits.numpy()
  return ref, plain


def finetune(work, files, run, **overrides):
  """A few SFT steps starting from the converted workdir `work`."""
  info = json.loads((work / "config.json").read_text())
  model = {f"model.{k}": v for k, v in info["model"].items() if k != "dtype"}
  cfg = tiny_config(**{**model, "objective": "sft", "data.source": f"jsonl:{files['sft']}",
                       "init_from": str(work), "data.seq_len": 48, "model.max_seq_len": 64,
                       "data.tokenizer.num_sentinels": 0, "train.steps": 8,
                       "train.batch_size": 4, "train.log_every": 4, **overrides})
  return loop.train(cfg, run)


@pytest.mark.slow  # a short training run plus checkpoint loads: ~10 s idle, more when busy
def test_gpt2_full_sft_from_converted_workdir(gpt2_dir, task_files, tmp_path):
  """Full SFT from an import with a tokenizer.json (the run keeps it as its tokenizer)."""
  work = tmp_path / "work"
  convert.import_hf(gpt2_dir[1], work)
  _, _, _, start = loop.load_trained(work)
  result = finetune(work, task_files, tmp_path / "sft")
  assert np.isfinite(result["train_loss"])
  assert (tmp_path / "sft" / "tokenizer.json").is_file()
  _, tok, _, tuned = loop.load_trained(tmp_path / "sft")
  assert isinstance(tok, HFTokenizer)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), start, tuned)
  assert all(jax.tree.leaves(changed))  # full fine-tuning moves every parameter


@pytest.mark.slow
@pytest.mark.parametrize("family, arch, norm", [
    ("qwen3", transformers.Qwen3ForCausalLM, "blocks/0/attn/query_norm/scale"),
    ("gemma2", transformers.Gemma2ForCausalLM, "blocks/1/mlp_post_norm/scale"),
    ("phi_qk", transformers.PhiForCausalLM, "blocks/0/attn/key_norm/bias"),
    ("opt", transformers.OPTForCausalLM, "pos_embed/embedding"),
    ("phi3_longrope", transformers.LlamaForCausalLM, "blocks/0/attn/key/kernel"),
    ("phi4_mini", transformers.Phi3ForCausalLM, "blocks/0/mlp/gate/kernel")])
def test_import_finetunes_and_exports_as_its_architecture(family, arch, norm, task_files,
                                                           tmp_path):
  """Qwen3's per-head query / key norms, Gemma 2's sandwich norms, softcaps and alternating
  windows, and the tied head, Phi's shared norm, per-head LayerNorms and biased head, OPT's
  offset positions, Phi-3.5's LongRoPE factors (as Llama's) and Phi-4-mini's partial rotary
  (in Phi-3's fused layout) survive import, SFT and export."""
  model, folder = with_char_tokenizer(family, tmp_path / "hf", task_files)
  convert.import_hf(folder, tmp_path / "work")
  _, _, _, start = loop.load_trained(tmp_path / "work")
  assert np.isfinite(finetune(tmp_path / "work", task_files, tmp_path / "sft")["train_loss"])
  convert.export_hf(tmp_path / "sft", tmp_path / "out")
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert type(exported) is arch
  _, _, graphdef, tuned = loop.load_trained(tmp_path / "sft")
  assert np.any(hf.flatten(tuned)[norm] != hf.flatten(start)[norm])
  tokens, mask = random_batch(model.config.vocab_size)
  valid = mask.astype(bool)
  ours = np.asarray(jitted(nnx.merge(graphdef, tuned))(
      jnp.asarray(tokens), None, jnp.asarray(mask, jnp.int32)))
  with torch.no_grad():
    ref = exported(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
  assert np.abs(ours - ref.numpy())[valid].max() < 1e-4


@pytest.mark.slow
# scan: LoRA on stacked, scanned layers; dora: DoRA there (magnitudes renormed after init_from)
@pytest.mark.parametrize("scan, dora", [(False, False), (True, False), (True, True)])
def test_llama_lora_run_exports_a_peft_adapter(scan, dora, llama_dir, task_files, tmp_path):
  model, folder = llama_dir
  work = tmp_path / "work"
  convert.import_hf(folder, work)
  lora = finetune(work, task_files, tmp_path / "lora", **{
      "peft.method": "lora", "peft.rank": 4, "peft.alpha": 8.0, "optim.lr": 1e-2,
      "peft.targets": r"attn/(query|value)$|mlp/down$", "model.scan_layers": scan,
      "peft.use_dora": dora})
  assert np.isfinite(lora["train_loss"])
  out = tmp_path / "lora_hf"
  summary = convert.export_hf(tmp_path / "lora", out)
  _, _, graphdef, params = loop.load_trained(tmp_path / "lora")
  adapter_cfg = json.loads((out / "adapter" / hf_peft.ADAPTER_CONFIG).read_text())
  assert adapter_cfg["target_modules"][0].startswith("model.layers.0.")
  assert adapter_cfg["use_dora"] == dora
  base = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  tuned_hf = peft.PeftModel.from_pretrained(base, summary["adapter"]).eval()
  tokens, mask = random_batch(model.config.vocab_size)
  valid = mask.astype(bool)
  ours = np.asarray(jitted(nnx.merge(graphdef, params))(
      jnp.asarray(tokens), None, jnp.asarray(mask, jnp.int32)))
  ref, plain = logits_with_and_without_adapter(tuned_hf, tokens, mask)
  assert np.abs(ours - ref)[valid].max() < 1e-4
  assert np.abs(plain - ref)[valid].max() > 1e-3  # the adapter does change the outputs

  convert.export_hf(tmp_path / "lora", tmp_path / "merged", merge_lora=True)
  assert not (tmp_path / "merged" / "adapter").exists()
  merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
  with torch.no_grad():
    folded = merged(input_ids=torch.tensor(tokens),
                    attention_mask=torch.tensor(mask)).logits.numpy()
  assert np.abs(folded - ref)[valid].max() < 1e-4


@pytest.mark.parametrize("family, variant", [
    ("gpt2", "lora"), ("neox", "lora"), ("opt", "lora"), ("phi4_mini", "lora"), ("gpt2", "dora"),
    ("neox", "dora"), ("phi4_mini", "dora"), ("gpt2", "rslora"), ("opt", "rslora")])
def test_fused_qkv_lora_adapter_loads_with_peft(family, variant, gpt2_dir, tmp_path):
  """LoRA on query/value only becomes one fused adapter of rank 2r (block-diagonal B): GPT-2's
  c_attn, GPT-NeoX's query_key_value, whose rows interleave the heads, and Phi-3's qkv_proj
  (written for Phi-4-mini's partial rotary; its gate_up_proj gets the up projection's). OPT,
  GPT-2's style in HF Linear layers, keeps one adapter per projection (and no Conv1D
  fan_in_fan_out). DoRA too: the fused magnitude vector runs over the key's rows as well; and
  rsLoRA, whose fused alpha keeps alpha / sqrt(r)."""
  fused = {"gpt2": "transformer.h.{}.attn.c_attn",
           "neox": "gpt_neox.layers.{}.attention.query_key_value",
           "phi4_mini": "model.layers.{}.self_attn.qkv_proj"}.get(family)
  if family == "gpt2":
    folder = gpt2_dir[1]
  else:
    folder = tmp_path / family
    hf_model(family).save_pretrained(folder)
  cfg, params, hf_cfg = hf.load_hf(folder)
  jax_model = hf.build_model(cfg, params)
  dora, rslora = variant == "dora", variant == "rslora"
  apply_lora(jax_model, r"attn/(query|value)$|mlp/up$", 4, 8.0, nnx.Rngs(1), dora=dora,
             rslora=rslora)
  state = nnx.state(jax_model)
  rng = np.random.default_rng(0)

  def moved(path, x):  # B (rank 4 rows) random; magnitudes off the base weight's norms
    if path[-1].key == "lora_magnitude":
      return x * jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
    return jnp.asarray(rng.normal(0, 0.2, x.shape), x.dtype) if x.shape[0] == 4 else x
  lora_params = jax.tree_util.tree_map_with_path(moved, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, lora_params)
  nnx.update(jax_model, state)
  flat = hf.flatten(lora_params)
  hf.save_hf(tmp_path / "base", cfg, params, base_config=hf_cfg)
  hf_peft.save_adapter(tmp_path / "adapter", cfg, flat, rank=4, alpha=8.0,
                       base_model=str(tmp_path / "base"), hf_cfg=hf.read_config(tmp_path / "base"),
                       rslora=rslora)
  adapter_cfg = json.loads((tmp_path / "adapter" / hf_peft.ADAPTER_CONFIG).read_text())
  assert adapter_cfg["rank_pattern"] == (
      {fused.format(i): 8 for i in range(cfg.num_layers)} if fused else {})
  assert (adapter_cfg["use_dora"], adapter_cfg["use_rslora"]) == (dora, rslora)
  base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
  tuned = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
  tokens, mask = random_batch(cfg.vocab_size)
  valid = mask.astype(bool)
  ref, plain = logits_with_and_without_adapter(tuned, tokens, mask)
  ours = np.asarray(jitted(jax_model)(jnp.asarray(tokens), None, jnp.asarray(mask, jnp.int32)))
  assert np.abs(ours - ref)[valid].max() < 1e-4
  assert np.abs(plain - ref)[valid].max() > 1e-2
  # Read back, each part gets its own rank components of the fused B again: the same leaves.
  back, settings = hf_peft.read_adapter(tmp_path / "adapter", cfg,
                                        hf.read_config(tmp_path / "base"))
  lora_leaves = {k: v for k, v in flat.items() if k.endswith(("/lora_a", "/lora_b",
                                                              "/lora_magnitude"))}
  assert set(back) == set(lora_leaves)
  for name, value in lora_leaves.items():
    np.testing.assert_allclose(back[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
  assert (settings["rank"], settings["use_dora"], settings["use_rslora"]) == (4, dora, rslora)
  assert settings["alpha"] == pytest.approx(8.0)


def peft_native_adapter(base_dir, out, family: str, **lora_config):
  """A PEFT LoRA adapter made by PEFT itself on the HF model in `base_dir`, its B (and any
  DoRA magnitudes) random rather than zero, saved into `out`."""
  base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
  tuned = peft.get_peft_model(base, peft.LoraConfig(init_lora_weights=False, **lora_config))
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in tuned.named_parameters():
      if any(part in name for part in ("lora_B", "trainable_tokens_delta", "modules_to_save")):
        p.add_(torch.randn(p.shape, generator=gen) * 0.1)
      elif "lora_magnitude" in name:
        p.mul_(torch.rand(p.shape, generator=gen) + 0.5)
  tuned.save_pretrained(out)
  return tuned.eval()


@pytest.mark.parametrize("family, lora_config", [
    # Conv1D layers; c_attn one fused adapter whose dense B feeds query, key and value; the
    # MLP's c_proj (and the attention's) at a smaller rank and their own alpha; trainable
    # rows of the tied token embedding.
    ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                  rank_pattern={"mlp.c_proj": 2}, alpha_pattern={"attn.c_proj": 3.0},
                  trainable_token_indices=[7, 3, 40])),
    # DoRA on some layers only, rsLoRA scaling, a rank pattern; token rows by module name; the
    # output head and the final norm trained whole beside it (modules_to_save).
    ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                   use_dora=True, use_rslora=True, rank_pattern={"down_proj": 2},
                   layers_to_transform=[1], trainable_token_indices={"embed_tokens": [5, 9]},
                   modules_to_save=["lm_head", "model.norm"]))])
def test_a_peft_adapter_imports_as_the_runs_lora(family, lora_config, gpt2_dir, llama_dir,
                                                 tmp_path, capsys):
  model, folder = gpt2_dir if family == "gpt2" else llama_dir
  v = model.config.vocab_size
  tuned = peft_native_adapter(folder, tmp_path / "adapter", family, **lora_config)
  work = tmp_path / "work"
  assert cli.main(["convert", "--from-hf", str(folder), "--workdir", str(work), "--adapter",
                   str(tmp_path / "adapter")]) == 0
  assert "with the LoRA adapter" in capsys.readouterr().out
  cfg, _, graphdef, params = loop.load_trained(work)
  assert cfg.peft.method == "lora" and cfg.peft.use_dora == lora_config.get("use_dora", False)
  assert cfg.peft.trainable_tokens == {"gpt2": "7,3,40", "llama": "5,9"}[family]
  assert cfg.peft.include == {"gpt2": "", "llama": "(^|/)(final_norm/scale|head/kernel)$"}[family]
  tokens, mask = random_batch(v)
  tokens[:, :4] = [7, 3, 40, 5] if family == "gpt2" else [5, 9, 5, 9]  # the trained rows
  valid = mask.astype(bool)
  ref, plain = logits_with_and_without_adapter(tuned, tokens, mask)
  ours = np.asarray(jitted(nnx.merge(graphdef, params))(
      jnp.asarray(tokens), None, jnp.asarray(mask, jnp.int32)))
  assert np.abs(ours[..., :v] - ref)[valid].max() < 1e-4
  assert np.abs(plain - ref)[valid].max() > 1e-2
  if family == "llama":  # layer 1's projections only: the targets name them
    lora_layers = {k.rsplit("/", 1)[0] for k in hf.flatten(params) if k.endswith("/lora_a")}
    assert lora_layers == {"blocks/1/attn/query", "blocks/1/attn/value", "blocks/1/mlp/down"}
    with pytest.raises(ValueError, match="adapts some layers only"):
      convert.import_hf(folder, tmp_path / "stacked", adapter=tmp_path / "adapter",
                        scan_layers=True)
  else:  # every layer's: stacked layers take it too
    convert.import_hf(folder, tmp_path / "stacked", adapter=tmp_path / "adapter",
                      scan_layers=True)
    _, _, graphdef, params = loop.load_trained(tmp_path / "stacked")
    assert "stack" in params
    stacked = np.asarray(jitted(nnx.merge(graphdef, params))(
        jnp.asarray(tokens), None, jnp.asarray(mask, jnp.int32)))
    assert np.abs(stacked[..., :v] - ref)[valid].max() < 1e-4


def test_adapters_jaxlm_cannot_hold_are_refused(gpt2_dir, tmp_path):
  _, folder = gpt2_dir
  # The tied GPT-2 has no output head of its own to replace.
  peft_native_adapter(folder, tmp_path / "a", "gpt2", r=2, target_modules=["c_attn"],
                      fan_in_fan_out=True, modules_to_save=["lm_head"])
  with pytest.raises(ValueError, match="adapter tensors with no jaxlm layer: lm_head.weight"):
    convert.import_hf(folder, tmp_path / "w1", adapter=tmp_path / "a")
  with pytest.raises(FileNotFoundError, match="is not a PEFT adapter folder"):
    convert.import_hf(folder, tmp_path / "w2", adapter=tmp_path / "nothing")
  peft_native_adapter(folder, tmp_path / "b", "gpt2", r=2, target_modules=["c_attn"],
                      fan_in_fan_out=True)
  config = json.loads((tmp_path / "b" / hf_peft.ADAPTER_CONFIG).read_text())
  (tmp_path / "b" / hf_peft.ADAPTER_CONFIG).write_text(json.dumps({**config, "bias": "all"}))
  with pytest.raises(ValueError, match="bias='all' trains base biases"):
    convert.import_hf(folder, tmp_path / "w3", adapter=tmp_path / "b")
  assert not any((tmp_path / w).exists() for w in ("w1", "w2", "w3"))


def test_bert_tokenizer_json_masks_with_its_own_mask_token():
  """A BERT WordPiece tokenizer.json: MLM corruption uses its [MASK], which is never selected
  or drawn as a random replacement; the chat roles still take new ids past the vocabulary."""
  tok = RustTokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  tok.train_from_iterator([TEXT] * 4, trainers.WordPieceTrainer(vocab_size=120,
                                                                special_tokens=specials))
  hf_tok = HFTokenizer(tok.to_str())
  c = hf_tok.contract
  assert c.mask_id == tok.token_to_id("[MASK]") < c.base_size
  assert min(c.role_ids.values()) == c.base_size and c.num_used == c.base_size + 4
  assert c.eos_id == tok.token_to_id("[SEP]") and c.pad_id == tok.token_to_id("[PAD]")
  assert c.mask_id not in mlm.ordinary_ids(c)
  tokens = np.array([hf_tok.encode(TEXT)[:24]] * 64)
  batch = mlm.mask_tokens(tokens, np.random.default_rng(0), contract=c)
  masked = batch["inputs"][batch["loss_mask"] > 0]
  assert (masked == c.mask_id).mean() > 0.6  # about 80% of the selected tokens
  assert not np.any(batch["inputs"][batch["loss_mask"] == 0] == c.mask_id)


@pytest.mark.slow
def test_t5_seq2seq_finetune_from_converted_workdir(task_files, tmp_path):
  """Flan-T5 style: a T5 checkpoint imported with its sentencepiece model, fine-tuned text to
  text (`objective=seq2seq`); every weight moves and the tuned run answers from the encoder."""
  folder = tmp_path / "t5_hf"
  tok = train_tokenizer([task_files["pretrain"].read_text()], "char", 0, num_sentinels=0)
  hf_model("t5").save_pretrained(folder)
  tok.save(folder / "spiece.model")
  work = tmp_path / "work"
  convert.import_hf(folder, work)
  _, _, _, start = loop.load_trained(work)
  result = finetune(work, task_files, tmp_path / "s2s", objective="seq2seq",
                    **{"sft.targets_len": 16, "data.tokenizer.num_sentinels": 100,
                       "model.max_seq_len": 512})
  assert np.isfinite(result["train_loss"])
  _, tokenizer, graphdef, tuned = loop.load_trained(tmp_path / "s2s")
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), start, tuned)
  assert all(jax.tree.leaves(changed))
  answers = eval_tasks.seq2seq_answers(graphdef, tuned, tokenizer, ["Sort: 3 1 2"],
                                       max_new_tokens=6)
  assert len(answers) == 1 and isinstance(answers[0], str)
