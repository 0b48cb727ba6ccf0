"""Objectives: each module holds its batch preparation and its pure loss function.

An objective module defines `MODEL_FAMILY` (decoder, encoder or encdec), `build_batches(tokens,
segments, *, cfg, tokenizer, seed, process_index, process_count)` returning random-access
batches, and `loss_fn(model, batch, rng, frozen=None) -> (loss, metrics)` (or
`make_loss_fn(cfg)` returning one, when the loss has settings). Optional: `INPUT = "records"`
with `load_records(cfg)` / `record_texts(records)` for JSONL-record objectives,
`frozen_models(cfg) -> {name: workdir}` for frozen reference / teacher models, and
`make_model(model_cfg, rngs)` for a model other than the family's default.
"""

from types import ModuleType
from typing import Callable

from jaxlm.objectives import (clm, distill, dpo, kto, mlm, prefix_lm, reward, seq2seq, sft,
                              span)

OBJECTIVES: dict[str, ModuleType] = {
    "clm": clm, "prefix_lm": prefix_lm, "mlm": mlm, "span": span, "sft": sft,
    "seq2seq": seq2seq, "reward": reward, "dpo": dpo, "kto": kto, "distill": distill}


def get(name: str) -> ModuleType:
  """The objective module called `name`."""
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name]


# Objectives whose loss reads train.z_loss.
Z_LOSS = ("clm", "sft")


def loss_fn_for(cfg) -> Callable:
  """The objective's loss function with the run's settings bound."""
  if cfg.train.get("z_loss") and cfg.objective not in Z_LOSS:
    raise ValueError(f"train.z_loss is for the {', '.join(Z_LOSS)} objectives, not "
                     f"{cfg.objective!r}")
  objective = get(cfg.objective)
  return objective.make_loss_fn(cfg) if hasattr(objective, "make_loss_fn") else objective.loss_fn


def frozen_workdirs(cfg) -> dict[str, str]:
  """{name: workdir} of the frozen models the objective needs (a reference, a teacher)."""
  return getattr(get(cfg.objective), "frozen_models", lambda _: {})(cfg)
