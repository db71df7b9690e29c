"""Labelled image datasets, decoded into memory as ``uint8`` tensors.

Names accepted by :func:`load_images`:

``embedded``
    The CIFAR-10 subset shipped inside the package (``bootleg/data/embedded/cifar10-mini.tar.gz``,
    built by ``scripts/make_embedded_subset.py``): 500 train + 100 test images per class,
    original JPEG bytes. Decoded once per process (~0.5 s) and kept in memory.
``cifar10``
    ``root`` may be an ImageFolder tree (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), the
    ``cifar10-jpg.tar.gz`` tarball of such a tree, a folder holding that tarball, or the official
    python release (``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``, or a
    folder holding either). Without ``root`` the first of ``$BOOTLEG_DATA/cifar10``,
    ``$BOOTLEG_DATA``, ``<repo>/../shared/datasets/cifar10`` and ``<cache>/cifar10`` that holds
    one of those is used; ``download=True`` fetches the official python tarball into
    ``root`` (or ``<cache>/cifar10``) when nothing is found. Decoding the 60k JPEGs takes a few
    seconds; the result is cached as ``<cache>/cifar10-<key>-<split>.pt`` (key = the source's
    path, size and mtime), so later loads take ~0.1 s.
``fashion_mnist``
    ``root`` is a folder with the four IDX files (``train-images-idx3-ubyte.gz`` ...; ungzipped
    copies also work). Default roots as for CIFAR-10 with ``fashion-mnist`` in place of
    ``cifar10``; ``download=True`` fetches the original files. Grayscale is repeated to 3 channels.
``imagefolder``
    ``root`` is an ImageFolder tree with ``train/`` and ``test/`` subfolders, or a single folder
    of ``<class>/`` subfolders that is the train split. It is decoded into memory (and cached
    like CIFAR-10) only when it is *small*: at most :data:`IMAGEFOLDER_MAX_FILES` files (after
    ``limit``), at most :data:`IMAGEFOLDER_MAX_BYTES` bytes on disk and all images of one size.
    Otherwise :func:`load_images` raises :class:`~bootleg.errors.BootlegError` and the training
    stream reads it with :func:`load_imagefolder` (a streaming torchvision ``ImageFolder``).

The cache folder is ``$BOOTLEG_CACHE`` or ``~/.cache/bootleg``; cache files are written
atomically (temporary file + ``os.replace``). Missing or corrupt data raises
:class:`~bootleg.errors.BootlegError` with a one-line message naming the path and what was
expected.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bootleg.errors import BootlegError

__all__ = [
    "ImageSet",
    "load_images",
    "load_imagefolder",
    "dataset_fingerprint",
    "imagefolder_fits_in_memory",
    "cache_dir",
    "DATASET_NAMES",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
]

DATASET_NAMES = ("embedded", "cifar10", "fashion_mnist", "imagefolder")
SPLITS = ("train", "test")

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
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

EMBEDDED_PATH = Path(__file__).resolve().parent / "embedded" / "cifar10-mini.tar.gz"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"

#: In-memory rule for ``imagefolder``: at most this many files ...
IMAGEFOLDER_MAX_FILES = 100_000
#: ... and at most this many bytes on disk (and all images of one size).
IMAGEFOLDER_MAX_BYTES = 512 * 2**20
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

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
#: file name -> md5 of the original (Zalando) gzip; Debian's re-compressed copies differ,
#: so the md5 is only checked on files this module downloads.
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
_CACHE_VERSION = 1


@dataclass
class ImageSet:
    """Labelled images held in memory.

    Attributes:
        images: ``(N, 3, H, W)`` uint8, RGB (grayscale sources are repeated to 3 channels).
        labels: ``(N,)`` int64 class indices into ``classes``.
        classes: class names, index ``i`` is label ``i``.
        name: dataset name and split, e.g. ``"cifar10/train"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- helpers


def cache_dir() -> Path:
    """The cache folder: ``$BOOTLEG_CACHE`` or ``~/.cache/bootleg`` (not created here)."""
    env = os.environ.get("BOOTLEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bootleg"


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then ``os.replace`` it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _stat_key(path: Path) -> str:
    """``path|size|mtime_ns`` of a file, or of every image below a folder (hashed)."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    h = hashlib.sha256()
    for rel, full in _walk_files(path):
        st = full.stat()
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"{path}|{h.hexdigest()}"


def _walk_files(folder: Path) -> Iterator[tuple[str, Path]]:
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
    return iter(out)


def _limit_indices(n: int, limit: int | None) -> torch.Tensor | None:
    """Indices of a ``limit``-sized subset of ``n`` items, or ``None`` for all of them.

    The subset is a fixed random draw (seed 0), sorted, so it mixes all classes (the sources
    are sorted by class) and is the same on every call and machine.
    """
    if limit is None or limit >= n:
        return None
    if limit < 1:
        raise BootlegError(f"data.limit: {limit} is not a positive number of images")
    g = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=g)[:limit].sort().values


def _apply_limit(s: ImageSet, limit: int | None) -> ImageSet:
    idx = _limit_indices(len(s), limit)
    if idx is None:
        return s
    return ImageSet(s.images[idx], s.labels[idx], list(s.classes), s.name)


def _decode(data: bytes, what: str) -> np.ndarray:
    """JPEG/PNG bytes -> ``(H, W, 3)`` uint8 RGB array."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types on corrupt input
        raise BootlegError(f"data.root: {what} is not a readable image ({type(e).__name__}: {e})") from None


def _split_member(name: str) -> tuple[str, str, str] | None:
    """``.../train/<class>/<file>`` -> ``("train", class, file)``; other paths -> ``None``."""
    parts = name.split("/")
    if len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].lower().endswith(IMG_EXTENSIONS):
        return parts[-3], parts[-2], parts[-1]
    return None


class _MixedSizes(BootlegError):
    """An ImageFolder whose images differ in size (cannot be stacked in memory)."""


def _stack(
    items: dict[str, list[tuple[str, str, np.ndarray]]],
    source: str,
    class_order: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{split: [(class, file, HxWx3 array)]}`` -> ``{split: {"images", "labels", "classes"}}``.

    Classes are sorted by name (as torchvision's ImageFolder does) unless ``class_order`` is
    given; images are sorted by (class, file name).
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
            raise _MixedSizes(f"data.root: {source} {split}/ holds images of several sizes {sorted(shapes)[:3]}")
        arr = np.stack([a for _, _, a in lst]) if lst else np.zeros((0, 1, 1, 3), np.uint8)
        out[split] = {
            "images": torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(),
            "labels": torch.tensor([index[c] for c, _, _ in lst], dtype=torch.long),
            "classes": classes,
        }
    return out


def _cached(kind: str, key: str, split: str, build: Callable[[], dict[str, dict[str, Any]]], name: str) -> ImageSet:
    """Load ``split`` from the decode cache, or ``build()`` every split, cache them, return ``split``."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}|{key}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{kind}-{digest}-{split}.pt"
    if path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            return ImageSet(d["images"], d["labels"], list(d["classes"]), name)
        except Exception:  # a truncated or foreign file: rebuild it
            pass
    splits = build()
    if split not in splits:
        raise BootlegError(f"data.root: {key.split('|')[0]} has no {split}/ split")
    for s, d in splits.items():
        p = cache_dir() / f"{kind}-{digest}-{s}.pt"
        try:
            _atomic_write(p, lambda f, d=d: torch.save(d, f))
        except OSError as e:  # a read-only cache only costs speed
            print(f"bootleg: could not write cache {p}: {e}", file=sys.stderr)
    d = splits[split]
    return ImageSet(d["images"], d["labels"], list(d["classes"]), name)


def _download(url: str, dest: Path, md5: str | None) -> None:
    """Download ``url`` to ``dest`` atomically, checking its md5. Only runs with ``download=True``."""
    print(f"bootleg: downloading {url} -> {dest}", file=sys.stderr)
    h = hashlib.md5()

    def write(f: Any) -> None:
        with urllib.request.urlopen(url, timeout=60) as r:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
        if md5 is not None and h.hexdigest() != md5:
            raise BootlegError(f"data.download: {url} has md5 {h.hexdigest()}, expected {md5}")

    try:
        _atomic_write(dest, write)
    except OSError as e:
        raise BootlegError(f"data.download: could not fetch {url} to {dest} ({e})") from None


def _default_roots(sub: str) -> list[Path]:
    """Candidate roots, in order: ``$BOOTLEG_DATA/<sub>``, ``$BOOTLEG_DATA``, shared, cache."""
    out = []
    env = os.environ.get("BOOTLEG_DATA")
    if env:
        out += [Path(env).expanduser() / sub, Path(env).expanduser()]
    out += [SHARED_DATASETS / sub, cache_dir() / sub]
    return out


# --------------------------------------------------------------------------- embedded


@functools.lru_cache(maxsize=1)
def _embedded() -> dict[str, dict[str, Any]]:
    """Decode the shipped subset once per process: ``{split: {"images", "labels", "classes"}}``."""
    if not EMBEDDED_PATH.is_file():
        raise BootlegError(
            f"data.name: embedded dataset {EMBEDDED_PATH} is missing; run scripts/make_embedded_subset.py"
        )
    return _read_image_tar(EMBEDDED_PATH, CIFAR10_CLASSES)


def _read_image_tar(path: Path, class_order: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
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
                items.setdefault(split, []).append((cls, fname, _decode(data, f"{path}:{m.name}")))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BootlegError(f"data.root: {path} is not a readable tar archive ({type(e).__name__}: {e})") from None
    if "train" not in items:
        raise BootlegError(f"data.root: {path} has no train/<class>/<image> members; expected an ImageFolder tarball")
    return _stack(items, str(path), class_order)


# --------------------------------------------------------------------------- cifar10


def _find_cifar10(root: str | None) -> tuple[str, Path] | None:
    """``(kind, path)`` with kind ``jpg_tar``, ``folder``, ``py_tar`` or ``py_dir``; ``None`` if absent."""
    cands = [Path(root).expanduser()] if root else _default_roots("cifar10")
    for p in cands:
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


def _cifar10_source(root: str | None, download: bool) -> tuple[str, Path]:
    found = _find_cifar10(root)
    if found is not None:
        return found
    if download:
        dest_dir = Path(root).expanduser() if root else cache_dir() / "cifar10"
        if dest_dir.suffix in (".gz", ".tar", ".tgz"):
            dest_dir = dest_dir.parent
        dest = dest_dir / CIFAR10_PY_TAR
        _download(CIFAR10_URL, dest, CIFAR10_MD5)
        return "py_tar", dest
    if root:
        raise BootlegError(
            f"data.root: {root} has no train/ folder; expected an ImageFolder tree, {CIFAR10_JPG_TAR} "
            f"or {CIFAR10_PY_TAR} (or set data.download=true)"
        )
    looked = ", ".join(str(p) for p in _default_roots("cifar10"))
    raise BootlegError(f"data.root: CIFAR-10 not found (looked in {looked}); set data.root or data.download=true")


def _read_cifar_python(path: Path) -> dict[str, dict[str, Any]]:
    """Decode the official python release (tarball or extracted folder)."""
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


def _load_cifar10(split: str, root: str | None, download: bool) -> ImageSet:
    kind, path = _cifar10_source(root, download)
    name = f"cifar10/{split}"
    if kind == "folder":
        return _load_folder_cached("cifar10", path, split, name, CIFAR10_CLASSES)
    build = {
        "jpg_tar": lambda: _read_image_tar(path, CIFAR10_CLASSES),
        "py_tar": lambda: _read_cifar_python(path),
        "py_dir": lambda: _read_cifar_python(path),
    }[kind]
    return _cached("cifar10", _stat_key(path), split, build, name)


# --------------------------------------------------------------------------- image folders


def _folder_split_dir(root: Path, split: str) -> Path:
    """The folder of ``split``: ``root/split``, or ``root`` itself for ``train`` when it has no
    ``train/`` and ``test/`` subfolders."""
    if not root.is_dir():
        raise BootlegError(f"data.root: {root} is not a folder; expected an ImageFolder tree with train/ and test/")
    if (root / split).is_dir():
        return root / split
    if split == "train" and not (root / "test").is_dir():
        return root
    raise BootlegError(f"data.root: {root} has no {split}/ folder; expected an ImageFolder tree with train/ and test/")


def _folder_files(split_dir: Path) -> list[tuple[str, str, Path]]:
    """``(class, relative file, path)`` of every image in ``split_dir/<class>/...``, sorted."""
    out = []
    for rel, p in _walk_files(split_dir):
        if "/" in rel and rel.lower().endswith(IMG_EXTENSIONS):
            cls, fname = rel.split("/", 1)
            out.append((cls, fname, p))
    if not out:
        raise BootlegError(f"data.root: {split_dir} has no <class>/<image> files; expected an ImageFolder tree")
    return out


def _load_folder_cached(
    kind: str,
    root: Path,
    split: str,
    name: str,
    class_order: Iterable[str] | None = None,
    limit: int | None = None,
) -> ImageSet:
    """Decode one split of an ImageFolder tree (all of it, or a ``limit`` subset), with caching."""
    split_dir = _folder_split_dir(root, split)
    files = _folder_files(split_dir)
    idx = _limit_indices(len(files), limit)
    if idx is not None:
        files = [files[i] for i in idx.tolist()]

    def build() -> dict[str, dict[str, Any]]:
        items = []
        for c, f, p in files:
            a = _decode(p.read_bytes(), str(p))
            if items and a.shape != items[0][2].shape:  # stop at the first odd size
                raise _MixedSizes(f"data.root: {split_dir} holds images of several sizes ({items[0][1]}, {f})")
            items.append((c, f, a))
        return _stack({split: items}, str(split_dir), class_order)

    key = f"{split_dir}|{_stat_key(split_dir)}|limit={limit}"
    return _cached(kind, key, split, build, name)


def imagefolder_fits_in_memory(root: str | Path, split: str = "train", limit: int | None = None) -> bool:
    """The in-memory rule for ``imagefolder``: at most :data:`IMAGEFOLDER_MAX_FILES` images
    (after ``limit``) and :data:`IMAGEFOLDER_MAX_BYTES` bytes on disk. (Images of several sizes
    are detected while decoding; :func:`load_images` then raises and the stream streams.)"""
    files = _folder_files(_folder_split_dir(Path(root).expanduser(), split))
    idx = _limit_indices(len(files), limit)
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


def load_imagefolder(root: str | Path, split: str = "train") -> Any:
    """A streaming ``torchvision.datasets.ImageFolder`` over ``root/split`` (or ``root`` for a
    single-folder train set). Items are ``(PIL RGB image, label)``; nothing is decoded up front."""
    from torchvision.datasets import ImageFolder

    split_dir = _folder_split_dir(Path(root).expanduser(), split)
    try:
        return ImageFolder(str(split_dir))
    except (FileNotFoundError, RuntimeError) as e:
        raise BootlegError(f"data.root: {split_dir} is not a readable ImageFolder tree ({e})") from None


# --------------------------------------------------------------------------- fashion-mnist


def _read_idx(path: Path, what: str, ndim: int) -> np.ndarray:
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


def _fmnist_file(folder: Path, fname: str) -> Path | None:
    for p in (folder / fname, folder / fname.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


def _load_fashion_mnist(split: str, root: str | None, download: bool) -> ImageSet:
    cands = [Path(root).expanduser()] if root else _default_roots("fashion-mnist")
    img_name, lbl_name = _FMNIST_SPLIT_FILES[split]
    folder = next((p for p in cands if _fmnist_file(p, img_name) and _fmnist_file(p, lbl_name)), None)
    if folder is None and download:
        folder = cands[0] if root else cache_dir() / "fashion-mnist"
        for fname in (img_name, lbl_name):
            if _fmnist_file(folder, fname) is None:
                err: BootlegError | None = None
                for base in FASHION_MNIST_URLS:
                    try:
                        _download(base + fname, folder / fname, FASHION_MNIST_FILES[fname])
                        err = None
                        break
                    except BootlegError as e:
                        err = e
                if err is not None:
                    raise err
    if folder is None:
        where = root if root else ", ".join(str(p) for p in cands)
        raise BootlegError(
            f"data.root: {where} has no {img_name} and {lbl_name}; expected the Fashion-MNIST IDX files "
            "(or set data.download=true)"
        )
    img_path, lbl_path = _fmnist_file(folder, img_name), _fmnist_file(folder, lbl_name)
    assert img_path is not None and lbl_path is not None
    images = _read_idx(img_path, "image", 3)
    labels = _read_idx(lbl_path, "label", 1)
    if images.shape[0] != labels.shape[0]:
        raise BootlegError(
            f"data.root: {img_path} has {images.shape[0]} images but {lbl_path} {labels.shape[0]} labels"
        )
    x = torch.from_numpy(images.copy()).unsqueeze(1).repeat(1, 3, 1, 1)
    return ImageSet(x, torch.from_numpy(labels.astype(np.int64)), list(FASHION_MNIST_CLASSES), f"fashion_mnist/{split}")


# --------------------------------------------------------------------------- public API


def load_images(
    name: str,
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    limit: int | None = None,
) -> ImageSet:
    """Load a labelled split into memory.

    Args:
        name: ``embedded``, ``cifar10``, ``fashion_mnist`` or ``imagefolder`` (see module doc).
        split: ``train`` or ``test``.
        root: where the data is (meaning depends on ``name``; ``None`` = defaults).
        download: fetch the original files when they are not found (network; never in tests).
        limit: keep at most this many images: a fixed (seed 0), class-mixing random subset,
            in source order.

    Returns:
        :class:`ImageSet` with ``images`` ``(N, 3, H, W)`` uint8 and ``labels`` ``(N,)`` int64.
        Cached sets (``embedded``) share storage between calls: do not modify them in place.

    Raises:
        BootlegError: unknown name/split, data missing or corrupt, or an ``imagefolder`` too
            large for memory (the training stream then streams it with :func:`load_imagefolder`).
    """
    if split not in SPLITS:
        raise BootlegError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    if name == "embedded":
        d = _embedded()[split]
        s = ImageSet(d["images"], d["labels"], list(d["classes"]), f"embedded/{split}")
    elif name == "cifar10":
        s = _load_cifar10(split, root, download)
    elif name == "fashion_mnist":
        s = _load_fashion_mnist(split, root, download)
    elif name == "imagefolder":
        if not root:
            raise BootlegError("data.root: required for data.name=imagefolder (a folder with train/ and test/)")
        r = Path(root).expanduser()
        if not imagefolder_fits_in_memory(r, split, limit):
            raise BootlegError(
                f"data.root: {r} is too large to decode into memory (over {IMAGEFOLDER_MAX_FILES} images or "
                f"{IMAGEFOLDER_MAX_BYTES >> 20} MiB); use load_imagefolder() to stream it"
            )
        return _load_folder_cached("imagefolder", r, split, f"imagefolder/{split}", None, limit)
    else:
        raise BootlegError(f"data.name: {name!r} is not one of {', '.join(DATASET_NAMES)}")
    return _apply_limit(s, limit)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint_sources(name: str, root: str | None) -> list[Path]:
    """The files (or folders) whose bytes define dataset ``name`` at ``root``."""
    if name == "embedded":
        return [EMBEDDED_PATH]
    if name == "cifar10":
        return [_cifar10_source(root, download=False)[1]]
    if name == "fashion_mnist":
        cands = [Path(root).expanduser()] if root else _default_roots("fashion-mnist")
        for c in cands:
            files = [_fmnist_file(c, f) for f in FASHION_MNIST_FILES]
            if all(files):
                return [f for f in files if f is not None]
        raise BootlegError(f"data.root: no Fashion-MNIST IDX files in {', '.join(map(str, cands))}")
    if name == "imagefolder":
        if not root or not Path(root).expanduser().is_dir():
            raise BootlegError(f"data.root: {root} is not a folder; expected an ImageFolder tree")
        return [Path(root).expanduser()]
    raise BootlegError(f"data.name: {name!r} is not one of {', '.join(DATASET_NAMES)}")


_FP_MEMO: dict[str, str] = {}


#: Folders larger than this are fingerprinted by their listing (``relpath:size``), not content.
FINGERPRINT_CONTENT_MAX_BYTES = 2**30


def _fingerprint_one(path: Path) -> str:
    """sha256 of a file, or of ``relpath:sha256`` lines of every file below a folder (for folders
    over :data:`FINGERPRINT_CONTENT_MAX_BYTES`: of ``listing`` + ``relpath:size`` lines, since
    hashing e.g. ImageNet on every run is too slow); memoised in-process and in
    ``<cache>/fingerprints.json`` by path, size and mtime."""
    key = _stat_key(path)
    if key in _FP_MEMO:
        return _FP_MEMO[key]
    store = cache_dir() / "fingerprints.json"
    try:
        table = json.loads(store.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        if path.is_file():
            table[key] = _sha256_file(path)
        else:
            files = [(rel, p, p.stat().st_size) for rel, p in _walk_files(path)]
            by_content = sum(size for _, _, size in files) <= FINGERPRINT_CONTENT_MAX_BYTES
            h = hashlib.sha256(b"" if by_content else b"listing\n")
            for rel, p, size in files:
                h.update(f"{rel}:{_sha256_file(p) if by_content else size}\n".encode())
            table[key] = h.hexdigest()
        try:
            _atomic_write(store, lambda f: f.write(json.dumps(table, indent=0).encode()))
        except OSError:
            pass
    _FP_MEMO[key] = table[key]
    return table[key]


def dataset_fingerprint(name: str, root: str | None = None) -> str:
    """Hex sha256 identifying the data behind ``load_images(name, root=root)``.

    One source file (a tarball) -> its sha256; several files or a folder -> sha256 of
    ``<name>:<sha256>`` lines in sorted order (folders over 1 GiB: of their file names and
    sizes only). Hashes are cached by path, size and mtime, so
    repeated calls cost a few ``stat`` calls.

    Raises:
        BootlegError: the data is not found (nothing is downloaded).
    """
    srcs = _fingerprint_sources(name, root)
    if len(srcs) == 1 and srcs[0].is_file():
        return _fingerprint_one(srcs[0])
    h = hashlib.sha256()
    for p in sorted(srcs):
        h.update(f"{p.name}:{_fingerprint_one(p)}\n".encode())
    return h.hexdigest()
