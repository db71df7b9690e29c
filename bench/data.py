"""Data-loading throughput and memory on generated ImageNet-like JPEGs.

    python bench/data.py [--images 400] [--size 224] [--json]          # images/s per core
    python bench/data.py --rss 5000,20000 [--distinct 500] [--steps 3]  # peak RSS vs dataset size

Throughput: every path produces the same output, a 224 px RandomResizedCrop(0.35, 1) with bicubic
resampling and a random flip, normalised float32, one image at a time on ONE core
(``torch.set_num_threads(1)``, no workers), timed by the process's CPU time (so a busy shared
machine does not skew it): images per CPU-second, i.e. images/s per core. Masks are left out:

* ``torchvision_baseline``: torchvision ``ImageFolder`` + PIL + ``transforms`` (what MAE and
  I-JEPA use: RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize);
* ``bootleg_imagefolder``: this project's streaming ImageFolder path (DCT-scaled PIL decode,
  one antialiased crop+resize, uint8 out, normalised per batch);
* ``bootleg_shards``: the same decode reading ``bootleg data shard`` output;
* ``bootleg_shards_cuda`` (CUDA only): workers read bytes, the GPU decodes (``decode_jpeg``)
  and augments; reported as images/s per GPU (with ``--cuda-workers`` CPU workers).

Images: about 500x375 (sizes vary), JPEG quality 90, photo-like content (1/f multi-octave
colour noise, soft shapes and sensor grain, not flat colours), 10 classes.

RSS: for each count, an ImageFolder of that many JPEGs (``--distinct`` generated pictures,
hard-linked to the rest) is sharded, then ``bootleg pretrain`` runs ``--steps`` steps at 224 px,
patch 16, from the folder and from the shards, each in its own process; the peak resident
memory of each process (``wait4`` rusage) is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from bootleg.data import DataConfig  # noqa: E402
from bootleg.data.order import StepOrder  # noqa: E402
from bootleg.data.shard_writer import write_shards  # noqa: E402
from bootleg.data.shards import ShardItems  # noqa: E402
from bootleg.data.sources import FolderItems  # noqa: E402
from bootleg.data.streaming import StreamingStream  # noqa: E402
from bootleg.masking import Masks, StepMasks, build_sampler  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def photo_like(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A photo-like RGB picture: 1/f colour noise over 5 octaves, soft shapes, grain."""
    img = np.zeros((h, w, 3), np.float32)
    for octave, amp in ((64, 90.0), (24, 45.0), (8, 22.0), (3, 10.0), (1, 5.0)):
        low = rng.normal(0, 1, (max(2, h // octave), max(2, w // octave), 3)).astype(np.float32)
        up = np.stack(
            [np.asarray(Image.fromarray(low[..., c]).resize((w, h), Image.Resampling.BICUBIC)) for c in range(3)], -1
        )
        img += amp * up
    img += rng.uniform(60, 190, 3).astype(np.float32)
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    pic = pic.filter(ImageFilter.GaussianBlur(1.2))
    grain = rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(pic, np.float32) + grain, 0, 255).astype(np.uint8))


def make_imagefolder(root: Path, n: int, classes: int = 10, distinct: int | None = None, seed: int = 0) -> Path:
    """``root/train/c###/#######.jpg``: ``n`` JPEGs (q90, ~500x375); with ``distinct``, only that many
    are generated and the rest are hard links to them (for large counts)."""
    rng = np.random.default_rng(seed)
    made: list[Path] = []
    for i in range(n):
        d = root / "train" / f"c{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:07d}.jpg"
        if distinct is not None and len(made) >= distinct:
            os.link(made[i % distinct], p)
            continue
        h, w = int(rng.integers(333, 400)), int(rng.integers(450, 520))
        buf = io.BytesIO()
        photo_like(rng, h, w).save(buf, "JPEG", quality=90)
        p.write_bytes(buf.getvalue())
        made.append(p)
    return root


def _baseline(root: Path, n: int, size: int) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist()
    t = time.process_time()
    for i in order:
        ds[i]
    return n / (time.process_time() - t)


class _NoMasks:
    """Masks cost no time here: the benchmark compares decoding and augmentation only."""

    def __call__(self, epoch: int, batch: int) -> Masks:
        return Masks(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, 1, dtype=torch.long))


def _bootleg(items, n: int, size: int, batch: int = 16) -> float:
    from bootleg.data.streaming import StepDataset  # what a stream worker runs per step

    cfg = DataConfig(name="imagefolder", decode="cpu")
    masks = _NoMasks()
    ds = StepDataset(items, StepOrder(len(items), batch, 0), masks, cfg, size, cuda=False)
    steps = max(1, n // batch)
    t = time.process_time()
    for s in range(steps):
        for img in ds[s][0]:  # the GPU does this in training; here per image (cache-resident), as the baseline
            (img.float() - MEAN[0]) / STD[0]
    return steps * batch / (time.process_time() - t)


def _cuda(shards: Path, n: int, size: int, workers: int, batch: int = 64) -> float:
    cfg = DataConfig(name="shards", root=str(shards), decode="cuda", num_workers=workers)
    items = ShardItems(shards, "train")
    masks = StepMasks(build_sampler({"sampler": "bootleg"}, (size // 16, size // 16)), batch, 0)
    s = StreamingStream(items, cfg, size, StepOrder(len(items), batch, 0), masks, torch.device("cuda"))
    it = s.batches(0)
    next(it)
    torch.cuda.synchronize()
    steps = max(1, n // batch)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def throughput(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = make_imagefolder(Path(tmp) / "src", args.images)
        write_shards(src, Path(tmp) / "shards", shard_size=256)
        paths = {
            "torchvision_baseline": lambda: _baseline(src, args.images, args.size),
            "bootleg_imagefolder": lambda: _bootleg(FolderItems(src / "train"), args.images, args.size),
            "bootleg_shards": lambda: _bootleg(ShardItems(Path(tmp) / "shards", "train"), args.images, args.size),
        }
        best = dict.fromkeys(paths, 0.0)
        for _ in range(args.rounds):  # interleaved rounds, best of each: fair on a busy machine
            for name, run in paths.items():
                rate = run()
                best[name] = max(best[name], rate)
                if args.verbose:
                    print(f"  {name}: {rate:.1f}", file=sys.stderr)
        rows = [{"path": k, "images_per_s_per_core": v} for k, v in best.items()]
        if torch.cuda.is_available():
            rate = _cuda(Path(tmp) / "shards", args.images, args.size, args.cuda_workers)
            rows.append({"path": "bootleg_shards_cuda", "images_per_s_per_gpu": rate, "cpu_workers": args.cuda_workers})
    base = rows[0]["images_per_s_per_core"]
    for r in rows[1:3]:
        r["x_baseline"] = r["images_per_s_per_core"] / base
    return rows


def _peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return usage.ru_maxrss / 1024


def rss(args: argparse.Namespace) -> list[dict]:
    rows = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for n in (int(v) for v in args.rss.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            src = make_imagefolder(Path(tmp) / "src", n, classes=min(1000, n), distinct=args.distinct)
            write_shards(src, Path(tmp) / "shards")
            for name, root in (("imagefolder", src), ("shards", Path(tmp) / "shards")):
                cmd = [sys.executable, "-m", "bootleg.cli", "pretrain", "--out", f"{tmp}/run-{name}"]
                cmd += ["--steps", str(args.steps), "--set", "run.device=cpu", "--set", "run.progress=false"]
                cmd += ["--set", "model.size=tiny", "--set", "model.img_size=224", "--set", "model.patch_size=16"]
                cmd += ["--set", f"optim.batch_size={args.batch}", "--set", f"data.name={name}"]
                cmd += ["--set", f"data.root={root}", "--set", f"data.num_workers={args.workers}"]
                rows.append({"images": n, "data": name, "peak_rss_mib": _peak_rss_mib(cmd, env)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cuda-workers", type=int, default=8)
    ap.add_argument("--rss", help="comma-separated image counts, e.g. 5000,20000")
    ap.add_argument("--distinct", type=int, default=500, help="generated pictures for --rss (the rest are hard links)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print every round")
    args = ap.parse_args()
    rows = rss(args) if args.rss else throughput(args)
    if args.json or args.rss:
        for r in rows if not args.rss else []:
            print(json.dumps(r))
        return
    for r in rows:
        rate = r.get("images_per_s_per_core", r.get("images_per_s_per_gpu"))
        unit = "images/s/core" if "images_per_s_per_core" in r else "images/s/GPU"
        extra = f"  ({r['x_baseline']:.2f}x baseline)" if "x_baseline" in r else ""
        print(f"{r['path']:<22} {rate:8.1f} {unit}{extra}")


if __name__ == "__main__":
    main()
