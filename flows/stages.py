"""Helpers for the DVC stages in ``dvc.yaml`` that the ``bootleg`` CLI does not cover.

    python -m flows.stages prepare --params params.yaml --out data/prepared
    python -m flows.stages report --run runs/dvc/pretrain --probe runs/dvc/probe/probe.json --out runs/dvc

``prepare`` writes the dataset that ``params.yaml`` names (``data.name``, ``data.root``,
``data.limit`` on the train split) as an ImageFolder tree of PNG files
(``train/<class>/NNNNN.png``, ``test/<class>/NNNNN.png``) plus ``manifest.json`` with the
source's sha256; the later stages read it as ``data.name=imagefolder``. It is a DVC output,
so its hash is the data hash of every run that follows. ``report`` turns the run's
``metrics.jsonl`` and ``probe.json`` into DVC metrics (``metrics.json``), plots
(``loss.csv``) and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from bootleg.errors import BootlegError
from flows import report
from flows.cli import run_cli
from flows.provenance import dataset_fingerprint


def prepare(params: str, out: str | Path, overrides: Sequence[str] = (), shard_size: int = 1000) -> dict:
    """Write the configured dataset as WebDataset tar shards in ``out`` (replaced): hundreds of
    files for DVC to track, not one per image, streamed one image at a time (a large ImageFolder
    is never held in memory). ``manifest.json`` adds the source's fingerprint."""
    from bootleg.config import load_config
    from bootleg.data.shard_writer import write_shards

    cfg = load_config(params, list(overrides))
    d = cfg.data
    if d.name == "shards":
        raise BootlegError("data.name: shards is already sharded; point the pipeline at it directly")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    meta = write_shards(d.root or "", tmp, source=d.name, shard_size=shard_size, limit=d.limit)
    manifest = {
        "source": d.name,
        "source_root": d.root,
        "source_sha256": dataset_fingerprint(d.name, d.root),
        "limit": d.limit,
        "classes": meta["classes"],
        "counts": {split: info["count"] for split, info in meta["splits"].items()},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def write_report(run: str | Path, probe: str | Path | None, out: str | Path) -> dict:
    """``metrics.json`` (final loss, steps, probe scores), ``loss.csv`` and ``report.md``."""
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = report.read_jsonl(run / "metrics.jsonl")
    if not rows:
        raise BootlegError(f"{run}/metrics.jsonl: no metrics; expected a finished pretraining run")
    metrics: dict = {"pretrain": {"final_loss": rows[-1]["loss"], "steps": rows[-1]["step"]}}
    rep = report.as_report(probe) if probe and Path(probe).is_file() else None
    if rep is not None:
        metrics["probe"] = {r.probe: r.score for r in rep.results}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report.loss_csv(run / "metrics.jsonl", out / "loss.csv")
    summary = {"run_dir": str(run), "final_loss": rows[-1]["loss"], "probe": rep}
    (out / "report.md").write_text(report.run_report(summary))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.stages", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="write the configured dataset as WebDataset tar shards")
    a.add_argument("--params", default="params.yaml")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--out", default="data/shards")
    a.add_argument("--shard-size", type=int, default=1000, help="images per tar file (default 1000)")
    b = sub.add_parser("report", help="DVC metrics, plots and a markdown report of one run")
    b.add_argument("--run", required=True, help="pretraining run folder")
    b.add_argument("--probe", help="probe.json")
    b.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "prepare":
        m = prepare(args.params, args.out, args.set, args.shard_size)
        print(f"prepared {m['source']} ({m['counts']['train']} train / {m['counts']['test']} test) in {args.out}")
    else:
        print(json.dumps(write_report(args.run, args.probe, args.out), indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
