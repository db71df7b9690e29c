"""Per-batch cost of the paper protocol's training step (``protocol: paper``) and what it
implies for a full run, for a paper-size encoder with every head of the default grids.

    python bench/probe_paper.py --size base --classes 1000 --batch 4       # CPU: measured, then scaled
    python bench/probe_paper.py --size base --classes 1000 --batch 256 --device cuda
    python bench/probe_paper.py --size base --classes 150 --batch 4 --dense --epochs 128   # ADE20K

Measures the wall time of :func:`bootleg.probe.online.train_step` (one frozen-encoder forward
and one step of the 25 ``linear_patch`` + 25 ``linear_cls`` + 25 ``attentive`` heads), counts
its FLOPs with ``torch.utils.flop_counter``, and prints one JSON line: seconds per batch, FLOPs
per image (encoder / heads), and for each dataset the hours of ``epochs`` training epochs plus
one validation and one test pass (``--dense``: the ``seg_linear`` + ``seg_block`` grids' step,
sliding-window evaluation): measured on this device, and (``--assume-tflops``) on a GPU
sustaining that many bf16 TFLOP/s — an assumption, labelled as such in the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootleg.models import ViTEncoder  # noqa: E402
from bootleg.presets import ENCODERS  # noqa: E402
from bootleg.probe.config import ProbeConfig  # noqa: E402
from bootleg.probe.online import build_groups, train_step  # noqa: E402
from bootleg.probe.online_seg import build_seg_groups, seg_train_step  # noqa: E402

#: (train images, test images, classes) of the paper's classification benchmarks
DATASETS = {"imagenet1k": (1_281_167, 50_000, 1000), "inat21": (2_686_843, 100_000, 10_000)}
#: (train images, test images, classes, sliding windows per image at short side = S, stride 2/3 S)
#: of the dense benchmarks: ADE20K's typical 4:3 (2 windows), Cityscapes' 2:1 (3 windows)
DENSE = {"ade20k": (20_210, 2_000, 150, 2), "cityscapes": (2_975, 500, 19, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="base", choices=list(ENCODERS))
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--dense", action="store_true", help="the dense probes' step (seg_linear + seg_block, 128 epochs)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--assume-tflops",
        type=float,
        default=400.0,
        help="sustained bf16 TFLOP/s assumed for the scaled GPU estimate (H100-class at ~40%% MFU)",
    )
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    dim, depth, heads = ENCODERS[a.size]
    enc = ViTEncoder(img_size=a.img_size, patch_size=a.patch_size, embed_dim=dim, depth=depth, num_heads=heads)
    enc = enc.to(dev).eval().requires_grad_(False)
    cfg = ProbeConfig()
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, device=dev)
    if a.dense:
        groups = build_seg_groups(["seg_linear", "seg_block"], cfg, enc, a.classes, 0, dev)
        y = torch.randint(0, a.classes, (a.batch, a.img_size, a.img_size), device=dev)

        def step(i: int) -> None:
            seg_train_step(groups, enc, x, y, i, 100, 255)
    else:
        groups = build_groups(["linear_patch", "linear_cls", "attentive"], cfg, enc, a.classes, 0, dev)
        y = torch.randint(0, a.classes, (a.batch,), device=dev)

        def step(i: int) -> None:
            train_step(groups, enc, x, y, i, 100)

    with FlopCounterMode(display=False) as fc:
        step(0)
    total_flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fe, torch.no_grad():
        enc.forward_features(x)
    enc_flops = fe.get_total_flops()
    times = []
    for i in range(a.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(i + 1)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    per_batch = min(times)
    per_image = per_batch / a.batch
    t_fwd = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            enc.forward_features(x)
        t_fwd.append(time.perf_counter() - t0)
    est = {}
    sets = {k: (*v[:3], v[3]) for k, v in DENSE.items()} if a.dense else {k: (*v, 1) for k, v in DATASETS.items()}
    for name, (n_train, n_test, classes, wins) in sets.items():
        if classes != a.classes:
            continue
        train_images = a.epochs * n_train * 0.9  # 10% of train held out for selection
        eval_images = (n_train * 0.1 + n_test) * wins
        flops = train_images * total_flops / a.batch + eval_images * enc_flops / a.batch
        est[name] = {
            "measured_device_hours": round((train_images * per_image + eval_images * min(t_fwd) / a.batch) / 3600, 1),
            "assumed_gpu_hours": round(flops / (a.assume_tflops * 1e12) / 3600, 2),
        }
    line = {
        "bench": "probe_paper", "device": a.device, "threads": torch.get_num_threads(), "size": a.size,
        "img_size": a.img_size, "patch_size": a.patch_size, "classes": a.classes, "batch": a.batch,
        "heads": sum(int(g.module.heads) for g in groups), "seconds_per_batch": round(per_batch, 3),
        "encoder_forward_seconds": round(min(t_fwd), 3), "gflops_per_image": round(total_flops / a.batch / 1e9, 2),
        "encoder_gflops_per_image": round(enc_flops / a.batch / 1e9, 2), "epochs": a.epochs,
        "assume_tflops": a.assume_tflops, "estimate": est,
    }  # fmt: skip
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
