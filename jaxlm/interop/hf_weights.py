"""Tensor-by-tensor mapping between HF checkpoints and jaxlm parameters, both directions: the
`Rule`s (`hf_rule`) of every architecture, the mixtures' and DeepSeek's in `hf_moe_weights`.
Imports check every shape and name the HF tensor on a mismatch or when it is missing.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import numpy as np

from jaxlm.interop import hf_config, hf_config_export
from jaxlm.interop.hf_moe_weights import (latent_attention_rules, moe_rules, stack_experts,
                                          unstack_experts)
from jaxlm.interop.hf_rule import Rule, dense_rules, norm_rules
from jaxlm.models.config import ModelConfig
from jaxlm.peft import lora


class WeightMismatchError(ValueError):
  """An HF tensor is missing or has a shape the jaxlm model cannot take."""


def _fused_qkv(hf: str, path: str, kind: str, heads: int = 0) -> list[Rule]:
  """The weight and bias rules of one fused query / key / value projection."""
  return [Rule(f"{hf}.{part}", tuple(f"{path}/{n}/{leaf}" for n in ("query", "key", "value")),
               kind, heads=heads) for part, leaf in (("weight", "kernel"), ("bias", "bias"))]


def _gpt2(cfg: ModelConfig) -> Iterator[Rule]:
  yield Rule("transformer.wte.weight", ("embed/embedding",))
  yield Rule("transformer.wpe.weight", ("pos_embed/embedding",))
  for i in range(cfg.num_layers):
    hf, p = f"transformer.h.{i}", f"blocks/{i}"
    yield from norm_rules(f"{hf}.ln_1", f"{p}/attn_norm", True)
    yield from _fused_qkv(f"{hf}.attn.c_attn", f"{p}/attn", "split")
    yield from dense_rules(f"{hf}.attn.c_proj", f"{p}/attn/out", True, "copy")  # Conv1D: (in, out)
    yield from norm_rules(f"{hf}.ln_2", f"{p}/mlp_norm", True)
    yield from dense_rules(f"{hf}.mlp.c_fc", f"{p}/mlp/up", True, "copy")
    yield from dense_rules(f"{hf}.mlp.c_proj", f"{p}/mlp/down", True, "copy")
  yield from norm_rules("transformer.ln_f", "final_norm", True)
  if not cfg.tied:
    yield Rule("lm_head.weight", ("head/kernel",), "linear")


# OPT's learned positions: position p is row p + 2 (HF's OPTLearnedPositionalEmbedding).
OPT_POSITION_OFFSET = 2


def _opt(cfg: ModelConfig) -> Iterator[Rule]:
  dec = "model.decoder"
  yield Rule(f"{dec}.embed_tokens.weight", ("embed/embedding",))
  yield Rule(f"{dec}.embed_positions.weight", ("pos_embed/embedding",), "skip_rows",
             skip=OPT_POSITION_OFFSET)
  for i in range(cfg.num_layers):
    hf, p = f"{dec}.layers.{i}", f"blocks/{i}"
    yield from norm_rules(f"{hf}.self_attn_layer_norm", f"{p}/attn_norm", True)
    for name, ours in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out")):
      yield from dense_rules(f"{hf}.self_attn.{name}_proj", f"{p}/attn/{ours}", True)
    yield from norm_rules(f"{hf}.final_layer_norm", f"{p}/mlp_norm", True)
    yield from dense_rules(f"{hf}.fc1", f"{p}/mlp/up", True)
    yield from dense_rules(f"{hf}.fc2", f"{p}/mlp/down", True)
  yield from norm_rules(f"{dec}.final_layer_norm", "final_norm", True)
  if not cfg.tied:
    yield Rule("lm_head.weight", ("head/kernel",), "linear")


def _llama(cfg: ModelConfig, fused: bool, interleaved: bool = False) -> Iterator[Rule]:
  """Llama-family rules; `fused`: Phi-3's layout (one `qkv_proj`, one `gate_up_proj`);
  `interleaved`: DeepSeek's interleaved rotary pairs (always V2's; V3's with rope_interleave)."""
  # Gemma's RMSNorms multiply by 1 + w: jaxlm's scale is that sum.
  kind = hf_config_export.llama_model_type(cfg, None)
  offset = 1.0 if kind in hf_config.GEMMAS else 0.0
  q, kv = cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
  yield Rule("model.embed_tokens.weight", ("embed/embedding",))
  for i in range(cfg.num_layers):
    hf, p = f"model.layers.{i}", f"blocks/{i}"
    yield from norm_rules(f"{hf}.input_layernorm", f"{p}/attn_norm", False, offset)
    qkv = cfg.attention_qkv_bias
    attn = (("o", "out", cfg.bias),) if fused else (
        ("q", "query", qkv), ("k", "key", qkv), ("v", "value", qkv), ("o", "out", cfg.bias))
    if cfg.latent_attention:
      yield from latent_attention_rules(cfg, f"{hf}.self_attn", f"{p}/attn", interleaved)
    elif fused:
      yield Rule(f"{hf}.self_attn.qkv_proj.weight", tuple(
          f"{p}/attn/{n}/kernel" for n in ("query", "key", "value")), "rows", sizes=(q, kv, kv))
    for name, ours, bias in () if cfg.latent_attention else attn:
      yield from dense_rules(f"{hf}.self_attn.{name}_proj", f"{p}/attn/{ours}", bias)
    if cfg.qk_norm:
      yield from norm_rules(f"{hf}.self_attn.q_norm", f"{p}/attn/query_norm", False, offset)
      yield from norm_rules(f"{hf}.self_attn.k_norm", f"{p}/attn/key_norm", False, offset)
    if cfg.sandwich_norm:  # Gemma 2 / 3: post_attention_layernorm is on the attention output
      yield from norm_rules(f"{hf}.post_attention_layernorm", f"{p}/attn_post_norm", False, offset)
      yield from norm_rules(f"{hf}.pre_feedforward_layernorm", f"{p}/mlp_norm", False, offset)
      yield from norm_rules(f"{hf}.post_feedforward_layernorm", f"{p}/mlp_post_norm", False, offset)
    else:
      yield from norm_rules(f"{hf}.post_attention_layernorm", f"{p}/mlp_norm", False, offset)
    routed = cfg.layer_routed(i)
    if routed:
      yield from moe_rules(hf, f"{p}/mlp", kind)
    elif fused:
      yield Rule(f"{hf}.mlp.gate_up_proj.weight", (f"{p}/mlp/gate/kernel", f"{p}/mlp/up/kernel"),
                 "rows", sizes=(cfg.mlp_dim, cfg.mlp_dim))
    for name in () if routed else ("down",) if fused else ("gate", "up", "down"):
      yield from dense_rules(f"{hf}.mlp.{name}_proj", f"{p}/mlp/{name}", cfg.bias)
  yield from norm_rules("model.norm", "final_norm", False, offset)
  if not cfg.tied:
    yield Rule("lm_head.weight", ("head/kernel",), "linear")


def _neox(cfg: ModelConfig) -> Iterator[Rule]:
  yield Rule("gpt_neox.embed_in.weight", ("embed/embedding",))
  for i in range(cfg.num_layers):
    hf, p = f"gpt_neox.layers.{i}", f"blocks/{i}"
    yield from norm_rules(f"{hf}.input_layernorm", f"{p}/attn_norm", True)
    yield from _fused_qkv(f"{hf}.attention.query_key_value", f"{p}/attn", "heads",
                          cfg.num_heads)
    yield from dense_rules(f"{hf}.attention.dense", f"{p}/attn/out", True)
    yield from norm_rules(f"{hf}.post_attention_layernorm", f"{p}/mlp_norm", True)
    yield from dense_rules(f"{hf}.mlp.dense_h_to_4h", f"{p}/mlp/up", True)
    yield from dense_rules(f"{hf}.mlp.dense_4h_to_h", f"{p}/mlp/down", True)
  yield from norm_rules("gpt_neox.final_layer_norm", "final_norm", True)
  if not cfg.tied:
    yield Rule("embed_out.weight", ("head/kernel",), "linear")


def _phi(cfg: ModelConfig) -> Iterator[Rule]:
  yield Rule("model.embed_tokens.weight", ("embed/embedding",))
  for i in range(cfg.num_layers):
    hf, p = f"model.layers.{i}", f"blocks/{i}"
    attn, ours = f"{hf}.self_attn", f"{p}/attn"
    norms = [(f"{hf}.input_layernorm", f"{p}/attn_norm")]  # feeds attention and MLP
    if cfg.qk_norm:
      norms += [(f"{attn}.q_layernorm", f"{ours}/query_norm"),
                (f"{attn}.k_layernorm", f"{ours}/key_norm")]
    for hf_norm, path in norms:
      yield from norm_rules(hf_norm, path, True)
    linears = [(f"{attn}.q_proj", f"{ours}/query"), (f"{attn}.k_proj", f"{ours}/key"),
               (f"{attn}.v_proj", f"{ours}/value"), (f"{attn}.dense", f"{ours}/out"),
               (f"{hf}.mlp.fc1", f"{p}/mlp/up"), (f"{hf}.mlp.fc2", f"{p}/mlp/down")]
    for hf_linear, path in linears:
      yield from dense_rules(hf_linear, path, True)
  yield from norm_rules("model.final_layernorm", "final_norm", True)
  yield from dense_rules("lm_head", "head", True)


def _bert(cfg: ModelConfig, tensors: dict[str, np.ndarray] | None) -> Iterator[Rule]:
  emb = "bert.embeddings"
  yield Rule(f"{emb}.word_embeddings.weight", ("embed/embedding",))
  yield Rule(f"{emb}.position_embeddings.weight", ("pos_embed/embedding",))
  if cfg.type_vocab_size:
    yield Rule(f"{emb}.token_type_embeddings.weight", ("type_embed/embedding",))
  yield from norm_rules(f"{emb}.LayerNorm", "embed_norm", True)
  for i in range(cfg.num_layers):
    hf, p = f"bert.encoder.layer.{i}", f"blocks/{i}"
    for name in ("query", "key", "value"):
      yield from dense_rules(f"{hf}.attention.self.{name}", f"{p}/attn/{name}", True)
    yield from dense_rules(f"{hf}.attention.output.dense", f"{p}/attn/out", True)
    yield from norm_rules(f"{hf}.attention.output.LayerNorm", f"{p}/attn_norm", True)
    yield from dense_rules(f"{hf}.intermediate.dense", f"{p}/mlp/up", True)
    yield from dense_rules(f"{hf}.output.dense", f"{p}/mlp/down", True)
    yield from norm_rules(f"{hf}.output.LayerNorm", f"{p}/mlp_norm", True)
  yield from dense_rules("cls.predictions.transform.dense", "mlm_transform", True)
  yield from norm_rules("cls.predictions.transform.LayerNorm", "mlm_norm", True)
  if cfg.tied:
    yield Rule("cls.predictions.bias", ("mlm_bias",))
  else:  # HF's untied decoder uses its own bias (older files store only cls.predictions.bias)
    yield Rule("cls.predictions.decoder.weight", ("head/kernel",), "linear")
    bias = "cls.predictions.decoder.bias"
    yield Rule(bias if tensors is None or bias in tensors else "cls.predictions.bias",
               ("head/bias",))


def _t5(cfg: ModelConfig, hf_cfg: dict[str, Any] | None,
        tensors: dict[str, np.ndarray] | None) -> Iterator[Rule]:
  yield Rule("shared.weight", ("embed/embedding",))
  for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
    yield Rule(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
               (f"{stack}/relative_bias/table/embedding",))
    for i in range(n):
      hf, p = f"{stack}.block.{i}.layer", f"{stack}/blocks/{i}"
      sub = [("0", "SelfAttention", "attn", "attn_norm")]
      if stack == "decoder":
        sub.append(("1", "EncDecAttention", "cross_attn", "cross_norm"))
      for k, name, ours, norm in sub:
        yield from norm_rules(f"{hf}.{k}.layer_norm", f"{p}/{norm}", False)
        for hf_proj, proj in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
          yield from dense_rules(f"{hf}.{k}.{name}.{hf_proj}", f"{p}/{ours}/{proj}", False)
      ff = len(sub)
      yield from norm_rules(f"{hf}.{ff}.layer_norm", f"{p}/mlp_norm", False)
      gated = (("wi_0", "gate"), ("wi_1", "up")) if cfg.gated_mlp else (("wi", "up"),)
      for hf_proj, proj in (*gated, ("wo", "down")):
        yield from dense_rules(f"{hf}.{ff}.DenseReluDense.{hf_proj}", f"{p}/mlp/{proj}", False)
    yield from norm_rules(f"{stack}.final_layer_norm", f"{stack}/final_norm", False)
  if not cfg.tied:
    # HF may store no lm_head (tied to `shared`) and may scale decoder outputs by d**-0.5:
    # a jaxlm import keeps a separate head with that scale folded into its kernel.
    source = "lm_head.weight"
    scale = 1.0
    if hf_cfg is not None:
      scale = cfg.embed_dim ** -0.5 if hf_config.t5_scales_output(hf_cfg) else 1.0
      if tensors is not None and source not in tensors:
        source = "shared.weight"
    yield Rule(source, ("head/kernel",), "linear", scale)


# Where multimodal checkpoints keep their language model (Gemma 3 4B+: the hub layout, and
# transformers 5's module names).
LANGUAGE_MODEL_PREFIXES = ("language_model.", "model.language_model.")


def language_model_tensors(
    tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """(the language model's tensors named as in its text-only architecture, a summary of the
  rest such as "vision_tower.* (N tensors)") of a multimodal checkpoint; other checkpoints
  are returned unchanged."""
  prefix = next((p for p in LANGUAGE_MODEL_PREFIXES if any(k.startswith(p) for k in tensors)),
                None)
  if prefix is None:
    return tensors, []
  text, others = {}, collections.Counter()
  for name, x in tensors.items():
    if name.startswith(prefix):
      name = name[len(prefix):]
      text[name if name.startswith(("model.", "lm_head.")) else f"model.{name}"] = x
    else:
      others[name.split(".")[0]] += 1
  return text, [f"{module}.* ({n} tensors)" for module, n in sorted(others.items())]


# HF tensors that carry nothing jaxlm's model uses (duplicates of tied weights, buffers,
# pre-training heads of other tasks).
IGNORED_SUFFIXES = ("position_ids", "embed_tokens.weight", "pooler.dense.weight",
                    "pooler.dense.bias", "cls.predictions.decoder.bias", "cls.predictions.bias",
                    ".attn.bias", ".attn.masked_bias", "cls.seq_relationship.weight",
                    "cls.seq_relationship.bias", ".attention.bias", ".attention.masked_bias",
                    ".rotary_emb.inv_freq")
OUTPUT_HEADS = ("lm_head.weight", "embed_out.weight")  # saved even when tied to the embeddings


def rules(cfg: ModelConfig, hf_cfg: dict[str, Any] | None = None,
          tensors: dict[str, np.ndarray] | None = None) -> list[Rule]:
  """Every mapping rule of a model. `hf_cfg`, the HF config read or written, picks the layout
  of a style several HF types share (GPT-2 or OPT; Phi-3's fused projections, which an export
  writes in the Llama / Mistral layout unless partial rotary needs Phi-3's) and where T5's
  head scale comes from; `tensors` (on import), where T5's head and the bias of an untied
  BERT decoder come from."""
  kind = hf_config.model_type_of(hf_cfg) if hf_cfg is not None else None
  if cfg.style == "gpt2":
    return list(_opt(cfg) if kind == "opt" else _gpt2(cfg))
  if cfg.style == "llama":
    interleaved = kind == "deepseek_v2" or bool((hf_cfg or {}).get("rope_interleave"))
    return list(_llama(cfg, kind == "phi3", interleaved))
  if cfg.style == "neox":
    return list(_phi(cfg) if cfg.shared_norm else _neox(cfg))
  if cfg.style == "bert":
    return list(_bert(cfg, tensors))
  return list(_t5(cfg, hf_cfg, tensors))


def to_jaxlm(cfg: ModelConfig, tensors: dict[str, np.ndarray], shapes: dict[str, tuple],
             hf_cfg: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
  """(flat jaxlm params by path, unused HF tensor names) from an HF checkpoint.

  `shapes` are the jaxlm model's parameter shapes by path; every rule's tensor must exist
  and fit, else a WeightMismatchError names the HF tensor.
  """
  tensors, other_models = language_model_tensors(tensors)
  tensors = stack_experts(tensors)
  out, used = {}, set()
  all_rules = rules(cfg, hf_cfg, tensors)
  missing = [r.hf for r in all_rules if r.hf not in tensors]
  if missing:
    raise WeightMismatchError(
        f"the checkpoint lacks {len(missing)} tensor(s) the {cfg.style} model needs: "
        + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
  for rule in all_rules:
    used.add(rule.hf)
    x = tensors[rule.hf]
    want = [tuple(shapes[p]) for p in rule.paths]
    axis = {"split": -1, "heads": 0, "rows": 0}.get(rule.kind)
    width = sum(w[-1] for w in want)
    fits = axis is None or (x.shape[axis] == width and width % max(rule.heads, 1) == 0)
    parts = rule.to_jaxlm(x) if fits else None
    if parts is None or [tuple(a.shape) for a in parts] != want:
      layout = {"linear": " (stored as its transpose)", "split": " (split along the last axis)",
                "heads": " (split head by head into query, key and value)",
                "rows": " (its rows split into the parts)",
                "experts": " (the experts' tensors stacked, each transposed)"}
      raise WeightMismatchError(
          f"tensor {rule.hf} has shape {tuple(x.shape)}, but jaxlm "
          f"{', '.join(rule.paths)} need(s) {', '.join(map(str, want))}"
          f"{layout.get(rule.kind, '')}: the checkpoint does not match its config.json")
    out.update(zip(rule.paths, parts))
  unused = sorted(k for k in tensors if k not in used and not k.endswith(IGNORED_SUFFIXES)
                  and k not in OUTPUT_HEADS)
  return out, unused + other_models


def to_hf(cfg: ModelConfig, flat: dict[str, np.ndarray],
          hf_cfg: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
  """HF tensors by name from flat jaxlm params (LoRA leaves, if any, are not exported), in the
  layout of `hf_cfg`, the config.json written beside them.

  A parameter HF's architecture has no place for (a reward head, a prefix) is an error
  rather than silently dropped.
  """
  out = {}
  all_rules = rules(cfg, hf_cfg)
  mapped = {p for rule in all_rules for p in rule.paths}
  extra = sorted(k for k in flat
                 if k not in mapped and k.rsplit("/", 1)[-1] not in lora.LEAVES)
  if extra:
    raise WeightMismatchError(f"jaxlm parameter(s) with no {cfg.style} HF counterpart: "
                              + ", ".join(extra[:8]) + (" ..." if len(extra) > 8 else ""))
  for rule in all_rules:
    missing = [p for p in rule.paths if p not in flat]
    if missing:
      raise WeightMismatchError(f"jaxlm parameter(s) {', '.join(missing)} missing for {rule.hf}")
    out[rule.hf] = rule.to_hf([np.asarray(flat[p], np.float32) for p in rule.paths])
  if cfg.style == "bert" and not cfg.tied:  # HF keeps an (unused) copy it would otherwise zero
    out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
  return unstack_experts(out)
