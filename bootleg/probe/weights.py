"""Which encoder to evaluate: a run folder, an ``encoder.safetensors`` or an MLflow model URI.

``models:/`` and ``runs:/`` URIs go through :func:`bootleg.export.download_model`, the library's
one (lazy) import of MLflow; the tracking server comes from ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bootleg.errors import BootlegError
from bootleg.export import download_model, resolve_encoder_path

MLFLOW_PREFIXES = ("models:/", "runs:/")


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A run folder, an ``encoder.safetensors`` or an MLflow model URI -> the weights file."""
    s = str(checkpoint)
    if s.startswith(MLFLOW_PREFIXES):
        return resolve_encoder_path(download_model(s))
    return resolve_encoder_path(s)


def run_config(weights: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` beside the weights as a plain dict (empty when absent)."""
    path = weights.parent / "config.yaml"
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise BootlegError(f"{path}: not a readable run config ({type(e).__name__})") from None
    return raw if isinstance(raw, dict) else {}
