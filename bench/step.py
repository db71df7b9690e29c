"""Training-step speed: step time, images/s and MFU for a preset, on CPU or CUDA.

    python bench/step.py --method bootleg --size base --img-size 224 --batch-size 128 --compile
    python bench/step.py --size micro --img-size 32 --patch-size 4 --batch-size 64   # CPU

The step measured is the real one (``Trainer.train_step``: augmentation, masks, teacher
targets, student + predictor forward/backward, fused AdamW, EMA) on the embedded images
resized to ``--img-size``. FLOPs are counted analytically as nanoGPT's ``estimate_mfu``
does (2 per weight per token, plus attention; backward = 2x forward; teacher forward only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootleg.config import build_config  # noqa: E402
from bootleg.monitors import peak_flops, step_flops  # noqa: E402
from bootleg.train import Trainer  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="bootleg", choices=["bootleg", "ijepa", "mae", "data2vec"])
    p.add_argument("--size", default="micro", choices=["micro", "tiny", "small", "base", "large"])
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=None, help="default: 4 below 64 px, else 16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--loss", default=None, choices=["mse", "smooth_l1", "mse_noforward"])
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return p.parse_args()


def main() -> None:
    a = parse()
    patch = a.patch_size or (4 if a.img_size < 64 else 16)
    raw = {
        "method": a.method,
        "model": {"size": a.size, "img_size": a.img_size, "patch_size": patch},
        "optim": {"batch_size": a.batch_size},
        "data": {"name": "embedded", "on_device": True},
        "run": {
            "steps": a.warmup + a.steps,
            "device": a.device,
            "compile": a.compile,
            "precision": a.precision,
            "progress": False,
        },
    }
    if a.loss:
        raw["loss"] = {"name": a.loss}
    cfg = build_config(raw, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), resume=False, callbacks=())
        dev = tr.device
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        batches = tr.stream.batches(0)
        for _ in range(a.warmup):
            tr.train_step(batches, want_value=True, monitor=False)
        sync()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            tr.train_step(batches, want_value=False, monitor=False)
        sync()
        dt = (time.perf_counter() - t0) / a.steps
        # FLOPs from the masks' average shapes
        gen = torch.Generator().manual_seed(0)
        shapes = [tr.sampler(a.batch_size, gen) for _ in range(20)]
        enc_len = sum(m.enc_idx.shape[1] for m in shapes) / len(shapes)
        k = shapes[0].pred_idx.shape[1]
        p = sum(m.pred_idx.shape[2] for m in shapes) / len(shapes)
        flops = step_flops(cfg, int(round(enc_len)), k, int(round(p)), a.batch_size)
        peak = a.peak_tflops * 1e12 if a.peak_tflops else peak_flops(dev)
        res = {
            "method": a.method,
            "size": a.size,
            "img_size": a.img_size,
            "patch_size": patch,
            "batch_size": a.batch_size,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
            "compile": a.compile,
            "bf16": tr.bf16,
            "step_ms": dt * 1e3,
            "images_per_s": a.batch_size / dt,
            "tflops_per_step": flops / 1e12,
            "achieved_tflops": flops / dt / 1e12,
            "mfu": (flops / dt / peak) if peak else None,
        }
    if a.json:
        print(json.dumps(res))
    else:
        for key, v in res.items():
            print(f"{key:>16}: {v:.4g}" if isinstance(v, float) else f"{key:>16}: {v}")


if __name__ == "__main__":
    main()
