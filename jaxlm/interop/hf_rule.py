"""One HF tensor <-> jaxlm parameter(s): the unit of `hf_weights`' mappings.

A `Rule` ties one HF tensor to one or more jaxlm parameter paths ("blocks/0/attn/query/
kernel") with a layout change: `copy`, `linear` (torch Linear weights are (out, in), jaxlm
kernels (in, out)), `split` (GPT-2's fused `c_attn` Conv1D into query / key / value) or
`heads` (GPT-NeoX's fused `query_key_value` Linear, whose rows run head by head, each head's
query, key and value in turn) or `rows` (a Linear whose output rows are the parts one after
another, `sizes` long: Phi-3's `qkv_proj` and `gate_up_proj`) or `skip_rows` (a table whose
first `skip` rows jaxlm has no use for: OPT's position offset; zeros on export) or `experts`
(Linear weights of every expert, (experts, out, in), stacked by `stack_experts` from HF's
one tensor per expert; jaxlm's expert kernels are (experts, in, out)).
`order` (a `linear` rule) reorders the HF tensor's rows on import and back on export
(DeepSeek-V3's per-head [no-position ; rotary] dimensions, its rotary pairs interleaved).
`scale` multiplies on import and divides on export (T5's output scaling folded into the head);
`offset` is added on import and taken off on export (Gemma's norms multiply by 1 + w).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
  """One HF tensor <-> jaxlm parameter path(s)."""

  hf: str
  paths: tuple[str, ...]
  kind: str = "copy"  # copy | linear | split | heads | rows | skip_rows | experts
  scale: float = 1.0
  offset: float = 0.0
  heads: int = 0  # kind "heads": the number of attention heads
  sizes: tuple[int, ...] = ()  # kind "rows": each part's number of rows
  skip: int = 0  # kind "skip_rows": rows before the first one jaxlm keeps
  order: tuple[int, ...] = ()  # the HF rows in jaxlm's order (empty: as they are)

  def to_jaxlm(self, x: np.ndarray) -> list[np.ndarray]:
    """The jaxlm arrays of HF tensor `x`."""
    x = x * self.scale if self.scale != 1.0 else x
    x = x + self.offset if self.offset else x
    x = x[np.asarray(self.order)] if self.order else x
    if self.kind == "linear":
      return [x.T]
    if self.kind == "experts":
      return [np.swapaxes(x, 1, 2)]
    if self.kind == "split":
      return np.split(x, len(self.paths), axis=-1)
    if self.kind == "rows":
      return np.split(x.T, np.cumsum(self.sizes)[:-1], axis=-1)
    if self.kind == "skip_rows":
      return [x[self.skip:]]
    if self.kind == "heads":  # rows (heads, parts, head size) -> one (in, heads * size) per part
      per_head = x.reshape(self.heads, len(self.paths), -1, *x.shape[1:])
      return [per_head[:, j].reshape(-1, *x.shape[1:]).T for j in range(len(self.paths))]
    return [x]

  def to_hf(self, xs: list[np.ndarray]) -> np.ndarray:
    """The HF tensor of the jaxlm arrays `xs` (one per path)."""
    if self.kind == "linear":
      x = xs[0].T
    elif self.kind == "experts":
      x = np.swapaxes(xs[0], 1, 2)
    elif self.kind == "split":
      x = np.concatenate(xs, axis=-1)
    elif self.kind == "rows":
      x = np.concatenate(xs, axis=-1).T
    elif self.kind == "skip_rows":
      x = np.concatenate([np.zeros((self.skip, *xs[0].shape[1:]), xs[0].dtype), xs[0]])
    elif self.kind == "heads":
      rows = [a.T.reshape(self.heads, -1, *a.T.shape[1:]) for a in xs]
      x = np.stack(rows, axis=1).reshape(-1, *rows[0].shape[2:])
    else:
      x = xs[0]
    x = x[np.argsort(self.order)] if self.order else x
    x = x - self.offset if self.offset else x
    return x / self.scale if self.scale != 1.0 else x

  @property
  def module(self) -> str:
    """The HF module holding this weight (the name without `.weight`)."""
    return self.hf.rsplit(".", 1)[0]


def norm_rules(hf: str, path: str, layer_norm: bool, offset: float = 0.0) -> list[Rule]:
  """A norm's scale (and with `layer_norm` its bias)."""
  rules = [Rule(f"{hf}.weight", (f"{path}/scale",), offset=offset)]
  return rules + [Rule(f"{hf}.bias", (f"{path}/bias",))] if layer_norm else rules


def dense_rules(hf: str, path: str, bias: bool, kind: str = "linear") -> list[Rule]:
  """A Linear's weight (and with `bias` its bias)."""
  rules = [Rule(f"{hf}.weight", (f"{path}/kernel",), kind)]
  return rules + [Rule(f"{hf}.bias", (f"{path}/bias",))] if bias else rules
