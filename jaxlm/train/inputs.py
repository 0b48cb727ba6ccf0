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
from jaxlm.data.tokenizer import Tokenizer, load_or_train

TOKENIZER_FILE = "tokenizer.model"


@dataclasses.dataclass
class Inputs:
  """Tokenizer plus random-access train and validation batches for this process."""

  tokenizer: Tokenizer
  train: Any
  val: Any | None


def get_tokenizer(cfg: ml_collections.ConfigDict, workdir: Path,
                  corpus: sources.Corpus | None) -> Tokenizer:
  """The run's tokenizer: the workdir's copy when resuming, else `data.tokenizer.path`, else
  one trained on the training split (cached across runs)."""
  tcfg = cfg.data.tokenizer
  saved = workdir / TOKENIZER_FILE
  if saved.is_file():
    return Tokenizer.load(saved, tcfg.num_sentinels)
  if tcfg.path:
    return Tokenizer.load(tcfg.path, tcfg.num_sentinels)
  if corpus is None:
    raise ValueError("no tokenizer in the workdir and no data to train one on")
  return load_or_train(corpus.train, tcfg.kind, tcfg.vocab_size or 8, tcfg.num_sentinels)


def build_inputs(cfg: ml_collections.ConfigDict, workdir: Path) -> Inputs:
  """Reads the corpus, fixes the tokenizer (saved into the workdir) and builds the batches."""
  corpus = sources.load_corpus(cfg.data.source, val_fraction=cfg.data.val_fraction,
                               text_field=cfg.data.text_field)
  tokenizer = get_tokenizer(cfg, workdir, corpus)
  if jax.process_index() == 0 and not (workdir / TOKENIZER_FILE).is_file():
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(workdir / TOKENIZER_FILE)
  objective = objectives.get(cfg.objective)

  def batches(docs: list[str], seed: int):
    tokens, segments = tokenize_documents(tokenizer, docs)
    return objective.build_batches(
        tokens, segments, cfg=cfg, tokenizer=tokenizer, seed=seed,
        process_index=jax.process_index(), process_count=jax.process_count())

  train = batches(corpus.train, cfg.seed)
  val = batches(corpus.val, cfg.seed + 1) if corpus.val and any(corpus.val) else None
  return Inputs(tokenizer, train, val)
