"""The ``ablation`` flow: variants (methods, target blocks, masking samplers, any overrides)
through the ``pipeline`` flow, then one comparison table like the paper's Tables 2-5.

The table (markdown and CSV) is written to ``<out>/ablation.md`` and ``ablation.csv``,
published as a Prefect table artifact and logged to a parent MLflow run under which every
variant's run is nested: as files, as an MLflow table (``comparison.json``, shown in MLflow's
artifact view) and as a bar chart of the probe scores per variant (``comparison.png``).
Variants are ``kind=ablation`` runs: they register versions but never take ``@champion``
unless the base sets ``promote``.

    python -m flows.ablation --variants variants.yaml [--set run.steps=100]
    python -m flows.ablation --variants experiments/table2-targets.yaml --parallel 2 \
        --set model.size=micro --set model.img_size=32 --set model.patch_size=4 --set run.steps=20
    python -m flows.ablation --variants experiments/table5-masking.yaml --pool-deployment pipeline/pipeline

Variants are independent: ``--parallel N`` runs N at once in local processes (Prefect's
process-pool task runner); ``--pool-deployment`` makes each variant its own flow run of the
pipeline deployment on its work pool, which any worker (one per GPU node) picks up. The table
waits for all of them. Files of ``experiments/`` (one per table and figure of the paper) carry
the paper's numbers, shown beside ours (see ``experiments/README.md``).

A minimal ``variants.yaml``::

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
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE

from bootleg.errors import BootlegError
from flows import report, tracking
from flows.cli import add_common_args, run_cli
from flows.params import AblationParams, PipelineParams, validate
from flows.pipeline import SUMMARY_FILE, pipeline

#: keys of the experiment files that describe the paper and not the run (experiments/README.md)
INFORMATIONAL_KEYS = ("source", "switches", "findings")

#: a small default: Table 2's question on the micro ViT (used by the deployment form)
EXAMPLE_VARIANTS = [
    {"name": "Blocks 1,4,8 (spaced)", "targets": [1, 4, 8]},
    {"name": "Blocks 6-8 (late only)", "targets": [6, 7, 8]},
]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "variant"


@task(name="variant", cache_policy=NONE)
def run_variant(vspec: PipelineParams) -> dict[str, Any]:
    """One variant through the pipeline flow (a nested flow run of this process or a pool worker's)."""
    return pipeline(vspec)


@task(name="variant-on-pool", cache_policy=NONE)
def run_variant_on_pool(vspec: PipelineParams, deployment: str) -> dict[str, Any]:
    """One variant as a flow run of ``deployment`` on its work pool; waits for it and reads back the
    summary it wrote beside its run folder."""
    from prefect.deployments import run_deployment

    fr = run_deployment(deployment, parameters={"spec": vspec.model_dump(mode="json")}, timeout=None)
    if not fr.state or not fr.state.is_completed():
        raise BootlegError(f"variant run {fr.name} of {deployment}: ended {fr.state.type if fr.state else 'unknown'}")
    path = Path(str(vspec.out)) / SUMMARY_FILE
    if not path.is_file():
        raise BootlegError(f"{path}: missing; the pool's workers must write run folders where this flow can read")
    return json.loads(path.read_text())


@flow(name="ablation-variants")
def parallel_variants(vspecs: list[PipelineParams]) -> list[dict[str, Any]]:
    """Every variant as a task of this subflow's task runner (a process pool: one process each)."""
    futures = [run_variant.submit(v) for v in vspecs]
    return [f.result() for f in futures]


def run_all(spec: AblationParams, vspecs: list[PipelineParams], progress: Any) -> list[dict[str, Any]]:
    """Every variant's summary, in order: one after the other, N at once in local processes, or
    through a work pool. No scheduling of our own: Prefect's task runners and workers do it."""
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            update_progress_artifact(progress, 100.0 * done / len(vspecs))

    if spec.pool_deployment:
        futures = [run_variant_on_pool.submit(v, spec.pool_deployment) for v in vspecs]
    elif spec.parallel > 1:
        from prefect.task_runners import ProcessPoolTaskRunner

        out = parallel_variants.with_options(task_runner=ProcessPoolTaskRunner(max_workers=spec.parallel))(vspecs)
        for _ in out:
            tick()
        return out
    else:
        out = []
        for v in vspecs:
            out.append(pipeline(v))
            tick()
        return out
    results = []
    for f in futures:
        results.append(f.result())
        tick()
    return results


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
    vspecs = [
        base.model_copy(
            update={
                "overrides": spec.row_overrides(v),
                "out": str(out / f"{i:02d}-{slug(v.name)}"),
                "run_name": f"{slug(v.name)}-{stamp}",
                "parent_run_id": parent,
                "kind": "ablation",
            }
        )
        for i, v in enumerate(spec.variants)
    ]
    for i, (v, vs) in enumerate(zip(spec.variants, vspecs, strict=True)):
        logger.info("variant %d/%d: %s %s", i + 1, len(vspecs), v.name, vs.overrides)
    try:
        summaries = run_all(spec, vspecs, progress)
        results = [
            {
                "variant": v.name,
                "describe": v.describe(),
                "probe": summary.get("probe") or {},
                "final_loss": summary.get("final_loss"),
                "run_id": summary.get("run_id"),
                "paper": v.paper,
            }
            for v, summary in zip(spec.variants, summaries, strict=True)
        ]
        columns, rows = report.comparison_rows(results, spec.columns, spec.references)
        note = "Probe columns: top-1 accuracy (%) of frozen-encoder probes; loss: last logged pretraining loss."
        if spec.columns:
            note += " Columns marked 'paper' hold the paper's numbers for its own protocol (docs/paper.md)."
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


def select_rows(variants: list[Any], rows: str, path: Path) -> list[Any]:
    """The rows named by ``--rows`` (indexes from 0 or names), in the file's order."""
    names = [v.get("name") if isinstance(v, dict) else None for v in variants]
    keep = set()
    for item in (s.strip() for s in rows.split(",") if s.strip()):
        if item.isdigit() and int(item) < len(variants):
            keep.add(int(item))
        elif item in names:
            keep.add(names.index(item))
        else:
            raise BootlegError(
                f"--rows: {item!r} is neither a row index below {len(variants)} nor a row name of {path}"
            )
    return [v for i, v in enumerate(variants) if i in keep]


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
    p.add_argument("--parallel", type=int, default=1, help="variants run at once in local processes (default 1)")
    p.add_argument("--rows", help="run only these rows: comma-separated indexes (from 0) or names")
    p.add_argument("--pool-deployment", help="run each variant on this deployment's work pool, e.g. pipeline/pipeline")
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
    for key in INFORMATIONAL_KEYS:
        doc.pop(key, None)
    if a.rows:
        doc["variants"] = select_rows(doc.get("variants") or [], a.rows, path)
    if isinstance(doc.get("base"), list):  # an experiment file's shared overrides
        doc["shared"] = doc.pop("base")
    base: dict[str, Any] = {"params": a.params, "overrides": a.set, "register_model": not a.no_register}
    for key in ("tracking_uri", "experiment", "model_name"):
        if getattr(a, key) is not None:
            base[key] = getattr(a, key)
    if a.probes is not None:
        base["probes"] = [s for s in a.probes.split(",") if s.strip()]
    raw = {"base": base, **doc, "parallel": a.parallel}
    if a.pool_deployment:
        raw["pool_deployment"] = a.pool_deployment
    if a.out:
        raw["out"] = a.out
    spec = validate(AblationParams, raw, f"{path}: ")
    from bootleg.config import load_config

    for v in spec.variants:  # every variant's config is valid before anything runs
        try:
            load_config(spec.base.params, spec.row_overrides(v))
        except BootlegError as e:
            raise BootlegError(f"variant {v.name!r}: {e}") from None
    tracking.configure(spec.base.tracking_uri)
    ablation(spec)
    return 0


if __name__ == "__main__":
    run_cli(main)
