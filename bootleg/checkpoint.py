"""Checkpoints: written atomically, read back with one-line errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from bootleg.errors import BootlegError
from bootleg.io import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename."""
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; BootlegError if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise BootlegError(f"{p}: no checkpoint; expected a file written by 'bootleg pretrain'")
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BootlegError(
            f"{p}: corrupted or unreadable checkpoint ({first}); delete it or restore a backup"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "step" not in state:
        raise BootlegError(f"{p}: not a bootleg checkpoint (format {FORMAT} expected)")
    return state
