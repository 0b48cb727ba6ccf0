"""Metrics: JSONL and TensorBoard writers, flops per token and model flops utilisation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

METRICS_FILE = "metrics.jsonl"

# bf16 dense peak FLOP/s per chip, keyed by `jax.Device.device_kind`. Unknown kinds get no MFU.
PEAK_FLOPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 SXM5 80GB": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H200 NVL": 835e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
  """Peak bf16 FLOP/s of one device of this kind, or None when not in the table."""
  return PEAK_FLOPS.get(device_kind)


def flops_per_token(matmul_params: int, num_layers: int, num_heads: int, head_dim: float,
                    seq_len: int, *, causal_halved: bool = False,
                    trained_params: int | None = None) -> float:
  """Training flops per token, PaLM appendix B: 6N + 12 * L * H * Q * T, the attention term
  counted in full as peer figures do; `causal_halved` counts only the unmasked half of it.

  `trained_params` (None: all N) are the matmul parameters whose gradients the step forms: a
  frozen weight (PEFT) costs the forward's 2 flops and the activations' gradient's 2, not
  the 2 of its own gradient, so a PEFT step does 4N + 2 * trained (an upper bound where no
  gradient needs to pass the lowest frozen layers)."""
  attention = 12 * num_layers * num_heads * head_dim * seq_len
  trained = matmul_params if trained_params is None else trained_params
  return 4 * matmul_params + 2 * trained + (attention / 2 if causal_halved else attention)


def mfu(tokens_per_second: float, flops_token: float, device_kind: str,
        num_devices: int) -> float | None:
  """Model flops utilisation in [0, 1], or None on a device of unknown peak."""
  peak = peak_flops(device_kind)
  if peak is None:
    return None
  return tokens_per_second * flops_token / (peak * num_devices)


def compiled_memory_gib(analysis: Any) -> dict[str, float]:
  """Device memory of a compiled step from `compiled.memory_analysis()`, in GiB: `step`
  (arguments + temporaries + outputs - donated aliases) and `temp` (temporaries alone)."""
  gib = 2.0**30
  step = (analysis.argument_size_in_bytes + analysis.temp_size_in_bytes
          + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  return {"step": step / gib, "temp": analysis.temp_size_in_bytes / gib}


def to_python(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host floats of (already fetched) scalar metrics."""
  return {k: float(np.asarray(v)) for k, v in metrics.items()}


def mean_metrics(history: list[Mapping[str, Any]]) -> dict[str, float]:
  """Mean of each metric over a list of host metric dicts. A NaN entry is a metric that one
  batch could not define (KTO's rewards of a label the batch lacks) and is left out; a
  metric no batch defined stays NaN, which the writer drops."""
  return {k: nan_mean([h[k] for h in history]) for k in history[0]} if history else {}


def nan_mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
  """(Weighted) mean of the entries of `values` that are not NaN; NaN when none is."""
  x = np.asarray(values, np.float64)
  w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64)
  keep = ~np.isnan(x)
  total = w[keep].sum()
  return float(np.dot(w[keep], x[keep]) / total) if keep.any() and total > 0 else math.nan


def token_weighted_mean(history: list[Mapping[str, Any]]) -> dict[str, float]:
  """Metrics of several batches as of one: each batch's per-token means weighted by its
  `tokens` (which are summed); a plain mean when the metrics count no tokens."""
  if not history or "tokens" not in history[0]:
    return mean_metrics(history)
  weights = np.array([h["tokens"] for h in history], np.float64)
  total = weights.sum()
  result = {k: nan_mean([h[k] for h in history], weights) for k in history[0]}
  result["tokens"] = float(total)
  return result


def read_log(workdir: str | Path) -> list[dict[str, Any]]:
  """Every record of `workdir/metrics.jsonl` in order (none when the run logged nothing)."""
  path = Path(workdir) / METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
      if path.is_file() else []


def last_logged(workdir: str | Path) -> dict[str, float]:
  """The newest train and eval metrics in `workdir/metrics.jsonl`, named as `train()` returns
  them (train_loss, tokens_per_sec, eval_*): a finished run's summary without rerunning it."""
  newest = {record.get("split", ""): record for record in read_log(workdir)}
  result = {}
  if "train" in newest:
    result.update({k: newest["train"][k] for k in ("loss", "tokens_per_sec")
                   if k in newest["train"]})
    if "loss" in result:
      result["train_loss"] = result.pop("loss")
  result.update({f"eval_{k}": v for k, v in newest.get("eval", {}).items()
                 if k not in ("step", "split")})
  return result


class MetricsWriter:
  """Appends metrics to `workdir/metrics.jsonl` and TensorBoard event files (tensorboardX,
  no TensorFlow). Only the main process writes."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.enabled = enabled
    self.path = Path(workdir) / METRICS_FILE
    self.tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    """Records `metrics` of `split` (train / eval) at `step`."""
    if not self.enabled:
      return
    clean = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
    with self.path.open("a") as f:
      f.write(json.dumps({"step": step, "split": split, **clean}) + "\n")
    for k, v in clean.items():
      self.tb.add_scalar(f"{split}/{k}", v, step)

  def write_text(self, step: int, tag: str, text: str) -> None:
    """Records a text sample."""
    if self.enabled:
      self.tb.add_text(tag, text, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
