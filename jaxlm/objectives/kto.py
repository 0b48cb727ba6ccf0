"""Kahneman-Tversky optimisation (KTO, Ethayarajh et al. 2024) on unpaired feedback.

Records are JSONL `{"prompt", "completion", "label"}` (label true for a desirable reply), or
preference pairs `{"prompt", "chosen", "rejected"}`, each read as a desirable and an
undesirable reply (as TRL's `unpair_preference_dataset`); `data.source=task:KINDS` gives the
shipped tasks' pairs. Each row holds a reply (`completion_*`) and, for KTO's reference point
z0, the same prompt with a reply to a different prompt (`kl_*`): the next example's in file
order whose prompt differs, fixed for the run (TRL pairs each prompt with its batch
neighbour's reply at preparation time too); the policy scores those rows in a forward pass
of their own, without dropout or gradient, as z0 is a constant. The loss and metrics:
`kto_loss` in `jaxlm.objectives.preference_losses` (`kto.beta`, `kto.desirable_weight`,
`kto.undesirable_weight`). The reference run: `kto.reference` (default `init_from`),
`kto.reference_mode=cached|frozen`, see `jaxlm.objectives.reference`. A mixture-of-experts
policy adds its router losses over the completion rows (as `clm`).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from jaxlm.data import chat, formats
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.models import moe
from jaxlm.objectives import records, reference
from jaxlm.objectives.preference_data import side_rows
from jaxlm.objectives.preference_losses import kto_loss
from jaxlm.objectives.sft_data import SFTBatches

MODEL_FAMILY = "decoder"
INPUT = "records"
SIDES = ("completion", "kl")


def task_replies(examples: list) -> list:
  """Each task example's answer (desirable) and a corruption of it (undesirable)."""
  return [formats.parse_unpaired(p, f"task pair {i}")
          for i, p in enumerate(records.task_preferences(examples))]


def load_records(cfg: ml_collections.ConfigDict) -> tuple[list, list]:
  """Train and validation replies `{prompt, completion, label}` from `data.source`."""
  return tuple([r for group in split for r in group]
               for split in records.load_split(cfg, formats.parse_unpaired, task_replies))


def record_texts(replies: list) -> list[str]:
  """Prompt and reply texts."""
  return [t for r in replies for t in (*(m["content"] for m in r["prompt"]), r["completion"])]


def kl_partners(replies: Sequence[dict]) -> np.ndarray:
  """For each reply, the index of the next reply (cyclically) to a different prompt."""
  keys = [json.dumps(r["prompt"], sort_keys=True) for r in replies]
  n = len(keys)
  partners = np.empty(n, np.int64)
  for i, key in enumerate(keys):
    partners[i] = next(((i + s) % n for s in range(1, n) if keys[(i + s) % n] != key), -1)
    if partners[i] < 0:
      raise ValueError("KTO's KL reference point needs replies to at least two different "
                       f"prompts; all {n} replies answer the same one")
  return partners


def build_batches(replies: list, *, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  seed: int, process_index: int = 0, process_count: int = 1) -> SFTBatches:
  """Rows of a reply and its mismatched KL reply, with a `desirable` column (0 / 1)."""
  partner = kl_partners(replies)
  sides = {"completion": [(r["prompt"], r["completion"]) for r in replies],
           "kl": [(r["prompt"], replies[j]["completion"]) for r, j in zip(replies, partner)]}
  rows, kept = side_rows(sides, tokenizer, chat.from_config(cfg.chat), cfg.data.seq_len)
  if not kept.all():
    print(f"KTO data: dropped {int((~kept).sum())} of {len(replies)} replies longer than "
          f"{cfg.data.seq_len + 1} tokens (with their KL rows)")
  rows["desirable"] = np.array([r["label"] for r in replies], np.int32)[kept]
  return SFTBatches(rows, global_batch=cfg.train.batch_size, seed=seed,
                    process_index=process_index, process_count=process_count)


def reference_run(cfg: ml_collections.ConfigDict) -> str:
  """The reference run's workdir (`kto.reference`, else `init_from`)."""
  return reference.reference_run(cfg, "kto")


def frozen_models(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """The reference held frozen in the step (`kto.reference_mode=frozen`)."""
  return reference.frozen_models(cfg, "kto", reference_run(cfg))


def precompute(cfg: ml_collections.ConfigDict) -> dict:
  """Reference log-probs of both sides computed once (`kto.reference_mode=cached`)."""
  return reference.precompute(cfg, "kto", reference_run(cfg), SIDES, name="kto_reference")


def make_loss_fn(cfg: ml_collections.ConfigDict):
  """KTO's loss with `kto.*` bound, the reference from the pre-pass or `frozen`."""
  k = cfg.kto
  if k.beta <= 0 or k.desirable_weight < 0 or k.undesirable_weight < 0:
    raise ValueError(f"kto.beta must be > 0 and the kto.*_weight settings >= 0, got beta "
                     f"{k.beta}, weights {k.desirable_weight} / {k.undesirable_weight}")

  def loss_fn(model, batch: dict, rng, frozen: dict | None = None) -> tuple[Any, dict]:
    (policy_B,), stats = reference.side_logprobs_and_router_stats(model, batch, rng, SIDES[:1])
    # z0 takes no gradient: a forward of its own keeps the KL rows out of the backward pass
    (policy_kl_B,) = jax.lax.stop_gradient(
        reference.side_logprobs(model, batch, None, SIDES[1:]))
    ref_B, ref_kl_B = reference.reference_logprobs(batch, frozen, SIDES)
    loss, metrics = kto_loss(policy_B, ref_B, policy_kl_B, ref_kl_B, batch["desirable"],
                             beta=k.beta, desirable_weight=k.desirable_weight,
                             undesirable_weight=k.undesirable_weight)
    return moe.with_router_losses(model, loss, metrics, stats)

  return loss_fn
