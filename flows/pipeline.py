"""The ``pipeline`` flow: prepare data -> pretrain -> register the encoder -> probes ->
[fine-tune] -> report.

Thin over the library: every task calls one public function and hands the next task only
small values (config path and overrides, folders, run ids, model URIs). The MLflow run
carries the flattened config, the git commit and the data hash; metrics stream in during
training through :class:`flows.tracking.MLflowCallback` (asynchronous, never blocking).
With ``nproc > 1`` pretraining runs under ``torchrun`` in a subprocess and its
``metrics.jsonl`` is followed to feed the same tracking.

    python -m flows.pipeline --params params.yaml --set run.steps=100 [--nproc 4]
        [--finetune [--finetune-set epochs=10 ...] [--finetune-fraction 0.01]]

Without ``PREFECT_API_URL`` Prefect starts a temporary local server on the database in
``$PREFECT_HOME`` (``make demo`` uses ``.prefect/``), so the flow run record stays there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from bootleg.errors import BootlegError
from bootleg.io import atomic_write_text
from bootleg.probe.results import ProbeReport
from flows import registry, report, tracking
from flows.cli import add_common_args, bindir, run_cli, ui_commands
from flows.finetune import FINETUNE_DIR, finetune_step
from flows.launch import PrefectProgress, torchrun_pretrain
from flows.params import PipelineParams, validate
from flows.provenance import dataset_fingerprint

Record = dict[str, Any]


def _cfg(params: str, overrides: Sequence[str]):  # noqa: ANN202 - bootleg.config.Config
    from bootleg.config import load_config

    return load_config(params, list(overrides))


def default_out(experiment: str, run_name: str) -> str:
    return str(Path("runs") / experiment / run_name)


# ------------------------------------------------------------------ tasks


@task(name="prepare-data", cache_policy=NONE)
def prepare_data(params: str, overrides: list[str]) -> dict[str, Any]:
    """Make sure the dataset is on disk (downloading only if ``data.download``), warm the
    decode cache of small datasets, count the images and fingerprint it (the DVC data hash).
    A large ImageFolder and shards are opened for random access only, never decoded here."""
    from bootleg.data import open_split

    cfg = _cfg(params, overrides)
    d = cfg.data
    counts: dict[str, int | None] = {}
    for split in ("train", "test"):
        counts[split] = len(open_split(d.name, split, d.root, d.download, d.limit if split == "train" else None))
    info = {"name": d.name, "root": d.root, "sha256": dataset_fingerprint(d.name, d.root), **counts}
    get_run_logger().info(
        "data %s: %s train / %s test images, sha256 %s", d.name, counts["train"], counts["test"], info["sha256"][:12]
    )
    return info


@task(name="start-tracking", cache_policy=NONE)
def start_tracking(
    params: str,
    overrides: list[str],
    out: str,
    experiment: str,
    run_name: str,
    parent_run_id: str | None,
    tracking_uri: str | None,
    tags: dict[str, str],
) -> str:
    """Open the MLflow run (flattened config as params, git commit and data hash as tags) and
    log the config and a figure of the masks."""
    from bootleg.config import dump_config

    cfg = _cfg(params, overrides)
    run_id = tracking.start_run(
        cfg, experiment, run_name=run_name, tags=tags, parent_run_id=parent_run_id, run_dir=out, uri=tracking_uri
    )
    art = Path(out) / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    (art / "config.yaml").write_text(dump_config(cfg))
    paths = [art / "config.yaml"]
    try:
        from bootleg.mask_stats import plot_masks
        from bootleg.masking import build_sampler

        sampler = build_sampler(cfg.masking, cfg.model.grid)
        paths.append(plot_masks(sampler, art / "masks.png", cfg.run.seed, batches=10, batch_size=64))
    except Exception as e:  # a figure must not stop the run
        get_run_logger().warning("no mask figure: %s", e)
    tracking.log_artifacts(run_id, paths, uri=tracking_uri)
    return run_id


@task(name="pretrain", cache_policy=NONE)
def pretrain_step(
    params: str,
    overrides: list[str],
    out: str,
    run_id: str,
    nproc: int = 1,
    launcher: str = "auto",
    resume: bool = False,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Pretrain into ``out`` (in this process, or under torchrun), streaming metrics to MLflow
    and progress to the Prefect UI; then log the curves and checkpoints as artifacts."""
    from bootleg.train import pretrain

    cfg = _cfg(params, overrides)
    logger = get_run_logger()
    progress = PrefectProgress(cfg.run.steps, cfg.optim.epochs, f"pretraining {cfg.method} {cfg.model.size} -> {out}")
    cb = tracking.MLflowCallback(run_id, uri=tracking_uri)
    t0 = time.time()
    try:
        if launcher == "torchrun" or (launcher == "auto" and nproc > 1):
            logger.info("launching torchrun with %d processes", nproc)
            torchrun_pretrain(params, overrides, out, nproc, resume, [cb, progress])
        else:
            pretrain(cfg, out, resume=resume, callbacks=[cb, progress])
    finally:
        left = cb.close()
        if left:
            logger.warning("tracking server unreachable: %d metrics kept only in %s/metrics.jsonl", left, out)
    progress.set(100.0, force=True)
    run = Path(out)
    rows = report.read_jsonl(run / "metrics.jsonl")
    art = run / "artifacts"
    curves = report.plot_curves(run / "metrics.jsonl", art / "loss_curves.png", f"{cfg.method} {cfg.model.size}")
    report.loss_csv(run / "metrics.jsonl", art / "loss.csv")
    paths = [p for p in (curves, art / "loss.csv", run / "metrics.jsonl", run / "config.yaml") if p]
    try:
        tracking.log_artifacts(run_id, paths, uri=tracking_uri)
        tracking.log_artifacts(
            run_id, [run / "checkpoint.pt", run / "encoder.safetensors"], "checkpoint", uri=tracking_uri
        )
        tracking.log_metrics(
            run_id, {"train_time_s": time.time() - t0}, step=rows[-1]["step"] if rows else 0, uri=tracking_uri
        )
    except Exception as e:
        logger.warning("tracking: artifacts not uploaded (%s); they are in %s", tracking.first_line(e), out)
    return {
        "run_dir": str(run),
        "final_loss": rows[-1]["loss"] if rows else None,
        "steps": rows[-1]["step"] if rows else 0,
    }


@task(name="register-encoder", cache_policy=NONE)
def register_step(run_id: str, run_dir: str, model_name: str, tracking_uri: str | None = None) -> str:
    """Register ``run_dir/encoder.safetensors`` as a new version of ``model_name``; returns
    its ``models:/NAME/VERSION`` URI."""
    version = registry.register_encoder(run_id, run_dir, model_name, uri=tracking_uri)
    get_run_logger().info("registered %s version %s", model_name, version)
    return f"models:/{model_name}/{version}"


@task(name="probes", cache_policy=NONE)
def probe_step(
    checkpoint: str,
    out: str,
    params: str,
    overrides: list[str],
    probes: list[str] | None,
    run_id: str,
    tracking_uri: str | None = None,
    prefix: str = "probe.",
) -> dict[str, Any]:
    """Frozen-encoder probes on ``checkpoint`` (a run folder or ``models:/`` URI); each probe's
    score goes to the MLflow run as ``<prefix><probe>.<metric>``, ``probe.json`` and plots as
    artifacts. Returns the :class:`ProbeReport` as a dict."""
    from bootleg.probe.runner import run_probes

    cfg = _cfg(params, overrides)
    if checkpoint.startswith(("models:/", "runs:/")):  # from this flow's store, whatever the environment says
        checkpoint = str(registry.download_encoder(checkpoint, tracking_uri))
    run_probes(checkpoint, out, cfg=getattr(cfg, "probe", None), probes=probes, seed=cfg.run.seed)
    rep = report.as_report(Path(out) / "probe.json")
    assert rep is not None
    metrics = rep.metrics(prefix)
    tracking.log_metrics(run_id, metrics, uri=tracking_uri)
    tracking.log_artifacts(run_id, [out], prefix.strip("."), uri=tracking_uri)
    get_run_logger().info("%s metrics: %s", prefix.strip("."), {k: round(v, 2) for k, v in metrics.items()})
    return rep.model_dump(mode="json")


@task(name="random-init-encoder", cache_policy=NONE)
def random_init_step(params: str, overrides: list[str], out: str) -> str:
    """The same architecture, randomly initialised with the run's seed (the baseline that
    shows what pretraining bought); written like a finished run folder."""
    import torch

    from bootleg.config import dump_config
    from bootleg.engine import Engine
    from bootleg.export import save_encoder

    cfg = _cfg(params, overrides)
    torch.manual_seed(cfg.run.seed)
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    save_encoder(Engine(cfg).export_encoder(), dst / "encoder.safetensors", {"method": "random-init", "step": "0"})
    (dst / "config.yaml").write_text(dump_config(cfg))
    return str(dst)


@task(name="promote", cache_policy=NONE)
def promote_step(
    model_name: str,
    alias: str,
    version: str,
    key: dict[str, str],
    score: float,
    kind: str,
    force: bool,
    run_id: str,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Tag the run with its comparison key and kind, then apply the ``@champion`` rule."""
    ck = registry.CompareKey(**key)
    tracking.set_tags(run_id, {**ck.tags(), registry.TAG_KIND: kind}, uri=tracking_uri)
    decision = registry.promote(model_name, alias, version, ck, score, kind, force, uri=tracking_uri)
    get_run_logger().info("@%s: %s (%s)", alias, "moved" if decision.moved else "kept", decision.reason)
    return decision.model_dump()


@task(name="report", cache_policy=NONE)
def report_step(summary: dict[str, Any], run_id: str, tracking_uri: str | None = None) -> str:
    text = report.run_report(summary)
    path = Path(summary["run_dir"]) / "report.md"
    path.write_text(text)
    (path.parent / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    try:
        create_markdown_artifact(text, key="pipeline-report", description=f"pipeline run {summary.get('run_name')}")
    except Exception:
        pass
    tracking.log_artifacts(run_id, [path, path.parent / "summary.json"], uri=tracking_uri)
    return str(path)


def run_kind(spec: PipelineParams) -> str:
    """``spec.kind``, or for ``auto``: ``smoke`` when the overrides or ``probes`` cut the run
    down from its params file (fewer steps or epochs, fewer probes), else ``train``."""
    if spec.kind != "auto":
        return spec.kind
    base, eff = _cfg(spec.params, []), _cfg(spec.params, spec.overrides)
    inf = float("inf")
    shorter = (eff.run.steps or inf) < (base.run.steps or inf) or eff.optim.epochs < base.optim.epochs
    fewer = spec.probes is not None and set(spec.probes) < set(base.probe.probes)
    return "smoke" if shorter or fewer else "train"


def compare_key(spec: PipelineParams, data_hash: str, probe: ProbeReport, metric: str) -> dict[str, str]:
    cfg = _cfg(spec.params, spec.overrides)
    m = cfg.model
    return {
        "dataset": f"{cfg.data.name}@{data_hash[:16]}" + (f"/limit{cfg.data.limit}" if cfg.data.limit else ""),
        "model": f"{m.size}/{m.img_size}px/p{m.patch_size}",
        "probes": report.probe_suite(probe),
        "metric": metric,
    }


# ------------------------------------------------------------------ the flow


SUMMARY_FILE = "summary.json"


@flow(name="pipeline", log_prints=True)
def pipeline(spec: PipelineParams = PipelineParams()) -> dict[str, Any]:  # noqa: B008 - pydantic default
    """Prepare data -> pretrain -> register the encoder in MLflow -> probes -> [fine-tune] -> report."""
    spec = validate(PipelineParams, spec)
    uri = tracking.configure(spec.tracking_uri)  # one-line error if a given server is down
    run_name = spec.run_name or datetime.now().strftime("%Y%m%d-%H%M%S")
    out = spec.out or default_out(spec.experiment, run_name)
    overrides = [*spec.overrides, f"run.out={out}"]
    _cfg(spec.params, overrides)  # validate before any work
    data = prepare_data(spec.params, overrides)
    tags = {"bootleg.flow": "pipeline"}
    try:
        from prefect.runtime import flow_run

        if flow_run.id:
            tags["prefect.flow_run_id"] = str(flow_run.id)
    except Exception:
        pass
    run_id = start_tracking(
        spec.params, overrides, out, spec.experiment, run_name, spec.parent_run_id, spec.tracking_uri, tags
    )
    kind = run_kind(spec)
    summary: dict[str, Any] = {
        "run_name": run_name,
        "run_id": run_id,
        "tracking_uri": uri,
        "data_hash": data["sha256"],
        "kind": kind,
    }
    try:
        trained = pretrain_step(
            spec.params, overrides, out, run_id, spec.nproc, spec.launcher, spec.resume, spec.tracking_uri
        )
        summary.update(trained)
        checkpoint = out
        if spec.register_model:
            summary["model_uri"] = checkpoint = register_step(run_id, out, spec.model_name, spec.tracking_uri)
        rep: ProbeReport | None = None
        if spec.probes is None or spec.probes:
            probe_dir = str(Path(out) / "probe")
            summary["probe"] = probe = probe_step(
                checkpoint, probe_dir, spec.params, overrides, spec.probes, run_id, spec.tracking_uri
            )
            rep = ProbeReport.model_validate(probe)
            summary["probe_metrics"] = rep.metrics()
            if spec.baseline:
                rand = random_init_step(spec.params, overrides, str(Path(out) / "random-init"))
                summary["baseline_probe"] = probe_step(
                    rand, str(Path(out) / "probe-random-init"), spec.params, overrides, spec.probes, run_id,
                    spec.tracking_uri, prefix="random_init.",
                )  # fmt: skip
            metric = report.headline_metric(rep, spec.alias_metric)
            if metric is None:
                raise BootlegError(f"alias_metric: {spec.alias_metric!r} is not one of {', '.join(rep.metrics())}")
            summary["alias_metric"] = metric
        if spec.finetune:
            summary["finetune"] = finetune_step(
                out, str(Path(out) / FINETUNE_DIR), spec.params, overrides, spec.finetune_set, run_id, spec.tracking_uri
            )
        if rep is not None and spec.register_model:
            metric = summary["alias_metric"]
            version = summary["model_uri"].rsplit("/", 1)[-1]
            key = compare_key(spec, data["sha256"], rep, metric)
            promo = promote_step(
                spec.model_name, spec.alias, version, key, rep.metrics()[metric], kind, spec.promote, run_id,
                spec.tracking_uri,
            )  # fmt: skip
            summary["promotion"] = promo
            summary["rule"] = registry.RULE.format(alias=spec.alias)
            if promo["champion"]:
                summary["alias_uri"] = f"models:/{spec.model_name}@{spec.alias}"
        summary["report"] = report_step(summary, run_id, spec.tracking_uri)
    except BaseException:
        tracking.end_run(run_id, "FAILED", uri=spec.tracking_uri)
        raise
    tracking.end_run(run_id, uri=spec.tracking_uri)
    # beside the run: what a caller on another process or machine (an ablation over a work pool) reads back
    atomic_write_text(Path(out) / SUMMARY_FILE, json.dumps(summary, indent=1, default=str))
    return summary


# ------------------------------------------------------------------ command line


def _print_summary(summary: dict[str, Any]) -> None:
    print()
    print("Produced:")
    print(
        f"  run folder:          {summary.get('run_dir')}  (config.yaml, metrics.jsonl, checkpoint.pt, encoder.safetensors)"
    )
    print(f"  MLflow run:          {summary.get('run_id')}  in {summary.get('tracking_uri')}")
    if summary.get("run_id"):
        exp = tracking.client(summary["tracking_uri"]).get_run(summary["run_id"]).info.experiment_id
        ui = summary["tracking_uri"] if tracking.is_http(summary["tracking_uri"]) else "http://127.0.0.1:5000"
        print(f"  MLflow experiment:   {tracking.experiment_url(ui, exp)}  (with the UI below)")
    if summary.get("model_uri"):
        print(f"  registered encoder:  {summary['model_uri']}")
    promo = summary.get("promotion")
    if promo:
        where = f"version {promo['champion']}" if promo["champion"] else "no version"
        label = f"@{promo['alias']}:"
        print(f"  {label:<20} {where} ({'moved' if promo['moved'] else 'kept'}: {promo['reason']})")
    rep = report.as_report(summary.get("probe"))
    base = report.as_report(summary.get("baseline_probe"))
    if rep and rep.results:
        print("\nProbe scores (%)" + ("   pretrained | random init | gain" if base else ""))
        for r in rep.results:
            line = f"  {r.probe + ' ' + r.metric + ':':<22} {r.score:6.1f}"
            if base and (b := base.score(r.probe)) is not None:
                line += f"     | {b:6.1f}      | {r.score - b:+.1f}"
            print(line)
        if base:
            gains = [r.score - b for r in rep.results if (b := base.score(r.probe)) is not None]
            if not gains or min(gains) <= 0:
                print("  -> this short run did not beat a randomly initialised encoder on every probe;")
                print("     `make demo LONG=1` runs the longer setting that does (README: Demo).")
    if ft := summary.get("finetune"):
        print(f"\nFine-tuned end to end: top1 {ft['score']:.1f}  top5 {ft['top5']:.1f}  ({ft['train_images']} train "
              f"images, {ft['config']['epochs']} epochs)  {Path(summary['run_dir']) / FINETUNE_DIR}")  # fmt: skip
    if summary.get("report"):
        print(f"\n  report:              {summary['report']}")
    flow_db = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")) / "prefect.db"
    if not os.environ.get("PREFECT_API_URL"):
        print(f"  Prefect flow run:    recorded in {flow_db}")
    if summary.get("alias_uri"):
        print("\nProbe the champion encoder again:")
        print(
            f"  MLFLOW_TRACKING_URI={summary['tracking_uri']} {bindir()}/bootleg probe --checkpoint {summary['alias_uri']} "
            "--out runs/probe-champion"
        )
    print("\nOpen the UIs on these stores:")
    for line in ui_commands():
        print("  " + line)


def parse_args(argv: Sequence[str] | None = None) -> tuple[PipelineParams, argparse.Namespace]:
    """The command line as :class:`PipelineParams` (one-line :class:`BootlegError` when invalid)."""
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--out", help="run folder (default runs/<experiment>/<run name>)")
    p.add_argument("--run-name")
    p.add_argument("--model-name", help="registered model name (default bootleg-encoder)")
    p.add_argument("--alias", help="alias for the best version (default champion)")
    p.add_argument("--alias-metric", help="probe metric ranking versions (default: the probe report's headline)")
    p.add_argument("--promote", action="store_true", help="let a smoke run or ablation variant take the alias")
    p.add_argument("--kind", choices=["auto", "train", "smoke", "ablation"], help="run kind for the alias rule")
    p.add_argument("--baseline", action="store_true", help="also probe a randomly initialised encoder")
    p.add_argument("--probes", help="comma-separated probes ('' = none; default: the library's)")
    p.add_argument("--nproc", type=int, help="processes (GPUs); >1 launches torchrun")
    p.add_argument("--launcher", choices=["auto", "inprocess", "torchrun"])
    p.add_argument("--no-register", action="store_true", help="do not register the encoder")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--finetune", action="store_true", help="after the probes, fine-tune the encoder into OUT/finetune")
    p.add_argument(
        "--finetune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fine-tuning setting (bootleg finetune --set), repeatable; implies --finetune",
    )
    p.add_argument(
        "--finetune-fraction", type=float, help="class-balanced train fraction, e.g. 0.01; implies --finetune"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    raw: dict[str, Any] = {"params": a.params, "overrides": a.set}
    for key in (
        "out",
        "run_name",
        "model_name",
        "alias",
        "alias_metric",
        "nproc",
        "launcher",
        "tracking_uri",
        "experiment",
        "kind",
    ):
        if getattr(a, key) is not None:
            raw[key] = getattr(a, key)
    raw["promote"], raw["baseline"] = a.promote, a.baseline
    if a.probes is not None:
        raw["probes"] = [s for s in a.probes.split(",") if s.strip()]
    raw["register_model"] = not a.no_register
    raw["resume"] = a.resume
    fraction = [] if a.finetune_fraction is None else [f"fraction={a.finetune_fraction!r}"]
    raw["finetune_set"] = [*a.finetune_set, *fraction]
    raw["finetune"] = a.finetune or bool(raw["finetune_set"])
    return validate(PipelineParams, raw), a


def main(argv: Sequence[str] | None = None) -> int:
    spec, a = parse_args(argv)
    _cfg(spec.params, spec.overrides)  # one-line config errors before Prefect starts
    tracking.configure(spec.tracking_uri)  # and an unreachable server
    summary = pipeline(spec)
    if a.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary)
    return 0


if __name__ == "__main__":
    run_cli(main)
