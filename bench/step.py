"""Training-step speed: step time, images/s, MFU, peak memory and profiler shares, on CPU or CUDA.

    python bench/step.py --method bootleg --size base --img-size 224 --batch-size 256 --compile --profile-steps 3
    python bench/step.py --size micro --img-size 32 --patch-size 4 --batch-size 64   # CPU

The step measured is the real one (``Trainer.train_step``: augmentation, masks, teacher
targets, student + predictor forward/backward, fused AdamW, EMA) on the embedded images
resized to ``--img-size``. FLOPs are counted analytically as nanoGPT's ``estimate_mfu``
does (``bootleg.monitors.step_flops``: 2 per weight per token, plus attention; backward =
2x forward; teacher forward only), from the mask shapes of the timed batches.

With ``--profile-steps N`` a further N steps run under ``torch.profiler`` and the share of
the step spent in each of the engine's ``record_function`` scopes is reported (on CUDA from
the scopes' GPU spans, on CPU from their host time). A scope that the step does not emit is
listed under ``scopes_missing``, never reported as zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bootleg.config import Config, build_config  # noqa: E402
from bootleg.monitors import peak_flops, step_flops  # noqa: E402
from bootleg.train import Trainer  # noqa: E402

#: the engine's profiler scopes (``torch.profiler.record_function`` names) per reported share
SCOPES: dict[str, str] = {
    "teacher": "bootleg.teacher",
    "student": "bootleg.student",
    "predictor": "bootleg.predictor",
    "targets_loss": "bootleg.loss",  # targets gathering + loss
    "optimizer_ema": "bootleg.optimizer",  # optimizer step + EMA update
}
#: the scope this script wraps around each profiled step (the denominator of the shares)
STEP_SCOPE = "bench.step"
SIZES = ("micro", "tiny", "small", "base", "large")
METHODS = ("bootleg", "ijepa", "mae", "data2vec")


def bench_raw(
    method: str = "bootleg",
    size: str = "micro",
    img_size: int = 32,
    patch_size: int | None = None,
    batch_size: int = 64,
    steps: int = 13,
    device: str = "auto",
    compile: bool = False,
    precision: str = "auto",
    loss: str | None = None,
) -> dict[str, Any]:
    """The raw config of a benchmark run: ``method``'s preset at ``size`` on the embedded images."""
    patch = patch_size or (4 if img_size < 64 else 16)
    raw: dict[str, Any] = {
        "method": method,
        "model": {"size": size, "img_size": img_size, "patch_size": patch},
        "optim": {"batch_size": batch_size},
        "data": {"name": "embedded", "on_device": True},
        "run": {"steps": steps, "device": device, "compile": compile, "precision": precision, "progress": False},
    }
    if loss:
        raw["loss"] = {"name": loss}
    return raw


# ------------------------------------------------------------------ profiler shares


def profile_records(events: Iterable[Any], names: Iterable[str] | None = None) -> list[tuple[str, str, float]]:
    """``(name, timeline, microseconds)`` per profiler event with a time range.

    Timelines: ``cuda`` for events on the GPU (kernels, and the GPU spans of ``record_function``
    scopes), ``cpu`` for host events, and ``kernels`` for the GPU kernel time launched inside a
    host event (``device_time_total``; computed only for ``names``, as it walks the event tree).
    Works on ``torch.profiler.profile(...).events()`` or any objects with ``name``,
    ``device_type`` and ``time_range.elapsed_us()``.
    """
    wanted = None if names is None else set(names)
    out = []
    for e in events:
        tr = getattr(e, "time_range", None)
        if tr is None:
            continue
        on_gpu = "CUDA" in str(getattr(e, "device_type", "")).upper()
        out.append((str(e.name), "cuda" if on_gpu else "cpu", float(tr.elapsed_us())))
        if not on_gpu and wanted is not None and e.name in wanted:
            kernels = float(getattr(e, "device_time_total", 0.0) or 0.0)
            if kernels > 0:
                out.append((str(e.name), "kernels", kernels))
    return out


def scope_shares(
    records: Iterable[tuple[str, str, float]],
    scopes: dict[str, str] = SCOPES,
    step_scope: str = STEP_SCOPE,
    prefer: tuple[str, ...] = ("cuda", "kernels", "cpu"),
) -> dict[str, Any]:
    """Share of the step in each scope: time inside ``scopes[key]`` / time inside ``step_scope``.

    Times come from the first timeline of ``prefer`` that holds the step scope: on CUDA the
    GPU spans of the scopes, else the GPU kernel time launched inside them, else host time.
    Returns ``{"timeline", "shares": {key: share}, "missing": [key, ...], "step_us"}``; a key
    whose scope never occurs is in ``missing`` and absent from ``shares``. ``other`` is what
    no named scope covers (it can be negative when scopes nest).
    """
    recs = list(records)
    kinds = {k for n, k, _ in recs if n == step_scope}
    timeline = next((k for k in prefer if k in kinds), None)
    if timeline is None:
        return {"timeline": None, "shares": {}, "missing": list(scopes), "step_us": 0.0}
    totals: dict[str, float] = {}
    for name, kind, us in recs:
        if kind == timeline:
            totals[name] = totals.get(name, 0.0) + us
    step_us = totals.get(step_scope, 0.0)
    shares: dict[str, float] = {}
    missing: list[str] = []
    for key, name in scopes.items():
        if name in totals and step_us > 0:
            shares[key] = totals[name] / step_us
        else:
            missing.append(key)
    if shares:
        shares["other"] = 1.0 - sum(shares.values())
    return {"timeline": timeline, "shares": shares, "missing": missing, "step_us": step_us}


def profile_steps(tr: Trainer, batches: Iterator, n: int) -> dict[str, Any]:
    """Run ``n`` steps under the profiler and return :func:`scope_shares` of them."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = tr.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            with record_function(STEP_SCOPE):
                tr.train_step(batches, want_value=False, monitor=False)
        if cuda:
            torch.cuda.synchronize()
    records = profile_records(prof.events(), [STEP_SCOPE, *SCOPES.values()] if cuda else None)
    return scope_shares(records, prefer=("cuda", "kernels", "cpu") if cuda else ("cpu",))


# ------------------------------------------------------------------ measurement


def _recording(batches: Iterator, shapes: list[tuple[int, int, int]]) -> Iterator:
    """Pass batches through, noting each one's (encoder length L, K, P) when the masks tell."""
    for images, masks in batches:
        enc, pred = getattr(masks, "enc_idx", None), getattr(masks, "pred_idx", None)
        if enc is not None and pred is not None and pred.dim() == 3:
            shapes.append((int(enc.shape[1]), int(pred.shape[1]), int(pred.shape[2])))
        yield images, masks


def measure(cfg: Config, warmup: int, steps: int, profile: int = 0, peak_tflops: float | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` untimed ones (compilation happens there)."""
    with tempfile.TemporaryDirectory() as tmp:
        t_build = time.perf_counter()
        tr = Trainer(cfg, Path(tmp), resume=False, callbacks=())
        dev = tr.device
        cuda = dev.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        shapes: list[tuple[int, int, int]] = []
        batches = _recording(tr.stream.batches(0), shapes)
        for _ in range(warmup):
            tr.train_step(batches, want_value=True, monitor=False)
        sync()
        warmup_s = time.perf_counter() - t_build
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        shapes.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step(batches, want_value=False, monitor=False)
        sync()
        dt = (time.perf_counter() - t0) / steps
        peak_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None
        prof = profile_steps(tr, batches, profile) if profile else None
        bs = cfg.optim.batch_size
        flops = None
        if shapes:
            enc_len = sum(s[0] for s in shapes) / len(shapes)
            p = sum(s[2] for s in shapes) / len(shapes)
            flops = step_flops(cfg, int(round(enc_len)), shapes[0][1], int(round(p)), bs)
        peak = peak_tflops * 1e12 if peak_tflops else peak_flops(dev)
        res: dict[str, Any] = {
            "method": cfg.method,
            "size": cfg.model.size,
            "img_size": cfg.model.img_size,
            "patch_size": cfg.model.patch_size,
            "batch_size": bs,
            "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
            "threads": torch.get_num_threads(),
            "compile": cfg.run.compile,
            "bf16": tr.bf16,
            "warmup_s": warmup_s,
            "step_ms": dt * 1e3,
            "images_per_s": bs / dt,
            "tflops_per_step": flops / 1e12 if flops else None,
            "achieved_tflops": flops / dt / 1e12 if flops else None,
            "mfu": (flops / dt / peak) if (flops and peak) else None,
            "peak_mem_gib": peak_mem,
        }
        if prof is not None:
            res["profile"] = prof
        return res


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="bootleg", choices=METHODS)
    p.add_argument("--size", default="micro", choices=SIZES)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=None, help="default: 4 below 64 px, else 16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    p.add_argument("--profile-steps", type=int, default=0, help="profiled steps after the timed ones (0: none)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--loss", default=None, choices=["mse", "smooth_l1", "mse_noforward"])
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--json-out", type=Path, default=None, help="also write the result as JSON to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    steps = a.warmup + a.steps + a.profile_steps
    raw = bench_raw(
        a.method, a.size, a.img_size, a.patch_size, a.batch_size, steps, a.device, a.compile, a.precision, a.loss
    )
    cfg = build_config(raw, "bench")
    res = measure(cfg, a.warmup, a.steps, a.profile_steps, a.peak_tflops)
    if a.json_out:
        a.json_out.parent.mkdir(parents=True, exist_ok=True)
        a.json_out.write_text(json.dumps(res, indent=2) + "\n")
    if a.json:
        print(json.dumps(res))
    else:
        prof = res.pop("profile", None)
        for key, v in res.items():
            print(f"{key:>16}: {v:.4g}" if isinstance(v, float) else f"{key:>16}: {v}")
        if prof is not None:
            for key, v in prof["shares"].items():
                print(f"{'share ' + key:>24}: {100 * v:.1f}% ({prof['timeline']} timeline)")
            if prof["missing"]:
                print(f"{'scopes not found':>24}: {', '.join(SCOPES[k] for k in prof['missing'])}")


if __name__ == "__main__":
    main()
