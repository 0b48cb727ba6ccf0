"""Preference win rate of a policy against a reference, judged by a reward model.

Both runs answer the same prompts; the reward model scores each (prompt, reply). Per
prompt the policy wins (1) when its score exceeds the reference's by more than
`tie_tolerance`, ties (1/2) within it, else loses (0). The win rate is the mean outcome, so
ties count half. Its interval is either the Wilson score interval computed with
p = (wins + ties / 2) / n over all n prompts, or a percentile bootstrap over prompts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from jaxlm.models.config import STYLES

INTERVALS = ("wilson", "bootstrap")


def outcomes(policy: Sequence[float], reference: Sequence[float],
             tie_tolerance: float = 0.0) -> np.ndarray:
  """1 / 0.5 / 0 per prompt: the policy's score above, within `tie_tolerance` of, or below
  the reference's."""
  policy, reference = np.asarray(policy, float), np.asarray(reference, float)
  if policy.shape != reference.shape or policy.ndim != 1 or not len(policy):
    raise ValueError(f"need two equal-length, non-empty score lists, got {policy.shape} and "
                     f"{reference.shape}")
  if tie_tolerance < 0:
    raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
  diff = policy - reference
  return np.where(diff > tie_tolerance, 1.0, np.where(diff < -tie_tolerance, 0.0, 0.5))


def wilson_interval(p: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """Wilson score interval of a proportion `p` observed over `n` trials."""
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  z = float(stats.norm.ppf(0.5 + confidence / 2))
  denom = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denom
  half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, center - half), min(1.0, center + half)


def bootstrap_interval(values: np.ndarray, confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of `values` (resampled with replacement)."""
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  rng = np.random.default_rng(seed)
  means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
  lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
  return float(lo), float(hi)


def win_rate(policy: Sequence[float], reference: Sequence[float], *, tie_tolerance: float = 0.0,
             interval: str = "wilson", confidence: float = 0.95, resamples: int = 10_000,
             seed: int = 0) -> dict[str, float]:
  """Win rate (ties half), counts and its `interval` ("wilson" or "bootstrap")."""
  if interval not in INTERVALS:
    raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
  o = outcomes(policy, reference, tie_tolerance)
  rate = float(o.mean())
  lo, hi = (wilson_interval(rate, len(o), confidence) if interval == "wilson"
            else bootstrap_interval(o, confidence, resamples, seed))
  return {"win_rate": rate, "ci_low": lo, "ci_high": hi, "wins": int((o == 1).sum()),
          "ties": int((o == 0.5).sum()), "losses": int((o == 0).sum()), "n": len(o),
          "confidence": confidence}


def replies_of(workdir: str | Path, fmt: str, problems: Sequence[Any], prompting: Any,
               pool: Sequence[Any] | None) -> list[str]:
  """One reply per problem from the run in `workdir` (the first sample's full reply)."""
  from jaxlm.eval import generative, prompting as prompting_lib
  from jaxlm.rl.trainer import load_run
  cfg, tokenizer, graphdef, params = load_run(workdir)
  renderer = prompting_lib.renderer(fmt, tokenizer, cfg.chat, STYLES[cfg.model.style])
  records = generative.answer(graphdef, params, renderer, problems, prompting.for_run(cfg),
                              pool=pool)
  return [r["samples"][0]["reply"] for r in records]


def compare_runs(policy: str | Path, reference: str | Path, reward_model: str | Path,
                 problems: Sequence[Any], prompting: Any, *, fmt: str = "chat",
                 pool: Sequence[Any] | None = None,
                 **win_rate_kwargs: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Win rate of `policy`'s replies against `reference`'s, judged by `reward_model`, and
  the per-prompt records."""
  from jaxlm.eval.reward_scores import score_texts
  for name, folder in (("reference", reference), ("reward_model", reward_model)):
    if not folder or not (Path(folder) / "config.json").is_file():
      raise FileNotFoundError(f"win_rate.{name}={str(folder)!r} is not a jaxlm workdir (no "
                              "config.json); set it to a trained run")
  if prompting.samples != 1:
    raise ValueError("a win rate compares one reply per prompt: set prompt.samples=1")
  prompts = [p.prompt for p in problems]
  ours = replies_of(policy, fmt, problems, prompting, pool)
  theirs = replies_of(reference, fmt, problems, prompting, pool)
  ours_s, theirs_s = score_texts(reward_model, prompts, ours), score_texts(reward_model, prompts,
                                                                           theirs)
  metrics = win_rate(ours_s, theirs_s, **win_rate_kwargs)
  records = [{"prompt": p, "policy": a, "reference": b, "policy_score": x, "reference_score": y}
             for p, a, b, x, y in zip(prompts, ours, theirs, ours_s, theirs_s)]
  return metrics, records
