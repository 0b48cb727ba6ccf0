"""HF <-> jaxlm rules of the mixture-of-experts blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
DeepSeek-V2 / V3) and of DeepSeek's multi-head latent attention; the experts' per-expert HF
tensors stacked into jaxlm's (experts, in, out) kernels and back."""

from __future__ import annotations

import collections
import re

import numpy as np

from jaxlm.interop.hf_rule import Rule, dense_rules, norm_rules
from jaxlm.models.config import ModelConfig

# One HF tensor per expert ("...experts.3.w1.weight"); jaxlm rules name them stacked
# ("...experts.w1.weight").
_EXPERT_TENSOR = re.compile(r"^(.*\.experts)\.(\d+)\.([^.]+\.weight)$")


def stack_experts(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`tensors` with every expert's weights stacked into one tensor per projection (experts
  in order; a missing one shows as a short stack, which the shape check names)."""
  out, groups = {}, collections.defaultdict(dict)
  for name, x in tensors.items():
    m = _EXPERT_TENSOR.match(name)
    if m:
      groups[f"{m[1]}.{m[3]}"][int(m[2])] = x
    else:
      out[name] = x
  for name, experts in groups.items():
    out[name] = np.stack([experts[j] for j in sorted(experts)])
  return out


def unstack_experts(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of `stack_experts`: one HF tensor per expert."""
  out = {}
  for name, x in tensors.items():
    module, _, leaf = name.rpartition(".experts.")
    if module and leaf.count(".") == 1:
      out.update({f"{module}.experts.{j}.{leaf}": x[j] for j in range(x.shape[0])})
    else:
      out[name] = x
  return out


# HF model type -> (its sparse MoE block's module in a layer, its experts' gate / up / down).
_QWEN_EXPERT = ("mlp", ("gate_proj", "up_proj", "down_proj"))
_MOE_NAMES = {"mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
              "qwen2_moe": _QWEN_EXPERT, "qwen3_moe": _QWEN_EXPERT, "olmoe": _QWEN_EXPERT,
              "deepseek_v2": _QWEN_EXPERT, "deepseek_v3": _QWEN_EXPERT}
_SHARED_EXPERT = {"qwen2_moe": "shared_expert", "deepseek_v2": "shared_experts",
                  "deepseek_v3": "shared_experts"}


def moe_rules(layer: str, path: str, kind: str) -> list[Rule]:
  """A sparse MoE block (Mixtral's, Qwen2-MoE's, Qwen3-MoE's, OLMoE's or DeepSeek-V2 / V3's):
  the router, the experts' projections, Qwen2-MoE's shared expert with its gate, DeepSeek's
  shared expert and V3's router bias."""
  module, projections = _MOE_NAMES[kind]
  hf = f"{layer}.{module}"
  rules = [Rule(f"{hf}.gate.weight", (f"{path}/router/kernel",), "linear")] + [
      Rule(f"{hf}.experts.{w}.weight", (f"{path}/{ours}/kernel",), "experts")
      for w, ours in zip(projections, ("gate", "up", "down"))]
  if kind in _SHARED_EXPERT:
    rules += [Rule(f"{hf}.{_SHARED_EXPERT[kind]}.{w}.weight", (f"{path}/shared/{ours}/kernel",),
                   "linear") for w, ours in zip(projections, ("gate", "up", "down"))]
  if kind == "qwen2_moe":
    rules.append(Rule(f"{hf}.shared_expert_gate.weight", (f"{path}/shared_gate/kernel",),
                      "linear"))
  if kind == "deepseek_v3":
    rules.append(Rule(f"{hf}.gate.e_score_correction_bias", (f"{path}/router_bias",)))
  return rules


def latent_attention_rules(cfg: ModelConfig, hf: str, path: str, interleaved: bool) -> list[Rule]:
  """DeepSeek-V2 / V3's MLA projections and norms. Its heads hold [no-position ; rotary]
  dimensions and jaxlm's [rotary ; no-position]; with `interleaved` (rope_interleave) its
  rotary dimensions are pairs (x0, x1), (x2, x3), ... that jaxlm holds as halves."""
  p, r, h = cfg.qk_rope_head_dim, cfg.kv_lora_rank, cfg.head_size
  rotary = [*range(0, p, 2), *range(1, p, 2)] if interleaved else list(range(p))
  head = [h - p + j for j in rotary] + list(range(h - p))
  queries = tuple(n * h + j for n in range(cfg.num_heads) for j in head)
  rules = [Rule(f"{hf}.kv_a_proj_with_mqa.weight", (f"{path}/kv_down/kernel",), "linear",
                order=tuple(range(r)) + tuple(r + j for j in rotary))]
  rules += norm_rules(f"{hf}.kv_a_layernorm", f"{path}/kv_down_norm", False)
  rules += dense_rules(f"{hf}.kv_b_proj", f"{path}/kv_up", False)
  rules += dense_rules(f"{hf}.o_proj", f"{path}/out", False)
  if not cfg.q_lora_rank:
    return rules + [Rule(f"{hf}.q_proj.weight", (f"{path}/query/kernel",), "linear",
                         order=queries)]
  return rules + dense_rules(f"{hf}.q_a_proj", f"{path}/query_down", False) + norm_rules(
      f"{hf}.q_a_layernorm", f"{path}/query_down_norm", False) + [
      Rule(f"{hf}.q_b_proj.weight", (f"{path}/query_up/kernel",), "linear", order=queries)]
