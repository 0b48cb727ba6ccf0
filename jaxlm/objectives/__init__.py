"""Objectives: each module holds its batch preparation and its pure loss function."""

from types import ModuleType

from jaxlm.objectives import clm

OBJECTIVES: dict[str, ModuleType] = {"clm": clm}


def get(name: str) -> ModuleType:
  """The objective module called `name`."""
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name]
