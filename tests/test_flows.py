"""The Prefect flows end to end on real servers: a ``prefect server start`` process and an
``mlflow server`` process on loopback, micro ViT, a few steps, kNN probes on a small split.

The tests that run the real probes read ``probe.json`` as a ``ProbeReport``; they need
``run_probes`` to write one (the probe branch)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port, run_cmd, stop

from bootleg.export import load_encoder
from bootleg.probe.results import ProbeReport
from flows import registry, tracking

TINY = {
    "method": "bootleg",
    "model": {"size": "micro", "img_size": 32, "patch_size": 4},
    "targets": {"blocks": [1, 4, 8]},
    "optim": {"epochs": 100, "warmup_epochs": 1, "batch_size": 16, "lr_ref_batch": None},
    "data": {"name": "embedded", "limit": 160},
    "run": {"seed": 0, "steps": 4, "checkpoint_every": 100, "log_every": 1, "monitor_every": 2, "progress": False},
    "probe": {"probes": ["knn"], "limit": 160, "test_limit": 80, "knn": {"ks": [5, 10]}},
}


@pytest.fixture
def tiny_params(tmp_path: Path) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return p


def prefect_read(coro_fn):
    """Run an async Prefect-client query against the configured API."""
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return await coro_fn(client)

    return asyncio.run(go())


@pytest.mark.slow
def test_pipeline_end_to_end(tiny_params: Path, tmp_path: Path, mlflow_uri: str, prefect_api: str) -> None:
    from flows.params import PipelineParams
    from flows.pipeline import pipeline

    spec = PipelineParams(
        params=str(tiny_params), out=str(tmp_path / "run"), model_name="e2e-encoder", experiment="e2e", run_name="e2e"
    )
    summary = pipeline(spec)
    assert summary["model_uri"] == "models:/e2e-encoder/1"
    assert summary["alias_uri"] == "models:/e2e-encoder@champion"
    assert summary["alias_metric"] == "probe.knn.top1"
    assert summary["promotion"]["moved"] and summary["kind"] == "train"
    assert summary["steps"] == 4

    c = tracking.client()
    run = c.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.size"] == "micro" and run.data.params["run.steps"] == "4"
    assert {"loss", "lr", "images_per_s", "probe.knn.top1"} <= set(run.data.metrics)
    assert len(c.get_metric_history(run.info.run_id, "loss")) == 4
    assert any(k.startswith("system/") for k in run.data.metrics)
    assert len(run.data.tags[tracking.TAG_DATA_HASH]) == 64
    assert tracking.TAG_GIT_COMMIT in run.data.tags
    arts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {
        "config.yaml",
        "masks.png",
        "loss_curves.png",
        "metrics.jsonl",
        "checkpoint",
        "probe",
        "encoder",
        "report.md",
    } <= arts
    probe_arts = {a.path for a in c.list_artifacts(run.info.run_id, "probe")}
    assert "probe/probe.json" in probe_arts

    mv = c.get_model_version_by_alias("e2e-encoder", "champion")
    assert mv.version == "1" and mv.run_id == run.info.run_id
    assert run.data.tags[f"{registry.TAG_KEY}.metric"] == "probe.knn.top1"
    assert "rule" in Path(summary["report"]).read_text().lower()
    local = registry.download_encoder("models:/e2e-encoder@champion")
    assert load_encoder(local).depth == 8

    # `bootleg probe` on the alias, in a fresh process
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    r = run_cmd(
        [sys.executable, "-m", "bootleg.cli", "probe", "--checkpoint", "models:/e2e-encoder@champion", "--out",
         str(tmp_path / "reprobe"), "--params", str(tiny_params), "--json", "--quiet"],
        env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    again = ProbeReport.model_validate_json(Path(tmp_path / "reprobe" / "probe.json").read_text())
    assert again.score("knn") == pytest.approx(run.data.metrics["probe.knn.top1"])

    # the Prefect server holds the flow run, its task runs and artifacts
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName

    flow_runs = prefect_read(
        lambda cl: cl.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])))
    )
    fr = next(f for f in flow_runs if str(f.id) == run.data.tags["prefect.flow_run_id"])
    assert fr.state.is_completed()
    arts = prefect_read(
        lambda cl: cl.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id])))
    )
    kinds = {a.type for a in arts}
    assert {"progress", "markdown"} <= kinds
    assert any(a.type == "progress" and a.data == 100.0 for a in arts)


@pytest.mark.slow
def test_ablation_writes_table(tiny_params: Path, tmp_path: Path, prefect_api: str) -> None:
    """Two variants through the pipeline (embedded MLflow store) -> markdown + CSV table,
    Prefect table artifact, MLflow artifacts on the parent run."""
    from flows.ablation import ablation
    from flows.params import AblationParams

    spec = AblationParams(
        base={"params": str(tiny_params), "register_model": False, "experiment": "ablation-test"},
        variants=[
            {"name": "Blocks 1,4,8 (spaced)", "targets": [1, 4, 8]},
            {"name": "Late only, cyclic masks", "targets": [7, 8], "sampler": "cyclic"},
        ],
        title="Targets (cf. Table 2)",
        out=str(tmp_path / "abl"),
    )
    res = ablation(spec)
    md = Path(res["table_md"]).read_text()
    assert "Targets (cf. Table 2)" in md and "| Variant |" in md and "kNN" in md
    assert "Blocks 1,4,8 (spaced)" in md and "Late only, cyclic masks" in md
    lines = Path(res["table_csv"]).read_text().splitlines()
    assert lines[0].startswith("Variant,Targets,Sampler,kNN,Final loss") and len(lines) == 3
    assert all(0 <= float(r["kNN"]) <= 100 for r in res["rows"])
    c = tracking.client()
    parent = c.get_run(res["parent_run_id"])
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"ablation.md", "ablation.csv", "ablation.json", "comparison.json", "comparison.png"} <= arts
    children = c.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    assert {r.data.params["targets.blocks"] for r in children} == {"[1, 4, 8]", "[7, 8]"}

    art = prefect_read(lambda cl: cl.read_latest_artifacts())
    table = [a for a in art if a.key == "ablation-table"]
    assert table and "Late only, cyclic masks" in json.dumps(table[0].data)


def test_torchrun_launcher_feeds_callbacks(tiny_params: Path, tmp_path: Path) -> None:
    """The multi-GPU path (torchrun subprocess, metrics.jsonl followed) with one CPU process."""
    from flows.pipeline import torchrun_pretrain

    seen: list[dict] = []
    torchrun_pretrain(
        str(tiny_params), ["run.steps=3", "run.device=cpu"], str(tmp_path / "tr"), 1, False, [seen.append]
    )
    assert [r["step"] for r in seen] == [1, 2, 3]
    assert (tmp_path / "tr" / "encoder.safetensors").is_file()


@pytest.mark.slow
def test_served_deployments_listed_with_schemas(
    prefect_server, prefect_api: str, tiny_params: Path, tmp_path: Path
) -> None:
    """``python -m flows.serve`` registers pipeline, ablation and study; the API lists them
    with their pydantic parameter schemas, rejects an invalid parameter, and runs a valid one."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.serve"],
        cwd=ROOT,
        env=prefect_server.client_env(),
        stdout=open(tmp_path / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        deps = []
        while time.monotonic() < deadline:
            deps = prefect_read(lambda cl: cl.read_deployments())
            if {"pipeline", "ablation", "study"} <= {d.name for d in deps}:
                break
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        by_name = {d.name: d for d in deps}
        assert {"pipeline", "ablation", "study"} <= set(by_name), (tmp_path / "serve.log").read_text()[-3000:]
        schema = by_name["pipeline"].parameter_openapi_schema
        assert "spec" in schema["properties"]
        defs = json.dumps(schema)
        for field in ("overrides", "model_name", "alias", "nproc", "tracking_uri"):
            assert field in defs
        assert "variants" in json.dumps(by_name["ablation"].parameter_openapi_schema)
        assert "heartbeat_interval" in json.dumps(by_name["study"].parameter_openapi_schema)
        assert by_name["ablation"].parameters["spec"]["variants"]
        # an invalid flow parameter is refused by the server before anything runs
        from prefect.exceptions import PrefectHTTPStatusError

        with pytest.raises((PrefectHTTPStatusError, Exception)) as e:
            prefect_read(
                lambda cl: cl.create_flow_run_from_deployment(by_name["pipeline"].id, parameters={"spec": {"nproc": 0}})
            )
        assert "nproc" in str(e.value) or "validation" in str(e.value).lower()
        # a run started from the deployment executes in the serving process and completes
        spec = {"params": str(tiny_params), "out": str(tmp_path / "served"), "register_model": False}
        fr = prefect_read(
            lambda cl: cl.create_flow_run_from_deployment(by_name["pipeline"].id, parameters={"spec": spec})
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = prefect_read(lambda cl: cl.read_flow_run(fr.id)).state
            if state.is_final():
                break
            time.sleep(2)
        assert state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        assert (tmp_path / "served" / "probe" / "probe.json").is_file()
        # the first SIGTERM stops the server and the runner it supervises
        children = [int(x) for x in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert children
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 20
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{c}").exists() for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [
            c for c in children if Path(f"/proc/{c}").exists() and "zombie" not in Path(f"/proc/{c}/status").read_text()
        ]
    finally:
        stop(proc, signal.SIGINT)


@pytest.mark.slow
def test_smoke_ablation_and_demo_leave_champion_by_the_rule(tiny_params: Path, tmp_path: Path, mlflow_uri: str) -> None:
    """One store, three kinds of run: the full run (the demo) takes @champion; a better-or-not
    smoke run (fewer steps, knn only) and an ablation variant register versions but leave it."""
    from flows.ablation import ablation
    from flows.params import AblationParams, PipelineParams
    from flows.pipeline import pipeline

    name = "rule-e2e"
    base = {"params": str(tiny_params), "model_name": name, "experiment": "rule-e2e"}
    demo = pipeline(PipelineParams(**base, out=str(tmp_path / "demo"), run_name="demo"))
    assert demo["kind"] == "train" and demo["promotion"]["moved"] and demo["model_uri"].endswith("/1")
    smoke = pipeline(PipelineParams(**base, out=str(tmp_path / "smoke"), run_name="smoke", overrides=["run.steps=2"]))
    assert smoke["kind"] == "smoke" and not smoke["promotion"]["moved"]
    abl = ablation(AblationParams(base=base, variants=[{"name": "late", "targets": [7, 8]}], out=str(tmp_path / "abl")))
    c = tracking.client()
    kids = c.search_runs(
        [c.get_experiment_by_name("rule-e2e").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{abl['parent_run_id']}'",
    )
    assert [r.data.tags[registry.TAG_KIND] for r in kids] == ["ablation"]
    assert c.get_model_version_by_alias(name, "champion").version == "1"
    assert len(c.search_model_versions(f"name='{name}'")) == 3
    text = Path(smoke["report"]).read_text()
    assert "smoke run is never promoted" in text and "compared like with like" in text


def test_bad_input_is_one_line(tiny_params: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> str:
        r = run_cmd([sys.executable, "-m", "flows.pipeline", "--params", str(tiny_params), *args], cwd=ROOT)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        return lines[0]

    assert "overrides" in cli("--set", "run.steps")
    assert "model.size" in cli("--set", "model.size=huge")
    assert "nproc" in cli("--nproc", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    assert f"tracking server {uri} unreachable" in cli("--tracking-uri", uri)


def test_stages_parse_arguments_without_prefect() -> None:
    """The DVC stages share the flows' command-line helpers but never import Prefect."""
    code = "import sys, flows.stages; sys.exit(1 if 'prefect' in sys.modules else 0)"
    r = run_cmd([sys.executable, "-c", code], cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_form_help_texts_survive_html() -> None:
    """Prefect renders field descriptions as HTML: no ``<placeholder>`` may vanish from them."""
    from flows.params import AblationParams, PipelineParams, StudyParams

    for model in (PipelineParams, AblationParams, StudyParams):
        for name, field in model.model_fields.items():
            assert "<" not in (field.description or ""), f"{model.__name__}.{name}: {field.description}"
