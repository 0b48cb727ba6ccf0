"""Prefix-tuning (Li & Liang 2021): trainable per-layer key/value prefixes for every query.

`apply_prefix` adds `Decoder.prefix`, which gives (L, P, K, H) keys and values: either free
parameters, or (`hidden` > 0) the reparameterisation of the paper, an MLP
tanh(E W1 + b1) W2 + b2 from a (P, D) table E to every layer's keys and values at once, which
trains more stably. The decoder puts the prefix in the first P slots of its KV cache (segment
`GLOBAL_SEGMENT`): every real query attends to all of it, whatever its segment (packed
documents each see the whole prefix), and no causal mask applies to it. Text positions are
unchanged (the prefix carries none), so the context stays the model's full `max_seq_len`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.config import ModelConfig
from jaxlm.peft.params import check_virtual_sizes, decoder_of, new_param


class Prefix(nnx.Module):
  """Per-layer prefix keys and values, directly or through the reparameterising MLP."""

  def __init__(self, cfg: ModelConfig, length: int, hidden: int, rngs: nnx.Rngs):
    self.length = length
    self.shape = (cfg.num_layers, length, cfg.kv_heads, cfg.head_size)
    kv = cfg.kv_heads * cfg.head_size
    normal = nnx.initializers.normal
    if hidden:
      zeros = nnx.initializers.zeros_init()
      self.table = new_param(normal(1.0), (None, "embed"), rngs.params(), (length, cfg.embed_dim))
      self.w1 = new_param(nnx.initializers.kaiming_uniform(), ("embed", "mlp"), rngs.params(),
                          (cfg.embed_dim, hidden))
      self.b1 = new_param(zeros, ("mlp",), rngs.params(), (hidden,))
      self.w2 = new_param(normal(0.02), ("mlp", None), rngs.params(),
                          (hidden, 2 * cfg.num_layers * kv))
      self.b2 = new_param(zeros, (None,), rngs.params(), (2 * cfg.num_layers * kv,))
    else:
      self.keys = new_param(normal(0.1), (None, None, "kv"), rngs.params(),
                            (cfg.num_layers, length, kv))
      self.values = new_param(normal(0.1), (None, None, "kv"), rngs.params(),
                              (cfg.num_layers, length, kv))

  def __call__(self) -> tuple[jax.Array, jax.Array]:
    """Keys and values (L, P, K, H), float32."""
    if hasattr(self, "table"):
      h_PxF = jnp.tanh(self.table[...] @ self.w1[...] + self.b1[...])
      out_Px2LKH = h_PxF @ self.w2[...] + self.b2[...]
      l, p, k, h = self.shape
      kv_2xLxPxKxH = out_Px2LKH.reshape(p, 2, l, k, h).transpose(1, 2, 0, 3, 4)
      return kv_2xLxPxKxH[0], kv_2xLxPxKxH[1]
    return self.keys[...].reshape(self.shape), self.values[...].reshape(self.shape)


def apply_prefix(model: nnx.Module, length: int, hidden: int, rngs: nnx.Rngs) -> None:
  """Adds a trainable `length`-slot key/value prefix to every layer of the decoder."""
  check_virtual_sizes("prefix", length, hidden)
  decoder = decoder_of(model, "prefix")
  if decoder.cfg.latent_attention:
    raise ValueError("peft.method=prefix trains per-head key / value prefixes, and multi-head "
                     "latent attention (model.kv_lora_rank) caches a latent instead: use "
                     "peft.method=prompt (virtual tokens) or lora")
  decoder.prefix = Prefix(decoder.cfg, length, hidden, rngs)
