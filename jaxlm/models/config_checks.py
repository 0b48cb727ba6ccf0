"""Validation of a `ModelConfig`'s mixture-of-experts and multi-head latent attention
settings, run by `ModelConfig.__post_init__` (a ValueError naming the settings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from jaxlm.models.config import ModelConfig

ROUTER_SCORINGS = ("softmax", "sigmoid")  # how a mixture's router scores its experts


def check_mixture(cfg: ModelConfig) -> None:
  """ValueError for mixture-of-experts settings (`num_experts`, ...) that do not fit."""
  if cfg.num_experts < 0 or (cfg.num_experts and cfg.family != "decoder"):
    raise ValueError(f"model.num_experts must be >= 0 and is for decoders, got "
                     f"{cfg.num_experts} for style {cfg.style!r}")
  if cfg.num_experts and not 1 <= cfg.experts_per_token <= cfg.num_experts:
    raise ValueError(f"model.experts_per_token must be in [1, num_experts={cfg.num_experts}]"
                     f", got {cfg.experts_per_token}")
  if cfg.num_experts and cfg.experts_per_token == 1 and cfg.moe_renormalize:
    raise ValueError("model.experts_per_token=1 with moe_renormalize=true weighs every "
                     "token's expert by 1, so the router would learn nothing from the loss; "
                     "set model.moe_renormalize=false (Switch: the raw probability)")
  if min(cfg.router_aux_coef, cfg.router_z_coef, cfg.moe_capacity_factor) < 0:
    raise ValueError(f"model.router_aux_coef, router_z_coef and moe_capacity_factor must be "
                     f">= 0, got {cfg.router_aux_coef}, {cfg.router_z_coef} and "
                     f"{cfg.moe_capacity_factor}")
  if cfg.router_scoring not in ROUTER_SCORINGS or cfg.router_scale <= 0:
    raise ValueError(f"model.router_scoring must be one of {ROUTER_SCORINGS} and "
                     f"model.router_scale > 0, got {cfg.router_scoring!r} and "
                     f"{cfg.router_scale}")
  if cfg.moe_every < 1 or min(cfg.moe_dense_mlp_dim, cfg.moe_first_dense) < 0 or (
      (cfg.moe_every > 1 or cfg.moe_dense_mlp_dim or cfg.moe_first_dense)
      and not cfg.num_experts):
    raise ValueError(f"model.moe_every must be >= 1 and moe_dense_mlp_dim, moe_first_dense "
                     f">= 0, all for a mixture (num_experts > 0), got {cfg.moe_every}, "
                     f"{cfg.moe_dense_mlp_dim} and {cfg.moe_first_dense} with "
                     f"num_experts={cfg.num_experts}")
  if cfg.num_experts and not any(map(cfg.layer_routed, range(cfg.num_layers))):
    raise ValueError(f"model.moe_every={cfg.moe_every} and moe_first_dense="
                     f"{cfg.moe_first_dense} leave none of the {cfg.num_layers} layers a "
                     "mixture")
  if cfg.shared_expert_dim < 0 or (cfg.shared_expert_dim and not cfg.num_experts):
    raise ValueError(f"model.shared_expert_dim must be >= 0 and needs num_experts > 0, got "
                     f"{cfg.shared_expert_dim} with num_experts={cfg.num_experts}")
  if cfg.router_bias and not cfg.num_experts:
    raise ValueError("model.router_bias balances a mixture's experts: it needs "
                     "model.num_experts > 0")
  if cfg.shared_expert_gate and not cfg.shared_expert_dim:
    raise ValueError("model.shared_expert_gate gates the shared expert: it needs "
                     "model.shared_expert_dim > 0")
  check_router_groups(cfg)


def check_router_groups(cfg: ModelConfig) -> None:
  """ValueError for group-limited routing settings (`router_groups`, ...) that do not fit."""
  g, keep = cfg.router_groups, cfg.router_groups_per_token
  if g == 1 and keep == 1:
    return
  top = cfg.router_group_top
  if not cfg.num_experts or g < 1 or cfg.num_experts % g or cfg.num_experts // g < top:
    raise ValueError(f"model.router_groups={g} must split a mixture's num_experts="
                     f"{cfg.num_experts} into equal groups of at least router_group_top={top} "
                     "experts")
  if top < 1:
    raise ValueError(f"model.router_group_top={top} must be >= 1 (the best scores a group "
                     "sums)")
  if not 1 <= keep <= g or cfg.experts_per_token > keep * (cfg.num_experts // g):
    raise ValueError(f"model.router_groups_per_token={keep} must be in [1, router_groups="
                     f"{g}] and its groups must hold experts_per_token="
                     f"{cfg.experts_per_token} experts")


def check_latent_attention(cfg: ModelConfig) -> None:
  """ValueError for multi-head latent attention settings (`kv_lora_rank`, ...) that do not
  make one."""
  given = [n for n in ("q_lora_rank", "qk_rope_head_dim", "v_head_dim") if getattr(cfg, n)]
  if not cfg.kv_lora_rank:
    if given:
      raise ValueError(f"model.{given[0]} sets up multi-head latent attention: it needs "
                       "model.kv_lora_rank > 0")
    return
  if min(cfg.kv_lora_rank, cfg.q_lora_rank, cfg.v_head_dim) < 0:
    raise ValueError("model.kv_lora_rank, q_lora_rank and v_head_dim must be >= 0")
  if cfg.style != "llama":
    raise ValueError(f"multi-head latent attention (model.kv_lora_rank) is built for "
                     f"llama-style decoders, not style={cfg.style!r}")
  rope = cfg.qk_rope_head_dim
  if rope <= 0 or rope % 2 or rope >= cfg.head_size:
    raise ValueError(f"model.qk_rope_head_dim={rope} must be even, > 0 and below the "
                     f"query / key head size ({cfg.head_size}) with model.kv_lora_rank")
  clashes = {"num_kv_heads (every head expands its own keys)":
                 cfg.num_kv_heads not in (0, cfg.num_heads),
             "qk_norm": cfg.qk_norm, "qkv_bias / use_bias": cfg.attention_qkv_bias,
             "rope_fraction": cfg.rope_fraction != 1.0}
  for name, clash in clashes.items():
    if clash:
      raise ValueError(f"model.{name} does not combine with multi-head latent attention")
