"""``bootleg data shard``: convert a dataset into tar shards in the WebDataset layout
(written with ``webdataset.ShardWriter``) plus the index that :mod:`bootleg.data.shards` reads.

ImageFolder trees are converted file by file (original bytes, or re-encoded at most
``max_side`` pixels on the longer side as JPEG quality 90), so memory stays bounded; small
sources (``cifar10``, ``fashion_mnist``, ``embedded``) are loaded and written as PNG
(lossless). ``index.json`` is written last: a folder without it is an unfinished conversion.
Shards are byte-reproducible (tar mtimes are 0), which suits DVC.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from bootleg.data.readers import SPLITS, folder_split_dir
from bootleg.data.shards import FORMAT, INDEX_DTYPE
from bootleg.data.sources import SOURCES, FolderItems, ImageSet, Items, load_images
from bootleg.errors import BootlegError
from bootleg.io import atomic_write, atomic_write_text

__all__ = ["write_shards"]


def _ext(data: bytes, fallback: str) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return fallback.lower().lstrip(".") or "bin"


def _shrink(data: bytes, max_side: int) -> bytes:
    """``data`` itself when its longer side is at most ``max_side``, else a JPEG q90 of it resized."""
    with Image.open(io.BytesIO(data)) as im:
        W, H = im.size
        if max(W, H) <= max_side:
            return data
        s = max_side / max(W, H)
        size = (max(1, round(W * s)), max(1, round(H * s)))
        im.draft("RGB", size)
        out = io.BytesIO()
        im.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
        return out.getvalue()


def _samples(split_data: ImageSet | Items, max_side: int | None) -> Iterator[tuple[str, bytes, int]]:
    """``(ext, bytes, label)`` of every image of a split, in order."""
    if isinstance(split_data, ImageSet):
        for img, label in zip(split_data.images, split_data.labels.tolist(), strict=True):
            out = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(out, "PNG")
            yield "png", out.getvalue(), int(label)
        return
    for i in range(len(split_data)):
        name = split_data.name(i)
        data = split_data.read(i)
        if max_side is not None:
            try:
                data = _shrink(data, max_side)
            except Exception as e:  # an unreadable source file is left out, with a warning
                print(f"warning: skipping unreadable image {name} ({type(e).__name__}: {e})", file=sys.stderr)
                continue
        yield _ext(data, Path(name).suffix), data, split_data.label(i)


def _index(split_dir: Path, shards: list[str], dst: Path) -> np.ndarray:
    """Scan the written tars: per sample, shard number, offset and size of the image, label."""
    rows = []
    for s, rel in enumerate(shards):
        pending: dict[str, list[int]] = {}
        with tarfile.open(dst / rel) as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                row = pending.setdefault(key, [s, -1, -1, -1])
                if ext == "cls":
                    row[3] = int(tf.extractfile(m).read())  # type: ignore[union-attr]
                else:
                    row[1], row[2] = m.offset_data, m.size
        rows += [tuple(r) for _, r in sorted(pending.items())]
    return np.array(rows, dtype=INDEX_DTYPE)


def write_shards(
    src: str | Path,
    dst: str | Path,
    source: str = "imagefolder",
    shard_size: int = 1000,
    max_side: int | None = None,
) -> dict:
    """Convert every split of ``source`` at ``src`` into shards under ``dst``; returns ``index.json``'s content.

    Args:
        src: the source's root (an ImageFolder tree, a CIFAR-10 tarball, ...).
        dst: output folder (created; existing shards of the same names are overwritten).
        source: a registered source name other than ``shards``.
        shard_size: samples per tar file.
        max_side: re-encode ImageFolder images larger than this (longer side, pixels).
    """
    import webdataset as wds

    if source not in SOURCES or source == "shards":
        names = ", ".join(n for n in SOURCES if n != "shards")
        raise BootlegError(f"--source: {source!r} is not one of {names}")
    if shard_size < 1 or (max_side is not None and max_side < 8):
        raise BootlegError(f"--shard-size {shard_size} / --max-side {max_side}: expected >= 1 / >= 8")
    dst = Path(dst)
    meta: dict = {"format": FORMAT, "source": source, "classes": None, "splits": {}}
    for split in SPLITS:
        try:
            if source == "imagefolder":
                data: ImageSet | Items = FolderItems(folder_split_dir(Path(src).expanduser(), split))
            else:
                data = load_images(source, split, str(src) if src else None)
        except BootlegError:
            if split == "train":
                raise
            continue  # no test split
        (dst / split).mkdir(parents=True, exist_ok=True)
        pattern = str(dst / split / "shard-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, encoder=False, mtime=0) as w:
            for i, (ext, data_bytes, label) in enumerate(_samples(data, max_side)):
                w.write({"__key__": f"{i:09d}", ext: data_bytes, "cls": str(label).encode()})
            n_shards = w.shard
        written = [f"{split}/shard-{k:06d}.tar" for k in range(n_shards)]
        index = _index(dst / split, written, dst)
        atomic_write(dst / split / "index.npy", lambda tmp, index=index: np.save(open(tmp, "wb"), index))
        meta["classes"] = list(data.classes)
        meta["splits"][split] = {"count": len(index), "shards": written}
    atomic_write_text(dst / "classes.txt", "".join(f"{c}\n" for c in meta["classes"]))
    atomic_write_text(dst / "index.json", json.dumps(meta, indent=1))
    return meta
