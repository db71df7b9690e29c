"""``bootleg probe``: frozen-backbone probes of a checkpoint.

    bootleg probe --checkpoint runs/demo --out runs/demo/probe [--data NAME] [--probes ...]
                  [--params params.yaml] [--set k=v ...] [--seed N] [--device auto] [--json]

Settings: the run's own ``probe:`` section (its ``config.yaml``), replaced by the ``probe:``
section of ``--params`` when given, then ``--set`` overrides (``probe.`` prefix optional,
e.g. ``--set linear.epochs=5``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bootleg.errors import BootlegError
from bootleg.probe.config import PROBE_GROUPS, PROBE_NAMES, ProbeConfig
from bootleg.probe.results import ProbeReport
from bootleg.schema import apply_overrides, describe_error


def build_probe_config(raw: dict[str, Any], source: str = "probe") -> ProbeConfig:
    """Validate a ``probe:`` mapping; errors become one-line :class:`BootlegError`."""
    if not isinstance(raw, dict):
        raise BootlegError(f"{source}: the probe section must be a mapping, got {type(raw).__name__}")
    try:
        return ProbeConfig.model_validate(raw)
    except ValidationError as e:
        err = dict(e.errors()[0])
        err["loc"] = ("probe", *err["loc"])
        what = describe_error(err)
        raise BootlegError(what if source == "probe" else f"{source}: {what}") from None


def load_probe_config(
    checkpoint: str | Path | None = None,
    params: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> ProbeConfig:
    """The run's ``probe:`` section <- ``params``' ``probe:`` section <- ``overrides``
    (``key.sub=value``, value parsed as YAML) <- ``values`` (top-level fields, taken as is)."""
    from bootleg.config import read_params
    from bootleg.probe.weights import run_config

    raw: dict[str, Any] = {}
    source = "probe"
    ck = str(checkpoint) if checkpoint is not None else None
    if ck and not ck.startswith(("models:/", "runs:/")):
        from bootleg.export import resolve_encoder_path

        raw = dict(run_config(resolve_encoder_path(ck)).get("probe") or {})
    if params is not None:
        source = str(params)
        raw = dict(read_params(params).get("probe") or {})
    items = [item[len("probe.") :] if item.strip().startswith("probe.") else item for item in overrides]
    raw = apply_overrides(raw, items)
    raw.update(values or {})
    return build_probe_config(raw, source)


def add_probe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``probe`` subcommand to a ``bootleg`` argparse subparsers object."""
    names = ", ".join([*PROBE_NAMES, *PROBE_GROUPS])
    p = subparsers.add_parser(
        "probe",
        help="frozen-backbone classification and segmentation probes of a checkpoint",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--checkpoint", required=True, help="run folder, encoder.safetensors or MLflow model URI")
    p.add_argument("--out", required=True, help="output folder for probe.json and plots")
    p.add_argument("--data", help="dataset (embedded, cifar10, fashion_mnist, imagefolder); default: the run's")
    p.add_argument("--data-root", help="where the dataset is (probe.root)")
    p.add_argument("--probes", nargs="+", metavar="NAME", help=f"probes or groups ({names}); default: classify")
    p.add_argument("--params", help="YAML file whose probe: section replaces the run's")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a probe field, e.g. linear.epochs=5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true", help="print probe.json on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run_probe_cli)
    return p


def summary(report: ProbeReport) -> str:
    """A few human-readable lines of a report: each probe's metric, score and selected config."""
    lines = [
        f"dataset {report.dataset}  checkpoint {report.checkpoint}  seed {report.seed}  protocol {report.protocol}"
    ]
    for r in report.results:
        sel = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.selected.items())
        top5 = f"  top5 {r.details['top5']:6.2f}" if "top5" in r.details else ""
        lines.append(f"{r.probe:13s} {r.metric:4s} {r.score:6.2f}{top5}  ({sel})")
    for name, why in report.skipped.items():
        lines.append(f"{name:13s} skipped: {why}")
    return "\n".join(lines)


def run_probe_cli(args: argparse.Namespace) -> int:
    from bootleg.probe.runner import PROBE_FILE, run_probes

    values = {k: v for k, v in (("data", args.data), ("root", args.data_root)) if v}
    cfg = load_probe_config(args.checkpoint, args.params, list(args.set or []), values)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = run_probes(args.checkpoint, args.out, cfg, probes=args.probes, seed=args.seed, device=args.device, log=log)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(summary(report))
        print(f"wrote {Path(args.out) / PROBE_FILE}")
    return 0
