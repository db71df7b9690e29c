"""Dataset sources: a registry from ``data.name`` to the object that opens it.

``SOURCES[name].open(split, root, download, limit)`` returns either an :class:`ImageSet` (the
split decoded into memory) or :class:`Items` (random access to encoded images, for streaming).
The choice rule (documented in ``docs/data.md``): ``embedded``, ``cifar10`` and
``fashion_mnist`` are small and always in memory; ``imagefolder`` is in memory when it has at
most :data:`IMAGEFOLDER_MAX_FILES` images and :data:`IMAGEFOLDER_MAX_BYTES` bytes (after
``limit``) and all images have one size, otherwise streamed; ``shards`` is always streamed.

Registered names (``data.name`` accepts exactly these, see :mod:`bootleg.data.config`):

``embedded``
    The CIFAR-10 subset shipped in ``bootleg/data/embedded/cifar10-mini.tar.gz`` (built by
    ``scripts/make_embedded_subset.py``): 500 train + 100 test images per class.
``cifar10``
    ``root``: an ImageFolder tree, the ``cifar10-jpg.tar.gz`` tarball of one, a folder holding it,
    or the official python release (tarball or ``cifar-10-batches-py/``). Default roots:
    ``$BOOTLEG_DATA/cifar10``, ``$BOOTLEG_DATA``, ``<repo>/../shared/datasets/cifar10``,
    ``<cache>/cifar10``; ``download=True`` fetches the python tarball. Decoded once and cached.
``fashion_mnist``
    ``root``: a folder with the four IDX files (gzipped or not); grayscale repeated to 3 channels.
``imagefolder``
    ``root``: a tree with ``train/`` and ``test/`` of ``<class>/<image>``, or one folder of
    ``<class>/`` subfolders that is the train split.
``shards``
    ``root``: the output of ``bootleg data shard`` (see :mod:`bootleg.data.shards`).

A new source is one class with ``open``/``load``/``files`` and ``register_source(Instance())``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from bootleg.data import readers
from bootleg.data.cache import cache_dir, cached, default_roots, download, stat_key
from bootleg.data.readers import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, SPLITS, MixedSizesError
from bootleg.data.shards import ShardItems
from bootleg.errors import BootlegError

__all__ = [
    "SOURCES",
    "ImageSet",
    "Items",
    "FolderItems",
    "Source",
    "register_source",
    "load_images",
    "open_split",
    "limit_indices",
    "imagefolder_fits_in_memory",
    "IMAGEFOLDER_MAX_FILES",
    "IMAGEFOLDER_MAX_BYTES",
]

EMBEDDED_PATH = Path(__file__).resolve().parent / "embedded" / "cifar10-mini.tar.gz"
#: In-memory rule for ``imagefolder``: at most this many files ...
IMAGEFOLDER_MAX_FILES = 100_000
#: ... and at most this many bytes on disk (and all images of one size).
IMAGEFOLDER_MAX_BYTES = 512 * 2**20

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_JPG_TAR = "cifar10-jpg.tar.gz"
CIFAR10_PY_TAR = "cifar-10-python.tar.gz"
CIFAR10_PY_DIR = "cifar-10-batches-py"
#: Tried in order; the S3 website endpoint is plain http (files are md5-checked).
FASHION_MNIST_URLS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
#: file name -> md5 of the original (Zalando) gzip; checked only on files downloaded here.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_FMNIST_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass
class ImageSet:
    """Labelled images held in memory: ``images`` ``(N, 3, H, W)`` uint8 RGB, ``labels`` ``(N,)``
    int64 indices into ``classes``, ``name`` e.g. ``"cifar10/train"``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


@runtime_checkable
class Items(Protocol):
    """Random access to the encoded images of a streamed split (picklable: workers get a copy)."""

    classes: list[str]

    def __len__(self) -> int: ...
    def read(self, i: int) -> bytes: ...
    def name(self, i: int) -> str: ...
    def label(self, i: int) -> int: ...


class FolderItems:
    """The files of one ImageFolder split (paths and labels only; nothing decoded)."""

    def __init__(self, split_dir: Path, limit: int | None = None) -> None:
        files = readers.folder_files(split_dir)
        idx = limit_indices(len(files), limit)
        if idx is not None:
            files = [files[i] for i in idx.tolist()]
        self.classes = sorted({c for c, _, _ in files})
        index = {c: i for i, c in enumerate(self.classes)}
        self.paths = [str(p) for _, _, p in files]
        self.labels = np.array([index[c] for c, _, _ in files], np.int32)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> bytes:
        with open(self.paths[i], "rb") as f:
            return f.read()

    def name(self, i: int) -> str:
        return self.paths[i]

    def label(self, i: int) -> int:
        return int(self.labels[i])


def limit_indices(n: int, limit: int | None) -> torch.Tensor | None:
    """Indices of a fixed (seed 0), sorted, class-mixing ``limit``-subset of ``n`` items, or ``None``."""
    if limit is None or limit >= n:
        return None
    if limit < 1:
        raise BootlegError(f"data.limit: {limit} is not a positive number of images")
    g = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=g)[:limit].sort().values


def _with_limit(s: ImageSet, limit: int | None) -> ImageSet:
    idx = limit_indices(len(s), limit)
    return s if idx is None else ImageSet(s.images[idx], s.labels[idx], list(s.classes), s.name)


def _as_set(d: dict, name: str) -> ImageSet:
    return ImageSet(d["images"], d["labels"], list(d["classes"]), name)


class Source:
    """Base of a dataset source: in memory by default (``open`` = ``load``)."""

    name = ""

    def load(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet:
        raise NotImplementedError

    def open(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet | Items:
        return self.load(split, root, download, limit)

    def files(self, root: str | None) -> list[Path]:
        """The files (or folders) whose bytes define the data (provenance fingerprints)."""
        raise NotImplementedError


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    if source.name in SOURCES:
        raise TypeError(f"data.name: {source.name!r} is registered twice")
    SOURCES[source.name] = source
    return source


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise BootlegError(f"data.name: {name!r} is not one of {', '.join(SOURCES)}")
    return SOURCES[name]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise BootlegError(f"split: {split!r} is not one of {', '.join(SPLITS)}")


def load_images(
    name: str, split: str = "train", root: str | None = None, download: bool = False, limit: int | None = None
) -> ImageSet:
    """Load a labelled split into memory (``limit``: a fixed class-mixing subset, in source order).

    Raises:
        BootlegError: unknown name/split, data missing or corrupt, or data too large for memory
            (an ``imagefolder`` over the rule, or ``shards``: use :func:`open_split`).
    """
    _check_split(split)
    return _source(name).load(split, root, download, limit)


def open_split(
    name: str, split: str = "train", root: str | None = None, download: bool = False, limit: int | None = None
) -> ImageSet | Items:
    """The split in memory (:class:`ImageSet`) when the source's rule allows, else :class:`Items`."""
    _check_split(split)
    return _source(name).open(split, root, download, limit)


# --------------------------------------------------------------------------- embedded, cifar10, fashion_mnist


@functools.lru_cache(maxsize=1)
def _embedded() -> dict[str, dict]:
    if not EMBEDDED_PATH.is_file():
        raise BootlegError(
            f"data.name: embedded dataset {EMBEDDED_PATH} is missing; run scripts/make_embedded_subset.py"
        )
    return readers.read_image_tar(EMBEDDED_PATH, CIFAR10_CLASSES)


class Embedded(Source):
    name = "embedded"

    def load(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet:
        return _with_limit(_as_set(_embedded()[split], f"embedded/{split}"), limit)

    def files(self, root: str | None) -> list[Path]:
        return [EMBEDDED_PATH]


def _find_cifar10(root: str | None) -> tuple[str, Path] | None:
    """``(kind, path)`` with kind ``jpg_tar``, ``folder``, ``py_tar`` or ``py_dir``; ``None`` if absent."""
    for p in [Path(root).expanduser()] if root else default_roots("cifar10"):
        if p.is_file():
            return ("py_tar" if p.name == CIFAR10_PY_TAR else "jpg_tar"), p
        if not p.is_dir():
            continue
        if (p / "train").is_dir():
            return "folder", p
        if (p / CIFAR10_JPG_TAR).is_file():
            return "jpg_tar", p / CIFAR10_JPG_TAR
        if (p / CIFAR10_PY_DIR / "data_batch_1").is_file():
            return "py_dir", p / CIFAR10_PY_DIR
        if p.name == CIFAR10_PY_DIR and (p / "data_batch_1").is_file():
            return "py_dir", p
        if (p / CIFAR10_PY_TAR).is_file():
            return "py_tar", p / CIFAR10_PY_TAR
    return None


class Cifar10(Source):
    name = "cifar10"

    def locate(self, root: str | None, download: bool) -> tuple[str, Path]:
        found = _find_cifar10(root)
        if found is not None:
            return found
        if download:
            dest_dir = Path(root).expanduser() if root else cache_dir() / "cifar10"
            if dest_dir.suffix in (".gz", ".tar", ".tgz"):
                dest_dir = dest_dir.parent
            dest = dest_dir / CIFAR10_PY_TAR
            download_fn(CIFAR10_URL, dest, CIFAR10_MD5)
            return "py_tar", dest
        if root:
            raise BootlegError(
                f"data.root: {root} has no train/ folder; expected an ImageFolder tree, {CIFAR10_JPG_TAR} "
                f"or {CIFAR10_PY_TAR} (or set data.download=true)"
            )
        looked = ", ".join(str(p) for p in default_roots("cifar10"))
        raise BootlegError(f"data.root: CIFAR-10 not found (looked in {looked}); set data.root or data.download=true")

    def load(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet:
        kind, path = self.locate(root, download)
        name = f"cifar10/{split}"
        if kind == "folder":
            return _folder_in_memory("cifar10", path, split, name, CIFAR10_CLASSES, limit)
        build = {
            "jpg_tar": lambda: readers.read_image_tar(path, CIFAR10_CLASSES),
            "py_tar": lambda: readers.read_cifar_python(path),
            "py_dir": lambda: readers.read_cifar_python(path),
        }[kind]
        return _with_limit(_as_set(cached("cifar10", stat_key(path), split, build), name), limit)

    def files(self, root: str | None) -> list[Path]:
        return [self.locate(root, download=False)[1]]


def download_fn(url: str, dest: Path, md5: str | None) -> None:
    """Module-level hook (tests point the URLs at ``file://`` copies)."""
    download(url, dest, md5)


def _fmnist_file(folder: Path, fname: str) -> Path | None:
    for p in (folder / fname, folder / fname.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


class FashionMnist(Source):
    name = "fashion_mnist"

    def _candidates(self, root: str | None) -> list[Path]:
        return [Path(root).expanduser()] if root else default_roots("fashion-mnist")

    def load(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet:
        cands = self._candidates(root)
        img_name, lbl_name = _FMNIST_SPLIT_FILES[split]
        folder = next((p for p in cands if _fmnist_file(p, img_name) and _fmnist_file(p, lbl_name)), None)
        if folder is None and download:
            folder = cands[0] if root else cache_dir() / "fashion-mnist"
            for fname in (img_name, lbl_name):
                if _fmnist_file(folder, fname) is None:
                    self._fetch(folder, fname)
        if folder is None:
            where = root if root else ", ".join(str(p) for p in cands)
            raise BootlegError(
                f"data.root: {where} has no {img_name} and {lbl_name}; expected the Fashion-MNIST IDX files "
                "(or set data.download=true)"
            )
        img_path, lbl_path = _fmnist_file(folder, img_name), _fmnist_file(folder, lbl_name)
        assert img_path is not None and lbl_path is not None
        images = readers.read_idx(img_path, "image", 3)
        labels = readers.read_idx(lbl_path, "label", 1)
        if images.shape[0] != labels.shape[0]:
            raise BootlegError(
                f"data.root: {img_path} has {images.shape[0]} images but {lbl_path} {labels.shape[0]} labels"
            )
        x = torch.from_numpy(images.copy()).unsqueeze(1).repeat(1, 3, 1, 1)
        y = torch.from_numpy(labels.astype(np.int64))
        return _with_limit(ImageSet(x, y, list(FASHION_MNIST_CLASSES), f"fashion_mnist/{split}"), limit)

    def _fetch(self, folder: Path, fname: str) -> None:
        err: BootlegError | None = None
        for base in FASHION_MNIST_URLS:
            try:
                download_fn(base + fname, folder / fname, FASHION_MNIST_FILES[fname])
                return
            except BootlegError as e:
                err = e
        assert err is not None
        raise err

    def files(self, root: str | None) -> list[Path]:
        cands = self._candidates(root)
        for c in cands:
            files = [_fmnist_file(c, f) for f in FASHION_MNIST_FILES]
            if all(files):
                return [f for f in files if f is not None]
        raise BootlegError(f"data.root: no Fashion-MNIST IDX files in {', '.join(map(str, cands))}")


# --------------------------------------------------------------------------- imagefolder, shards


def _folder_in_memory(
    kind: str, root: Path, split: str, name: str, class_order: tuple[str, ...] | None, limit: int | None
) -> ImageSet:
    """Decode one split of an ImageFolder tree (all of it, or a ``limit`` subset), with caching."""
    split_dir = readers.folder_split_dir(root, split)
    files = readers.folder_files(split_dir)
    idx = limit_indices(len(files), limit)
    if idx is not None:
        files = [files[i] for i in idx.tolist()]

    def build() -> dict[str, dict]:
        items = []
        for c, f, p in files:
            a = readers.decode_rgb(p.read_bytes(), str(p))
            if items and a.shape != items[0][2].shape:  # stop at the first odd size
                raise MixedSizesError(f"data.root: {split_dir} holds images of several sizes ({items[0][1]}, {f})")
            items.append((c, f, a))
        return readers.stack({split: items}, str(split_dir), class_order)

    key = f"{split_dir}|{stat_key(split_dir)}|limit={limit}"
    return _as_set(cached(kind, key, split, build), name)


def imagefolder_fits_in_memory(root: str | Path, split: str = "train", limit: int | None = None) -> bool:
    """The in-memory rule for ``imagefolder``: at most :data:`IMAGEFOLDER_MAX_FILES` images (after
    ``limit``) and :data:`IMAGEFOLDER_MAX_BYTES` bytes on disk (one image size is checked while
    decoding)."""
    files = readers.folder_files(readers.folder_split_dir(Path(root).expanduser(), split))
    idx = limit_indices(len(files), limit)
    if idx is not None:
        files = [files[i] for i in idx.tolist()]
    if len(files) > IMAGEFOLDER_MAX_FILES:
        return False
    total = 0
    for _, _, p in files:
        total += p.stat().st_size
        if total > IMAGEFOLDER_MAX_BYTES:
            return False
    return True


def _root(name: str, root: str | None) -> Path:
    if not root:
        raise BootlegError(f"data.root: required for data.name={name} (a folder with train/ and test/)")
    return Path(root).expanduser()


class ImageFolder(Source):
    name = "imagefolder"

    def load(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet:
        r = _root(self.name, root)
        if not imagefolder_fits_in_memory(r, split, limit):
            raise BootlegError(
                f"data.root: {r} is too large to decode into memory (over {IMAGEFOLDER_MAX_FILES} images or "
                f"{IMAGEFOLDER_MAX_BYTES >> 20} MiB); it is streamed (open_split)"
            )
        return _folder_in_memory("imagefolder", r, split, f"imagefolder/{split}", None, limit)

    def open(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet | Items:
        r = _root(self.name, root)
        if imagefolder_fits_in_memory(r, split, limit):
            try:
                return self.load(split, root, download, limit)
            except MixedSizesError:
                pass
        return FolderItems(readers.folder_split_dir(r, split), limit)

    def files(self, root: str | None) -> list[Path]:
        r = _root(self.name, root)
        if not r.is_dir():
            raise BootlegError(f"data.root: {root} is not a folder; expected an ImageFolder tree")
        return [r]


class Shards(Source):
    name = "shards"

    def load(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet:
        """Small shard sets (the in-memory rule of ``imagefolder``) decode into memory, for the
        cached probes; larger ones are streamed only (``open_split``)."""
        items = self.open(split, root, download, limit)
        if len(items) > IMAGEFOLDER_MAX_FILES:
            raise BootlegError(
                f"data.name: shards at {root} hold {len(items)} {split} images, more than the {IMAGEFOLDER_MAX_FILES} "
                "decoded into memory; stream them (probe.protocol: paper)"
            )
        decoded = [
            (items.classes[items.label(i)], f"{i:09d}", readers.decode_rgb(items.read(i), items.name(i)))
            for i in range(len(items))
        ]
        return _as_set(readers.stack({split: decoded}, f"shards {root}", items.classes)[split], f"shards/{split}")

    def open(self, split: str, root: str | None, download: bool, limit: int | None) -> ImageSet | Items:
        items = ShardItems(_root(self.name, root), split)
        idx = limit_indices(len(items), limit)
        return items if idx is None else items.subset(idx.numpy())

    def files(self, root: str | None) -> list[Path]:
        return [_root(self.name, root)]


for _src in (Embedded(), Cifar10(), FashionMnist(), ImageFolder(), Shards()):
    register_source(_src)
