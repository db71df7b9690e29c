"""The paper's experiment files run end to end through the ablation flow at micro scale on CPU,
in order, N at once, or through a Prefect work pool with a real worker; the table shows our
scores beside the paper's.

Each file runs a few of its rows here (``--rows``), two optimiser steps each; the rows' configs
are all resolved by ``tests/test_experiments.py``. ``python -m flows.ablation --variants FILE``
with the same ``--set`` items runs every row.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.ablation import main as ablation_main

ROOT = Path(__file__).resolve().parents[1]
#: its own name: the session's Prefect server also serves a "pipeline" deployment (tests/test_flows.py)
DEPLOYMENT = "pipeline-on-test-pool"
FILES = sorted((ROOT / "experiments").glob("*.yaml"))
MICRO = [
    "model.size=micro",
    "model.img_size=32",
    "model.patch_size=4",
    "run.steps=2",
    "optim.batch_size=16",
    "run.log_every=1",
    "run.progress=false",
    "probe.limit=160",
    "probe.test_limit=80",
]


def run_file(path: Path, out: Path, rows: str, *extra: str) -> Path:
    argv = ["--variants", str(path), "--rows", rows, "--out", str(out), "--probes", "linear_patch", "--no-register"]
    for item in MICRO:
        argv += ["--set", item]
    assert ablation_main([*argv, *extra]) == 0
    return out


def rows_of(out: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(out / "ablation.csv") as f:
        return {r["Variant"]: r for r in csv.DictReader(f)}


@contextlib.contextmanager
def talking_to(server):
    """This process (its Prefect settings) and the processes it starts (their environment) talk
    to the test's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


@pytest.fixture
def on_server(prefect_server):
    with talking_to(prefect_server) as s:
        yield s


@pytest.fixture(scope="module")
def table2_in_order(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Path:
    with talking_to(prefect_server):
        return run_file(ROOT / "experiments/table2-targets.yaml", tmp_path_factory.mktemp("t2-seq"), "0,1")


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_experiment_file_runs_and_makes_its_table(path: Path, tmp_path: Path, on_server) -> None:
    out = run_file(path, tmp_path / path.stem, "0,1")
    md = (out / "ablation.md").read_text()
    table = rows_of(out)
    assert len([v for v in table if not v.endswith("(paper only)")]) == 2
    assert all(0 <= float(r["Patch"]) <= 100 for v, r in table.items() if not v.endswith("(paper only)"))
    import yaml

    doc = yaml.safe_load(path.read_text())
    if any(c.get("probe") == "linear_patch" for c in (doc.get("columns") or {}).values()):
        assert "Patch (paper)" in md  # the paper's number beside ours
        first = doc["variants"][0]
        key = next(k for k, c in doc["columns"].items() if c.get("probe") == "linear_patch")
        if (first.get("paper") or {}).get(key) is not None:
            assert f"{first['paper'][key]:.1f}" in md


@pytest.mark.slow
def test_parallel_variants_give_the_same_table(table2_in_order: Path, tmp_path: Path, on_server) -> None:
    par = run_file(ROOT / "experiments/table2-targets.yaml", tmp_path / "t2-par", "0,1", "--parallel", "2")
    a, b = rows_of(table2_in_order), rows_of(par)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["Patch"] == b[name]["Patch"] and a[name]["Final loss"] == b[name]["Final loss"], name


@pytest.mark.slow
def test_variants_through_a_work_pool_with_a_real_worker(table2_in_order: Path, tmp_path: Path, on_server) -> None:
    from prefect import flow

    env = {**on_server.client_env(), "PYTHONPATH": str(ROOT)}
    prefect = str(Path(sys.executable).parent / "prefect")
    pool = "ablation-test-pool"
    subprocess.run(
        [prefect, "work-pool", "create", pool, "--type", "process"], env=env, check=True, capture_output=True
    )
    flow.from_source(source=str(ROOT), entrypoint="flows/pipeline.py:pipeline").deploy(
        name=DEPLOYMENT, work_pool_name=pool, build=False, push=False, print_next_steps=False, ignore_warnings=True
    )
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [prefect, "worker", "start", "--pool", pool, "--type", "process"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        out = run_file(
            ROOT / "experiments/table2-targets.yaml",
            tmp_path / "t2-pool",
            "0,1",
            "--pool-deployment",
            f"pipeline/{DEPLOYMENT}",
        )
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=60)
        log.close()
    assert rows_of(out).keys() == rows_of(table2_in_order).keys()
    a, b = rows_of(table2_in_order), rows_of(out)
    for name in a:  # same configs, same seeds: the worker's runs match the local ones
        assert a[name]["Patch"] == b[name]["Patch"], name
    assert "pipeline" in (tmp_path / "worker.log").read_text()
