"""Frozen model configuration: the ConfigDict stops here, layers read only this dataclass."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxlm.models import config_checks

# style -> model family. Decoders: gpt2, llama, neox (GPT-NeoX, Phi); encoder: bert;
# encoder-decoder: t5 (v1.1 by default).
REMAT_POLICIES = ("none", "full", "save_dots")
ROPE_SCALINGS = ("none", "linear", "llama3", "yarn", "longrope")
MLP_ACTIVATIONS = ("", "silu", "gelu", "gelu_tanh", "relu")
# style -> (MLP activation, gated): GPT-2 tanh-GELU, GPT-NeoX and BERT exact GELU, Llama
# SwiGLU, T5 v1.1 GEGLU.
STYLE_MLPS = {"gpt2": ("gelu_tanh", False), "neox": ("gelu", False), "bert": ("gelu", False),
              "llama": ("silu", True), "t5": ("gelu_tanh", True)}
STYLES = {"gpt2": "decoder", "llama": "decoder", "neox": "decoder", "bert": "encoder",
          "t5": "encdec"}
ROPE_STYLES = ("llama", "neox")  # rotary positions; the others learn them (or T5's bias)
LAYER_NORM_STYLES = ("gpt2", "bert", "neox")  # LayerNorm with bias; the others RMSNorm


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and flavour of a transformer; `style` picks the architecture and its defaults.

  "gpt2": decoder, learned positions, LayerNorm, GELU MLP, biases, tied embeddings.
  "llama": decoder, RoPE, RMSNorm, SwiGLU, grouped-query attention, untied output head.
  "neox": decoder (GPT-NeoX, Pythia; Phi with options), RoPE, LayerNorm, exact-GELU MLP,
  biases, untied head.
  "bert": bidirectional encoder, learned positions and optional token types, LayerNorm
  (pre- or post-norm by `post_norm`), GELU, biases, MLM head tied to the embeddings.
  "t5": encoder-decoder (T5 v1.1 by default), RMSNorm, relative position bias shared per stack,
  gated-GELU MLP, no biases, untied output head by default (the original T5:
  `mlp_activation="relu"`, `mlp_gated=false`, tied).
  `use_bias`, `tie_embeddings`, `mlp_activation` and `mlp_gated` override the style's
  default. `qkv_bias` (Qwen2) puts biases on the query / key / value projections only;
  `qk_norm` (Qwen3, Gemma 3) normalises each head's queries and keys (the style's norm over
  the head size, one scale shared by every head) before RoPE; with `qk_norm_full` (OLMoE,
  OLMo 2) the norms span each whole projection instead (all heads at once, a scale per unit).
  `sliding_window` > 0 (decoders, Mistral) lets each token see only the keys fewer than that
  many positions back.
  Gemma's options (llama style): `embed_scale`, `mlp_activation="gelu_tanh"`, and for Gemma 2
  / 3 `sandwich_norm`, `attn_softcap` / `logit_softcap`, `query_pre_attn_scalar`, sliding
  windows on all but every `sliding_global_every`-th layer and `rope_local_theta` there
  (`layer_window(i)` is layer i's window). Gemma's RMSNorm multiplies by 1 + w: an import
  stores 1 + w as the scale.
  `rope_fraction` < 1 (GPT-NeoX's rotary_pct, Pythia 0.25) rotates only the first that
  fraction of each head's dimensions and passes the rest through. `parallel_residual`
  (decoders; GPT-NeoX, GPT-J) feeds attention and MLP the same input:
  x + attn(norm1(x)) + mlp(norm2(x)); with `shared_norm` (Phi, GPT-J) one norm feeds both:
  x + attn(norm(x)) + mlp(norm(x)). `head_bias` (Phi) adds a bias to the untied output head.
  Phi 1 / 1.5 / 2 are the neox style with shared_norm, head_bias, mlp_activation="gelu_tanh",
  and for Phi's qk_layernorm, qk_norm.
  `rope_scaling` stretches RoPE for long contexts: "linear" divides every frequency by
  `rope_factor`; "llama3" (Llama 3.1) divides those with a wavelength above
  `rope_original_max_len / rope_low_freq_factor` by it, keeps those below
  `rope_original_max_len / rope_high_freq_factor`, and blends in between; "yarn" (YaRN,
  Qwen long context) divides the frequencies that turn fewer than `rope_beta_slow` times over
  `rope_original_max_len` by it, keeps those turning more than `rope_beta_fast` times, ramps
  in between, and multiplies queries and keys by `rope_attention_factor` (0: 0.1 ln(factor)
  + 1, the paper's); "longrope" (LongRoPE, Phi-3 / Phi-3.5 / Phi-4-mini) divides frequency i
  by `rope_short_factor[i]`, or by `rope_long_factor[i]` in a forward pass whose positions
  reach past `rope_original_max_len` (as transformers picks them, for the whole batch), and
  multiplies queries and keys by `rope_attention_factor` (0: sqrt(1 + ln(factor) /
  ln(rope_original_max_len))).
  """

  vocab_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_seq_len: int
  style: str = "gpt2"
  num_kv_heads: int = 0  # 0: same as num_heads (no grouping)
  head_dim: int = 0  # 0: embed_dim // num_heads
  dropout: float = 0.0  # embeddings and residual branches
  attention_dropout: float = 0.0  # attention probabilities (training only; forces XLA attention)
  dtype: str = "auto"  # compute dtype; "auto": bfloat16 on GPU/TPU, float32 on CPU
  rope_theta: float = 10000.0
  rope_scaling: str = "none"  # none | linear | llama3 | yarn | longrope
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0  # llama3 scaling only
  rope_high_freq_factor: float = 4.0  # llama3 scaling only
  rope_original_max_len: int = 8192  # llama3 / yarn / longrope scaling: the pre-training context
  rope_beta_fast: float = 32.0  # yarn scaling only
  rope_beta_slow: float = 1.0  # yarn scaling only
  rope_attention_factor: float = 0.0  # yarn / longrope scaling: 0 = the method's default
  rope_truncate: bool = True  # yarn scaling: round the ramp's ends to whole dimensions
  # longrope scaling: what each of the rotary_dim / 2 frequencies is divided by, within the
  # pre-training context and past it
  rope_short_factor: tuple[float, ...] = ()
  rope_long_factor: tuple[float, ...] = ()
  rope_fraction: float = 1.0  # share of each head's dimensions RoPE rotates (Pythia: 0.25)
  parallel_residual: bool = False  # decoders: x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX)
  shared_norm: bool = False  # with parallel_residual: one norm for both sublayers (Phi)
  head_bias: bool = False  # a bias on the untied output head (Phi)
  norm_eps: float = 1e-5
  use_bias: bool | None = None
  tie_embeddings: bool | None = None
  qkv_bias: bool = False  # biases on query / key / value only (use_bias: on every linear)
  qk_norm: bool = False  # per-head norm of queries and keys before attention
  qk_norm_full: bool = False  # with qk_norm: over the whole query / key projection (OLMoE)
  # Multi-head latent attention (MLA; DeepSeek-V2 / V3; llama-style decoders): kv_lora_rank
  # > 0 projects each position to a latent of that width (RMS-normed) and one rotary key of
  # qk_rope_head_dim dimensions shared by every head; each head's other head_dim -
  # qk_rope_head_dim key dimensions (no position) and its value (v_head_dim; 0: head_dim)
  # are expanded from the latent. The KV cache keeps only the latent and the rotary key, and
  # decoding attends in the latent space (the expansions folded into the queries and the
  # output). q_lora_rank > 0 routes the queries through a normed latent of that width too.
  kv_lora_rank: int = 0
  q_lora_rank: int = 0
  qk_rope_head_dim: int = 0
  v_head_dim: int = 0
  sliding_window: int = 0  # decoders: > 0 keys fewer than this many positions back (Mistral)
  # With sliding_window: every n-th layer (n-1, 2n-1, ...) attends to everything (Gemma 2: 2,
  # Gemma 3: 6); 0: every layer slides.
  sliding_global_every: int = 0
  rope_local_theta: float = 0.0  # RoPE theta of the sliding layers, unscaled (Gemma 3); 0: same
  mlp_activation: str = ""  # "": the style's; silu | gelu | gelu_tanh | relu (Gemma: gelu_tanh)
  mlp_gated: bool | None = None  # act(gate(x)) * up(x) instead of act(up(x)); None: the style's
  embed_scale: bool = False  # input embeddings times sqrt(embed_dim) (Gemma)
  sandwich_norm: bool = False  # norms on the attention and MLP outputs too (Gemma 2 / 3)
  attn_softcap: float = 0.0  # > 0: attention scores become cap * tanh(score / cap) (Gemma 2)
  logit_softcap: float = 0.0  # > 0: output logits capped the same way (Gemma 2)
  query_pre_attn_scalar: float = 0.0  # > 0: attention scale is its -1/2 power (Gemma 2 / 3)
  attention_impl: str = "auto"  # auto | xla | cudnn
  remat: str = "none"  # none | full | save_dots: what a block keeps for the backward pass
  # blocks stored stacked on a leading `layers` axis and run by `lax.scan` (one block
  # compiled instead of num_layers; see `jaxlm.models.stacking`); remat "none" then
  # recomputes element-wise work, never a matmul (`layers.remat_policy`)
  scan_layers: bool = False
  type_vocab_size: int = 0  # bert: token-type (segment A/B) embeddings; 0 = none
  post_norm: bool = False  # bert: original post-LayerNorm blocks instead of pre-norm
  num_decoder_layers: int = 0  # t5: 0 = same as num_layers
  relative_buckets: int = 32  # t5 relative position bias
  relative_max_distance: int = 128
  # Mixture of experts (decoders; Mixtral, Switch): num_experts > 0 replaces each block's MLP
  # by that many expert MLPs (the style's activation and gating, no biases), of which a
  # router picks experts_per_token per token, weighting their outputs by its softmax
  # probabilities (renormalised over the picked experts with moe_renormalize, as Mixtral).
  # router_aux_coef weighs the load-balancing loss (Switch: E * sum_e f_e P_e, 1 x k when
  # balanced) and router_z_coef the router z-loss (ST-MoE: mean logsumexp(logits)^2) that
  # the language-model objectives add, averaged over layers. moe_capacity_factor > 0 caps
  # each expert at that factor x its even share of each sequence's assignments (Switch;
  # the rest are dropped) outside KV-cache decoding; 0: dropless (see jaxlm.models.moe).
  # moe_every = n > 1 makes only every n-th layer's MLP (layers n-1, 2n-1, ...) a mixture
  # (Switch, GShard: 2; Qwen's decoder_sparse_step, Llama 4's interleave step), the others
  # dense MLPs of moe_dense_mlp_dim (0: mlp_dim).
  # router_scoring "sigmoid" (DeepSeek-V3) scores each expert by sigmoid(logit) instead of the
  # softmax over experts (the balance loss then takes the scores normalised per token), and
  # router_scale multiplies the picked experts' weights (DeepSeek-V3's routed scaling factor).
  # shared_expert_dim > 0 adds a dense MLP of that width that every token runs through beside
  # its routed experts (Qwen2-MoE, DeepSeekMoE), scaled per token by sigmoid(w . x) with
  # shared_expert_gate (Qwen2-MoE's).
  # router_bias adds a per-expert bias to the scores that pick the experts, not to the weights
  # (DeepSeek-V3's auxiliary-loss-free balancing, Wang et al. 2024): training moves each bias
  # by optim.router_bias_rate against the sign of its expert's overload in the step's batch,
  # so balance need not come from router_aux_coef's loss.
  # router_groups = G > 1 splits the experts into G groups of consecutive ids and lets each
  # token pick only from its router_groups_per_token best groups, a group scored by the sum
  # of its router_group_top best picking scores (DeepSeek-V3's node-limited routing: 2;
  # DeepSeek-V2's device-limited routing: 1), which bounds how many devices a token's
  # experts sit on. moe_first_dense = k keeps the first k layers' MLPs
  # dense, of moe_dense_mlp_dim (DeepSeek's first_k_dense_replace).
  num_experts: int = 0
  experts_per_token: int = 2
  moe_renormalize: bool = True
  router_aux_coef: float = 0.01
  router_z_coef: float = 0.0
  moe_capacity_factor: float = 0.0
  router_scoring: str = "softmax"
  router_scale: float = 1.0
  moe_every: int = 1
  moe_dense_mlp_dim: int = 0
  shared_expert_dim: int = 0
  shared_expert_gate: bool = False
  router_bias: bool = False
  router_groups: int = 1
  router_groups_per_token: int = 1
  router_group_top: int = 2
  moe_first_dense: int = 0

  def __post_init__(self):
    for name in ("rope_short_factor", "rope_long_factor"):  # a JSON list when read back
      object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
    if self.style not in STYLES:
      raise ValueError(f"model.style must be one of {tuple(STYLES)}, got {self.style!r}")
    config_checks.check_latent_attention(self)
    if self.embed_dim % self.num_heads and not self.head_dim:
      raise ValueError(
          f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}; "
          "set model.head_dim explicitly")
    if self.num_heads % self.kv_heads:
      raise ValueError(
          f"model.num_heads={self.num_heads} must be a multiple of model.num_kv_heads={self.kv_heads}")
    if self.attention_impl not in ("auto", "xla", "cudnn"):
      raise ValueError(f"model.attention_impl must be auto, xla or cudnn, got {self.attention_impl!r}")
    for name in ("dropout", "attention_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"model.rope_scaling must be one of {ROPE_SCALINGS}, got "
                       f"{self.rope_scaling!r}")
    if self.sliding_window < 0 or (self.sliding_window and self.family != "decoder"):
      raise ValueError(f"model.sliding_window must be >= 0 and is for decoders, got "
                       f"{self.sliding_window} for style {self.style!r}")
    if (self.rope_scaling != "none" or self.rope_fraction != 1.0) and not self.rope:
      raise ValueError(f"model.rope_scaling and model.rope_fraction apply to RoPE, which only "
                       f"the {' and '.join(ROPE_STYLES)} styles use (style is {self.style!r})")
    if not 0 < self.rope_fraction <= 1 or (self.rope and (self.rotary_dim % 2
                                                           or not self.rotary_dim)):
      raise ValueError(f"model.rope_fraction must be in (0, 1] and rotate an even number of "
                       f"dimensions, got {self.rope_fraction} of head size {self.head_size}")
    if self.parallel_residual and self.family != "decoder":
      raise ValueError(f"model.parallel_residual is for decoders, not style {self.style!r}")
    if self.shared_norm and not self.parallel_residual:
      raise ValueError("model.shared_norm needs model.parallel_residual=true (one norm feeds "
                       "attention and MLP side by side)")
    if self.head_bias and (self.family != "decoder" or self.tied):
      raise ValueError("model.head_bias is for decoders with an untied output head "
                       "(tie_embeddings=false)")
    if self.rope_scaling != "none" and self.rope_factor < 1.0:
      raise ValueError(f"model.rope_factor must be >= 1 with rope_scaling, got {self.rope_factor}")
    if self.rope_scaling == "llama3" and not (
        0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
      raise ValueError("llama3 rope scaling needs 0 < model.rope_low_freq_factor < "
                       f"model.rope_high_freq_factor, got {self.rope_low_freq_factor} and "
                       f"{self.rope_high_freq_factor}")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      raise ValueError(f"model.mlp_activation must be one of {MLP_ACTIVATIONS}, got "
                       f"{self.mlp_activation!r}")
    gemma = dict(sliding_global_every=self.sliding_global_every,
                 rope_local_theta=self.rope_local_theta, sandwich_norm=self.sandwich_norm,
                 attn_softcap=self.attn_softcap, logit_softcap=self.logit_softcap,
                 query_pre_attn_scalar=self.query_pre_attn_scalar)
    for name, value in gemma.items():
      if value < 0 or (value and self.style != "llama"):
        raise ValueError(f"model.{name} must be >= 0 and is for the llama style, got {value} "
                         f"for style {self.style!r}")
    if self.sliding_global_every and not self.sliding_window:
      raise ValueError("model.sliding_global_every needs model.sliding_window > 0")
    if self.rope_scaling == "yarn" and not 0 < self.rope_beta_slow < self.rope_beta_fast:
      raise ValueError("yarn rope scaling needs 0 < model.rope_beta_slow < model.rope_beta_fast, "
                       f"got {self.rope_beta_slow} and {self.rope_beta_fast}")
    lengths = {len(self.rope_short_factor), len(self.rope_long_factor)}
    if (self.rope_scaling == "longrope") != (lengths != {0}) or (
        self.rope_scaling == "longrope" and lengths != {self.rotary_dim // 2}):
      raise ValueError("longrope scaling needs model.rope_short_factor and model.rope_long_factor "
                       f"of rotary_dim / 2 = {self.rotary_dim // 2} numbers each (and other "
                       f"scalings neither), got {len(self.rope_short_factor)} and "
                       f"{len(self.rope_long_factor)} with rope_scaling={self.rope_scaling!r}")
    config_checks.check_mixture(self)
    if self.scan_layers and self.moe_first_dense:
      raise ValueError("model.scan_layers needs layers that repeat evenly: moe_first_dense "
                       "makes the first layers differ")
    if self.scan_layers and self.num_layers % self.layer_period:
      raise ValueError(
          f"model.scan_layers needs layers that repeat evenly: {self.num_layers} layers in a "
          f"pattern of {self.layer_period}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
    if self.qk_norm_full and not self.qk_norm:
      raise ValueError("model.qk_norm_full sets how the query / key norms span the heads: it "
                       "needs model.qk_norm=true")
  @property
  def latent_attention(self) -> bool:
    """Whether attention is multi-head latent attention (`kv_lora_rank` > 0)."""
    return self.kv_lora_rank > 0

  @property
  def attention_flops_dim(self) -> float:
    """Per head, what the attention flops term (12 L H Q T: q . k and the value mix alike)
    takes as Q: the mean of the query / key and value sizes (they differ under MLA)."""
    return (self.head_size + self.value_size) / 2

  @property
  def value_size(self) -> int:
    """Each head's value size (`head_size`, or MLA's `v_head_dim`)."""
    return self.v_head_dim or self.head_size

  @property
  def family(self) -> str:
    """decoder, encoder or encdec."""
    return STYLES[self.style]

  def layer_window(self, layer: int) -> int:
    """The attention window of decoder layer `layer` (0: it attends to every earlier key)."""
    every = self.sliding_global_every
    if not self.sliding_window or (every and (layer + 1) % every == 0):
      return 0
    return self.sliding_window

  @property
  def layer_period(self) -> int:
    """Length of the repeating pattern of decoder layers (2 when every 2nd layer is global,
    or every 2nd a mixture of experts)."""
    window = self.sliding_global_every if self.sliding_window and self.sliding_global_every else 1
    return math.lcm(window, self.moe_every if self.moe else 1)

  def layer_routed(self, layer: int) -> bool:
    """Whether decoder layer `layer`'s MLP is a mixture of experts (see `moe_every`)."""
    return self.moe and layer >= self.moe_first_dense and (layer + 1) % self.moe_every == 0

  @property
  def dense_mlp_dim(self) -> int:
    """The width of a dense MLP (in a mixture of experts, of the layers without experts)."""
    return self.moe_dense_mlp_dim or self.mlp_dim

  @property
  def moe(self) -> bool:
    """Whether the blocks' MLPs are mixtures of experts."""
    return self.num_experts > 0

  @property
  def rope(self) -> bool:
    """Whether positions are rotary (else learned, or T5's relative bias)."""
    return self.style in ROPE_STYLES

  @property
  def rotary_dim(self) -> int:
    """How many of each head's dimensions RoPE rotates (the first ones)."""
    if self.latent_attention:
      return self.qk_rope_head_dim
    return int(self.head_size * self.rope_fraction)

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def bias(self) -> bool:
    return self.style in LAYER_NORM_STYLES if self.use_bias is None else self.use_bias

  @property
  def mlp_act(self) -> str:
    """The MLP's non-linearity: `mlp_activation`, else the style's."""
    return self.mlp_activation or STYLE_MLPS[self.style][0]

  @property
  def gated_mlp(self) -> bool:
    """Whether the MLP is gated (SwiGLU / GEGLU: three projections instead of two)."""
    return STYLE_MLPS[self.style][1] if self.mlp_gated is None else self.mlp_gated

  @property
  def attention_qkv_bias(self) -> bool:
    """Whether the query / key / value projections have biases."""
    return self.bias or self.qkv_bias

  @property
  def tied(self) -> bool:
    return self.style in ("gpt2", "bert") if self.tie_embeddings is None else self.tie_embeddings

  @property
  def layer_norm(self) -> bool:
    """LayerNorm (mean and bias) rather than RMSNorm."""
    return self.style in LAYER_NORM_STYLES

  @property
  def compute_dtype(self) -> jnp.dtype:
    if self.dtype == "auto":
      return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(self.dtype)


def from_config(cfg: Mapping[str, Any], vocab_size: int | None = None) -> ModelConfig:
  """Builds a ModelConfig from `config.model`; `vocab_size` fills a 0 in the config."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  values = {k: v for k, v in dict(cfg).items() if k in fields}
  if not values.get("vocab_size"):
    if vocab_size is None:
      raise ValueError("model.vocab_size is 0 and no tokenizer vocabulary was given")
    values["vocab_size"] = vocab_size
  elif vocab_size is not None and values["vocab_size"] < vocab_size:
    raise ValueError(
        f"model.vocab_size={values['vocab_size']} is smaller than the tokenizer's vocabulary "
        f"({vocab_size}); use 0 to take the tokenizer's size")
  return ModelConfig(**values)
