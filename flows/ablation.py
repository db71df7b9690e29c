"""The ``ablation`` flow: variants (methods, target blocks, masking samplers, any overrides)
through the ``pipeline`` flow, then one comparison table like the paper's Tables 2-5.

The table (markdown and CSV) is written to ``<out>/ablation.md`` and ``ablation.csv``,
published as a Prefect table artifact and logged to a parent MLflow run under which every
variant's run is nested: as files, as an MLflow table (``comparison.json``, shown in MLflow's
artifact view) and as a bar chart of the probe scores per variant (``comparison.png``).
Variants are ``kind=ablation`` runs: they register versions but never take ``@champion``
unless the base sets ``promote``.

    python -m flows.ablation --variants variants.yaml [--set run.steps=100]

``variants.yaml``::

    title: Choice of target layers (cf. Table 2)
    variants:
      - {name: "Blocks 1,4,8 (spaced)", targets: [1, 4, 8]}
      - {name: "Blocks 5-8 (late only)", targets: [5, 6, 7, 8]}
      - {name: "I-JEPA masking", sampler: ijepa}
      - {name: "MAE", method: mae, overrides: ["optim.lr_max=1e-3"]}
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from bootleg.errors import BootlegError
from flows import report, tracking
from flows.cli import add_common_args, run_cli
from flows.params import AblationParams, validate
from flows.pipeline import pipeline

#: a small default: Table 2's question on the micro ViT (used by the deployment form)
EXAMPLE_VARIANTS = [
    {"name": "Blocks 1,4,8 (spaced)", "targets": [1, 4, 8]},
    {"name": "Blocks 6-8 (late only)", "targets": [6, 7, 8]},
]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "variant"


@flow(name="ablation", log_prints=True)
def ablation(spec: AblationParams) -> dict[str, Any]:
    """Run every variant through ``pipeline`` and publish the comparison table."""
    spec = validate(AblationParams, spec)
    logger = get_run_logger()
    base = spec.base
    tracking.configure(base.tracking_uri)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(spec.out or Path("runs") / "ablation" / stamp)
    out.mkdir(parents=True, exist_ok=True)
    parent = tracking.start_run(
        None,
        base.experiment,
        run_name=f"ablation-{slug(spec.title)}-{stamp}",
        tags={"bootleg.flow": "ablation"},
        uri=base.tracking_uri,
    )
    try:
        progress = create_progress_artifact(0.0, description=f"ablation: {len(spec.variants)} variants")
    except Exception:
        progress = None
    results = []
    try:
        for i, v in enumerate(spec.variants):
            logger.info("variant %d/%d: %s %s", i + 1, len(spec.variants), v.name, v.to_overrides())
            vspec = base.model_copy(
                update={
                    "overrides": [*base.overrides, *v.to_overrides()],
                    "out": str(out / f"{i:02d}-{slug(v.name)}"),
                    "run_name": f"{slug(v.name)}-{stamp}",
                    "parent_run_id": parent,
                    "kind": "ablation",
                }
            )
            summary = pipeline(vspec)
            results.append(
                {
                    "variant": v.name,
                    "describe": v.describe(),
                    "probe": summary.get("probe") or {},
                    "final_loss": summary.get("final_loss"),
                    "run_id": summary.get("run_id"),
                }
            )
            if progress is not None:
                update_progress_artifact(progress, 100.0 * (i + 1) / len(spec.variants))
        columns, rows = report.comparison_rows(results)
        note = "Probe columns: top-1 accuracy (%) of frozen-encoder probes; loss: last logged pretraining loss."
        md = report.to_markdown(columns, rows, spec.title, note)
        (out / "ablation.md").write_text(md)
        (out / "ablation.csv").write_text(report.to_csv(columns, rows))
        (out / "ablation.json").write_text(json.dumps(results, indent=2, default=str))
        try:
            create_table_artifact(report.table_records(columns, rows), key="ablation-table", description=spec.title)
            create_markdown_artifact(md, key="ablation-report", description=spec.title)
        except Exception as e:
            logger.warning("no Prefect artifact: %s", e)
        chart = report.plot_scores(columns, rows, out / "comparison.png", spec.title)
        tracking.log_artifacts(
            parent, [out / "ablation.md", out / "ablation.csv", out / "ablation.json", chart], uri=base.tracking_uri
        )
        tracking.log_table(parent, report.table_records(columns, rows), "comparison.json", uri=base.tracking_uri)
    except BaseException:
        tracking.end_run(parent, "FAILED", uri=base.tracking_uri)
        raise
    tracking.end_run(parent, uri=base.tracking_uri)
    print(md)
    return {
        "table_md": str(out / "ablation.md"),
        "table_csv": str(out / "ablation.csv"),
        "parent_run_id": parent,
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.ablation", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument(
        "--variants",
        required=True,
        help="YAML file: {title: ..., variants: [{name, method, targets, sampler, overrides}]}",
    )
    p.add_argument("--out")
    p.add_argument("--probes", help="comma-separated probes (default: the library's)")
    p.add_argument("--model-name")
    p.add_argument("--no-register", action="store_true")
    a = p.parse_args(argv)
    path = Path(a.variants)
    if not path.is_file():
        raise BootlegError(f"{path}: no such variants file")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise BootlegError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if isinstance(doc, list):
        doc = {"variants": doc}
    base: dict[str, Any] = {"params": a.params, "overrides": a.set, "register_model": not a.no_register}
    for key in ("tracking_uri", "experiment", "model_name"):
        if getattr(a, key) is not None:
            base[key] = getattr(a, key)
    if a.probes is not None:
        base["probes"] = [s for s in a.probes.split(",") if s.strip()]
    raw = {"base": base, **doc}
    if a.out:
        raw["out"] = a.out
    spec = validate(AblationParams, raw, f"{path}: ")
    from bootleg.config import load_config

    for v in spec.variants:  # every variant's config is valid before anything runs
        try:
            load_config(spec.base.params, [*spec.base.overrides, *v.to_overrides()])
        except BootlegError as e:
            raise BootlegError(f"variant {v.name!r}: {e}") from None
    tracking.configure(spec.base.tracking_uri)
    ablation(spec)
    return 0


if __name__ == "__main__":
    run_cli(main)
