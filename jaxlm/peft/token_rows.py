"""Trainable token rows (PEFT's `trainable_token_indices`): single rows of the token embedding
train beside an adapter while the rest of the table stays frozen.

A tokenizer's new tokens (jaxlm's chat role tokens, a markup's special tokens) never occurred
in pretraining, so their rows are untrained; an adapter cannot fix an input it cannot tell
apart. `apply_token_rows` swaps the decoder's (or encoder's, or T5's shared) embedding for a
`TokenRowsEmbed` that keeps the same `embedding` table (paths, checkpoints and `init_from`
unchanged) and adds `token_rows` (n, D), a trainable copy of the named rows that replaces
them in the lookup and in a tied output head. A fresh model equals the base exactly;
`init_from` re-copies the rows from the loaded table (`recopy_rows`); `merge_rows` writes
them into the table for export.

`peft.trainable_tokens` names the ids: "" none, comma-separated ids, or "chat": the chat
template's own tokens (jaxlm's role tokens, or a markup's special tokens), resolved against
the run's tokenizer when training starts (`resolve`), so the saved config lists the ids.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from jaxlm.models import layers
from jaxlm.models.stacking import path_name
from jaxlm.peft.params import new_param

CHAT = "chat"
EMBED_TABLE, ROWS = "embed/embedding", "embed/token_rows"


class TokenRowsEmbed(layers.Embed):
  """An embedding whose rows `ids` come from the trainable `token_rows` instead of the
  (frozen) table."""

  def __init__(self, base: layers.Embed, ids: Sequence[int]):
    # The base's table and settings as they are (no new table is drawn).
    for name, value in vars(base).items():
      if not name.startswith("_"):
        setattr(self, name, value)
    self.token_ids = tuple(int(i) for i in ids)
    self.token_rows = new_param(lambda *_: base.embedding[...][np.asarray(self.token_ids)],
                                (None, "embed"), None, (len(self.token_ids), base.features))

  def table(self) -> jax.Array:
    """The table with the trainable rows in place of rows `token_ids`."""
    return self.embedding[...].at[np.asarray(self.token_ids)].set(
        self.token_rows[...].astype(self.embedding.dtype))


def parse(spec: str) -> list[int]:
  """The ids of a resolved `peft.trainable_tokens` ("" none, "3,17,42")."""
  if spec == CHAT:
    raise ValueError("peft.trainable_tokens=chat names the chat template's tokens: `jaxlm "
                     "train` resolves it against the run's tokenizer; elsewhere list the ids")
  try:
    ids = [int(part) for part in spec.split(",") if part.strip()]
  except ValueError:
    raise ValueError(f"peft.trainable_tokens must be '', '{CHAT}' or comma-separated token ids, "
                     f"got {spec!r}") from None
  if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
    raise ValueError(f"peft.trainable_tokens must list distinct ids >= 0, got {spec!r}")
  return ids


def resolve(spec: str, chat_ids: Sequence[int]) -> str:
  """`peft.trainable_tokens` with "chat" replaced by the chat template's token ids."""
  return ",".join(map(str, sorted(set(chat_ids)))) if spec == CHAT else spec


def apply_token_rows(model: nnx.Module, ids: Sequence[int]) -> None:
  """Swaps `model.embed` for a `TokenRowsEmbed` training rows `ids` (in place)."""
  embed = getattr(model, "embed", None)
  if not isinstance(embed, layers.Embed):
    raise ValueError(f"peft.trainable_tokens needs a model with a token embedding, got "
                     f"{type(model).__name__}")
  if max(ids) >= embed.num_embeddings:
    raise ValueError(f"peft.trainable_tokens: id {max(ids)} is past the vocabulary of "
                     f"{embed.num_embeddings}")
  model.embed = TokenRowsEmbed(embed, ids)


def recopy_rows(params: Any, loaded: Collection[str], ids: Sequence[int]) -> Any:
  """`params` with the token rows copied again from the table when `init_from` replaced the
  table (`loaded`: the replaced paths) but not the rows, so the model equals the loaded one."""
  if EMBED_TABLE not in loaded or ROWS in loaded:
    return params
  return jax.tree_util.tree_map_with_path(
      lambda p, x: params["embed"]["embedding"][np.asarray(ids)] if path_name(p) == ROWS else x,
      params)


def merge_rows(flat: Mapping[str, np.ndarray], ids: Sequence[int]) -> dict[str, np.ndarray]:
  """Flat params (by path) with the trained rows written into the table, their leaf gone."""
  out = {k: v for k, v in flat.items() if k != ROWS}
  if ROWS in flat:
    table = np.array(flat[EMBED_TABLE])
    table[np.asarray(ids)] = flat[ROWS]
    out[EMBED_TABLE] = table
  return out
