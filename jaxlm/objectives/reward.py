"""Reward modelling: a decoder with a scalar head trained on preference pairs (Bradley-Terry).

Records are JSONL `{"prompt", "chosen", "rejected"}`; the score of each side is read at its
last real token; loss -log sigmoid(s_chosen - s_rejected - reward.margin). Metrics: loss,
accuracy (chosen scored higher) and mean margin. A mixture-of-experts reward model adds its
router losses over both sides' tokens (as `clm`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm.data import chat, formats
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.models import moe
from jaxlm.models.reward import RewardModel
from jaxlm.objectives import records
from jaxlm.objectives.preference_data import pair_batches, side
from jaxlm.objectives.preference_losses import bradley_terry_loss
from jaxlm.objectives.sft_data import SFTBatches

MODEL_FAMILY = "decoder"
INPUT = "records"
make_model = RewardModel


def load_records(cfg: ml_collections.ConfigDict) -> tuple[list, list]:
  """Train and validation preference pairs from `data.source` (jsonl, tfds or task)."""
  return records.load_split(cfg, formats.parse_preference, records.task_preferences)


def record_texts(pairs: list) -> list[str]:
  """Prompt, chosen and rejected texts."""
  return [t for p in pairs for t in (*(m["content"] for m in p["prompt"]), p["chosen"],
                                     p["rejected"])]


def build_batches(pairs: list, *, cfg: ml_collections.ConfigDict, tokenizer: Tokenizer,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  in_inputs: bool = True) -> SFTBatches:
  """Pair rows (chosen_* / rejected_*) as random-access batches; with `in_inputs` each side
  fits the `data.seq_len` inputs, so its score is read at its own end token."""
  return pair_batches(pairs, tokenizer, chat.from_config(cfg.chat), seq_len=cfg.data.seq_len,
                      global_batch=cfg.train.batch_size, seed=seed, process_index=process_index,
                      process_count=process_count, in_inputs=in_inputs)


def pair_scores(model: RewardModel, batch: dict, rng: jax.Array | None
                ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Scores of the chosen and rejected sides, from one forward pass over both, and a
  mixture of experts' router statistics over it ({} for a dense model)."""
  chosen, rejected = side(batch, "chosen"), side(batch, "rejected")
  both = {k: jnp.concatenate([chosen[k], rejected[k]]) for k in ("tokens", "positions",
                                                                  "segment_ids")}
  scores_2B, stats = model.score_and_router_stats(both["tokens"], both["positions"],
                                                  both["segment_ids"], dropout_rng=rng)
  chosen_B, rejected_B = jnp.split(scores_2B, 2)
  return chosen_B, rejected_B, stats


def make_loss_fn(cfg: ml_collections.ConfigDict):
  """Bradley-Terry loss with `reward.margin` bound."""
  margin = cfg.reward.margin

  def loss_fn(model, batch: dict, rng, frozen: dict | None = None):
    chosen_B, rejected_B, stats = pair_scores(model, batch, rng)
    loss, metrics = bradley_terry_loss(chosen_B, rejected_B,
                                       jnp.full_like(chosen_B, margin) if margin else None)
    return moe.with_router_losses(model, loss, metrics, stats)

  return loss_fn
