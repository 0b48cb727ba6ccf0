"""One constructor for every model family, chosen by `ModelConfig.style`."""

from __future__ import annotations

from flax import nnx

from jaxlm.models.config import ModelConfig
from jaxlm.models.decoder import Decoder
from jaxlm.models.encdec import EncoderDecoder
from jaxlm.models.encoder import Encoder

CLASSES = {"decoder": Decoder, "encoder": Encoder, "encdec": EncoderDecoder}


def create(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  """The model of `cfg.family` (decoder, encoder or encoder-decoder)."""
  return CLASSES[cfg.family](cfg, rngs)
