"""End-to-end fine-tuning (MAE's recipe with timm's parts).

    >>> from bootleg.finetune import FinetuneConfig
    >>> from bootleg.finetune.run import finetune, load_classifier

This package module imports only the settings (light); the training lives in
:mod:`bootleg.finetune.run`, the command line in :mod:`bootleg.finetune.cli`.
"""

from bootleg.finetune.config import RECIPES, FinetuneConfig, load_finetune_config

__all__ = ["RECIPES", "FinetuneConfig", "load_finetune_config"]
