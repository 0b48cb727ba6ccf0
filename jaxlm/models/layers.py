"""Building blocks of the transformer: sharded initialisers, norms, rotary embeddings,
masked attention, MLPs and the fixed-size KV cache.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`, ...)
in its `out_sharding` metadata; `jaxlm.train.sharding` maps them onto mesh axes.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import flax.core.spmd
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxlm.models.config import LAYER_NORM_STYLES, ModelConfig

Initializer = Callable[..., jax.Array]


# model.remat -> jax.checkpoint policy (None: no rematerialisation).
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# Fused attention kernels (cuDNN's, fp8 too), whose outputs and softmax statistics a policy
# must keep, or the backward pass runs the kernel's forward again.
_ATTENTION_KERNEL = re.compile(r"dot_product_attention(_fp8)?_fwd")


def matmul_outputs_saveable(prim, *_, **__) -> bool:
  """A `jax.checkpoint` policy keeping the outputs of every matmul and fused attention
  kernel: the backward pass recomputes element-wise work only, never a matmul."""
  return prim.name == "dot_general" or _ATTENTION_KERNEL.match(prim.name) is not None


def remat_policy(remat: str, scanned: bool = False) -> Callable | None:
  """The `jax.checkpoint` policy of a block for `model.remat` (None: call it plainly).

  A block under `lax.scan` with remat "none" keeps matmul outputs and recomputes the
  element-wise work (`matmul_outputs_saveable`): the unrolled program gets the same from
  XLA, which fuses that work into the backward, but across the loop boundary every
  intermediate would otherwise be stored per layer (a GELU alone leaves five (B, T, mlp)
  arrays), costing memory and time.
  """
  if remat == "none" and scanned:
    return matmul_outputs_saveable
  return REMAT_POLICIES[remat]


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
  """`x` pinned to the mesh axes its logical activation `names` map to.

  Active only while tracing under a mesh (`jax.set_mesh`) and a logical-rules context (the
  trainer sets both, see `jaxlm.train.sharding.activation_rules`); elsewhere `x` is returned
  untouched, so sampling and tests on one device see plain arrays.
  """
  rules = dict(flax.core.spmd.get_logical_axis_rules())
  if not rules or jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, P(*(rules.get(n) if n else None for n in names)))


class Embed(nnx.Embed):
  """`nnx.Embed` whose table is gathered over FSDP before the lookup, as every weight is
  before use. Looked up from a table split along `embed`, the rows come out split along
  `embed` too, and SPMD can only re-split them over the batch by replicating them first."""

  def table(self) -> jax.Array:
    """The (num, features) table the lookup and `attend` use (PEFT may edit rows of it)."""
    return self.embedding[...]

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """The rows of the table at the integer `inputs`: shape `inputs.shape + (features,)`."""
    (table,) = self.promote_dtype((self.table(),), dtype=self.dtype, inexact=False)
    rows = self.embedding.get_metadata().get("out_sharding", (None,))[0]
    table = constrain(table, "act_vocab" if rows == "vocab" else None, None)
    return jnp.take(table, inputs, axis=0)

  def attend(self, query: jax.Array) -> jax.Array:
    """Logits of `query` against every row of the table (a tied output head)."""
    query, table = self.promote_dtype((query, self.table()), dtype=self.dtype)
    return jnp.dot(query, table.T)


def embedding(num: int, dim: int, names: tuple[str | None, str | None], dtype: jnp.dtype,
              rngs: nnx.Rngs, std: float = 0.02) -> Embed:
  """An embedding table (num, dim) with normal(std) init and logical axis `names`."""
  return Embed(num, dim, dtype=dtype, embedding_init=named(nnx.initializers.normal(std), *names),
               rngs=rngs)


def run_block(block: nnx.Module, remat: str, *args, static: dict | None = None,
              scanned: bool = False, **kwargs):
  """`block(*args, **kwargs, **static)`, rematerialised in the backward pass per `remat`.

  "full" keeps only the block's input and recomputes everything else; "save_dots" keeps
  the matmul outputs without a batch dimension (the projections) and recomputes the rest;
  `scanned`: the block runs under `lax.scan` (see `remat_policy`). `static` holds Python
  values (flags), the rest may be arrays or None.
  """
  def call(b, a, kw):
    return b(*a, **kw, **(static or {}))
  policy = remat_policy(remat, scanned)
  if policy is None:
    return call(block, args, kwargs)
  # A pure function of the block's state (not `nnx.remat`, which writes the state back and so
  # fails for a block made outside the current trace, e.g. in a sampler's while loop).
  graphdef, state = nnx.split(block)
  return jax.checkpoint(lambda s, a, kw: call(nnx.merge(graphdef, s), a, kw),
                        policy=policy)(state, args, kwargs)


def named(init: Initializer, *names: str | None) -> Initializer:
  """Wraps `init` so the variable it creates carries logical axis `names` (no eager sharding)."""
  return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def dense(in_dim: int, out_dim: int, names: tuple[str | None, str | None], *, bias: bool,
          dtype: jnp.dtype, rngs: nnx.Rngs, std: float = 0.02) -> nnx.Linear:
  """An `nnx.Linear` with normal(std) kernel and logical axis names on kernel and bias."""
  return nnx.Linear(
      in_dim, out_dim, use_bias=bias, dtype=dtype,
      kernel_init=named(nnx.initializers.normal(std), *names),
      bias_init=named(nnx.initializers.zeros_init(), names[1]),
      rngs=rngs)


def norm(style: str, dim: int, eps: float, dtype: jnp.dtype, rngs: nnx.Rngs,
         axis: str | None = "embed") -> nnx.Module:
  """LayerNorm (with bias) for GPT-2 / GPT-NeoX / BERT styles, RMSNorm for Llama / T5; `axis`
  names the normalised dimension (None: replicated, e.g. a per-head norm)."""
  scale = named(nnx.initializers.ones_init(), axis)
  if style in LAYER_NORM_STYLES:
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, scale_init=scale,
                         bias_init=named(nnx.initializers.zeros_init(), axis), rngs=rngs)
  return nnx.RMSNorm(dim, epsilon=eps, dtype=dtype, scale_init=scale, rngs=rngs)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout with an explicit key; identity when `rng` is None or rate is 0."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def adapted(block: nnx.Module, where: str, out_BxTxD: jax.Array) -> jax.Array:
  """A sublayer's output through the block's PEFT adapter `{where}_adapter` ("attn" or "mlp"),
  when `jaxlm.peft` surgery added one; unchanged otherwise."""
  adapter = getattr(block, f"{where}_adapter", None)
  return out_BxTxD if adapter is None else adapter(out_BxTxD)


def rope_frequencies(cfg: ModelConfig, local: bool = False, long: bool = False) -> np.ndarray:
  """RoPE's angular frequency per rotated pair (rotary_dim / 2,), after `cfg.rope_scaling`
  (LongRoPE: its short factors, or with `long` its long ones); a sliding-window (`local`)
  layer of a model with `rope_local_theta` uses that, unscaled."""
  half = cfg.rotary_dim // 2
  if local and cfg.rope_local_theta:
    return (cfg.rope_local_theta ** (-np.arange(half, dtype=np.float64) / half)).astype(np.float32)
  freq_H2 = cfg.rope_theta ** (-np.arange(half, dtype=np.float64) / half)
  if cfg.rope_scaling == "linear":
    freq_H2 = freq_H2 / cfg.rope_factor
  elif cfg.rope_scaling == "llama3":
    wavelen_H2 = 2 * np.pi / freq_H2
    context, low, high = (cfg.rope_original_max_len, cfg.rope_low_freq_factor,
                          cfg.rope_high_freq_factor)
    smooth_H2 = (context / wavelen_H2 - low) / (high - low)
    blended_H2 = (1 - smooth_H2) * freq_H2 / cfg.rope_factor + smooth_H2 * freq_H2
    freq_H2 = np.where(wavelen_H2 > context / low, freq_H2 / cfg.rope_factor,
                       np.where(wavelen_H2 < context / high, freq_H2, blended_H2))
  elif cfg.rope_scaling == "yarn":
    freq_H2 = yarn_frequencies(cfg, freq_H2)
  elif cfg.rope_scaling == "longrope":
    factors = cfg.rope_long_factor if long else cfg.rope_short_factor
    freq_H2 = freq_H2 / np.asarray(factors, np.float64)
  return freq_H2.astype(np.float32)


def rope_frequencies_at(cfg: ModelConfig, positions_BxT: jax.Array,
                        local: bool = False) -> np.ndarray | jax.Array:
  """`rope_frequencies` for a forward pass at `positions_BxT`: LongRoPE's long factors instead
  of its short ones once any position reaches `rope_original_max_len` (transformers' choice,
  one for the whole batch, per call: cached keys keep the factors they were written with)."""
  short_H2 = rope_frequencies(cfg, local)
  if cfg.rope_scaling != "longrope" or (local and cfg.rope_local_theta):
    return short_H2
  return jnp.where(jnp.max(positions_BxT) + 1 > cfg.rope_original_max_len,
                   rope_frequencies(cfg, local, long=True), short_H2)


def yarn_frequencies(cfg: ModelConfig, freq_H2: np.ndarray) -> np.ndarray:
  """YaRN (Peng et al. 2023): frequencies below the `rope_beta_slow` rotations-per-context
  dimension divided by `rope_factor`, above the `rope_beta_fast` one kept, a linear ramp of
  the two in between (dimension bounds as transformers computes them)."""
  dim, base, context = cfg.rotary_dim, cfg.rope_theta, cfg.rope_original_max_len

  def dimension(rotations: float) -> float:  # the dimension that turns `rotations` times
    return dim * np.log(context / (rotations * 2 * np.pi)) / (2 * np.log(base))

  low, high = dimension(cfg.rope_beta_fast), dimension(cfg.rope_beta_slow)
  if cfg.rope_truncate:
    low, high = np.floor(low), np.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  high = high + 0.001 if low == high else high
  ramp_H2 = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
  return freq_H2 / cfg.rope_factor * ramp_H2 + freq_H2 * (1 - ramp_H2)


def rope_attention_factor(cfg: ModelConfig, local: bool = False) -> float:
  """What RoPE multiplies queries and keys by: YaRN's or LongRoPE's attention factor, else 1."""
  if cfg.rope_scaling not in ("yarn", "longrope") or (local and cfg.rope_local_theta):
    return 1.0
  if cfg.rope_attention_factor:
    return cfg.rope_attention_factor
  if cfg.rope_factor <= 1:
    return 1.0
  if cfg.rope_scaling == "longrope":
    return math.sqrt(1 + math.log(cfg.rope_factor) / math.log(cfg.rope_original_max_len))
  return 0.1 * math.log(cfg.rope_factor) + 1.0


def rotary(cfg: ModelConfig, positions_BxT: jax.Array,
           local: bool = False) -> Callable[[jax.Array], jax.Array]:
  """`x -> x` rotated by `cfg`'s RoPE at `positions` (a sliding-window layer: `local`), times
  its attention factor; the frequencies are worked out once for every array it rotates."""
  freq_H2 = rope_frequencies_at(cfg, positions_BxT, local)
  scale = rope_attention_factor(cfg, local)
  return lambda x_BxTxNxH: apply_rope(x_BxTxNxH, positions_BxT, freq_H2, scale)


def linear_kernel(linear: Callable) -> jax.Array:
  """The (in, out) matrix a bias-free linear layer multiplies by: its kernel, or a PEFT-wrapped
  layer's `effective_kernel()` (LoRA / DoRA folded in); a layer bound to a dropout key
  (`functools.partial`) is unwrapped."""
  linear = getattr(linear, "func", linear)
  effective = getattr(linear, "effective_kernel", None)
  return effective() if effective is not None else linear.kernel[...]


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, freq_H2: np.ndarray,
               scale: float = 1.0) -> jax.Array:
  """Rotary position embedding (rotate-half convention, as Llama / HF) at frequencies `freq`,
  times `scale` (YaRN's attention factor), on the first 2 * len(freq) dimensions of each head;
  the others pass through (partial rotary, GPT-NeoX)."""
  half = len(freq_H2)
  rotary = 2 * half
  angle_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * freq_H2
  sin, cos = jnp.sin(angle_BxTxH2)[:, :, None, :], jnp.cos(angle_BxTxH2)[:, :, None, :]
  if scale != 1.0:
    sin, cos = sin * scale, cos * scale
  x = x_BxTxNxH[..., :rotary].astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  out = out.astype(x_BxTxNxH.dtype)
  if rotary == x_BxTxNxH.shape[-1]:
    return out
  return jnp.concatenate([out, x_BxTxNxH[..., rotary:]], axis=-1)


def attention_mask(q_segment_BxT: jax.Array, k_segment_BxS: jax.Array,
                   q_slot_T: jax.Array, k_slot_S: jax.Array, window: int = 0) -> jax.Array:
  """Boolean (B, 1, T, S) mask: causal in slot order and within the same segment.

  Segment 0 marks padding (or an empty cache slot): a query of segment s sees only keys of
  segment s, so packed documents never attend to each other and padding is never seen.
  `window` > 0 keeps only the keys fewer than `window` slots back (sliding-window attention).
  """
  causal_TxS = k_slot_S[None, :] <= q_slot_T[:, None]
  if window:
    causal_TxS &= k_slot_S[None, :] > q_slot_T[:, None] - window
  same_BxTxS = q_segment_BxT[:, :, None] == k_segment_BxS[:, None, :]
  return (causal_TxS[None] & same_BxTxS)[:, None]


def sequence_split() -> bool:
  """Whether activations are being traced split along the sequence (context parallelism: a
  mesh whose `act_seq` axis has more than one device, under the activation rules)."""
  axis = dict(flax.core.spmd.get_logical_axis_rules()).get("act_seq")
  mesh = jax.sharding.get_abstract_mesh()
  return bool(axis) and not mesh.empty and mesh.shape.get(axis, 1) > 1


def pick_attention_impl(requested: str, dtype: jnp.dtype, head_dim: int) -> str:
  """cuDNN flash attention on GPU for 16-bit inputs with a supported head size, else XLA
  (also when the sequence is split over devices: XLA's attention partitions along it)."""
  if requested != "auto":
    return requested
  if sequence_split():
    return "xla"
  on_gpu = jax.default_backend() == "gpu"
  ok = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 256
  return "cudnn" if on_gpu and ok else "xla"


def dot_product_attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array,
                          mask_Bx1xTxS: jax.Array | None, *, causal: bool, impl: str,
                          bias_1xNxTxS: jax.Array | None = None, scale: float | None = None,
                          dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                          window: int = 0, softcap: float = 0.0) -> jax.Array:
  """`jax.nn.dot_product_attention` with grouped-query heads; `causal` adds the triangle.

  With a dropout key and a positive rate, the attention probabilities are dropped out (as in
  GPT-2, BERT and T5 training); the fused kernels take no dropout, so that path is XLA's.
  `window` > 0 (self-attention, query i at key slot i) sees only keys fewer than `window`
  positions back. `softcap` > 0 caps the scaled scores at +-softcap with tanh (Gemma 2), also
  only on XLA's path.
  """
  s = k_BxSxKxH.shape[1]
  if (dropout_rng is None or dropout_rate == 0.0) and not softcap:
    return jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, bias=bias_1xNxTxS, mask=mask_Bx1xTxS, scale=scale,
        is_causal=causal, implementation=impl,
        local_window_size=(window - 1, 0 if causal else s) if window else None)
  n, kv = q_BxTxNxH.shape[2], k_BxSxKxH.shape[2]
  k_BxSxNxH = jnp.repeat(k_BxSxKxH, n // kv, axis=2)
  v_BxSxNxH = jnp.repeat(v_BxSxKxH, n // kv, axis=2)
  scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
  logits_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxSxNxH,
                              preferred_element_type=jnp.float32) * scale
  if softcap:
    logits_BxNxTxS = softcapped(logits_BxNxTxS, softcap)
  if bias_1xNxTxS is not None:
    logits_BxNxTxS = logits_BxNxTxS + bias_1xNxTxS.astype(jnp.float32)
  t, s = logits_BxNxTxS.shape[-2:]
  allowed = jnp.ones((1, 1, t, s), bool) if mask_Bx1xTxS is None else mask_Bx1xTxS
  if causal:
    allowed = allowed & jnp.tril(jnp.ones((t, s), bool))
  if window:
    allowed = allowed & jnp.triu(jnp.ones((t, s), bool), 1 - window)
  logits_BxNxTxS = jnp.where(allowed, logits_BxNxTxS, jnp.finfo(jnp.float32).min)
  probs_BxNxTxS = dropout(jax.nn.softmax(logits_BxNxTxS, axis=-1), dropout_rate, dropout_rng)
  return jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxS.astype(v_BxSxNxH.dtype), v_BxSxNxH)


def softcapped(x: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(x / cap): `x` squashed smoothly into (-cap, cap)."""
  return cap * jnp.tanh(x / cap)


def activation(name: str, x: jax.Array) -> jax.Array:
  """The MLP non-linearity called `name`."""
  if name == "silu":
    return jax.nn.silu(x)
  if name == "relu":
    return jax.nn.relu(x)
  return jax.nn.gelu(x, approximate=name == "gelu_tanh")


def mlp_apply(x: jax.Array, project: Callable[[str, jax.Array], jax.Array], *, act: str,
              gated: bool) -> jax.Array:
  """down(act(up(x))) or, gated, down(act(gate(x)) * up(x)); `project(name, rows)` applies
  the projection called `name` ("up", "gate", "down"): a Linear, or a mixture's experts."""
  h = project("up", x)
  h = activation(act, project("gate", x)) * h if gated else activation(act, h)
  return project("down", h)


class MLP(nnx.Module):
  """down(act(up(x))) (GPT-2, GPT-NeoX, BERT, original T5) or, gated, down(act(gate(x)) * up(x))
  (Llama's SwiGLU, T5 v1.1's and Gemma's GEGLU)."""

  def __init__(self, dim: int, hidden: int, *, act: str, gated: bool, bias: bool,
               dtype: jnp.dtype, out_std: float, rngs: nnx.Rngs):
    self.act, self.gated = act, gated
    self.up = dense(dim, hidden, ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
    if self.gated:
      self.gate = dense(dim, hidden, ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
    self.down = dense(hidden, dim, ("mlp", "embed"), bias=bias, dtype=dtype, rngs=rngs, std=out_std)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    return mlp_apply(x_BxTxD, lambda name, rows: getattr(self, name)(rows), act=self.act,
                     gated=self.gated)


def mlp(cfg: ModelConfig, out_std: float, rngs: nnx.Rngs) -> MLP:
  """The MLP of a `cfg` block (its style's, or `cfg.mlp_activation` / `cfg.mlp_gated`), of
  `cfg.dense_mlp_dim` (in a mixture of experts, a layer without experts)."""
  return MLP(cfg.embed_dim, cfg.dense_mlp_dim, act=cfg.mlp_act, gated=cfg.gated_mlp, bias=cfg.bias,
             dtype=cfg.compute_dtype, out_std=out_std, rngs=rngs)


def init_kv_cache(batch: int, length: int, num_layers: int, kv_heads: int, key_dim: int,
                  value_dim: int, dtype: jnp.dtype) -> dict:
  """An empty fixed-size KV cache: per-layer keys/values, slot segment ids, next write index."""
  return {
      "k": [jnp.zeros((batch, length, kv_heads, key_dim), dtype) for _ in range(num_layers)],
      "v": [jnp.zeros((batch, length, kv_heads, value_dim), dtype) for _ in range(num_layers)],
      "segment_ids": jnp.zeros((batch, length), jnp.int32),
      "index": jnp.zeros((), jnp.int32),
  }


def check_cache_room(index: jax.Array, new_tokens: int, slots: int) -> None:
  """Raises ValueError when `new_tokens` written at `index` would run past a cache of `slots`
  (the write would clamp and overwrite the last slots). Only a concrete index is checked: under
  `jit` it is traced, and callers bound it (`sampling` does)."""
  try:
    start = int(index)
  except TypeError:  # a tracer: the value is known only when the program runs
    return
  if start + new_tokens > slots:
    raise ValueError(f"the KV cache has {slots} slots; writing {new_tokens} tokens at slot "
                     f"{start} runs past it (make the cache longer with init_cache)")


def write_cache(buf_BxSxKxH: jax.Array, new_BxTxKxH: jax.Array, index: jax.Array) -> jax.Array:
  """Writes `new` into the cache buffer at slot `index` (same slot for every row)."""
  return jax.lax.dynamic_update_slice(buf_BxSxKxH, new_BxTxKxH.astype(buf_BxSxKxH.dtype),
                                      (0, index, 0, 0))
