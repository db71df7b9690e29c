"""``bootleg data``: dataset tools.

bootleg data shard SRC DST [--source imagefolder] [--shard-size 1000] [--max-side S]
"""

from __future__ import annotations

import argparse
from typing import Any

from bootleg.data.sources import SOURCES

__all__ = ["add_data_parser"]


def _shard(args: argparse.Namespace) -> int:
    from bootleg.data.shard_writer import write_shards

    meta = write_shards(args.src, args.dst, args.source, args.shard_size, args.max_side)
    for split, info in meta["splits"].items():
        print(f"{split}: {info['count']} images in {len(info['shards'])} shards, {len(meta['classes'])} classes")
    print(f"index: {args.dst}/index.json")
    return 0


def add_data_parser(sub: Any) -> None:
    """Register ``bootleg data ...`` on the top-level subparsers."""
    p = sub.add_parser("data", help="dataset tools (shard a dataset into WebDataset tar files)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("shard", help="convert a dataset into tar shards with an index and the class list")
    s.add_argument("src", help="the source's root, e.g. an ImageFolder tree (train/<class>/..., test/...)")
    s.add_argument("dst", help="output folder (index.json, classes.txt, <split>/shard-*.tar, <split>/index.npy)")
    s.add_argument("--source", default="imagefolder", choices=[n for n in SOURCES if n != "shards"])
    s.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    s.add_argument("--max-side", type=int, default=None, help="re-encode images whose longer side exceeds this")
    s.set_defaults(func=_shard)
