"""A reward model: the decoder with a scalar head read at each row's last real token.

It subclasses `Decoder`, so its parameter paths are the decoder's plus `value_head`: an SFT
or pre-trained checkpoint loads into it directly (`init_from`), and only the head starts fresh.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxlm.models.config import ModelConfig
from jaxlm.models.decoder import Decoder
from jaxlm.models.heads import ScalarHead, sequence_scores


class RewardModel(Decoder):
  """Decoder + scalar head; `score` gives one number per (right-padded) row."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    super().__init__(cfg, rngs)
    self.value_head = ScalarHead(cfg.embed_dim, rngs=rngs)

  def score(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
            segment_ids_BxT: jax.Array | None = None, *,
            dropout_rng: jax.Array | None = None) -> jax.Array:
    """fp32 score (B,) at the last token whose segment id is not 0 (padding)."""
    return self.score_and_router_stats(tokens_BxT, positions_BxT, segment_ids_BxT,
                                       dropout_rng=dropout_rng)[0]

  def score_and_router_stats(self, tokens_BxT: jax.Array,
                             positions_BxT: jax.Array | None = None,
                             segment_ids_BxT: jax.Array | None = None, *,
                             dropout_rng: jax.Array | None = None
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`score`, and a mixture of experts' router statistics over the rows ({} if dense)."""
    hidden_BxTxD, _, stats = self.hidden_and_router_stats(
        tokens_BxT, positions_BxT, segment_ids_BxT, dropout_rng=dropout_rng)
    if segment_ids_BxT is None:
      segment_ids_BxT = jax.numpy.ones(tokens_BxT.shape, jax.numpy.int32)
    return sequence_scores(self.value_head, hidden_BxTxD, segment_ids_BxT), stats
