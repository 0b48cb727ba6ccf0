"""A shipped instruction task with exactly verifiable answers, for the post-training stages.

Three kinds of short example (whole examples are well under 64 characters, so a char-level
tokenizer and a tiny CPU model can learn them):
  add      "What is 37+58?"  -> "95"       two numbers of up to `digits` digits
  reverse  "Reverse: abcd"   -> "dcba"     2 to `str_len` lowercase letters
  sort     "Sort: 3 1 2"     -> "1 2 3"    2 to `list_len` single digits, ascending
Generation is a pure function of the seed. The held-out split is fixed by a hash of the
prompt text (one prompt in `HELDOUT_BUCKETS`), so no prompt is ever in both splits, whatever
the seeds, counts or mix. Files for every stage: `pretraining_text` (plain Q/A lines),
`write_sft_jsonl` and `write_preference_jsonl` (the formats of `jaxlm.data.formats`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import string
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxlm.data.formats import iter_jsonl, parse_sft, write_jsonl

KINDS = ("add", "reverse", "sort")
SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 10
LIMITS = {"digits": (1, 6), "str_len": (2, 16), "list_len": (2, 10)}  # inclusive
LETTERS = string.ascii_lowercase
DIGITS = string.digits


@dataclasses.dataclass(frozen=True)
class Example:
  """One task instance: the user prompt, its one correct answer, and its kind."""

  prompt: str
  answer: str
  kind: str

  def conversation(self) -> list[dict[str, str]]:
    """The example as a user message and the assistant's correct reply."""
    return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


def split_of(prompt: str) -> str:
  """"heldout" for one prompt in HELDOUT_BUCKETS (by a stable hash of its text), else "train"."""
  h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
  return "heldout" if h % HELDOUT_BUCKETS == 0 else "train"


def _make(kind: str, rng: np.random.Generator, digits: int, str_len: int,
          list_len: int) -> Example:
  if kind == "add":
    a, b = (int(x) for x in rng.integers(0, 10**digits, 2))
    return Example(f"What is {a}+{b}?", str(a + b), kind)
  if kind == "reverse":
    s = "".join(rng.choice(list(LETTERS), int(rng.integers(2, str_len + 1))))
    return Example(f"Reverse: {s}", s[::-1], kind)
  xs = [int(x) for x in rng.integers(0, 10, int(rng.integers(2, list_len + 1)))]
  return Example("Sort: " + " ".join(map(str, xs)), " ".join(map(str, sorted(xs))), kind)


def _mix(kinds: Sequence[str] | Mapping[str, float]) -> tuple[list[str], np.ndarray]:
  names = list(kinds)
  weights = np.array([kinds[k] for k in names] if isinstance(kinds, Mapping) else [1] * len(names),
                     float)
  bad = [k for k in names if k not in KINDS]
  if not names or bad:
    raise ValueError(f"task kinds must be a non-empty selection of {KINDS}, got {names}")
  if (weights < 0).any() or weights.sum() <= 0:
    raise ValueError(f"task mix weights must be >= 0, not all 0; got {dict(zip(names, weights))}")
  return names, weights / weights.sum()


def generate(n: int, seed: int, *, kinds: Sequence[str] | Mapping[str, float] = KINDS,
             split: str = "train", digits: int = 2, str_len: int = 5,
             list_len: int = 5) -> list[Example]:
  """`n` examples of `split`, a pure function of the arguments.

  `kinds` is a sequence (uniform mix) or a mapping kind -> weight. Sizes are maxima: numbers
  below 10**digits, strings of 2..str_len letters, lists of 2..list_len digits. Examples are
  drawn independently, so small task spaces repeat prompts within a split.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  sizes = {"digits": digits, "str_len": str_len, "list_len": list_len}
  for name, value in sizes.items():
    low, high = LIMITS[name]
    if not low <= value <= high:
      raise ValueError(f"task size {name}={value} is outside [{low}, {high}]")
  names, p = _mix(kinds)
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  out: list[Example] = []
  for _ in range(200 * n + 1000):
    if len(out) == n:
      return out
    example = _make(names[rng.choice(len(names), p=p)], rng, **sizes)
    if split_of(example.prompt) == split:
      out.append(example)
  if len(out) == n:
    return out
  raise ValueError(f"could not draw {n} {split} examples of {names} with sizes {sizes}: the "
                   "task space is too small for this split; use larger sizes")


def exact_match(prediction: str, answer: str) -> bool:
  """True when `prediction` equals `answer` after stripping leading and trailing whitespace
  (spaces, tabs, newlines) from both. Nothing else is forgiven: case, inner spacing (one
  space between sorted digits), leading zeros and extra text all count as wrong."""
  return prediction.strip() == answer.strip()


def score(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
  """Exact-match accuracy overall ("all") and per kind present."""
  if len(predictions) != len(examples):
    raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
  hits = np.array([exact_match(p, e.answer) for p, e in zip(predictions, examples)], float)
  kinds = np.array([e.kind for e in examples])
  out = {"all": float(hits.mean()) if len(hits) else 0.0}
  out.update({k: float(hits[kinds == k].mean()) for k in KINDS if (kinds == k).any()})
  return out


def _perturb(items: list[str], alphabet: str, rng: np.random.Generator) -> list[str]:
  """Swaps two adjacent different items (an unsorted order / swapped chars); when all items
  are equal, replaces one with a different symbol of `alphabet`."""
  items = list(items)
  spots = [i for i in range(len(items) - 1) if items[i] != items[i + 1]]
  if spots:
    i = spots[rng.integers(len(spots))]
    items[i], items[i + 1] = items[i + 1], items[i]
  else:
    i = int(rng.integers(len(items)))
    items[i] = rng.choice([c for c in alphabet if c != items[i]])
  return items


def corrupt(answer: str, kind: str, rng: np.random.Generator) -> str:
  """A plausible wrong answer, never equal to `answer`: for add, one digit off by one (the
  sum +- 10**k, kept >= 0); for reverse, two adjacent characters swapped; for sort, two
  adjacent numbers out of order (a one-symbol change when all are equal)."""
  if kind == "add":
    k = int(rng.integers(len(answer)))
    delta = 10**k * int(rng.choice([-1, 1]))
    wrong = str(int(answer) + delta if int(answer) + delta >= 0 else int(answer) - delta)
  elif kind == "reverse":
    wrong = "".join(_perturb(list(answer), LETTERS, rng))
  elif kind == "sort":
    wrong = " ".join(_perturb(answer.split(" "), DIGITS, rng))
  else:
    raise ValueError(f"unknown task kind {kind!r}; kinds are {KINDS}")
  assert wrong != answer, (answer, kind)
  return wrong


def preference_pairs(examples: Sequence[Example], rng: np.random.Generator) -> list[dict[str, str]]:
  """One `{prompt, chosen, rejected}` pair per example: the answer against a corruption."""
  return [{"prompt": e.prompt, "chosen": e.answer, "rejected": corrupt(e.answer, e.kind, rng)}
          for e in examples]


def pretraining_text(examples: Sequence[Example]) -> str:
  """Plain text for the pretraining stage, one "Q: prompt" / "A: answer" line pair each."""
  return "".join(f"Q: {e.prompt}\nA: {e.answer}\n" for e in examples)


def write_sft_jsonl(path: str | os.PathLike, examples: Sequence[Example]) -> Path:
  """Writes `{prompt, response, kind}` lines: SFT data (`formats.read_sft_jsonl`) that
  `read_examples` also reads back for evaluation."""
  return write_jsonl(path, ({"prompt": e.prompt, "response": e.answer, "kind": e.kind}
                            for e in examples))


def write_preference_jsonl(path: str | os.PathLike, pairs: Sequence[Mapping[str, Any]]) -> Path:
  """Writes `{prompt, chosen, rejected}` lines (`formats.read_preference_jsonl`)."""
  return write_jsonl(path, (dict(p) for p in pairs))


def read_examples(path: str | os.PathLike) -> list[Example]:
  """Examples of a file written by `write_sft_jsonl` (for exact-match evaluation)."""
  out = []
  for where, record in iter_jsonl(path):
    user, assistant = parse_sft(record, where)[-2:]
    if record.get("kind") not in KINDS:
      raise ValueError(f"{where}: field 'kind' must be one of {KINDS}, got {record.get('kind')!r}")
    out.append(Example(user["content"], assistant["content"], record["kind"]))
  return out


def write_task_files(out_dir: str | os.PathLike, *, n_train: int = 20_000, n_heldout: int = 500,
                     seed: int = 0, kinds: Sequence[str] | Mapping[str, float] = KINDS,
                     **sizes: int) -> dict[str, Path]:
  """Writes every stage's data under `out_dir` and returns the paths by name: `pretrain`
  (pretrain.txt, Q/A text), `sft` (sft.jsonl), `preference` (preference.jsonl), all from the
  training split, and `heldout` (heldout.jsonl, SFT format with kinds) for evaluation."""
  out = Path(out_dir).expanduser()
  train = generate(n_train, seed, kinds=kinds, **sizes)
  heldout = generate(n_heldout, seed, kinds=kinds, split="heldout", **sizes)
  out.mkdir(parents=True, exist_ok=True)
  (out / "pretrain.txt").write_text(pretraining_text(train), encoding="utf-8")
  pairs = preference_pairs(train, np.random.default_rng([seed, 2]))
  return {"pretrain": out / "pretrain.txt", "sft": write_sft_jsonl(out / "sft.jsonl", train),
          "preference": write_preference_jsonl(out / "preference.jsonl", pairs),
          "heldout": write_sft_jsonl(out / "heldout.jsonl", heldout)}


def train_and_heldout(kinds_spec: str, task_cfg: Mapping[str, Any]) -> tuple[list[Example],
                                                                            list[Example]]:
  """Training and held-out examples for a `task:KIND[,KIND...]` data source.

  `task_cfg` (config.task) gives n_train, n_heldout, seed and the sizes; "all" or an empty
  spec mixes every kind.
  """
  kinds = KINDS if kinds_spec in ("", "all") else tuple(kinds_spec.split(","))
  unknown = set(kinds) - set(KINDS)
  if unknown:
    raise ValueError(f"unknown task kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
  sizes = {k: task_cfg[k] for k in ("digits", "str_len", "list_len")}
  return (generate(task_cfg["n_train"], task_cfg["seed"], kinds=kinds, **sizes),
          generate(task_cfg["n_heldout"], task_cfg["seed"], kinds=kinds, split="heldout", **sizes))
