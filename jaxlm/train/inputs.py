"""The input side of a run: tokenizer (workdir, file or trained), corpus, batch sources."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections

from jaxlm import objectives
from jaxlm.data import sources
from jaxlm.data.pipeline import tokenize_documents
from jaxlm.data.hf_tokenizer import HFTokenizer, with_add_bos_token
from jaxlm.data.tokenizer import Tokenizer, load_or_train
from jaxlm.interop.kept_files import TOKENIZER_CONFIG_FILE, source_file

TOKENIZER_FILE = "tokenizer.model"


@dataclasses.dataclass
class Inputs:
  """Tokenizer plus random-access train and validation batches for this process."""

  tokenizer: Tokenizer
  train: Any
  val: Any | None


def get_tokenizer(cfg: ml_collections.ConfigDict, workdir: Path,
                  texts: list[str] | None) -> Tokenizer:
  """The run's tokenizer: the workdir's copy when resuming, else the one of the `init_from`
  run or of a frozen model's run (reference, teacher), else `data.tokenizer.path`, else one
  trained on `texts` (cached across runs). A tokenizer from an HF import opens texts with
  BOS as the import's `tokenizer_config.json` says."""
  tcfg = cfg.data.tokenizer
  sources_of_weights = [cfg.init_from] if cfg.init_from else []
  if cfg.objective in objectives.OBJECTIVES:  # PPO / GRPO keep their reference in init_from
    sources_of_weights += list(objectives.frozen_workdirs(cfg).values())
  for folder in [workdir, *map(Path, sources_of_weights)]:
    if (folder / TOKENIZER_FILE).is_file():
      tokenizer = Tokenizer.load(folder / TOKENIZER_FILE, tcfg.num_sentinels)
    elif (folder / HFTokenizer.file_name).is_file():  # an imported HF tokenizer (jaxlm convert)
      tokenizer = HFTokenizer.load(folder / HFTokenizer.file_name, tcfg.num_sentinels)
    else:
      continue
    kept = (source_file(f, TOKENIZER_CONFIG_FILE) for f in [folder, *map(Path, sources_of_weights)])
    return with_add_bos_token(tokenizer, next((k for k in kept if k is not None), None))
  if tcfg.path:
    return Tokenizer.load(tcfg.path, tcfg.num_sentinels)
  if texts is None:
    raise ValueError("no tokenizer in the workdir and no data to train one on")
  return load_or_train(texts, tcfg.kind, tcfg.vocab_size or 8, tcfg.num_sentinels)


def save_tokenizer(tokenizer: Tokenizer, workdir: Path) -> None:
  """Writes the run's tokenizer into `workdir` under its own file name (a sentencepiece
  `tokenizer.model` or an HF `tokenizer.json`), on process 0, unless it is there already."""
  file_name = getattr(tokenizer, "file_name", TOKENIZER_FILE)
  if jax.process_index() == 0 and not (workdir / file_name).is_file():
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(workdir / file_name)


def build_inputs(cfg: ml_collections.ConfigDict, workdir: str | Path) -> Inputs:
  """Reads the data, fixes the tokenizer (saved into the workdir) and builds the batches.

  Text objectives (`INPUT = "text"`, the default) get a tokenised document stream; record
  objectives (`INPUT = "records"`: SFT, preferences) get their parsed records.
  """
  workdir = Path(workdir)
  objective = objectives.get(cfg.objective)
  records = getattr(objective, "INPUT", "text") == "records"
  if records:
    train_data, val_data = objective.load_records(cfg)
    texts = objective.record_texts(train_data)
  else:
    corpus = sources.load_corpus(cfg.data.source, val_fraction=cfg.data.val_fraction,
                                 text_field=cfg.data.text_field, task_cfg=cfg.task)
    train_data, val_data = corpus.train, [d for d in corpus.val if d]
    texts = corpus.train
  tokenizer = get_tokenizer(cfg, workdir, texts)
  save_tokenizer(tokenizer, workdir)

  def batches(data: list, seed: int):
    args = (data,) if records else tokenize_documents(tokenizer, data)
    return objective.build_batches(
        *args, cfg=cfg, tokenizer=tokenizer, seed=seed,
        process_index=jax.process_index(), process_count=jax.process_count())

  val = batches(val_data, cfg.seed + 1) if val_data else None
  return Inputs(tokenizer, batches(train_data, cfg.seed), val)
