"""The error an HF import or export raises for what jaxlm cannot reproduce exactly."""

from __future__ import annotations


class UnsupportedModelError(ValueError):
  """An HF checkpoint whose architecture or options jaxlm cannot reproduce exactly."""


def require_supported(ok: bool, what: str) -> None:
  """Raises UnsupportedModelError(`what`) unless `ok`."""
  if not ok:
    raise UnsupportedModelError(what)
