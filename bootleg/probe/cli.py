"""``bootleg probe``: frozen-backbone probes of a checkpoint.

    bootleg probe --checkpoint runs/demo --out runs/demo/probe [--data NAME] [--probes ...]
                  [--params params.yaml] [--set k=v ...] [--seed N] [--device auto] [--json]

Settings: the run's own ``probe:`` section (its ``config.yaml``), replaced by the ``probe:``
section of ``--params`` when given, then ``--set`` overrides (``probe.`` prefix optional,
e.g. ``--set linear.epochs=5``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bootleg.errors import BootlegError
from bootleg.probe.config import PROBE_GROUPS, PROBE_NAMES, ProbeConfig


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
    loc = f"probe.{loc}" if loc else "probe"
    got = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if err["type"] == "literal_error":
        return f"{loc}: {got!r} is not allowed; expected {err['ctx']['expected']}"
    if err["type"] == "value_error":
        return f"{loc}: {err['ctx']['error']}" if "ctx" in err else f"{loc}: {err['msg']}"
    return f"{loc}: {err['msg'].lower()}, got {got!r}"


def build_probe_config(raw: dict[str, Any], source: str = "probe") -> ProbeConfig:
    """Validate a ``probe:`` mapping; errors become one-line :class:`BootlegError`."""
    if not isinstance(raw, dict):
        raise BootlegError(f"{source}: the probe section must be a mapping, got {type(raw).__name__}")
    try:
        return ProbeConfig.model_validate(raw)
    except ValidationError as e:
        what = _describe(e.errors()[0])
        raise BootlegError(what if source == "probe" else f"{source}: {what}") from None


def load_probe_config(
    checkpoint: str | Path | None = None,
    params: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> ProbeConfig:
    """The run's ``probe:`` section <- ``params``' ``probe:`` section <- ``overrides``
    (``key.sub=value``, value parsed as YAML) <- ``values`` (top-level fields, taken as is)."""
    from bootleg.config import apply_override, read_params
    from bootleg.probe.runner import run_config

    raw: dict[str, Any] = {}
    source = "probe"
    ck = str(checkpoint) if checkpoint is not None else None
    if ck and not ck.startswith(("models:/", "runs:/")):
        from bootleg.export import resolve_encoder_path

        raw = dict(run_config(resolve_encoder_path(ck)).get("probe") or {})
    if params is not None:
        source = str(params)
        raw = dict(read_params(params).get("probe") or {})
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        apply_override(raw, item[len("probe.") :] if key.startswith("probe.") else item)
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


def summary(doc: dict[str, Any]) -> str:
    """A few human-readable lines of a ``probe.json`` document."""
    lines = [f"dataset {doc['dataset']}  checkpoint {doc['checkpoint']}  seed {doc['seed']}"]
    for name in PROBE_NAMES:
        e = doc.get(name)
        if not isinstance(e, dict):
            continue
        if "skipped" in e:
            lines.append(f"{name:13s} skipped: {e['skipped']}")
        elif name == "knn":
            b = e["best"]
            lines.append(f"{name:13s} top1 {b['top1']:6.2f}  ({b['feature']}, k={b['k']})")
        elif "top1" in e:
            lines.append(
                f"{name:13s} top1 {e['top1']:6.2f}  top5 {e['top5']:6.2f}  (lr {e['best']['lr']:g}, wd {e['best']['wd']:g})"
            )
        elif name == "seg_knn":
            lines.append(f"{name:13s} mIoU {e['miou']:6.2f}  (k={e['k']})")
        else:
            lines.append(f"{name:13s} mIoU {e['miou']:6.2f}  (lr {e['best']['lr']:g}, wd {e['best']['wd']:g})")
    return "\n".join(lines)


def run_probe_cli(args: argparse.Namespace) -> int:
    from bootleg.probe.runner import PROBE_FILE, run_probes

    values = {k: v for k, v in (("data", args.data), ("root", args.data_root)) if v}
    cfg = load_probe_config(args.checkpoint, args.params, list(args.set or []), values)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    doc = run_probes(args.checkpoint, args.out, cfg, probes=args.probes, seed=args.seed, device=args.device, log=log)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(summary(doc))
        print(f"wrote {Path(args.out) / PROBE_FILE}")
    return 0
