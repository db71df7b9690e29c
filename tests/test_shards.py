"""Tar shards (``bootleg data shard``), the streaming path, bad files and the decode paths."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bootleg.cli import main
from bootleg.data import SOURCES, DataConfig, StreamingStream, build_stream, open_split
from bootleg.data import sources as src_mod
from bootleg.data.augment import random_resized_crop_params
from bootleg.data.decode import BadImage, crop_box, decode_batch_cuda, decode_crop
from bootleg.data.shards import ShardItems
from bootleg.errors import BootlegError
from bootleg.masking import StepMasks, build_sampler

SAMPLER = build_sampler({"sampler": "bootleg"}, (4, 4))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTLEG_CACHE", str(tmp_path / "cache"))


def _jpeg(rng: np.random.Generator, h: int, w: int, cell: int = 8) -> bytes:
    """A smooth random picture (noise upsampled ``cell`` times) as JPEG quality 90."""
    low = rng.integers(0, 256, (max(2, h // cell), max(2, w // cell), 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


def _tree(root: Path, n: int, classes: int = 3, test: int = 0, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for split, count in (("train", n), ("test", test)):
        for i in range(count):
            d = root / split / f"c{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            p = d / f"{i:04d}.jpg"
            p.write_bytes(_jpeg(rng, int(rng.integers(30, 60)), int(rng.integers(30, 60))))
            files.append(p)
    return files


def _stream(cfg: DataConfig, B: int = 4, seed: int = 1, rank: int = 0, world: int = 1) -> StreamingStream:
    s = build_stream(cfg, 16, B, StepMasks(SAMPLER, B, seed, rank), seed, rank, world)
    assert isinstance(s, StreamingStream)
    return s


def _same(a, b) -> bool:
    return (
        torch.equal(a[0], b[0])
        and torch.equal(a[1].enc_idx, b[1].enc_idx)
        and torch.equal(a[1].pred_idx, b[1].pred_idx)
    )


def test_sources_registry_feeds_the_config() -> None:
    assert {"embedded", "cifar10", "fashion_mnist", "imagefolder", "shards"} <= set(SOURCES)
    with pytest.raises(ValueError, match="shards"):
        DataConfig(name="mnist")
    assert DataConfig(name="shards", decode="cpu").max_bad_fraction == 0.01


def test_shard_cli_writes_webdataset_layout_and_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _tree(tmp_path / "src", 20, test=5)
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "sh"), "--shard-size", "8"]) == 0
    assert "train: 20 images in 3 shards, 3 classes" in capsys.readouterr().out
    meta = json.loads((tmp_path / "sh" / "index.json").read_text())
    assert meta["classes"] == ["c0", "c1", "c2"] and meta["splits"]["test"]["count"] == 5
    assert (tmp_path / "sh" / "classes.txt").read_text().split() == ["c0", "c1", "c2"]
    with tarfile.open(tmp_path / "sh" / meta["splits"]["train"]["shards"][0]) as tf:
        names = tf.getnames()
    assert names[:2] == ["000000000.cls", "000000000.jpg"] and len(names) == 16
    folder, shards = open_split("imagefolder", "train", str(tmp_path / "src")), ShardItems(tmp_path / "sh", "train")
    assert not isinstance(folder, src_mod.ImageSet)  # sizes differ: streamed
    assert len(shards) == 20 and shards.classes == folder.classes
    for i in (0, 7, 8, 19):
        assert shards.read(i) == folder.read(i) and shards.label(i) == folder.label(i)
    # byte-reproducible shards (DVC-friendly)
    main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "sh2"), "--shard-size", "8"])
    a, b = (tmp_path / d / "train" / "shard-000001.tar" for d in ("sh", "sh2"))
    assert a.read_bytes() == b.read_bytes()
    # --max-side re-encodes large images
    main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "small"), "--max-side", "24"])
    small = ShardItems(tmp_path / "small", "train")
    assert max(Image.open(io.BytesIO(small.read(3))).size) == 24
    assert main(["data", "shard", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2


def test_shard_stream_resumes_and_matches_folder(tmp_path: Path) -> None:
    _tree(tmp_path / "src", 24)
    main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "sh"), "--shard-size", "5"])
    s = _stream(DataConfig(name="shards", root=str(tmp_path / "sh")))
    assert s.steps_per_epoch == 6
    it = s.batches(0)
    items = [next(it) for _ in range(9)]  # crosses into epoch 1
    it.close()
    assert items[0][0].shape == (4, 3, 16, 16) and items[0][0].dtype == torch.float32
    for t in (4, 7):
        assert _same(s.batch(t), items[t])
    workers = _stream(DataConfig(name="shards", root=str(tmp_path / "sh"), num_workers=2)).batches(5)
    assert _same(next(workers), items[5]) and _same(next(workers), items[6])
    workers.close()
    folder = _stream(DataConfig(name="imagefolder", root=str(tmp_path / "src")))
    assert _same(folder.batch(3), items[3])  # same bytes, same order: same batches
    # ranks split the images of each step
    r0, r1 = (_stream(DataConfig(name="shards", root=str(tmp_path / "sh")), 4, 1, r, 2) for r in (0, 1))
    assert not set(r0.indices(0).tolist()) & set(r1.indices(0).tolist())
    limited = _stream(DataConfig(name="shards", root=str(tmp_path / "sh"), limit=12))
    assert limited.num_images == 12 and limited.batch(2)[0].shape == (4, 3, 16, 16)


def test_bad_files_are_replaced_warned_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(src_mod, "IMAGEFOLDER_MAX_FILES", 0)  # stream it (small folders fail fast in memory)
    files = _tree(tmp_path / "src", 40)
    files[3].write_bytes(files[3].read_bytes()[:200])  # truncated JPEG
    files[10].write_bytes(b"")  # zero bytes
    files[17].write_bytes(b"not an image at all")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "src"), max_bad_fraction=0.2)
    s = _stream(cfg)
    it = s.batches(0)
    items = [next(it) for _ in range(20)]  # two epochs: every bad file met twice
    it.close()
    err = capsys.readouterr().err
    for f in (files[3], files[10], files[17]):
        assert err.count(str(f)) == 1  # one warning per file
    # each bad file met twice (a replacement may itself be bad); every read is counted
    assert (
        s.bad_images >= 6 and s.images_read == 80 + s.bad_images and s.bad_files == {str(files[i]) for i in (3, 10, 17)}
    )
    assert all(torch.isfinite(x).all() for x, _ in items)
    again = _stream(cfg)
    for t in (0, 13):  # deterministic replacement: a resumed stream sees the same batches
        assert _same(again.batch(t), items[t])
    strict = _stream(cfg.model_copy(update={"max_bad_fraction": 0.01}))
    with pytest.raises(BootlegError, match=r"data.max_bad_fraction: \d+ of 40 images"):
        for _ in strict.batches(0):
            pass


def test_decode_crop_draft_and_bad_input() -> None:
    data = _jpeg(np.random.default_rng(0), 375, 500, cell=32)
    u = torch.rand(4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    args = (64, u, True, (0.35, 1.0), (0.75, 4 / 3), "bicubic")
    fast, full = decode_crop(data, *args), decode_crop(data, *args, draft=False)
    assert fast.shape == (3, 64, 64) and fast.dtype == torch.uint8
    assert (fast.float() - full.float()).abs().mean() < 2  # DCT scaling changes pixels, not geometry
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")  # the PIL path: same box, (nearly) same pixels
    assert (decode_crop(png.getvalue(), *args).float() - full.float()).abs().mean() < 2
    for bad in (b"", b"garbage", data[:300]):
        with pytest.raises(BadImage):
            decode_crop(bad, *args)


def test_crop_box_is_torchvisions_rule() -> None:
    seed = 0
    for hw in ((375, 500), (40, 400), (500, 30), (64, 64)):
        for scale in ((0.35, 1.0), (0.08, 1.0), (1.0, 1.0)):
            seed += 1
            g = torch.Generator().manual_seed(seed)  # the reference draws 4 x (1, 10) uniforms in this order
            u = torch.cat([torch.rand(1, 10, generator=g, dtype=torch.float64) for _ in range(4)])
            ref = random_resized_crop_params(1, hw, scale, (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
            assert crop_box(u.numpy(), hw, scale, (3 / 4, 4 / 3)) == tuple(ref[0].tolist())


def test_device_decode_batch_logic_on_cpu() -> None:
    """``decode_batch_cuda``'s batching, crops, flips and corrupt-file handling, run with
    ``decode_jpeg`` on the CPU device (the CUDA test below runs it on a GPU)."""
    good = _jpeg(np.random.default_rng(0), 60, 80)
    png = io.BytesIO()
    Image.open(io.BytesIO(good)).save(png, "PNG")
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in (good, good[:120], good, png.getvalue())]
    boxes = torch.tensor([[0, 0, 60, 80]] * 4)
    flips = torch.tensor([False, False, True, False])
    x, failed = decode_batch_cuda(datas, [True, True, True, False], boxes, flips, 16, "bicubic", torch.device("cpu"))
    assert x.shape == (4, 3, 16, 16) and failed == [1]
    assert torch.equal(x[0], x[2].flip(-1)) and not x[1].any()
    assert (x[0] - x[3]).abs().mean() < 0.1  # JPEG decoded or PNG via decode_image: same picture


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_matches_cpu_path(tmp_path: Path) -> None:
    _tree(tmp_path / "src", 16)
    cpu = _stream(
        DataConfig(name="imagefolder", root=str(tmp_path / "src"), decode="cpu", crop_scale=(1, 1), hflip=False)
    )
    dev = build_stream(
        DataConfig(name="imagefolder", root=str(tmp_path / "src"), decode="cuda", crop_scale=(1, 1), hflip=False),
        16,
        4,
        StepMasks(SAMPLER, 4, 1, 0),
        1,
        0,
        1,
        "cuda",
    )
    assert dev.cuda_decode
    a, b = cpu.batch(2), dev.batch(2)
    assert b[0].device.type == "cuda" and torch.equal(a[1].enc_idx, b[1].enc_idx.cpu())
    assert (a[0] - b[0].cpu()).abs().mean() < 0.15  # different decoders and resamplers, same crops


@pytest.mark.slow
def test_shard_training_survives_bad_files_and_resumes_byte_identical(tmp_path: Path) -> None:
    """A folder with a truncated JPEG and a zero-byte file, sharded; pretraining on the shards is
    killed (SIGKILL) and resumed, and ends byte-identical to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    files = _tree(tmp_path / "src", 400, classes=10)
    files[5].write_bytes(files[5].read_bytes()[:150])
    files[77].write_bytes(b"")
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "sh"), "--shard-size", "64"]) == 0
    sets = ["optim.batch_size=32", "run.log_every=5", "run.progress=false", "data.name=shards"]
    sets += [f"data.root={tmp_path / 'sh'}", "data.num_workers=1", "data.max_bad_fraction=0.05"]
    args = ["pretrain", "--params", str(root / "params.yaml"), "--steps", "30", "--checkpoint-every", "5"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "bootleg.cli", *args, *extra]
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ref = cli("--out", str(tmp_path / "ref"))
    victim = cli("--out", str(tmp_path / "cut"))
    ck = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ck.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert victim.poll() is None, "run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = cli("--out", str(tmp_path / "cut"), "--resume")
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    _, ref_err = ref.communicate(timeout=900)
    assert ref.returncode == 0, ref_err
    assert (tmp_path / "ref" / "encoder.safetensors").read_bytes() == (
        tmp_path / "cut" / "encoder.safetensors"
    ).read_bytes()
    shards = ShardItems(tmp_path / "sh", "train")
    bad_names = {
        shards.name(i) for i in range(len(shards)) if shards.read(i)[:2] != b"\xff\xd8" or len(shards.read(i)) < 200
    }
    assert len(bad_names) == 2 and all(n in ref_err for n in bad_names)  # each named in a warning
    rows = [json.loads(ln) for ln in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30 and rows[-1]["bad_images"] >= 2
    cut = [json.loads(ln) for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert cut[-1]["bad_images"] == rows[-1]["bad_images"]  # the count carries over the resume


def test_decode_crop_matches_pils_resize_of_the_same_box() -> None:
    """The fast path (libjpeg-turbo decode, torch's uint8 antialiased resize) gives the pixels of
    the reference path (PIL decode, PIL ``resize(box=...)``) to within rounding."""
    data = _jpeg(np.random.default_rng(1), 375, 500, cell=16)
    for seed, interp in ((0, "bicubic"), (1, "bilinear"), (2, "bicubic")):
        u = torch.rand(4, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
        y0, x0, h, w = crop_box(u, (375, 500), (0.35, 1.0), (0.75, 4 / 3))
        pil = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[interp]
        ref = Image.open(io.BytesIO(data)).convert("RGB").resize((96, 96), pil, box=(x0, y0, x0 + w, y0 + h))
        ref_t = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1).float()
        out = decode_crop(data, 96, u, False, (0.35, 1.0), (0.75, 4 / 3), interp, draft=False).float()
        assert (out - ref_t).abs().mean() < 0.5 and (out - ref_t).abs().max() <= 8  # borders differ most
        flipped = decode_crop(data, 96, u, True, (0.35, 1.0), (0.75, 4 / 3), interp, draft=False).float()
        assert torch.equal(flipped, out.flip(-1))
