"""Which encoder to evaluate: a run folder, an ``encoder.safetensors`` or an MLflow model URI.

This is the one place in ``bootleg/`` that may import MLflow (lazily, only for ``models:/`` and
``runs:/`` URIs; the tracking server comes from ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from bootleg.errors import BootlegError
from bootleg.export import resolve_encoder_path

MLFLOW_PREFIXES = ("models:/", "runs:/")


def download_encoder(uri: str) -> Path:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/ID/encoder`` -> a local folder
    holding ``encoder.safetensors``."""
    try:
        import mlflow
    except ImportError:
        raise BootlegError(f"{uri}: MLflow URIs need the mlflow package, which is not installed") from None
    dst = Path(tempfile.mkdtemp(prefix="bootleg-encoder-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as e:  # noqa: BLE001 - any MLflow failure is one line for the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BootlegError(f"{uri}: cannot download the encoder ({first})") from None
    if local.is_file():
        local = local.parent
    if not (local / "encoder.safetensors").is_file():
        found = sorted(local.rglob("encoder.safetensors"))
        if not found:
            raise BootlegError(f"{uri}: no encoder.safetensors in the downloaded artifacts")
        local = found[0].parent
    return local


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A run folder, an ``encoder.safetensors`` or an MLflow model URI -> the weights file."""
    s = str(checkpoint)
    if s.startswith(MLFLOW_PREFIXES):
        return resolve_encoder_path(download_encoder(s))
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
