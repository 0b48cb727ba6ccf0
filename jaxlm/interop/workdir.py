"""`jaxlm convert`: an HF checkpoint folder <-> a normal jaxlm workdir.

An import writes what `jaxlm train` leaves behind: `config.json` (the resolved jaxlm
config), an Orbax checkpoint at step 0 (through `train.checkpoint.Checkpointer`), the
tokenizer, plus `hf_config.json` (the original HF config, used on export). So
`jaxlm sample --workdir OUT` and `jaxlm train --config ... --config.init_from=OUT` work.
Fine-tune into a new workdir: the import has no data-iterator position to resume from.

The vocabulary is padded up to the token contract's size (jaxlm puts the mask token and
chat roles after the tokenizer's ids, rounded to a multiple of 128) with new rows set to the
mean of the existing ones, so k new ids of n take at most k/n of the probability (an untrained
id's logit is the mean logit); an export trims it back to the original HF size.

A `tokenizer_config.json` whose `chat_template` writes a markup jaxlm knows (ChatML, Llama 3,
Gemma, Phi-4) sets the import's `chat.format`, so the model is prompted the way it was tuned;
the file is kept and written back on export, and its `add_bos_token` (else the
tokenizer.json's post-processor) says whether texts open with BOS in every run from the import.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxlm import config as configlib, peft
from jaxlm.data import chat, chat_markup
from jaxlm.data.hf_tokenizer import HFTokenizer, with_add_bos_token
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.interop import hf, hf_config, hf_config_export, hf_peft, safetensors_io
from jaxlm.interop.kept_files import HF_CONFIG_FILE, TOKENIZER_CONFIG_FILE, source_file
from jaxlm.models import stacking
from jaxlm.models.config import STYLES, ModelConfig
from jaxlm.peft import lora as lora_lib, token_rows
from jaxlm.train import loop, pretrained, sharding, state as state_lib
from jaxlm.train.checkpoint import Checkpointer
from jaxlm.train.inputs import TOKENIZER_FILE

SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model")
OBJECTIVES = {"decoder": "clm", "encoder": "mlm", "encdec": "span"}
T5_SENTINELS = 100
# Parameters with one row (or column, for the head kernel) per vocabulary entry: (path, axis).
VOCAB_AXES = {"embed/embedding": 0, "head/kernel": 1, "head/bias": 0, "mlm_bias": 0}


def find_tokenizer(folder: Path, style: str, explicit: str | None = None):
  """The tokenizer of an HF folder: sentencepiece `.model` or `tokenizer.json`."""
  candidates = [Path(explicit)] if explicit else (
      [folder / n for n in SENTENCEPIECE_FILES] + [folder / HFTokenizer.file_name])
  for path in candidates:
    if path.is_file():
      if path.suffix == ".json":
        return HFTokenizer.load(path)
      # T5's <extra_id_k> sit right after the sentencepiece ids, as jaxlm's sentinels do
      return Tokenizer.load(path, T5_SENTINELS if style == "t5" else 0)
  names = ", ".join([*SENTENCEPIECE_FILES, HFTokenizer.file_name])
  raise FileNotFoundError(f"no tokenizer in {folder} (looked for {names}); pass --tokenizer "
                          "PATH to a sentencepiece .model or a tokenizer.json")


def resize_vocab(flat: dict[str, np.ndarray], vocab: int) -> dict[str, np.ndarray]:
  """Params with every vocabulary axis cut or padded to `vocab` (new rows: the mean row)."""
  out = dict(flat)
  for path, axis in VOCAB_AXES.items():
    if path not in flat:
      continue
    x = np.asarray(flat[path], np.float32)
    n = x.shape[axis]
    if vocab <= n:
      out[path] = np.take(x, np.arange(vocab), axis=axis)
    else:
      mean = x.mean(axis=axis, keepdims=True)
      out[path] = np.concatenate([x, np.repeat(mean, vocab - n, axis=axis)], axis=axis)
  return out


def jaxlm_config(fields: dict[str, Any], vocab: int, num_sentinels: int,
                 dtype: str, chat_format: str = chat_markup.JAXLM) -> Any:
  """The resolved jaxlm config of an imported model (objective by family)."""
  c = configlib.base_config()
  c.model.update(**{**fields, "vocab_size": vocab, "dropout": 0.0, "dtype": dtype})
  c.objective = OBJECTIVES[STYLES[fields["style"]]]
  c.data.seq_len = min(c.data.seq_len, fields["max_seq_len"])
  c.data.tokenizer.update(num_sentinels=num_sentinels)
  c.chat.format = chat_format
  return c


def read_tokenizer_config(folder: Path) -> dict[str, Any] | None:
  """An HF folder's tokenizer_config.json, None when it has none; unreadable is an error."""
  path = folder / TOKENIZER_CONFIG_FILE
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def chat_format_of(tokenizer_config: dict[str, Any] | None, tok) -> tuple[str, str]:
  """(the `chat.format` of an import, how it was chosen): its chat_template's markup when
  the tokenizer has that markup's special tokens, else jaxlm's role tokens."""
  template = (tokenizer_config or {}).get("chat_template")
  found = chat_markup.detect(template if isinstance(template, str) else None)
  if found is None:
    return chat_markup.JAXLM, "no chat_template jaxlm knows: jaxlm's role tokens"
  try:
    chat.ChatTemplate(format=found).pieces(tok)
  except ValueError as e:
    return chat_markup.JAXLM, f"{e}; using jaxlm's role tokens"
  return found, f"the {found} markup of tokenizer_config.json's chat_template"


def import_hf(hf_dir: str | Path, workdir: str | Path, *, dtype: str = "auto",
              tokenizer: str | None = None, scan_layers: bool = False,
              adapter: str | Path | None = None) -> dict[str, Any]:
  """Converts the HF checkpoint in `hf_dir` into a jaxlm workdir; returns a summary.

  `dtype` is the compute dtype of the run (`model.dtype`: auto, float32 or bfloat16);
  parameters are stored in float32 as in every jaxlm checkpoint. `scan_layers` stores the
  blocks stacked (`model.scan_layers`), so training on from the workdir scans them.
  `adapter`, a PEFT LoRA adapter folder of this base model, comes along as the run's LoRA
  (`peft.method=lora`, see `hf_peft.read_adapter`): sample, evaluate, train on or export it.
  """
  hf_dir, workdir = Path(hf_dir), Path(workdir)
  if (workdir / "checkpoints").exists():
    raise ValueError(f"{workdir} already holds checkpoints; convert into a new folder")
  if dtype != "auto":
    dtype = safetensors_io.dtype_name(dtype)
  hf_cfg = hf.read_config(hf_dir)
  fields = hf_config.model_fields(hf_cfg)
  tok_cfg = read_tokenizer_config(hf_dir)
  tok = with_add_bos_token(find_tokenizer(hf_dir, fields["style"], tokenizer), tok_cfg)
  vocab = max(fields["vocab_size"], tok.vocab_size)
  chat_format, chat_reason = chat_format_of(tok_cfg, tok)
  cfg = jaxlm_config(fields, vocab, tok.contract.num_sentinels, dtype, chat_format)
  cfg.model.scan_layers = scan_layers
  # Conversations open with BOS like any text of this tokenizer (a markup's own opening,
  # e.g. Llama 3's or Gemma's, already holds it).
  markup = chat.ChatTemplate(format=chat_format).markup
  cfg.chat.bos = tok.contract.opens_with_bos and not (markup is not None and bool(markup.begin))

  hf_model = ModelConfig(**fields)
  params, unused = hf.params_from_tensors(hf_model, safetensors_io.read_tensors(hf_dir), hf_cfg)
  flat = resize_vocab(hf.flatten(params), vocab)
  del params
  if adapter is not None:
    lora_flat, settings = hf_peft.read_adapter(adapter, hf_model, hf_cfg)
    if scan_layers and any(settings[k].startswith("^") for k in ("targets", "include")):
      # named per layer: not stackable
      raise ValueError(f"{adapter} adapts some layers only, which stacked layers cannot hold: "
                       "import it without --scan-layers")
    if STYLES[fields["style"]] != "decoder":  # jaxlm's LoRA dropout is a decoder's
      settings["dropout"] = 0.0
    cfg.peft.update(settings)
    flat.update(resize_vocab(lora_flat, vocab))  # a saved head or embedding: the vocab too
  mesh = sharding.make_mesh(cfg.mesh)
  setup = loop.build_model(cfg, tok.vocab_size, mesh)
  # Shapes only: the imported weights are the parameters, no random ones are made first.
  merged, report = pretrained.merge_pretrained(jax.eval_shape(setup.init).params, flat)
  if report.fresh:
    raise hf.hf_weights.WeightMismatchError(f"parameters not filled by the import: {report.fresh}")
  del flat
  state = state_lib.state_from_params(merged, setup.optimizer, cfg.seed, setup.shardings)
  del merged

  workdir.mkdir(parents=True, exist_ok=True)
  resolved = configlib.to_dict(cfg)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    ckpt.save(0, state, {}, resolved)
  finally:
    ckpt.close()
  (workdir / "config.json").write_text(json.dumps(resolved, indent=2))
  (workdir / HF_CONFIG_FILE).write_text(json.dumps(hf_cfg, indent=2))
  if tok_cfg is not None:
    (workdir / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tok_cfg, indent=2))
  tok.save(workdir / getattr(tok, "file_name", TOKENIZER_FILE))
  overrides = {f"model.{k}": v for k, v in configlib.to_dict(cfg.model).items()}
  if cfg.chat.format != chat_markup.JAXLM:
    overrides["chat.format"] = cfg.chat.format
  if cfg.chat.bos:
    overrides["chat.bos"] = True
  if adapter is not None:  # training on from the import keeps (and trains) its adapter
    overrides.update({f"peft.{k}": v for k, v in cfg.peft.items()
                      if k in ("method", "rank", "alpha", "targets", "use_dora", "use_rslora",
                               "trainable_tokens", "include")})
  return {"style": fields["style"], "vocab_size": vocab, "hf_vocab_size": fields["vocab_size"],
          "adapter": None if adapter is None else str(adapter),
          "tensors": len(report.loaded), "unused": unused, "overrides": overrides,
          "num_sentinels": tok.contract.num_sentinels, "chat_format": chat_format,
          "chat_reason": chat_reason, "opens_with_bos": tok.contract.opens_with_bos}


def export_hf(workdir: str | Path, out: str | Path, *, dtype: str = "float32",
              merge_lora: bool = False) -> dict[str, Any]:
  """Writes the newest checkpoint of `workdir` as an HF model folder; returns a summary.

  A LoRA run exports its base model into `out` and the adapter in PEFT's layout into
  `out/adapter` (or, with `merge_lora`, one model with the update folded into the kernels);
  trained token rows go into the adapter (`trainable_token_indices`) or the merged table.
  """
  workdir, out = Path(workdir), Path(out)
  cfg, tok, graphdef, params = loop.load_trained(workdir)
  model_cfg: ModelConfig = nnx.merge(graphdef, params).cfg
  flat = {k: np.asarray(v, np.float32)  # per-layer names (HF's), from either layout
          for k, v in stacking.unstacked(hf.flatten(params)).items()}
  base = source_file(workdir, HF_CONFIG_FILE)
  vocab = min(base["vocab_size"], model_cfg.vocab_size) if base else model_cfg.vocab_size
  lora = cfg.peft.method == "lora"
  # Trained token rows: in a PEFT adapter as its trainable_token_indices (those of ids the HF
  # vocabulary has), else written into the exported table.
  ids = token_rows.parse(cfg.peft.get("trainable_tokens", ""))
  rows = flat.pop(token_rows.ROWS) if lora and not merge_lora and ids else None
  flat = token_rows.merge_rows(flat, ids)
  if rows is not None:
    kept = [j for j, i in enumerate(ids) if i < vocab]
    rows = ([ids[j] for j in kept], rows[kept]) if kept else None
  scale = peft.lora_scale_of(cfg.peft) if lora else 0.0
  rslora = bool(cfg.peft.get("use_rslora", False))
  added = tuple(f"/{leaf}" for leaf in lora_lib.LEAVES)
  base_flat = {k: v for k, v in flat.items() if not k.endswith(added)}
  if lora and merge_lora:
    for key in [k for k in flat if k.endswith("/lora_a")]:
      layer = key.rsplit("/", 1)[0]
      base_flat[f"{layer}/kernel"] = np.asarray(lora_lib.merged_kernel(
          flat[f"{layer}/kernel"], flat[key], flat[f"{layer}/lora_b"], scale,
          flat.get(f"{layer}/lora_magnitude")))
  export_cfg = dataclasses.replace(model_cfg, vocab_size=vocab)
  adapter = {k: v for k, v in flat.items() if k.endswith((*added, "/kernel"))}
  if lora and not merge_lora:  # an adapter PEFT could not load fails before anything is written
    hf_peft.adapter_tensors(export_cfg, adapter, cfg.peft.alpha,
                            hf_config_export.hf_config(export_cfg, base), rslora=rslora)
  hf.save_hf(out, export_cfg, resize_vocab(base_flat, vocab), dtype=dtype, base_config=base)
  tok.save(out / getattr(tok, "file_name", TOKENIZER_FILE))
  tok_cfg = source_file(workdir, TOKENIZER_CONFIG_FILE)
  if tok_cfg is not None:
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tok_cfg, indent=2))
  summary = {"out": str(out), "vocab_size": vocab, "adapter": None}
  if lora and not merge_lora:
    summary["adapter"] = str(hf_peft.save_adapter(
        out / "adapter", export_cfg, adapter, rank=cfg.peft.rank, alpha=cfg.peft.alpha,
        rslora=rslora, rows=rows,
        base_model=str(out.absolute()), hf_cfg=hf.read_config(out), dtype=dtype))
  return summary
