"""Reading tar shards in the WebDataset layout, with random access through an index.

``bootleg data shard SRC DST`` (:mod:`bootleg.data.shard_writer`) writes::

    DST/index.json               {"format", "classes", "splits": {split: {"count", "shards"}}}
    DST/classes.txt              one class name a line (label i = line i)
    DST/<split>/shard-000000.tar WebDataset samples: <key>.jpg (or .png) + <key>.cls
    DST/<split>/index.npy        per sample: shard, byte offset and size of the image, label

The index is memory-mapped, so opening a million-image split costs a few MB, and reading
sample ``i`` is one ``pread`` of its bytes: any order (the stream's per-epoch permutation) is
served without a shuffle buffer, which keeps every batch a pure function of
``(seed, epoch, batch, rank)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bootleg.errors import BootlegError

__all__ = ["FORMAT", "INDEX_DTYPE", "ShardItems", "read_meta"]

FORMAT = "bootleg-shards/1"
INDEX_DTYPE = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i4")])


def read_meta(root: Path) -> dict[str, Any]:
    """``root/index.json``, checked; a one-line error naming the file otherwise."""
    path = root / "index.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BootlegError(
            f"data.root: {path} is not readable ({e}); expected the output of `bootleg data shard`"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BootlegError(f"data.root: {path} has format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


class ShardItems:
    """Random access to one split of a shard folder (see the module docstring).

    Picklable: open file descriptors are dropped on pickling and reopened on first read.
    """

    def __init__(self, root: Path, split: str) -> None:
        self.root = Path(root)
        meta = read_meta(self.root)
        if split not in meta["splits"]:
            raise BootlegError(f"data.root: {self.root} has no {split} split; it holds {', '.join(meta['splits'])}")
        self.split = split
        self.classes: list[str] = list(meta["classes"])
        self.shards: list[str] = list(meta["splits"][split]["shards"])
        self._index_path = index_path = self.root / split / "index.npy"
        try:
            self.index = np.load(index_path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BootlegError(f"data.root: {index_path} is not a readable index ({e})") from None
        if self.index.dtype != INDEX_DTYPE or len(self.index) != meta["splits"][split]["count"]:
            raise BootlegError(f"data.root: {index_path} does not match {self.root / 'index.json'}")
        self.rows: np.ndarray | None = None  # a limit subset: positions into the index
        self._fds: dict[int, int] = {}

    def subset(self, rows: np.ndarray) -> ShardItems:
        out = ShardItems.__new__(ShardItems)
        out.__setstate__(self.__getstate__())
        out.rows = np.asarray(rows, np.int64) if self.rows is None else self.rows[rows]
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}
        state["index"] = None  # re-mapped on unpickling: a worker never copies the index
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.index = np.load(self._index_path, mmap_mode="r")

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __len__(self) -> int:
        return len(self.index) if self.rows is None else len(self.rows)

    def _row(self, i: int) -> Any:
        return self.index[i if self.rows is None else int(self.rows[i])]

    def read(self, i: int) -> bytes:
        row = self._row(i)
        shard = int(row["shard"])
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.root / self.shards[shard], os.O_RDONLY)
        return os.pread(fd, int(row["size"]), int(row["offset"]))

    def name(self, i: int) -> str:
        row = self._row(i)
        return f"{self.root / self.shards[int(row['shard'])]}#{i if self.rows is None else int(self.rows[i])}"

    def label(self, i: int) -> int:
        return int(self._row(i)["label"])
