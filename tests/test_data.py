"""bootleg.data: datasets, batched augmentation and the resumable training stream.

Real data comes from ``../shared/datasets`` (tests that need it skip when it is absent);
every cache is written to a temporary ``$BOOTLEG_CACHE``. No network.
"""

from __future__ import annotations

import gzip
import tarfile
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bootleg.config import DataConfig
from bootleg.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSet,
    Items,
    MemoryStream,
    batch_augment,
    build_stream,
    dataset_fingerprint,
    eval_transform,
    load_images,
    open_split,
    readers,
)
from bootleg.data import fingerprint as fp_mod
from bootleg.data import sources as ds_mod
from bootleg.data.augment import apply_augment, random_resized_crop_params, sample_augment_params
from bootleg.data.order import epoch_order
from bootleg.errors import BootlegError
from bootleg.masking import Masks, StepMasks, build_sampler

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
CIFAR_TAR = SHARED / "cifar10" / "cifar10-jpg.tar.gz"
FMNIST = SHARED / "fashion-mnist"
needs_cifar = pytest.mark.skipif(not CIFAR_TAR.is_file(), reason=f"shared CIFAR-10 tarball absent ({CIFAR_TAR})")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason=f"shared Fashion-MNIST absent ({FMNIST})"
)


@pytest.fixture(scope="module", autouse=True)
def tmp_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every cache of this module goes to a temporary folder; ``BOOTLEG_DATA`` is unset."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("bootleg-cache")
    mp.setenv("BOOTLEG_CACHE", str(path))
    mp.delenv("BOOTLEG_DATA", raising=False)
    yield path
    mp.undo()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` pixels in [0, 255] (uint8 or float) -> ImageNet-normalised float."""
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - m) / s


def _write_folder(root: Path, sizes: dict[str, list[tuple[int, int]]], classes=("a", "b")) -> None:
    """An ImageFolder tree ``root/<split>/<class>/<i>.png`` with images of the given (H, W)."""
    g = torch.Generator().manual_seed(0)
    for split, hws in sizes.items():
        for i, (h, w) in enumerate(hws):
            cls = classes[i % len(classes)]
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            arr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(d / f"{i:03d}.png")


# ----------------------------------------------------------------------------- datasets


def test_embedded_loads_balanced() -> None:
    t = time.perf_counter()
    train = load_images("embedded", "train")
    dt = time.perf_counter() - t
    test = load_images("embedded", "test")
    assert isinstance(train, ImageSet) and train.name == "embedded/train"
    assert train.images.shape == (5000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (1000, 3, 32, 32)
    assert train.classes[:2] == ["airplane", "automobile"] and len(train.classes) == 10
    assert train.labels.dtype == torch.long
    assert train.labels.bincount().tolist() == [500] * 10
    assert test.labels.bincount().tolist() == [100] * 10
    assert dt < 10  # ~0.5-2 s; the brief's budget is 3 s on an idle machine
    assert ds_mod.EMBEDDED_PATH.stat().st_size < 4 * 2**20
    sub = load_images("embedded", "train", limit=100)
    assert sub.images.shape[0] == 100 and len(sub.labels.unique()) > 5  # limit mixes classes
    assert torch.equal(sub.images, load_images("embedded", "train", limit=100).images)


def test_embedded_tar_holds_original_bytes() -> None:
    with tarfile.open(ds_mod.EMBEDDED_PATH) as tf:
        names = [m.name for m in tf if m.isfile()]
    assert len(names) == 6000
    assert "train/airplane/0000.jpg" in names and "train/truck/0499.jpg" in names
    assert "test/ship/0099.jpg" in names and "train/cat/0500.jpg" not in names
    if CIFAR_TAR.is_file():
        with tarfile.open(ds_mod.EMBEDDED_PATH) as a:
            mini = a.extractfile("train/airplane/0003.jpg").read()  # type: ignore[union-attr]
        with tarfile.open(CIFAR_TAR) as b:
            for m in b:
                if m.name.endswith("train/airplane/0003.jpg"):
                    assert b.extractfile(m).read() == mini  # type: ignore[union-attr]
                    break


@needs_cifar
def test_cifar10_from_shared_tarball_is_cached(tmp_cache: Path) -> None:
    t = time.perf_counter()
    train = load_images("cifar10", "train", root=str(CIFAR_TAR))
    first = time.perf_counter() - t
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.bincount().tolist() == [5000] * 10
    assert train.classes == list(readers.CIFAR10_CLASSES)
    assert list(tmp_cache.glob("cifar10-*-train.pt")) and list(tmp_cache.glob("cifar10-*-test.pt"))
    t = time.perf_counter()
    again = load_images("cifar10", "train", root=str(CIFAR_TAR.parent))  # the folder holding it
    cached = time.perf_counter() - t
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert cached < max(2.0, first / 5)
    test = load_images("cifar10", "test")  # default root: ../shared/datasets/cifar10
    assert test.images.shape == (10000, 3, 32, 32) and test.labels.bincount().tolist() == [1000] * 10
    # the embedded set is the first 500 train images of each class, same bytes
    emb = load_images("embedded", "train")
    for c in (0, 9):
        assert torch.equal(emb.images[emb.labels == c], train.images[train.labels == c][:500])
    fp = dataset_fingerprint("cifar10")
    assert fp == "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"  # README's sha256


def test_cifar10_imagefolder_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "cifar10"
    with tarfile.open(ds_mod.EMBEDDED_PATH) as tf:
        tf.extractall(tree, filter="data")
    emb = load_images("embedded", "test")
    s = load_images("cifar10", "test", root=str(tree))
    assert torch.equal(s.images, emb.images) and torch.equal(s.labels, emb.labels)
    f = load_images("imagefolder", "test", root=str(tree))
    assert torch.equal(f.images, emb.images) and f.classes == emb.classes
    assert len(dataset_fingerprint("imagefolder", str(tree))) == 64
    monkeypatch.setenv("BOOTLEG_DATA", str(tmp_path))  # default root: $BOOTLEG_DATA/cifar10
    assert torch.equal(load_images("cifar10", "test").images, emb.images)


@needs_fmnist
def test_fashion_mnist_idx() -> None:
    train = load_images("fashion_mnist", "train", root=str(FMNIST))
    assert train.images.shape == (60000, 3, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grayscale repeated
    assert train.labels.bincount().tolist() == [6000] * 10
    assert train.classes[0] == "T-shirt/top"
    test = load_images("fashion_mnist", "test")  # default root
    assert test.images.shape == (10000, 3, 28, 28)
    assert len(dataset_fingerprint("fashion_mnist")) == 64


def test_missing_roots_raise_with_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for name in ("cifar10", "fashion_mnist", "imagefolder"):
        with pytest.raises(BootlegError, match=str(missing)):
            load_images(name, "train", root=str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BootlegError, match=r"has no train/ folder.*cifar10-jpg\.tar\.gz"):
        load_images("cifar10", root=str(empty))
    with pytest.raises(BootlegError, match="data.name"):
        load_images("mnist")
    with pytest.raises(BootlegError, match="split"):
        load_images("embedded", "val")
    with pytest.raises(BootlegError, match="required"):
        load_images("imagefolder")


def test_corrupt_data_raises(tmp_path: Path) -> None:
    bad_tar = tmp_path / "cifar10-jpg.tar.gz"
    bad_tar.write_bytes(gzip.compress(b"not a tar" * 100))
    with pytest.raises(BootlegError, match="not a readable tar"):
        load_images("cifar10", root=str(bad_tar))
    folder = tmp_path / "folder"
    (folder / "train" / "a").mkdir(parents=True)
    (folder / "train" / "a" / "x.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(BootlegError, match="x.jpg"):
        load_images("imagefolder", root=str(folder))
    idx = tmp_path / "fm"
    idx.mkdir()
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (idx / f).write_bytes(gzip.compress(b"\0\0\x08\x09junk"))
    with pytest.raises(BootlegError, match="bad magic"):
        load_images("fashion_mnist", root=str(idx))


def test_imagefolder_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_folder(tmp_path / "two", {"train": [(12, 12)] * 6, "test": [(12, 12)] * 4})
    s = load_images("imagefolder", "train", root=str(tmp_path / "two"))
    assert s.images.shape == (6, 3, 12, 12) and s.classes == ["a", "b"] and s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert load_images("imagefolder", "test", root=str(tmp_path / "two")).images.shape == (4, 3, 12, 12)
    # a single folder of classes is the train split
    _write_folder(tmp_path / "one", {"x": [(8, 8)] * 3})
    assert load_images("imagefolder", root=str(tmp_path / "one" / "x")).images.shape == (3, 3, 8, 8)
    with pytest.raises(BootlegError, match="no test/ folder"):
        load_images("imagefolder", "test", root=str(tmp_path / "one" / "x"))
    # images of several sizes cannot be stacked: streamed instead
    _write_folder(tmp_path / "mixed", {"train": [(10, 14), (12, 12), (16, 9)]})
    with pytest.raises(BootlegError, match="several sizes"):
        load_images("imagefolder", root=str(tmp_path / "mixed"))
    folder = open_split("imagefolder", "train", str(tmp_path / "mixed"))
    assert isinstance(folder, Items) and len(folder) == 3 and folder.classes == ["a", "b"]
    assert folder.name(0).endswith("000.png") and [folder.label(i) for i in range(3)] == [0, 0, 1]
    # too many files: load_images refuses
    monkeypatch.setattr(ds_mod, "IMAGEFOLDER_MAX_FILES", 5)
    with pytest.raises(BootlegError, match="too large"):
        load_images("imagefolder", root=str(tmp_path / "two"))
    assert load_images("imagefolder", root=str(tmp_path / "two"), limit=4).images.shape[0] == 4


# ----------------------------------------------------------------------------- augmentation


def test_crop_params_follow_torchvision_rule() -> None:
    from torchvision.transforms import RandomResizedCrop

    g = torch.Generator().manual_seed(0)
    H, W = 48, 64
    boxes = random_resized_crop_params(4000, (H, W), (0.2, 0.9), (3 / 4, 4 / 3), g)
    y0, x0, h, w = boxes.T
    assert boxes.shape == (4000, 4) and boxes.dtype == torch.long
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + h <= H).all() and (x0 + w <= W).all()
    frac = (h * w).double() / (H * W)
    assert frac.min() > 0.18 and frac.max() < 0.93
    r = w.double() / h
    assert r.min() > 0.7 and r.max() < 1.45
    # same distribution as torchvision's sampler
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = torch.tensor(
            [RandomResizedCrop.get_params(torch.empty(3, H, W), [0.2, 0.9], [3 / 4, 4 / 3]) for _ in range(4000)]
        )
    for a, b in zip(boxes.T.double(), ref.T.double(), strict=True):
        assert abs(a.mean() - b.mean()) < 0.03 * max(H, W)
    # impossible scale -> torchvision's central fallback, exactly
    for hw, ratio in (((20, 60), (3 / 4, 4 / 3)), ((60, 20), (3 / 4, 4 / 3)), ((30, 30), (1.0, 1.0))):
        fb = random_resized_crop_params(3, hw, (2.0, 3.0), ratio, g)
        tv = RandomResizedCrop.get_params(torch.empty(3, *hw), [2.0, 3.0], list(ratio))
        assert fb.tolist() == [list(tv)] * 3


def test_full_crop_equals_resize_and_flip_flips() -> None:
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for size in (32, 48, 20):
        for mode in ("bicubic", "bilinear"):
            out = batch_augment(x, size, scale=(1, 1), ratio=(1, 1), hflip=False, interpolation=mode)
            ref = _normalised(F.interpolate(x.float(), size=(size, size), mode=mode, align_corners=False).clamp(0, 255))
            assert out.shape == (4, 3, size, size) and out.dtype == torch.float32
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # same size, full crop: the normalised image itself
    same = batch_augment(x, 32, scale=(1, 1), ratio=(1, 1), hflip=False)
    torch.testing.assert_close(same, _normalised(x), atol=1e-4, rtol=0)
    # a crop resized to its own size is an exact crop; a flip flips it
    boxes = torch.tensor([[3, 5, 16, 16], [0, 0, 16, 16], [16, 16, 16, 16], [7, 2, 16, 16]])
    flips = torch.tensor([False, True, False, True])
    out = apply_augment(x, boxes, flips, 16)
    for i, (y, xx, h, w) in enumerate(boxes.tolist()):
        ref = _normalised(x[i : i + 1, :, y : y + h, xx : xx + w])
        ref = ref.flip(-1) if flips[i] else ref
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-4, rtol=0)
    # batch_augment's flips are those of sample_augment_params with the same generator
    a = batch_augment(x, 32, (1, 1), (1, 1), True, generator=torch.Generator().manual_seed(3))
    _, f = sample_augment_params(4, (32, 32), (1, 1), (1, 1), True, torch.Generator().manual_seed(3))
    for i in range(4):
        ref = _normalised(x[i : i + 1])
        torch.testing.assert_close(a[i : i + 1], ref.flip(-1) if f[i] else ref, atol=1e-4, rtol=0)


def test_augment_uses_only_its_generator() -> None:
    x = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    state = torch.get_rng_state()
    a = batch_augment(x, 16, generator=torch.Generator().manual_seed(5))
    b = batch_augment(x, 16, generator=torch.Generator().manual_seed(5))
    c = batch_augment(x, 16, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    # bicubic overshoot is clamped to the valid range before normalising
    lo = (0 - max(IMAGENET_MEAN)) / min(IMAGENET_STD) - 1e-4
    hi = (1 - min(IMAGENET_MEAN)) / min(IMAGENET_STD) + 1e-4
    assert a.min() >= lo and a.max() <= hi


def test_eval_transform() -> None:
    x = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(eval_transform(x, 28), _normalised(x))
    up = eval_transform(x, 56)
    ref = F.interpolate(x.float(), size=(56, 56), mode="bicubic", align_corners=False).clamp(0, 255)
    torch.testing.assert_close(up, _normalised(ref), atol=1e-4, rtol=1e-4)
    wide = torch.randint(0, 256, (1, 3, 20, 40), dtype=torch.uint8)
    assert eval_transform(wide, 16).shape == (1, 3, 16, 16)


# ----------------------------------------------------------------------------- stream


def _cfg(**kw) -> DataConfig:
    base = {"name": "embedded", "limit": 640}
    base.update(kw)
    return DataConfig(**base)


SAMPLER = build_sampler({"sampler": "bootleg"}, (8, 8))


def _stream(cfg: DataConfig, size: int, B: int, seed: int, rank: int = 0, world_size: int = 1):
    return build_stream(cfg, size, B, StepMasks(SAMPLER, B, seed, rank), seed, rank, world_size)


def _same(a: tuple[torch.Tensor, Masks], b: tuple[torch.Tensor, Masks]) -> bool:
    return (
        torch.equal(a[0], b[0])
        and torch.equal(a[1].enc_idx, b[1].enc_idx)
        and torch.equal(a[1].pred_idx, b[1].pred_idx)
    )


def test_stream_resumes_exactly() -> None:
    s = _stream(_cfg(), 16, 32, seed=3)
    assert isinstance(s, MemoryStream) and s.steps_per_epoch == 640 // 32 == 20
    it = s.batches(0)
    items = [next(it) for _ in range(24)]  # crosses into epoch 1
    it.close()
    x, m = items[0]
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert m.enc_idx.shape[0] == 32 and m.pred_idx.shape[:2] == (32, 4)
    for t in (5, 21):
        it = s.batches(t)
        assert _same(next(it), items[t])
        assert _same(next(it), items[t + 1])
        it.close()
    assert _same(_stream(_cfg(), 16, 32, seed=3).batch(5), items[5])
    assert not torch.equal(items[0][0], items[1][0])
    other = _stream(_cfg(), 16, 32, seed=4).batch(5)
    assert not torch.equal(other[0], items[5][0])


def test_stream_order_ranks_and_epochs() -> None:
    B, W, n = 16, 4, 640
    streams = [_stream(_cfg(), 16, B, seed=1, rank=r, world_size=W) for r in range(W)]
    assert streams[0].steps_per_epoch == n // (B * W) == 10
    order0 = epoch_order(n, 1, 0)
    seen: list[int] = []
    for b in range(10):
        idx = [s.indices(b) for s in streams]
        for r in range(W):
            assert idx[r].tolist() == order0[b * B * W + r * B : b * B * W + (r + 1) * B].tolist()
        seen += torch.cat(idx).tolist()
    assert sorted(seen) == list(range(n))  # one epoch: ranks disjoint, every image once
    assert not torch.equal(streams[0].indices(10), streams[0].indices(0))  # epoch 1 reorders
    assert not torch.equal(epoch_order(n, 1, 0), epoch_order(n, 1, 1))
    # masks differ by rank; images match their indices (identity augmentation)
    m0, m1 = streams[0].batch(0)[1], streams[1].batch(0)[1]
    assert not torch.equal(m0.enc_idx, m1.enc_idx) or not torch.equal(m0.pred_idx, m1.pred_idx)
    ident = _cfg(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False)
    s = _stream(ident, 32, B, seed=1, rank=2, world_size=W)
    x, _ = s.batch(13)
    src = load_images("embedded", "train", limit=640).images
    torch.testing.assert_close(x, _normalised(src[s.indices(13)]), atol=1e-4, rtol=0)


def test_stream_on_device_flag_and_errors() -> None:
    a = _stream(_cfg(on_device=True), 16, 32, seed=0).batch(7)
    b = _stream(_cfg(on_device=False), 16, 32, seed=0).batch(7)
    assert _same(a, b)
    with pytest.raises(BootlegError, match="batch"):
        _stream(_cfg(limit=100), 16, 64, seed=0, world_size=2)
    before = sum(t.name == "bootleg-prefetch" for t in threading.enumerate())
    it = _stream(_cfg(), 16, 32, seed=0).batches(0)
    next(it)
    it.close()
    assert sum(t.name == "bootleg-prefetch" for t in threading.enumerate()) == before


def test_streaming_imagefolder_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_folder(tmp_path / "mixed", {"train": [(20 + i, 24 - i % 5) for i in range(24)]})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "mixed"), num_workers=0)
    s = _stream(cfg, 16, 4, seed=2)
    assert s.streaming and s.steps_per_epoch == 6
    it = s.batches(0)
    items = [next(it) for _ in range(8)]
    x, m = items[0]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and m.enc_idx.shape[0] == 4
    assert _same(next(iter(s.batches(7))), items[7])
    # worker processes give the same batches as the main process
    s2 = _stream(cfg.model_copy(update={"num_workers": 2}), 16, 4, seed=2)
    it2 = s2.batches(3)
    assert _same(next(it2), items[3]) and _same(next(it2), items[4])
    # a same-size folder over the file-count rule is streamed too
    _write_folder(tmp_path / "big", {"train": [(12, 12)] * 8})
    monkeypatch.setattr(ds_mod, "IMAGEFOLDER_MAX_FILES", 4)
    big = _stream(DataConfig(name="imagefolder", root=str(tmp_path / "big")), 8, 4, seed=0)
    assert big.streaming and big.batch(1)[0].shape == (4, 3, 8, 8)


def test_fingerprint_tracks_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_folder(tmp_path / "f", {"train": [(8, 8)] * 3})
    root = str(tmp_path / "f")
    a = dataset_fingerprint("imagefolder", root)
    assert a == dataset_fingerprint("imagefolder", root) and len(a) == 64
    assert dataset_fingerprint("embedded") != a
    img = tmp_path / "f" / "train" / "a" / "000.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(img)
    b = dataset_fingerprint("imagefolder", root)
    assert b != a
    monkeypatch.setattr(fp_mod, "FINGERPRINT_CONTENT_MAX_BYTES", 0)  # big folders: listing only
    (tmp_path / "f" / "train" / "b" / "new.png").write_bytes(img.read_bytes())
    assert dataset_fingerprint("imagefolder", root) not in (a, b)
    with pytest.raises(BootlegError, match="nowhere"):
        dataset_fingerprint("cifar10", str(tmp_path / "nowhere"))


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_paths_with_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``download=True`` end to end, served from ``file://`` URLs (no network)."""
    import io
    import pickle

    import numpy as np

    # CIFAR-10 in the official python format, 4 images per batch
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": 3}
    with tarfile.open(src / "cifar-10-python.tar.gz", "w:gz") as tf:
        for name, n in batches.items():
            blob = pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [1] * n})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    tar = src / "cifar-10-python.tar.gz"
    monkeypatch.setattr(ds_mod, "CIFAR10_URL", tar.as_uri())
    monkeypatch.setattr(ds_mod, "CIFAR10_MD5", _md5(tar))
    dest = tmp_path / "dl"
    with pytest.raises(BootlegError, match="download"):
        load_images("cifar10", root=str(dest))
    train = load_images("cifar10", "train", root=str(dest), download=True)
    assert (dest / "cifar-10-python.tar.gz").is_file()
    assert train.images.shape == (20, 3, 32, 32) and train.labels.tolist() == [1] * 20
    with tarfile.open(tar) as tf:
        first = pickle.loads(tf.extractfile("cifar-10-batches-py/data_batch_1").read())[b"data"][0]  # type: ignore[union-attr]
    assert torch.equal(train.images[0], torch.from_numpy(first).view(3, 32, 32))  # channel planes, row-major
    assert load_images("cifar10", "test", root=str(dest)).images.shape == (3, 3, 32, 32)  # no second download

    # Fashion-MNIST from the shared IDX files, md5 of those copies
    if not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file():
        return
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_URLS", ("file:///nonexistent/", FMNIST.as_uri() + "/"))
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_FILES", {f: _md5(FMNIST / f) for f in ds_mod.FASHION_MNIST_FILES})
    fm = load_images("fashion_mnist", "test", root=str(tmp_path / "fm"), download=True)
    assert fm.images.shape == (10000, 3, 28, 28)
    monkeypatch.setattr(ds_mod, "FASHION_MNIST_FILES", dict.fromkeys(ds_mod.FASHION_MNIST_FILES, "0" * 32))
    with pytest.raises(BootlegError, match="md5"):
        load_images("fashion_mnist", "train", root=str(tmp_path / "fm2"), download=True)
    assert not list((tmp_path / "fm2").glob("*.gz"))  # nothing half-written is left
