"""Model architectures (know no trainer, objective or data pipeline)."""

from jaxlm.models.config import ModelConfig, from_config
from jaxlm.models.decoder import Decoder, matmul_param_count, param_count
from jaxlm.models.encdec import EncoderDecoder
from jaxlm.models.encoder import Encoder

__all__ = ["Decoder", "Encoder", "EncoderDecoder", "ModelConfig", "from_config",
           "matmul_param_count", "param_count"]
