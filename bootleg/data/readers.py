"""Readers of on-disk formats into ``{split: {"images", "labels", "classes"}}`` dictionaries
(``images`` ``(N, 3, H, W)`` uint8), and the ImageFolder file listing.

Pure functions with no registry or cache: :mod:`bootleg.data.sources` combines them.
Unreadable input raises :class:`~bootleg.errors.BootlegError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bootleg.data.cache import walk_files
from bootleg.errors import BootlegError

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "IMG_EXTENSIONS",
    "SPLITS",
    "MixedSizesError",
    "decode_rgb",
    "folder_files",
    "folder_split_dir",
    "read_cifar_python",
    "read_idx",
    "read_image_tar",
    "stack",
]

SPLITS = ("train", "test")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class MixedSizesError(BootlegError):
    """An ImageFolder whose images differ in size (cannot be stacked in memory)."""


def decode_rgb(data: bytes, what: str) -> np.ndarray:
    """JPEG/PNG bytes -> ``(H, W, 3)`` uint8 RGB array; a one-line error naming ``what`` otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types on corrupt input
        raise BootlegError(f"data.root: {what} is not a readable image ({type(e).__name__}: {e})") from None


def stack(
    items: dict[str, list[tuple[str, str, np.ndarray]]],
    source: str,
    class_order: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{split: [(class, file, HxWx3 array)]}`` -> ``{split: {"images", "labels", "classes"}}``.

    Classes are sorted by name (as torchvision's ImageFolder does) unless ``class_order`` is
    given (and covers them); images are sorted by (class, file name).
    """
    names = set()
    for lst in items.values():
        names.update(c for c, _, _ in lst)
    classes = list(class_order) if class_order is not None else sorted(names)
    if class_order is not None and not names <= set(classes):
        classes = sorted(names)
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, dict[str, Any]] = {}
    for split, lst in items.items():
        lst.sort(key=lambda t: (index[t[0]], t[1]))
        shapes = {a.shape for _, _, a in lst}
        if len(shapes) > 1:
            raise MixedSizesError(f"data.root: {source} {split}/ holds images of several sizes {sorted(shapes)[:3]}")
        arr = np.stack([a for _, _, a in lst]) if lst else np.zeros((0, 1, 1, 3), np.uint8)
        out[split] = {
            "images": torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(),
            "labels": torch.tensor([index[c] for c, _, _ in lst], dtype=torch.long),
            "classes": classes,
        }
    return out


def _split_member(name: str) -> tuple[str, str, str] | None:
    """``.../train/<class>/<file>`` -> ``("train", class, file)``; other paths -> ``None``."""
    parts = name.split("/")
    if len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].lower().endswith(IMG_EXTENSIONS):
        return parts[-3], parts[-2], parts[-1]
    return None


def read_image_tar(path: Path, class_order: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Decode every ``<split>/<class>/<file>`` image of a (compressed) tar archive."""
    items: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                parsed = _split_member(m.name) if m.isfile() else None
                if parsed is None:
                    continue
                split, cls, fname = parsed
                data = tf.extractfile(m).read()  # type: ignore[union-attr]
                items.setdefault(split, []).append((cls, fname, decode_rgb(data, f"{path}:{m.name}")))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BootlegError(f"data.root: {path} is not a readable tar archive ({type(e).__name__}: {e})") from None
    if "train" not in items:
        raise BootlegError(f"data.root: {path} has no train/<class>/<image> members; expected an ImageFolder tarball")
    return stack(items, str(path), class_order)


def read_cifar_python(path: Path) -> dict[str, dict[str, Any]]:
    """Decode the official CIFAR-10 python release (tarball or extracted folder)."""
    want = {f"data_batch_{i}": "train" for i in range(1, 6)} | {"test_batch": "test"}
    blobs: dict[str, bytes] = {}
    try:
        if path.is_dir():
            for f in list(want) + ["batches.meta"]:
                blobs[f] = (path / f).read_bytes()
        else:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and (base in want or base == "batches.meta"):
                        blobs[base] = tf.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BootlegError(f"data.root: {path} is not a readable CIFAR-10 python archive ({e})") from None
    missing = [f for f in want if f not in blobs]
    if missing:
        raise BootlegError(f"data.root: {path} lacks {', '.join(missing)}; expected the CIFAR-10 python release")
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []), "test": ([], [])}
    for f in sorted(want):
        d = pickle.loads(blobs[f], encoding="bytes")  # the official release is a pickle
        parts[want[f]][0].append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        parts[want[f]][1].append(np.asarray(d[b"labels"], np.int64))
    return {
        s: {
            "images": torch.from_numpy(np.concatenate(x)),
            "labels": torch.from_numpy(np.concatenate(y)),
            "classes": list(CIFAR10_CLASSES),
        }
        for s, (x, y) in parts.items()
    }


def read_idx(path: Path, what: str, ndim: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes with ``ndim`` dimensions."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise BootlegError(f"data.root: {path} is not a readable IDX file ({e})") from None
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != ndim:
        raise BootlegError(f"data.root: {path} is not an IDX {what} file (bad magic number)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise BootlegError(f"data.root: {path} is truncated ({body.size} bytes, expected {int(np.prod(dims))})")
    return body.reshape(dims)


def folder_split_dir(root: Path, split: str) -> Path:
    """The folder of ``split``: ``root/split``, or ``root`` itself for ``train`` when it has no
    ``train/`` and ``test/`` subfolders."""
    if not root.is_dir():
        raise BootlegError(f"data.root: {root} is not a folder; expected an ImageFolder tree with train/ and test/")
    if (root / split).is_dir():
        return root / split
    if split == "train" and not (root / "test").is_dir():
        return root
    raise BootlegError(f"data.root: {root} has no {split}/ folder; expected an ImageFolder tree with train/ and test/")


def folder_files(split_dir: Path) -> list[tuple[str, str, Path]]:
    """``(class, relative file, path)`` of every image in ``split_dir/<class>/...``, sorted."""
    out = []
    for rel, p in walk_files(split_dir):
        if "/" in rel and rel.lower().endswith(IMG_EXTENSIONS):
            cls, fname = rel.split("/", 1)
            out.append((cls, fname, p))
    if not out:
        raise BootlegError(f"data.root: {split_dir} has no <class>/<image> files; expected an ImageFolder tree")
    return out
