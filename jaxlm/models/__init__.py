"""Model architectures (know no trainer, objective or data pipeline)."""

from jaxlm.models.config import DecoderConfig, from_config
from jaxlm.models.decoder import Decoder, matmul_param_count, param_count

__all__ = ["Decoder", "DecoderConfig", "from_config", "matmul_param_count", "param_count"]
