"""Small shared helpers: atomic file writes, seed mixing and device resolution."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bootleg.errors import BootlegError

_SEED_MASK = (1 << 63) - 1


def atomic_write(path: str | Path, writer: Callable[[str], Any]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file beside ``path``, fsync, then rename it over
    ``path``: readers never see a partial file and a crash leaves the old one in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; use the usual mode
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative ints (numpy's ``SeedSequence`` hash of the
    whole tuple): distinct tuples give uncorrelated seeds (ranks, workers, epochs, purposes)."""
    if any(not isinstance(p, (int, np.integer)) or p < 0 for p in parts):
        raise BootlegError(f"seed parts {parts}: expected non-negative ints")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)
    return int(state[0]) & _SEED_MASK


def generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`mix_seed` of ``parts``."""
    return torch.Generator().manual_seed(mix_seed(*parts))


def resolve_device(name: str, local_rank: int = 0, field: str = "run.device") -> torch.device:
    """``auto | cpu | cuda`` -> a device (``cuda:local_rank`` under torchrun)."""
    if name not in ("auto", "cpu", "cuda"):
        raise BootlegError(f"{field}: {name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise BootlegError(f"{field}: 'cuda' requested but no CUDA device is available; expected 'cpu' or 'auto'")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def trunc_normal(shape: tuple[int, ...], std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Normal(0, std) clipped to +-2 std, from a seeded generator (probe heads' init)."""
    return (torch.randn(shape, generator=generator) * std).clamp_(-2 * std, 2 * std)
