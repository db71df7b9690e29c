"""Saving and loading trained encoders (``encoder.safetensors``), also into timm.

    >>> import timm, json
    >>> from safetensors import safe_open
    >>> from safetensors.torch import load_file
    >>> meta = safe_open("encoder.safetensors", "pt").metadata()
    >>> model = timm.create_model(**json.loads(meta["timm_kwargs"]))
    >>> model.load_state_dict(load_file("encoder.safetensors"))

``bootleg.export.load_timm(path)`` does the same in one call.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from bootleg.errors import BootlegError
from bootleg.io import atomic_write_bytes
from bootleg.models import ViTEncoder

ENCODER_FILE = "encoder.safetensors"


def save_encoder(encoder: ViTEncoder, path: Path, extra: dict[str, str] | None = None) -> None:
    """Write the encoder's weights (timm key names) with its architecture as metadata."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder.state_dict().items()}
    meta = {
        "format": "bootleg-encoder/1",
        "arch": json.dumps(encoder.arch()),
        "timm_kwargs": json.dumps(encoder.timm_kwargs()),
    }
    meta.update(extra or {})
    data = canonical_safetensors(save(state, metadata=meta))
    atomic_write_bytes(path, data)


def canonical_safetensors(blob: bytes) -> bytes:
    """Rewrite a safetensors blob's JSON header with sorted keys.

    safetensors keeps metadata in a hash map whose order changes between processes;
    sorting makes equal weights give byte-identical files (exact-resume checks rely on it).
    Tensor offsets are relative to the data section, so only the header changes.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def resolve_encoder_path(path: str | Path) -> Path:
    """A run folder or an ``encoder.safetensors`` file -> the weights file."""
    p = Path(path)
    if p.is_dir():
        p = p / ENCODER_FILE
    if not p.is_file():
        raise BootlegError(f"{p}: no encoder weights; expected a run folder holding {ENCODER_FILE} or the file itself")
    return p


def download_model(uri: str) -> Path:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/ID/encoder`` -> a local folder
    holding ``encoder.safetensors``, from the store ``MLFLOW_TRACKING_URI`` names (MLflow's default
    otherwise). The library's one import of MLflow, made only here and only when asked."""
    try:
        import mlflow
    except ImportError:
        raise BootlegError(f"{uri}: MLflow URIs need the mlflow package (pip install mlflow)") from None
    dst = tempfile.mkdtemp(prefix="bootleg-encoder-")
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
    except Exception as e:
        lines = str(e).strip().splitlines()
        raise BootlegError(
            f"{uri}: cannot download the encoder ({type(e).__name__}: {lines[0] if lines else ''})"
        ) from None
    local = local.parent if local.is_file() else local
    found = [local] if (local / ENCODER_FILE).is_file() else sorted(p.parent for p in local.rglob(ENCODER_FILE))
    if not found:
        raise BootlegError(f"{uri}: no {ENCODER_FILE} in the downloaded artifacts")
    return found[0]


def read_metadata(path: str | Path) -> dict[str, str]:
    p = resolve_encoder_path(path)
    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise BootlegError(f"{p}: not a readable safetensors file ({e})") from None
    if "arch" not in meta:
        raise BootlegError(f"{p}: no 'arch' metadata; expected an encoder written by bootleg")
    return meta


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> ViTEncoder:
    """Rebuild a :class:`ViTEncoder` from a run folder or ``encoder.safetensors``."""
    p = resolve_encoder_path(path)
    meta = read_metadata(p)
    encoder = ViTEncoder(**json.loads(meta["arch"]))
    try:
        state = load_file(str(p), device=str(map_location))
        encoder.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise BootlegError(f"{p}: weights do not match the saved architecture ({_first_problem(e)})") from None
    return encoder.to(map_location).eval()


def _first_problem(e: Exception) -> str:
    """The informative line of a ``load_state_dict`` error (size mismatch, missing keys)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Error(s) in loading")]
    return (useful or lines or [type(e).__name__])[0][:300]


def load_timm(path: str | Path) -> torch.nn.Module:
    """The same encoder as a ``timm`` VisionTransformer (head-less)."""
    import timm

    p = resolve_encoder_path(path)
    kwargs = json.loads(read_metadata(p)["timm_kwargs"])
    model = timm.create_model(**kwargs)
    model.load_state_dict(load_file(str(p)), strict=True)
    return model.eval()
