"""Objectives: each module holds its batch preparation and its pure loss function.

An objective module defines `MODEL_FAMILY` (decoder, encoder or encdec), `build_batches(tokens,
segments, *, cfg, tokenizer, seed, process_index, process_count)` returning random-access
batches, and `loss_fn(model, batch, rng) -> (loss, metrics)`.
"""

from types import ModuleType

from jaxlm.objectives import clm, mlm, prefix_lm, span

OBJECTIVES: dict[str, ModuleType] = {"clm": clm, "prefix_lm": prefix_lm, "mlm": mlm, "span": span}


def get(name: str) -> ModuleType:
  """The objective module called `name`."""
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name]
