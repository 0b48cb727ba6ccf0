"""HF DeepSeek-V2 / V3 `config.json` -> jaxlm `config.model` fields: multi-head latent
attention and the group-limited mixture of experts (see `deepseek_fields`)."""

from __future__ import annotations

import math
from typing import Any

from jaxlm.interop.hf_rope import rope_fields
from jaxlm.interop.hf_support import require_supported

DEEPSEEKS = ("deepseek_v2", "deepseek_v3")  # multi-head latent attention, grouped experts


def deepseek_fields(hf: dict[str, Any], kind: str) -> dict[str, Any]:
  """Fields of a DeepSeek-V2 or V3 config (`kind`): MLA (its YaRN mscale_all_dim squared in
  the softmax scale, as `query_pre_attn_scalar`) and the group-limited mixture: V2's softmax
  router with a balance loss, groups scored by their best expert; V3's auxiliary-loss-free
  sigmoid router (`e_score_correction_bias` is the router bias), groups by their best two."""
  require_supported(hf.get("hidden_act", "silu") == "silu",
                    f"{kind} hidden_act={hf.get('hidden_act')!r} is not supported (silu only)")
  require_supported(not hf.get("attention_bias") and not hf.get("mlp_bias"),
                    f"{kind} attention_bias or mlp_bias is not supported")
  n, head_dim = hf["num_attention_heads"], hf["qk_nope_head_dim"] + hf["qk_rope_head_dim"]
  require_supported(hf.get("num_key_value_heads") in (None, n),
                    f"{kind} with num_key_value_heads != num_attention_heads is not supported")
  v3 = kind == "deepseek_v3"
  if not v3:
    method = hf.get("topk_method") or "greedy"
    require_supported(method in ("greedy", "group_limited_greedy"),
                      f"deepseek_v2 topk_method={method!r} is not supported")
    require_supported(not hf.get("norm_topk_prob"), "deepseek_v2 with norm_topk_prob=true is "
                      "not supported (transformers' port does not renormalise)")
  grouped = v3 or hf.get("topk_method") == "group_limited_greedy"
  rope = rope_fields(hf)
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  softmax_scalar = 0.0
  if rope["rope_scaling"] != "none" and params.get("mscale_all_dim"):
    mscale = 0.1 * params["mscale_all_dim"] * math.log(rope["rope_factor"]) + 1.0
    softmax_scalar = head_dim / mscale ** 4 if rope["rope_factor"] > 1 else 0.0
  experts = hf.get("n_routed_experts") or hf["num_local_experts"]
  return dict(style="llama", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
              num_heads=n, head_dim=head_dim, embed_dim=hf["hidden_size"],
              mlp_dim=hf["moe_intermediate_size"], max_seq_len=hf["max_position_embeddings"],
              norm_eps=hf.get("rms_norm_eps", 1e-6), use_bias=False, **rope,
              query_pre_attn_scalar=softmax_scalar, kv_lora_rank=hf["kv_lora_rank"],
              q_lora_rank=hf.get("q_lora_rank") or 0, qk_rope_head_dim=hf["qk_rope_head_dim"],
              v_head_dim=hf["v_head_dim"],
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
              num_experts=experts, experts_per_token=hf["num_experts_per_tok"],
              moe_renormalize=v3 and bool(hf.get("norm_topk_prob", True)),
              router_aux_coef=0.0 if v3 else float(hf.get("aux_loss_alpha", 0.001)),
              router_scoring="sigmoid" if v3 else "softmax",
              router_scale=float(hf.get("routed_scaling_factor", 1.0)), router_bias=v3,
              router_groups=(hf.get("n_group") or 1) if grouped else 1,
              router_groups_per_token=(hf.get("topk_group") or 1) if grouped else 1,
              router_group_top=2 if v3 else 1,
              moe_first_dense=hf.get("first_k_dense_replace") or 0,
              moe_dense_mlp_dim=hf["intermediate_size"],
              shared_expert_dim=hf["moe_intermediate_size"] * (hf.get("n_shared_experts") or 0))
