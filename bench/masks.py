"""Mask sampler throughput on one CPU thread.

    python bench/masks.py [--json] [--batch-size 256] [--grid 14 14] [--seconds 2]
                          [--group-size G] [--bucket N]

Prints, per sampler (and the loop-based I-JEPA reference as ``ijepa_reference``),
samples per second; with ``--json`` one JSON object per line:
``{"sampler", "samples_per_s", "batch_size", "grid", "threads", "group_size", "bucket"}``.
With ``--group-size`` (and optionally ``--bucket``) the registered samplers are measured
through ``StepMasks`` on consecutive micro-batches (groups, padding and valid flags included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.ijepa_reference import IJepaReferenceSampler  # noqa: E402
from bootleg.masking import SAMPLERS, StepMasks, build_sampler, mask_seed  # noqa: E402


def measure(sampler, batch_size: int, seconds: float) -> float:
    """Samples per second of ``sampler(batch_size, g)`` over about ``seconds``."""
    g = torch.Generator().manual_seed(mask_seed(0, 0, 0))
    sampler(batch_size, g)  # warm-up
    calls, start = 0, time.perf_counter()
    while True:
        sampler(batch_size, g)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * batch_size / elapsed


def measure_steps(step: StepMasks, seconds: float) -> float:
    """Samples per second of ``step(0, b)`` over consecutive micro-batches ``b``."""
    step(0, 0)  # warm-up
    calls, start = 0, time.perf_counter()
    while True:
        calls += 1
        step(0, calls)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * step.batch_size / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--grid", type=int, nargs=2, default=[14, 14], metavar=("H", "W"))
    parser.add_argument("--seconds", type=float, default=2.0, help="time per sampler")
    parser.add_argument("--samplers", nargs="*", default=[*SAMPLERS.names(), "ijepa_reference"])
    parser.add_argument("--group-size", type=int, default=None, help="measure StepMasks with this group")
    parser.add_argument("--bucket", type=int, default=None, help="StepMasks bucket (with --group-size)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    grid = (args.grid[0], args.grid[1])
    rows = []
    for name in args.samplers:
        if name == "ijepa_reference":
            if args.group_size is not None:
                continue
            rate = measure(IJepaReferenceSampler(grid), args.batch_size, args.seconds)
        elif args.group_size is not None:
            sampler = build_sampler({"sampler": name}, grid)
            step = StepMasks(sampler, args.batch_size, 0, 0, args.group_size, args.bucket)
            rate = measure_steps(step, args.seconds)
        else:
            rate = measure(build_sampler({"sampler": name}, grid), args.batch_size, args.seconds)
        row = {
            "sampler": name,
            "samples_per_s": round(rate, 1),
            "batch_size": args.batch_size,
            "grid": list(grid),
            "threads": torch.get_num_threads(),
            "group_size": args.group_size,
            "bucket": args.bucket,
        }
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        ref = next((r["samples_per_s"] for r in rows if r["sampler"] == "ijepa_reference"), None)
        via = f", StepMasks group {args.group_size} bucket {args.bucket}" if args.group_size else ""
        print(f"grid {grid[0]}x{grid[1]}, batch {args.batch_size}, 1 thread{via}")
        print(f"{'sampler':<16} {'samples/s':>12} {'vs reference':>13}")
        for r in rows:
            ratio = f"{r['samples_per_s'] / ref:.1f}x" if ref else "-"
            print(f"{r['sampler']:<16} {r['samples_per_s']:>12,.0f} {ratio:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
