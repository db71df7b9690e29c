"""The decode cache, downloads and file listing shared by the dataset sources.

* :func:`cache_dir`: ``$BOOTLEG_CACHE`` or ``~/.cache/bootleg``;
* :func:`cached`: decode once, keep ``{images, labels, classes}`` per split as
  ``<cache>/<kind>-<key digest>-<split>.pt`` (written atomically; a corrupt file is rebuilt);
* :func:`download`: fetch a URL atomically with an md5 check (only when ``data.download``);
* :func:`walk_files` / :func:`stat_key`: a sorted file listing and a cheap change key.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bootleg.errors import BootlegError
from bootleg.io import atomic_write

__all__ = ["cache_dir", "cached", "default_roots", "download", "stat_key", "walk_files", "SHARED_DATASETS"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
_CACHE_VERSION = 1


def cache_dir() -> Path:
    """The cache folder: ``$BOOTLEG_CACHE`` or ``~/.cache/bootleg`` (not created here)."""
    env = os.environ.get("BOOTLEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bootleg"


def default_roots(sub: str) -> list[Path]:
    """Candidate roots, in order: ``$BOOTLEG_DATA/<sub>``, ``$BOOTLEG_DATA``, shared, cache."""
    out = []
    env = os.environ.get("BOOTLEG_DATA")
    if env:
        out += [Path(env).expanduser() / sub, Path(env).expanduser()]
    out += [SHARED_DATASETS / sub, cache_dir() / sub]
    return out


def walk_files(folder: Path) -> list[tuple[str, Path]]:
    """All files below ``folder`` in sorted order, as ``(relative posix path, path)``."""
    stack = [folder]
    out: list[tuple[str, Path]] = []
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir():
                    stack.append(Path(e.path))
                elif e.is_file():
                    p = Path(e.path)
                    out.append((p.relative_to(folder).as_posix(), p))
    out.sort()
    return out


def stat_key(path: Path) -> str:
    """``path|size|mtime_ns`` of a file, or of every file below a folder (hashed)."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    h = hashlib.sha256()
    for rel, full in walk_files(path):
        st = full.stat()
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"{path}|{h.hexdigest()}"


def cached(kind: str, key: str, split: str, build: Callable[[], dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """``split``'s ``{images, labels, classes}`` from the decode cache, or ``build()`` every split,
    cache them all and return ``split``'s."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}|{key}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{kind}-{digest}-{split}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file: rebuild it
            pass
    splits = build()
    if split not in splits:
        raise BootlegError(f"data.root: {key.split('|')[0]} has no {split}/ split")
    for s, d in splits.items():
        p = cache_dir() / f"{kind}-{digest}-{s}.pt"
        try:
            atomic_write(p, lambda tmp, d=d: torch.save(d, tmp))
        except OSError as e:  # a read-only cache only costs speed
            print(f"bootleg: could not write cache {p}: {e}", file=sys.stderr)
    return splits[split]


def download(url: str, dest: Path, md5: str | None) -> None:
    """Download ``url`` to ``dest`` atomically, checking its md5. Only runs with ``download=True``."""
    print(f"bootleg: downloading {url} -> {dest}", file=sys.stderr)
    h = hashlib.md5()

    def write(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
        if md5 is not None and h.hexdigest() != md5:
            raise BootlegError(f"data.download: {url} has md5 {h.hexdigest()}, expected {md5}")

    try:
        atomic_write(dest, write)
    except OSError as e:
        raise BootlegError(f"data.download: could not fetch {url} to {dest} ({e})") from None
