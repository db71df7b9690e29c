"""Build ``bootleg/data/embedded/cifar10-mini.tar.gz``: the CIFAR-10 subset shipped in the package.

Usage::

    python scripts/make_embedded_subset.py [--src ../shared/datasets/cifar10/cifar10-jpg.tar.gz]
                                           [--out bootleg/data/embedded/cifar10-mini.tar.gz]
                                           [--train-per-class 500] [--test-per-class 100]

Copies the ORIGINAL JPEG bytes (no re-encode) of the first ``--train-per-class`` train and
``--test-per-class`` test images of every class (sorted file order) from the ImageFolder
tarball, keeping the ``train/<class>/NNNN.jpg`` layout. The output is a gzip-compressed tar
(a plain tar would be ~9.3 MB because every ~0.9 kB JPEG costs a 512-byte header plus
padding; gzip also folds the JPEG headers that all files share, giving ~1.9 MB). Headers are
normalised (mtime 0, uid/gid 0, mode 0644) and gzip's own mtime is 0, so the output is
byte-reproducible from the same source.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import tarfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "datasets" / "cifar10" / "cifar10-jpg.tar.gz"
DEFAULT_OUT = ROOT / "bootleg" / "data" / "embedded" / "cifar10-mini.tar.gz"


def build(src: Path, out: Path, train_per_class: int = 500, test_per_class: int = 100) -> dict[str, int]:
    """Write the subset tarball atomically; returns ``{"files": n, "bytes": size}``."""
    quota = {"train": train_per_class, "test": test_per_class}
    members: dict[tuple[str, str], list[tuple[str, bytes]]] = defaultdict(list)
    with tarfile.open(src, "r:*") as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 3 or parts[-3] not in quota:
                continue
            split, cls, fname = parts[-3:]
            data = tf.extractfile(m).read()  # type: ignore[union-attr]
            members[(split, cls)].append((fname, data))
    if not members:
        raise SystemExit(f"{src}: no train/<class>/<file> members found")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    n = 0
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                for split, cls in sorted(members, key=lambda k: (k[0] != "train", k[1])):
                    files = sorted(members[(split, cls)])[: quota[split]]
                    for fname, data in files:
                        info = tarfile.TarInfo(f"{split}/{cls}/{fname}")
                        info.size = len(data)
                        info.mtime = 0
                        info.mode = 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tf.addfile(info, io.BytesIO(data))
                        n += 1
    os.replace(tmp, out)
    return {"files": n, "bytes": out.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    args = ap.parse_args()
    info = build(args.src, args.out, args.train_per_class, args.test_per_class)
    print(f"wrote {args.out}: {info['files']} files, {info['bytes'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
