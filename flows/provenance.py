"""Where a run came from: the project folder, the git commit, the DVC data hash and a sha256
fingerprint of the dataset. Orchestration concerns, so they live here and not in ``bootleg``.

``dataset_fingerprint(name, root)`` hashes the files behind ``bootleg.data.load_images(name,
root=root)``: one file -> its sha256; several files or a folder -> sha256 of ``name:sha256``
lines in sorted order (folders over 1 GiB: of file names and sizes only). Hashes are memoised
by path, size and mtime in ``<cache>/fingerprints.json``, so repeated calls cost a few ``stat``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import bootleg
from bootleg.data import SOURCES
from bootleg.data.cache import cache_dir, stat_key, walk_files
from bootleg.errors import BootlegError
from bootleg.io import atomic_write_text

log = logging.getLogger(__name__)

#: the checkout holding the ``bootleg`` package (None when installed elsewhere)
_CHECKOUT = Path(bootleg.__file__).resolve().parents[1]
#: folders larger than this are fingerprinted by their listing (``relpath:size``), not content
FINGERPRINT_CONTENT_MAX_BYTES = 2**30
_MEMO: dict[str, str] = {}


# ------------------------------------------------------------------ project, git, DVC


def project_dir() -> Path:
    """``BOOTLEG_PROJECT_DIR``, else the checkout holding ``bootleg``, else the working folder."""
    env = os.environ.get("BOOTLEG_PROJECT_DIR")
    if env:
        return Path(env).resolve()
    if (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT
    return Path.cwd().resolve()


def git_commit(cwd: str | Path | None = None) -> tuple[str | None, bool]:
    """``(commit, dirty)`` of the checkout at ``cwd`` (default: the one holding ``bootleg``,
    else the working folder; read-only git calls); ``(None, False)`` outside git."""
    if cwd is None:
        cwd = _CHECKOUT if (_CHECKOUT / ".git").exists() else Path.cwd()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit or None, bool(status)


def dvc_data_md5(root: str | Path | None = None) -> str | None:
    """md5 that ``dvc.lock`` records for the ``prepare`` stage's output, if this checkout ran it."""
    lock = Path(root or Path.cwd()) / "dvc.lock"
    if not lock.is_file():
        lock = project_dir() / "dvc.lock"
    try:
        import yaml

        outs = yaml.safe_load(lock.read_text())["stages"]["prepare"]["outs"]
        return str(outs[0]["md5"])
    except Exception:
        return None


# ------------------------------------------------------------------ dataset fingerprint


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def dataset_sources(name: str, root: str | None = None) -> list[Path]:
    """The files (or folders) whose bytes define dataset ``name`` at ``root`` (the data source's own
    answer, so every registered source, shards included, can be fingerprinted)."""
    if name not in SOURCES:
        raise BootlegError(f"data.name: {name!r} cannot be fingerprinted; expected one of {', '.join(SOURCES)}")
    return SOURCES[name].files(root)


def fingerprint_path(path: Path) -> str:
    """sha256 of a file, or of ``relpath:sha256`` lines of every file below a folder (of
    ``listing`` + ``relpath:size`` lines above :data:`FINGERPRINT_CONTENT_MAX_BYTES`)."""
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
            table[key] = sha256_file(path)
        else:
            files = [(rel, p, p.stat().st_size) for rel, p in walk_files(path)]
            by_content = sum(size for _, _, size in files) <= FINGERPRINT_CONTENT_MAX_BYTES
            h = hashlib.sha256(b"" if by_content else b"listing\n")
            for rel, p, size in files:
                h.update(f"{rel}:{sha256_file(p) if by_content else size}\n".encode())
            table[key] = h.hexdigest()
        try:
            atomic_write_text(store, json.dumps(table, indent=0))
        except OSError:
            pass
    _MEMO[key] = table[key]
    return table[key]


def dataset_fingerprint(name: str, root: str | None = None) -> str:
    """Hex sha256 identifying the data behind ``load_images(name, root=root)`` (nothing is
    downloaded; a missing dataset is a one-line :class:`BootlegError`)."""
    srcs = dataset_sources(name, root)
    if len(srcs) == 1 and srcs[0].is_file():
        return fingerprint_path(srcs[0])
    h = hashlib.sha256()
    for p in sorted(srcs):
        h.update(f"{p.name}:{fingerprint_path(p)}\n".encode())
    return h.hexdigest()


def data_hash(cfg: Any) -> str | None:
    """:func:`dataset_fingerprint` of the config's dataset; ``None`` (logged) if it cannot be computed."""
    try:
        return dataset_fingerprint(cfg.data.name, cfg.data.root)
    except Exception as e:  # a missing dataset must not stop tracking
        log.warning("no data hash for %s: %s", getattr(getattr(cfg, "data", None), "name", "?"), e)
        return None
