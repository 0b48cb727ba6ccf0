"""Files an HF import keeps in its workdir, and finding them from the runs that start from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HF_CONFIG_FILE = "hf_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def source_file(workdir: Path, name: str) -> dict[str, Any] | None:
  """JSON file `name` kept by the import a workdir started from (itself or up its init_from
  chain), None when there is none."""
  seen = set()
  workdir = Path(workdir)
  while workdir not in seen:
    seen.add(workdir)
    if (workdir / name).is_file():
      return json.loads((workdir / name).read_text())
    config_file = workdir / "config.json"
    if not config_file.is_file():
      return None
    parent = json.loads(config_file.read_text()).get("init_from")
    if not parent:
      return None
    workdir = Path(parent)
  return None
