"""The frozen reference policy of the DPO-style objectives (DPO, KTO): which run, and how.

Rows hold several sides (`chosen_*` / `rejected_*` for DPO, `completion_*` / `kl_*` for KTO);
the policy scores all of them in one forward pass. `<section>.reference` (default
`init_from`) names the reference run. `<section>.reference_mode=cached` (default) computes its
log-probs once in a pre-pass, cached on disk per example (`jaxlm.train.precompute`) as the
columns `<side>_ref`, so it never sits in memory during training; `frozen` evaluates it on the
fly in the same step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm.models import moe
from jaxlm.objectives.logprobs import sequence_logprobs, sequence_mean_logprobs
from jaxlm.objectives.preference_data import side

MODES = ("cached", "frozen")


def reference_run(cfg: ml_collections.ConfigDict, section: str) -> str:
  """The reference run's workdir: `<section>.reference`, else `init_from`."""
  settings = cfg[section]
  if settings.reference_mode not in MODES:
    raise ValueError(f"{section}.reference_mode must be cached or frozen, got "
                     f"{settings.reference_mode!r}")
  reference = settings.reference or cfg.init_from
  if not reference:
    raise ValueError(f"{cfg.objective} needs a reference: set {section}.reference or init_from "
                     "to a trained run")
  return reference


def side_logprobs_and_router_stats(model, batch: dict, rng: jax.Array | None,
                                   sides: Sequence[str], *, mean: bool = False
                                   ) -> tuple[list[jax.Array], dict[str, jax.Array]]:
  """Summed (or length-normalised) response log-probs of each side, one forward pass, and a
  mixture of experts' router statistics over all the sides' tokens ({} for a dense model)."""
  parts = [side(batch, name) for name in sides]
  rows = {k: jnp.concatenate([p[k] for p in parts]) for k in parts[0]}
  logits, stats = moe.logits_and_router_stats(model, rows["tokens"], rows["positions"],
                                              rows["segment_ids"], dropout_rng=rng)
  reduce = sequence_mean_logprobs if mean else sequence_logprobs
  return jnp.split(reduce(logits, rows["targets"], rows["loss_mask"]), len(sides)), stats


def side_logprobs(model, batch: dict, rng: jax.Array | None, sides: Sequence[str], *,
                  mean: bool = False) -> list[jax.Array]:
  """Summed (or length-normalised) response log-probs of each side, one forward pass."""
  return side_logprobs_and_router_stats(model, batch, rng, sides, mean=mean)[0]


def columns_fn(sides: Sequence[str]) -> Callable:
  """The pre-pass: a chunk of rows -> the reference's `<side>_ref` log-prob columns."""
  def columns(model, rows: dict) -> dict:
    return {f"{s}_ref": logp for s, logp in zip(sides, side_logprobs(model, rows, None, sides))}
  return columns


def frozen_models(cfg: ml_collections.ConfigDict, section: str,
                  reference: str | None) -> dict[str, str]:
  """The reference held frozen in the step (`<section>.reference_mode=frozen`)."""
  return {"reference": reference} if reference and cfg[section].reference_mode == "frozen" else {}


def precompute(cfg: ml_collections.ConfigDict, section: str, reference: str | None,
               sides: Sequence[str], name: str = "reference") -> dict:
  """The cached pre-pass of the reference's log-probs (`<section>.reference_mode=cached`);
  `name` keys its on-disk cache, so objectives whose rows differ keep separate files."""
  if reference and cfg[section].reference_mode == "cached":
    return {name: (reference, columns_fn(sides))}
  return {}


def reference_logprobs(batch: dict, frozen: dict | None,
                       sides: Sequence[str]) -> list[jax.Array]:
  """The reference's log-probs of each side: the pre-pass's columns when the batch has them,
  else the frozen model's, as constants."""
  if f"{sides[0]}_ref" in batch:
    return [batch[f"{s}_ref"] for s in sides]
  return jax.lax.stop_gradient(side_logprobs(frozen["reference"], batch, None, sides))
