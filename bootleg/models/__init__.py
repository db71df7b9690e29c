"""ViT encoder and predictor built on timm blocks (fused attention)."""

from bootleg.models.encoder import ViTEncoder, block_forward
from bootleg.models.predictor import ViTPredictor

__all__ = ["ViTEncoder", "ViTPredictor", "block_forward"]
