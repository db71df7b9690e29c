"""``dataset_fingerprint``: kept only until ``bootleg/tracking.py`` moves to ``flows/`` (issue 7:
provenance lives in ``flows/provenance.py``); delete this module and its re-export then."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bootleg.data.cache import cache_dir, stat_key, walk_files
from bootleg.data.sources import SOURCES
from bootleg.errors import BootlegError
from bootleg.io import atomic_write_text

__all__ = ["dataset_fingerprint", "FINGERPRINT_CONTENT_MAX_BYTES"]

#: Folders larger than this are fingerprinted by their listing (``relpath:size``), not content.
FINGERPRINT_CONTENT_MAX_BYTES = 2**30
_MEMO: dict[str, str] = {}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint_one(path: Path) -> str:
    key = stat_key(path)
    if key in _MEMO:
        return _MEMO[key]
    store = cache_dir() / "fingerprints.json"
    try:
        table = json.loads(store.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        if path.is_file():
            table[key] = _sha256_file(path)
        else:
            files = [(rel, p, p.stat().st_size) for rel, p in walk_files(path)]
            by_content = sum(size for _, _, size in files) <= FINGERPRINT_CONTENT_MAX_BYTES
            h = hashlib.sha256(b"" if by_content else b"listing\n")
            for rel, p, size in files:
                h.update(f"{rel}:{_sha256_file(p) if by_content else size}\n".encode())
            table[key] = h.hexdigest()
        try:
            atomic_write_text(store, json.dumps(table, indent=0))
        except OSError:
            pass
    _MEMO[key] = table[key]
    return table[key]


def dataset_fingerprint(name: str, root: str | None = None) -> str:
    """Hex sha256 of the data of source ``name`` at ``root`` (one file: its sha256; several files
    or a folder: of ``<name>:<sha256>`` lines; folders over 1 GiB: of file names and sizes)."""
    if name not in SOURCES:
        raise BootlegError(f"data.name: {name!r} is not one of {', '.join(SOURCES)}")
    srcs = SOURCES[name].files(root)
    if len(srcs) == 1 and srcs[0].is_file():
        return _fingerprint_one(srcs[0])
    h = hashlib.sha256()
    for p in sorted(srcs):
        h.update(f"{p.name}:{_fingerprint_one(p)}\n".encode())
    return h.hexdigest()
