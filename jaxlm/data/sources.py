"""Text sources: the embedded corpus, local text / JSONL files, named tfds datasets.

A source spec is a string: `embedded:tinyshakespeare` (the default, shipped inside the
package), `text:PATH` (a .txt file, or a folder of them: one document per file),
`jsonl:PATH` (one document per line, read from `text_field`), `tfds:NAME` (see
`jaxlm.data.tfds_source`), or `task:KINDS` (the shipped verifiable tasks, `jaxlm.data.tasks`). Every source yields a `Corpus` of train and validation documents.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

EMBEDDED = {"tinyshakespeare": "tinyshakespeare.txt"}


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Documents of the training and validation splits."""

  train: list[str]
  val: list[str]


def split_documents(docs: list[str], val_fraction: float) -> Corpus:
  """Holds out the last `val_fraction`: of the characters for a single document (the usual
  split of a contiguous corpus), else of the documents."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
  if len(docs) == 1:
    cut = int(len(docs[0]) * (1.0 - val_fraction))
    return Corpus([docs[0][:cut]], [docs[0][cut:]] if val_fraction else [])
  cut = len(docs) - int(round(len(docs) * val_fraction))
  return Corpus(docs[:cut], docs[cut:])


def embedded_text(name: str) -> str:
  """The text of a corpus shipped inside the package."""
  if name not in EMBEDDED:
    raise ValueError(f"unknown embedded corpus {name!r}; shipped: {', '.join(EMBEDDED)}")
  return resources.files("jaxlm.data").joinpath("assets", EMBEDDED[name]).read_text("utf-8")


def _existing(path: str) -> Path:
  p = Path(path).expanduser()
  if not p.exists():
    raise FileNotFoundError(f"data file {p} does not exist (check config.data.source)")
  return p


def read_text_files(path: str) -> list[str]:
  """One document per .txt file (`path` is a file or a folder searched recursively)."""
  p = _existing(path)
  files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
  if not files:
    raise FileNotFoundError(f"no .txt files under {p}")
  return [f.read_text("utf-8") for f in files]


def read_jsonl(path: str, text_field: str) -> list[str]:
  """One document per JSONL line, taken from `text_field`."""
  from jaxlm.data.formats import iter_jsonl  # one JSONL reader (file:line errors) everywhere
  docs = []
  for where, record in iter_jsonl(path):
    if text_field not in record:
      raise ValueError(f"{where}: no field {text_field!r} (set config.data.text_field)")
    docs.append(str(record[text_field]))
  return docs


def load_corpus(source: str, *, val_fraction: float = 0.1, text_field: str = "text",
                task_cfg: Mapping[str, Any] | None = None) -> Corpus:
  """Reads the documents named by `source` and splits off validation documents.

  `task:KINDS` gives the shipped verifiable tasks as "Q: ...\nA: ..." documents (train and
  held-out prompts as the two splits), sized by `task_cfg` (config.task).
  """
  kind, _, arg = source.partition(":")
  if kind == "task":
    from jaxlm.data import tasks
    train, heldout = tasks.train_and_heldout(arg, task_cfg or {})
    return Corpus([tasks.pretraining_text([e]) for e in train],
                  [tasks.pretraining_text([e]) for e in heldout])
  if kind == "tfds":
    from jaxlm.data import tfds_source  # optional extra: imported only when asked for
    return tfds_source.load_corpus(arg, text_field=text_field)
  if kind == "embedded":
    docs = [embedded_text(arg)]
  elif kind == "text":
    docs = read_text_files(arg)
  elif kind == "jsonl":
    docs = read_jsonl(arg, text_field)
  else:
    raise ValueError(
        f"unknown data source {source!r}: use embedded:NAME, text:PATH, jsonl:PATH or tfds:NAME")
  docs = [d for d in docs if d]
  if not docs or not any(d.strip() for d in docs):
    raise ValueError(f"data source {source!r} is empty")
  return split_documents(docs, val_fraction)
