"""ViT encoder and predictors built on timm blocks (fused attention)."""

from bootleg.models.decoders import ConvPredictorConfig, CrossPredictorConfig  # registers them  # noqa: I001
from bootleg.models.encoder import ViTEncoder, block_forward, split_prefix
from bootleg.models.predictor import PREDICTORS, PredictorConfig, ViTPredictor, ViTPredictorConfig

__all__ = [
    "ConvPredictorConfig",
    "CrossPredictorConfig",
    "PREDICTORS",
    "PredictorConfig",
    "ViTEncoder",
    "ViTPredictor",
    "ViTPredictorConfig",
    "block_forward",
    "split_prefix",
]
