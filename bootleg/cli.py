"""The ``bootleg`` command line.

    bootleg pretrain --params params.yaml --out runs/demo [--set k=v ...] [--resume]
    bootleg masks stats --sampler bootleg --grid 14 14 --json
    bootleg masks show --sampler ijepa --out masks.png
    bootleg probe --checkpoint runs/demo --out runs/demo/probe --json

Bad input ends with ``error: <one line>`` on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bootleg.errors import BootlegError


def _pretrain(args: argparse.Namespace) -> int:
    from bootleg.config import load_config
    from bootleg.train import pretrain

    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"run.steps={args.steps}")
    if args.checkpoint_every is not None:
        overrides.append(f"run.checkpoint_every={args.checkpoint_every}")
    if args.out is not None:
        overrides.append(f"run.out={args.out}")
    cfg = load_config(args.params, overrides)
    out = pretrain(cfg, cfg.run.out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {out}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``error: ...``, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bootleg", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain an encoder (Bootleg or a baseline) as params.yaml says")
    p.add_argument("--params", default="params.yaml", help="YAML config (default: params.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. --set model.size=tiny")
    p.add_argument("--out", help="run folder (default: run.out of the config)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    p.add_argument("--steps", type=int, help="total optimiser steps (schedules follow the total)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint interval in steps")
    p.set_defaults(func=_pretrain)

    try:
        from bootleg.cli_masks import add_masks_parser
    except ImportError:  # pragma: no cover - module always ships
        pass
    else:
        add_masks_parser(sub)
    from bootleg.data.cli import add_data_parser

    add_data_parser(sub)
    try:
        from bootleg.probe.cli import add_probe_parser
    except ImportError:  # pragma: no cover
        pass
    else:
        add_probe_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BootlegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
