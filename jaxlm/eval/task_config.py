"""Evaluation task configs: the skeleton every `configs/eval/*.py` starts from, and loading.

A task file defines `get_config(arg=None)` returning `base_task_config()` with its changes,
like the training configs (`jaxlm.config`): locked, every field overridable with
`--config.key=value`, presets after a colon (`configs/eval/task_exact_match.py:cot`).
`--task NAME` without a path or `.py` means `configs/eval/NAME.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import ml_collections

from jaxlm import config as configlib

KINDS = ("perplexity", "multiple_choice", "generative", "win_rate")
TASK_DIR = Path("configs") / "eval"


def base_task_config() -> ml_collections.ConfigDict:
  """Every field an evaluation reads, with defaults."""
  c = ml_collections.ConfigDict()
  c.name = ""  # the results file W/eval/<name>.json; default: the task file's name
  c.kind = "perplexity"  # perplexity | multiple_choice | generative | win_rate
  # perplexity: embedded:NAME | text:PATH | jsonl:PATH (documents of `split`);
  # multiple_choice: cloze:<a perplexity source> | jsonl:PATH;
  # generative, win_rate: task:KINDS (held-out split) | jsonl:PATH.
  c.source = "embedded:tinyshakespeare"
  c.split = "val"  # train | val of a corpus source
  c.text_field = "text"
  c.val_fraction = 0.1
  c.limit = 0  # evaluate at most this many documents / questions (0: all)
  c.batch_size = 32
  c.seed = 0
  c.perplexity = ml_collections.ConfigDict(dict(stride=0, max_tokens=0))
  c.multiple_choice = ml_collections.ConfigDict(dict(
      num_fewshot=0, separator="\n\n",
      # cloze questions built from a corpus (jaxlm.eval.multiple_choice.cloze_from_text)
      num_questions=200, num_choices=4, context_lines=2, min_chars=16, max_chars=48))
  c.prompt = ml_collections.ConfigDict(dict(
      format="chat",  # plain ("Q: ...\nA: ...") | chat (the run's chat template)
      method="direct", num_fewshot=0, samples=1, temperature=0.0, top_k=0, top_p=1.0,
      min_p=0.0, num_beams=1, length_penalty=1.0,
      max_new_tokens=24, reasoning_tokens=64, cot_trigger="Let's think step by step.",
      answer_trigger="Therefore, the answer is",
      decompose_trigger="To solve this, we first answer:", subquestion_separator=";",
      max_subquestions=3, answer_regex=""))
  c.win_rate = ml_collections.ConfigDict(dict(
      reference="", reward_model="", interval="wilson", confidence=0.95, tie_tolerance=0.0,
      resamples=10_000))
  # Sizes of the shipped verifiable tasks (task:KINDS), as in the training config's `task`.
  c.task = ml_collections.ConfigDict(dict(n_train=20_000, n_heldout=500, seed=0, digits=2,
                                          str_len=5, list_len=5))
  return c


def resolve(spec: str) -> tuple[str, str | None]:
  """(file path, preset) of `path.py[:preset]` or a shipped task name `NAME[:preset]`."""
  path, _, arg = spec.partition(":")
  if not path.endswith(".py") and "/" not in path:
    local = TASK_DIR / f"{path}.py"
    shipped = Path(__file__).resolve().parents[2] / local
    path = str(local if local.is_file() or not shipped.is_file() else shipped)
  if not Path(path).is_file():
    raise FileNotFoundError(f"eval task {spec!r}: {path} does not exist")
  return path, arg or None


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The task config of `spec` with overrides applied; `name` defaults to the file name
  (plus the preset)."""
  path, arg = resolve(spec)
  cfg = configlib.load_module_config(path, arg)
  configlib.apply_overrides(cfg, overrides)
  if cfg.kind not in KINDS:
    raise ValueError(f"eval task kind must be one of {KINDS}, got {cfg.kind!r}")
  if not cfg.name:
    cfg.name = Path(path).stem + (f"_{arg.replace(',', '_')}" if arg else "")
  return cfg
