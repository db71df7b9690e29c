"""Bootleg: self-distillation of hidden layers for ViT pretraining."""

__version__ = "0.1.0"
