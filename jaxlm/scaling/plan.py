"""Sweep configs and their runs: a grid (model sizes x token budgets) or IsoFLOP sets.

A sweep file `configs/sweeps/NAME.py` defines `get_config(arg=None)` returning a
ConfigDict with:

  train_config     the train config every run starts from ("configs/x.py[:preset]")
  overrides        overrides shared by every run ("train.batch_size=16", ...)
  kind             "isoflop": for each compute budget C and size N, D = C / 6N;
                   "grid": every size trained on every token budget
  sizes            model overrides per size (dicts of `config.model` fields)
  compute_budgets  C in FLOPs (isoflop)
  token_budgets    D in tokens (grid)
  compute_params   which N sets D = C / 6N: "total" (Hoffmann et al.) or "nonembed" (Kaplan)
  min_steps        IsoFLOP points that would train fewer steps are dropped (and reported)
  warmup_fraction  warmup steps as a fraction of each run's steps (0: keep the train config's)
  evals_per_run    evaluations per run (the last one at the end)
  ckpts_per_run    checkpoints per run, so an interrupted run resumes near where it stopped
  cooldown_fraction  > 0: warmup-stable-decay runs (`optim.schedule=wsd`) that cool down over
                   this last fraction of their steps, and every size trains its stable
                   phase once: its longest run is the trunk, each shorter run starts from the
                   trunk's checkpoint where its own cooldown begins (Hägele et al. 2024).
                   The runs are the same as separate ones (same warmup per size, same rates
                   at every step); the sweep trains only the trunk plus the cooldowns.

Each run is an ordinary train config: the train config, the shared overrides, the size's
model fields and the derived `train.steps`. Steps are D / (batch_size x seq_len) rounded, and
the table records the tokens actually trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import ml_collections

from jaxlm import config as configlib

KINDS = ("isoflop", "grid")
COMPUTE_PARAMS = ("total", "nonembed")


def default_sweep() -> ml_collections.ConfigDict:
  """Every field a sweep file may set, with defaults."""
  c = ml_collections.ConfigDict()
  c.train_config = ""
  c.overrides = ()
  c.kind = "isoflop"
  c.sizes = ()
  c.compute_budgets = ()
  c.token_budgets = ()
  c.compute_params = "total"
  c.min_steps = 10
  c.warmup_fraction = 0.1
  c.evals_per_run = 1
  c.ckpts_per_run = 4
  c.cooldown_fraction = 0.0
  return c


def load_sweep(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `configs/sweeps/NAME.py[:arg]`, applies `key=value` overrides and validates it."""
  cfg = configlib.load(spec, overrides)
  unknown = set(cfg.keys()) - set(default_sweep().keys())
  if unknown:
    raise KeyError(f"unknown sweep config keys {sorted(unknown)} in {spec}")
  if cfg.kind not in KINDS:
    raise ValueError(f"sweep kind must be one of {KINDS}, got {cfg.kind!r}")
  if cfg.compute_params not in COMPUTE_PARAMS:
    raise ValueError(f"compute_params must be one of {COMPUTE_PARAMS}, got {cfg.compute_params!r}")
  if not cfg.train_config:
    raise ValueError(f"{spec}: train_config is empty")
  if not cfg.sizes:
    raise ValueError(f"{spec}: no model sizes")
  if not 0 <= cfg.cooldown_fraction < 1 or cfg.cooldown_fraction + cfg.warmup_fraction > 1:
    raise ValueError(f"{spec}: cooldown_fraction={cfg.cooldown_fraction} must be in [0, 1) and "
                     f"leave room for warmup_fraction={cfg.warmup_fraction}")
  budgets = cfg.compute_budgets if cfg.kind == "isoflop" else cfg.token_budgets
  if not budgets or any(b <= 0 for b in budgets):
    raise ValueError(f"{spec}: a {cfg.kind} sweep needs positive "
                     f"{'compute_budgets' if cfg.kind == 'isoflop' else 'token_budgets'}")
  return cfg


@dataclasses.dataclass(frozen=True)
class Run:
  """One planned run of a sweep."""

  name: str
  overrides: tuple[str, ...]  # on top of the train config (shared ones first)
  params_total: int
  params_nonembed: int
  steps: int
  tokens: int
  compute: float  # 6 N D with N the total parameter count
  budget: float  # the nominal C (isoflop) or D (grid) this run belongs to
  kind: str  # isoflop | grid
  trunk: str = ""  # cooldown sweeps: the run whose checkpoint at `branch_step` this one starts
  branch_step: int = 0  # from (where its cooldown begins); "" and 0 for every other run

  @property
  def trained_steps(self) -> int:
    """Steps this run trains itself (a branch: its cooldown alone)."""
    return self.steps - self.branch_step


def size_name(size: dict) -> str:
  """A short stable name of a size's model overrides, e.g. L2-d32-h4-m128."""
  short = {"num_layers": "L", "embed_dim": "d", "num_heads": "h", "mlp_dim": "m",
           "num_kv_heads": "kv", "head_dim": "hd"}
  return "-".join(f"{short.get(k, k)}{v}" for k, v in sorted(size.items(), key=lambda kv: (
      list(short).index(kv[0]) if kv[0] in short else len(short), kv[0])))


def model_overrides(size: dict) -> list[str]:
  """`model.KEY=VALUE` overrides of one size."""
  return [f"model.{k}={v}" for k, v in size.items()]


def param_counts(cfg: ml_collections.ConfigDict, vocab_size: int) -> tuple[int, int]:
  """(total, non-embedding) parameters of `cfg.model`, from shapes only (nothing allocated).

  Non-embedding excludes the token embedding, the output head and the position tables, as
  Kaplan et al. count N.
  """
  from jaxlm.models import factory, from_config, matmul_param_count, param_count
  from jaxlm.train.state import abstract_model
  model_cfg = from_config(cfg.model, vocab_size)
  _, abstract = abstract_model(lambda rngs: factory.create(model_cfg, rngs))
  total = param_count(abstract)
  return total, matmul_param_count(model_cfg, abstract) - model_cfg.vocab_size * model_cfg.embed_dim


def budget_tag(value: float, unit: str) -> str:
  """A filesystem-friendly budget tag: 3e11 FLOPs -> C3e11, 1.5e12 -> C1.5e12."""
  mantissa, exponent = f"{value:.2e}".split("e")
  return f"{unit}{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def plan(sweep: ml_collections.ConfigDict, vocab_size: int,
         shared: Sequence[str] = ()) -> tuple[list[Run], list[str]]:
  """The runs of a sweep and notes on dropped points; `shared` overrides precede the
  sweep's own for every run (e.g. the sweep's tokenizer path)."""
  base = list(shared) + list(sweep.overrides)
  runs, notes = [], []
  for size in sweep.sizes:
    cfg = configlib.load(sweep.train_config, base + model_overrides(size))
    total, nonembed = param_counts(cfg, vocab_size)
    n = total if sweep.compute_params == "total" else nonembed
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    if sweep.kind == "isoflop":
      targets = [(c, c / (6 * n), budget_tag(c, "C")) for c in sweep.compute_budgets]
    else:
      targets = [(d, d, budget_tag(d, "D")) for d in sweep.token_budgets]
    points = []
    for budget, tokens, tag in targets:
      steps = max(1, round(tokens / tokens_per_step))
      name = f"{tag}_{size_name(size)}"
      if sweep.kind == "isoflop" and steps < sweep.min_steps:
        notes.append(f"dropped {name}: {steps} steps < min_steps={sweep.min_steps}")
        continue
      points.append((budget, steps, name))
    warmup = _size_warmup(sweep, [steps for _, steps, _ in points], cfg)
    size_runs = [Run(name, tuple(base + model_overrides(size)
                               + _schedule(sweep, steps, cfg, warmup)),
                     total, nonembed, steps, steps * tokens_per_step,
                     6.0 * total * steps * tokens_per_step, float(budget), sweep.kind)
                 for budget, steps, name in points]
    runs += _branches(size_runs, sweep.cooldown_fraction) if sweep.cooldown_fraction else size_runs
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ValueError("two sweep points share a run name; sizes or budgets are repeated")
  return sorted(runs, key=lambda r: (r.budget, r.params_total)), notes


def stable_steps(steps: int, cooldown_fraction: float) -> int:
  """Where a `wsd` run of `steps` steps starts its cooldown (as `optim.make_schedule` has it)."""
  return steps - round(cooldown_fraction * steps)


def _size_warmup(sweep: ml_collections.ConfigDict, steps: list[int],
                 cfg: ml_collections.ConfigDict) -> int | None:
  """One warmup for every run of a size in a cooldown sweep (so that their stable phases
  are the same steps), ending before the shortest run's cooldown; None otherwise."""
  if not sweep.cooldown_fraction or not steps:
    return None
  shortest = min(steps)
  warmup = round(sweep.warmup_fraction * shortest) if sweep.warmup_fraction > 0 \
      else cfg.optim.warmup_steps
  return max(1, min(warmup, stable_steps(shortest, sweep.cooldown_fraction)))


def _branches(size_runs: list[Run], cooldown_fraction: float) -> list[Run]:
  """A size's runs of a cooldown sweep: the longest is the trunk, the others branch from it."""
  trunk = max(size_runs, key=lambda r: r.steps)
  return [r if r is trunk else dataclasses.replace(
              r, trunk=trunk.name, branch_step=stable_steps(r.steps, cooldown_fraction))
          for r in size_runs]


def _schedule(sweep: ml_collections.ConfigDict, steps: int, cfg: ml_collections.ConfigDict,
              size_warmup: int | None) -> list[str]:
  """Per-run step count, warmup, eval and checkpoint cadence (and, in a cooldown sweep, the
  WSD schedule over the run's own length)."""
  out = [f"train.steps={steps}"]
  if size_warmup is not None:
    out += [f"optim.warmup_steps={size_warmup}", "optim.schedule=wsd",
            f"optim.cooldown_fraction={sweep.cooldown_fraction}", f"optim.decay_steps={steps}"]
  elif sweep.warmup_fraction > 0:
    out.append(f"optim.warmup_steps={max(1, min(steps - 1, round(sweep.warmup_fraction * steps)))}")
  else:
    out.append(f"optim.warmup_steps={min(cfg.optim.warmup_steps, max(steps - 1, 1))}")
  out.append(f"train.eval_every={steps // sweep.evals_per_run if sweep.evals_per_run > 1 else 0}")
  out.append(f"train.ckpt_every={max(1, math.ceil(steps / max(1, sweep.ckpts_per_run)))}")
  return out


def config_hash(cfg: ml_collections.ConfigDict) -> str:
  """A short hash of a run's resolved config (the tokenizer's file location left out, so a
  moved sweep folder keeps its hashes)."""
  d = configlib.to_dict(cfg)
  d["data"]["tokenizer"].pop("path", None)
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """Dotted keys present in both config dicts whose values differ (the tokenizer's file
  location aside). Keys only one side has are fields added or removed since, not changes."""
  diffs = []
  for key in sorted(set(saved) & set(current)):
    name = f"{prefix}{key}"
    a, b = saved[key], current[key]
    if name == "data.tokenizer.path":
      continue
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += config_differences(a, b, f"{name}.")
    elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
      diffs.append(f"{name}: {a!r} -> {b!r}")
  return diffs


def run_config(sweep: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
  """The resolved train config of one run."""
  return configlib.load(sweep.train_config, run.overrides)


def unavailable_reason(source: str) -> str | None:
  """None when the data source can be read here (no network needed), else why it cannot:
  a missing file or folder, or a tfds dataset that is not prepared locally."""
  kind, _, arg = source.partition(":")
  if kind in ("text", "jsonl"):
    return None if Path(arg).exists() else f"{arg} does not exist"
  if kind == "tfds":
    import os
    try:
      import tensorflow_datasets as tfds
      builder = tfds.builder(arg, data_dir=os.environ.get("TFDS_DATA_DIR") or None)
      return None if builder.is_prepared() else f"tfds:{arg} is not prepared"
    except Exception as e:  # not installed, unknown name, unreadable data dir
      return f"tfds:{arg} cannot be opened ({type(e).__name__}: {e})"
  return None


def sweep_tokenizer(sweep: ml_collections.ConfigDict, root: Path, shared: Sequence[str] = ()):
  """The tokenizer every run of the sweep shares: the train config's `data.tokenizer.path`,
  or one trained once on the training split and saved as ROOT/tokenizer.model."""
  from jaxlm.data import sources
  from jaxlm.data.tokenizer import Tokenizer
  from jaxlm.train.inputs import TOKENIZER_FILE, get_tokenizer
  cfg = configlib.load(sweep.train_config, list(shared) + list(sweep.overrides))
  path = Path(cfg.data.tokenizer.path) if cfg.data.tokenizer.path else root / TOKENIZER_FILE
  if path.is_file():
    return Tokenizer.load(path, cfg.data.tokenizer.num_sentinels), path
  corpus = sources.load_corpus(cfg.data.source, val_fraction=cfg.data.val_fraction,
                               text_field=cfg.data.text_field, task_cfg=cfg.task)
  tokenizer = get_tokenizer(cfg, root, corpus.train)
  root.mkdir(parents=True, exist_ok=True)
  tokenizer.save(path)
  return tokenizer, path
