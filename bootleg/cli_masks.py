"""The ``bootleg masks`` command: ``masks stats`` and ``masks show``.

``bootleg/cli.py`` calls ``add_masks_parser(subparsers)`` and dispatches
``args.func(args)``. Also runnable alone: ``python -m bootleg.cli_masks stats ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from bootleg.errors import BootlegError
from bootleg.mask_stats import mask_stats, plot_masks
from bootleg.masking import SAMPLERS, MaskSampler, build_sampler, parse_masking
from bootleg.schema import parse_override

__all__ = ["add_masks_parser", "format_stats", "main", "run_masks"]


def _add_common(p: argparse.ArgumentParser, grid_default: tuple[int, int]) -> None:
    p.add_argument("--sampler", default="bootleg", help=f"one of {', '.join(SAMPLERS.names())} (default bootleg)")
    p.add_argument(
        "--grid",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=list(grid_default),
        help="patch grid (default 14 14: 224px, patch 16)",
    )
    p.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="masking.FIELD=VALUE",
        help="override a sampler parameter, value parsed as YAML "
        "(e.g. --set masking.block_scale=[0.15,0.2]); repeatable",
    )


def add_masks_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``masks {stats,show}`` to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "masks",
        help="inspect mask samplers: statistics and figures",
        description="Inspect mask samplers: statistics (Table 8, seen/target rates) and figures.",
    )
    sub = parser.add_subparsers(dest="masks_command", metavar="{stats,show}")
    sub.required = True

    stats = sub.add_parser("stats", help="block size rates, seen/target rates, frequency maps")
    _add_common(stats, (14, 14))
    stats.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="micro-batch per rank (default 256); masks are sampled per masking.group_size images",
    )
    stats.add_argument("--batches", type=int, default=100, help="number of batches (default 100)")
    stats.add_argument("--json", action="store_true", help="print one JSON object")

    show = sub.add_parser("show", help="write a PNG of example masks and frequency maps")
    _add_common(show, (14, 14))
    show.add_argument("--out", type=Path, required=True, help="output PNG file")
    show.add_argument("--examples", type=int, default=8, help="example masks (default 8)")
    show.add_argument("--batch-size", type=int, default=256, help="per-call batch (default 256)")
    show.add_argument("--batches", type=int, default=50, help="batches for the maps (default 50)")

    parser.set_defaults(func=run_masks)
    stats.set_defaults(func=run_masks)
    show.set_defaults(func=run_masks)
    return parser


def _sampler_from_args(args: argparse.Namespace) -> MaskSampler:
    """The sampler named by ``--sampler`` with every ``--set [masking.]FIELD=VALUE`` applied,
    validated by its params class and checked against ``--grid``."""
    data: dict[str, Any] = {"sampler": args.sampler}
    for item in args.overrides:
        parts, value = parse_override(item)
        if parts[0] == "masking":
            parts = parts[1:]
        if len(parts) != 1:
            raise BootlegError(f"--set {item!r}: expected masking.FIELD=VALUE")
        data[parts[0]] = value
    return build_sampler(parse_masking(data), tuple(args.grid))


def format_stats(name: str, grid: tuple[int, int], stats: dict[str, Any]) -> str:
    """Readable multi-line summary of a ``mask_stats`` dict."""
    seen, tgt = stats["seen_rate"], stats["target_rate"]
    lines = [
        f"sampler {name} on {grid[0]}x{grid[1]} (rates count valid positions only, padding excluded)",
        f"seen rate   {100 * seen['mean']:5.1f} ± {100 * seen['std']:.1f} %",
        f"target rate {100 * tgt['mean']:5.1f} ± {100 * tgt['std']:.1f} %",
    ]
    if stats["block_hw_rates"]:
        lines.append("block (h, w) rates:")
        lines += [f"  {k:>7}  {100 * v:5.1f} %" for k, v in stats["block_hw_rates"].items()]
    for key, label in (("visible_frequency", "seen"), ("target_frequency", "target")):
        lines.append(f"{label} frequency (% of samples, rows top to bottom):")
        lines += ["  " + " ".join(f"{100 * v:3.0f}" for v in row) for row in stats[key]]
    return "\n".join(lines)


def run_masks(args: argparse.Namespace) -> int:
    """Run ``masks stats`` or ``masks show``; returns the exit code. Raises
    ``BootlegError`` for bad input."""
    command = getattr(args, "masks_command", None)
    if command not in ("stats", "show"):
        raise BootlegError(f"masks: command {command!r}; expected 'stats' or 'show'")
    # Samplers work on tiny tensors: intra-op threads only add overhead (and stall on a busy
    # machine), so this analysis command runs on one thread, like data-loader workers.
    torch.set_num_threads(1)
    sampler = _sampler_from_args(args)
    if command == "stats":
        stats = mask_stats(sampler, args.batch_size, args.batches, args.seed)
        if args.json:
            print(json.dumps(stats))
        else:
            print(format_stats(args.sampler, sampler.grid, stats))
        return 0
    if args.out.suffix.lower() != ".png":
        raise BootlegError(f"masks show: --out {args.out}; expected a .png file name")
    if args.batch_size < 1 or args.batches < 1:
        raise BootlegError(f"masks show: --batch-size {args.batch_size} --batches {args.batches}; expected both >= 1")
    path = plot_masks(
        sampler,
        args.out,
        args.seed,
        n_examples=args.examples,
        batches=args.batches,
        batch_size=args.batch_size,
    )
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m bootleg.cli_masks``)."""
    parser = argparse.ArgumentParser(prog="bootleg")
    add_masks_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["masks", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except BootlegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
