"""ViT encoder and predictors built on timm blocks (fused attention)."""

from bootleg.models.encoder import ViTEncoder, block_forward, split_prefix
from bootleg.models.predictor import PREDICTORS, PredictorConfig, ViTPredictor, ViTPredictorConfig

__all__ = [
    "PREDICTORS",
    "PredictorConfig",
    "ViTEncoder",
    "ViTPredictor",
    "ViTPredictorConfig",
    "block_forward",
    "split_prefix",
]
