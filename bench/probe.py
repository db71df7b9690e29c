"""Runtime and accuracy of the default probe suite (``linear_patch``, ``linear_cls``,
``attentive``, ``knn``) for a checkpoint, on CPU or CUDA.

    python bench/probe.py --checkpoint runs/demo                 # the run's dataset
    python bench/probe.py                                        # random-init ViT-Tiny/4, embedded
    python bench/probe.py --checkpoint runs/demo --baseline      # + the same arch randomly initialised
    python bench/probe.py --data cifar10 --set limit=20000       # larger data
    python bench/probe.py --probes all --set seg.train_images=1000

Prints one line per stage (seconds), a summary per probe, then one JSON line with the
device, the wall-clock seconds of the whole suite (model load and data included) and the
results. ``--device cuda`` runs the backbone in bf16 with the data kept on the GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bootleg.errors import BootlegError  # noqa: E402
from bootleg.export import load_encoder, save_encoder  # noqa: E402
from bootleg.models import ViTEncoder  # noqa: E402
from bootleg.presets import ENCODERS  # noqa: E402
from bootleg.probe.cli import load_probe_config, summary  # noqa: E402
from bootleg.probe.config import ProbeConfig  # noqa: E402
from bootleg.probe.runner import run_probes  # noqa: E402
from bootleg.probe.weights import resolve_checkpoint, run_config  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="run folder or encoder.safetensors (default: a random-init encoder)")
    p.add_argument("--size", default="tiny", choices=list(ENCODERS), help="random-init encoder size")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--baseline", action="store_true", help="also probe the same architecture randomly initialised")
    p.add_argument("--data", help="dataset (default: the run's, else embedded)")
    p.add_argument("--probes", nargs="+", help="default: the classification suite")
    p.add_argument("--params", help="YAML with a probe: section")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="probe setting override")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="output folder (default: a temporary one)")
    return p.parse_args()


def random_encoder(folder: Path, arch: dict[str, Any], seed: int) -> Path:
    """Save a randomly initialised encoder of ``arch`` into ``folder``; returns the file."""
    torch.manual_seed(seed)
    path = folder / "encoder.safetensors"
    save_encoder(ViTEncoder(**arch), path)
    return path


def device_name(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bench_one(
    label: str, checkpoint: Path, cfg: ProbeConfig, data: str | None, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    report = run_probes(
        checkpoint, out, cfg, data=data, probes=args.probes, seed=args.seed, device=args.device,
        log=lambda m: print(f"[{label}] {m}", flush=True), timings=timings,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    print(f"[{label}] " + summary(report).replace("\n", f"\n[{label}] "))
    print(f"[{label}] suite wall-clock {wall:.1f}s on {device_name(args.device)}", flush=True)
    results = {r.probe: {"metric": r.metric, "score": r.score, "selected": r.selected} for r in report.results}
    return {"label": label, "wall_s": round(wall, 2), "stages_s": {k: round(v, 2) for k, v in timings.items()},
            "results": results}  # fmt: skip


def main() -> int:
    args = parse()
    tmp = tempfile.TemporaryDirectory(prefix="bootleg-bench-probe-")
    base = Path(args.out) if args.out else Path(tmp.name)
    try:
        if args.checkpoint:
            ckpt = Path(args.checkpoint)
            arch = load_encoder(resolve_checkpoint(ckpt)).arch()
        else:
            dim, depth, heads = ENCODERS[args.size]
            arch = dict(img_size=args.img_size, patch_size=args.patch_size, embed_dim=dim, depth=depth,
                        num_heads=heads)  # fmt: skip
            ckpt = random_encoder(base / "random", arch, args.seed)
        # the baseline reuses the checkpoint's probe settings and dataset
        cfg = load_probe_config(ckpt, args.params, args.set)
        run_data = run_config(resolve_checkpoint(ckpt)).get("data") or {}
        data = args.data or cfg.data or (run_data.get("name") if isinstance(run_data, dict) else None)
        label = "checkpoint" if args.checkpoint else "random-init"
        runs = [bench_one(label, ckpt, cfg, data, args, base / "probe")]
        if args.checkpoint and args.baseline:
            rnd = random_encoder(base / "random", arch, args.seed)
            runs.append(bench_one("random-init", rnd, cfg, data, args, base / "probe-random"))
    except BootlegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.out:
            tmp.cleanup()
    line = {"bench": "probe", "device": device_name(args.device), "torch": torch.__version__, "arch": arch,
            "runs": runs}  # fmt: skip
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
