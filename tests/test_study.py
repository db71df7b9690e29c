"""Optuna studies: two worker processes on PostgreSQL (one killed mid-trial, its trial
retried through heartbeats), a name clash, and the real pretrain + probe trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cmd

from bootleg.errors import BootlegError
from flows import storage, tracking
from flows.cli import ui_commands
from flows.params import StudyParams
from flows.study import PARENT_ATTR, create_study, load_study

TESTS = Path(__file__).resolve().parent


def worker_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", **extra}


def test_two_workers_on_postgres_retry_killed_trial(pg_url: str, mlflow_uri: str, tmp_path: Path) -> None:
    from optuna.trial import TrialState

    name = f"pg-{uuid.uuid4().hex[:8]}"
    spec = StudyParams(
        params=str(ROOT / "params.yaml"),
        study_name=name,
        storage=pg_url,
        n_trials=6,
        rounds=3,
        float_params={},
        heartbeat_interval=1,
        grace_period=4,
        max_retry=2,
        objective="study_objectives:toy",
        tracking_uri=mlflow_uri,
        experiment="pg-study",
        out=str(tmp_path / "study"),
    )
    st = create_study(spec)
    parent = tracking.start_run(None, spec.experiment, run_name=name, uri=mlflow_uri)
    st.set_user_attr(PARENT_ATTR, parent)
    cmd = [sys.executable, "-m", "flows.study", "worker", "--study-name", name]  # storage from the env
    env = worker_env(BOOTLEG_TOY_SLEEP="0.6", BOOTLEG_OPTUNA_STORAGE=pg_url)
    logs = [open(tmp_path / f"w{i}.log", "wb") for i in range(2)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
    victim = procs[0]
    secret = f":{storage.password(pg_url)}@"  # the test cluster's user and password are both "bootleg"
    for p in procs:  # what `ps` shows
        assert secret not in Path(f"/proc/{p.pid}/cmdline").read_bytes().decode().replace("\0", " ")
    try:
        deadline = time.monotonic() + 90
        killed_trial = None
        while time.monotonic() < deadline and killed_trial is None:
            for t in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.user_attrs.get("worker_pid") == victim.pid and t.intermediate_values:
                    victim.send_signal(signal.SIGKILL)  # mid-trial: it has reported a round already
                    killed_trial = t.number
                    break
            time.sleep(0.1)
        assert killed_trial is not None, "the victim never ran a trial"
        victim.wait(10)
        assert procs[1].wait(180) == 0, (tmp_path / "w1.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()

    study, _ = load_study(name, pg_url)
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    assert [t.number for t in by_state[TrialState.FAIL]] == [killed_trial]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == trials[killed_trial].params
    finished = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]
    assert len(finished) >= spec.n_trials
    assert {t.user_attrs["worker_pid"] for t in finished} == {procs[1].pid} | (
        {victim.pid} if any(t.user_attrs["worker_pid"] == victim.pid for t in finished) else set()
    )
    # every trial is a nested MLflow run under the study's parent run
    c = tracking.client(mlflow_uri)
    exp = c.get_experiment_by_name("pg-study")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == len(trials)
    assert {r.info.status for r in runs if r.data.tags["optuna.trial"] != str(killed_trial)} <= {"FINISHED", "KILLED"}
    # the dead worker's run does not stay RUNNING: it is marked FAILED when its trial is retried
    dead = [r for r in runs if r.data.tags["optuna.trial"] == str(killed_trial)]
    assert [r.info.status for r in dead] == ["FAILED"]


def test_printed_postgres_url_works_and_hides_the_password(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed dashboard command's URL loads the study with the installed driver
    (psycopg2), with the password from PGPASSWORD; no printed line shows the password."""
    import optuna

    name = f"url-{uuid.uuid4().hex[:8]}"
    create_study(StudyParams(study_name=name, storage=pg_url))
    monkeypatch.setenv("BOOTLEG_OPTUNA_STORAGE", pg_url)
    lines = ui_commands()
    password = storage.password(pg_url)
    secret = f":{password}@"  # the test cluster's user and password are both "bootleg"
    assert password and not any(secret in line for line in lines)
    dash = next(line for line in lines if line.startswith("Optuna dashboard:"))
    url = dash.split()[3]
    assert url.startswith("postgresql+psycopg2://") and "@127.0.0.1" in url
    monkeypatch.setenv("PGPASSWORD", password)
    assert optuna.load_study(study_name=name, storage=url).study_name == name
    r = run_cmd(
        [sys.executable, "-m", "flows.study", "run", "--study-name", name],
        cwd=ROOT,
        env=worker_env(BOOTLEG_OPTUNA_STORAGE=pg_url),
    )
    assert r.returncode == 2 and "already exists" in r.stderr and secret not in r.stderr + r.stdout


def test_storage_urls() -> None:
    url = "postgresql://u:s3cret@127.0.0.1:5432/db"
    assert storage.sqlalchemy_url(url) == "postgresql+psycopg2://u:s3cret@127.0.0.1:5432/db"
    assert storage.public_url(url) == "postgresql+psycopg2://u@127.0.0.1:5432/db"
    assert storage.redact(url) == "postgresql://u:***@127.0.0.1:5432/db"
    assert "PGPASSWORD" in storage.dashboard_command(url)
    assert "s3cret" not in storage.dashboard_command(url)
    assert storage.public_url("sqlite:///x/optuna.db") == "sqlite:///x/optuna.db"


def test_sqlite_storage_in_missing_folder_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "optuna.db"
    with pytest.raises(BootlegError, match="does not exist"):
        create_study(StudyParams(study_name="x", storage=f"sqlite:///{missing}"))
    assert not missing.parent.exists()
    line = storage.dashboard_command(f"sqlite:///{tmp_path / 'later.db'}")
    assert "appears when the first study runs" in line


def test_study_name_clash_is_one_line(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = StudyParams(study_name="clash", storage=storage)
    create_study(spec)
    with pytest.raises(BootlegError) as e:
        create_study(spec)
    assert "\n" not in str(e.value) and "already exists" in str(e.value) and "--resume" in str(e.value)
    create_study(spec.model_copy(update={"resume": True}))  # joining is fine
    r = run_cmd(
        [sys.executable, "-m", "flows.study", "run", "--study-name", "clash", "--storage", storage],
        cwd=ROOT,
        env=worker_env(),
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: study 'clash' already exists in {storage}; pass --resume to add trials to it, or choose another --study-name"
    ]
    bad = run_cmd(
        [sys.executable, "-m", "flows.study", "run", "--storage", "postgresql://nobody:x@127.0.0.1:1/none"],
        cwd=ROOT,
        env=worker_env(),
    )
    assert bad.returncode == 2 and "unreachable" in bad.stderr and "nobody:***@" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_study_flow_real_trials(tmp_path: Path, prefect_api: str) -> None:
    """The flow with the real objective: short pretrain, kNN probe after each of 2 rounds
    (intermediate values), nested MLflow runs in the embedded store."""
    from flows.study import study

    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "model": {"size": "micro", "img_size": 32, "patch_size": 4},
                "optim": {"epochs": 100, "warmup_epochs": 1, "batch_size": 16, "lr_ref_batch": None},
                "data": {"name": "embedded", "limit": 128},
                "run": {"seed": 0},
                "probe": {"probes": ["knn"], "limit": 128, "test_limit": 64, "knn": {"ks": [5]}},
            }
        )
    )
    summary = study(
        StudyParams(
            params=str(params),
            study_name="real",
            storage=f"sqlite:///{tmp_path / 'optuna.db'}",
            n_trials=2,
            steps=4,
            rounds=2,
            out=str(tmp_path / "trials"),
            experiment="study-real",
        )
    )
    assert summary["states"]["COMPLETE"] + summary["states"]["PRUNED"] >= 2
    assert 0 <= summary["best_value"] <= 100
    st, _ = load_study("real", f"sqlite:///{tmp_path / 'optuna.db'}")
    done = [t for t in st.trials if t.state.name == "COMPLETE"]
    assert done and all(sorted(t.intermediate_values) == [2, 4] for t in done)
    assert any(k.startswith("target_block_") for k in done[0].params)
    assert (tmp_path / "trials" / "trials.md").is_file()
    c = tracking.client()
    parent = c.get_run(summary["parent_run_id"])
    kids = c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(kids) == len(st.trials)
    assert any("loss" in r.data.metrics for r in kids)
    # the study's comparison as MLflow shows it: a table and a chart on the parent run
    assert {"trials.md", "trials.csv", "comparison.json", "comparison.png"} <= {
        a.path for a in c.list_artifacts(parent.info.run_id)
    }


def test_optuna_dashboard_serves_the_storage(tmp_path: Path) -> None:
    """The documented `optuna-dashboard <storage>` command opens the study store."""
    import signal as sig

    from conftest import free_port, stop, wait_http

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    create_study(StudyParams(study_name="dash", storage=storage))
    port = free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), storage, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", 60, proc, log)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
            assert "dash" in r.read().decode()
    finally:
        stop(proc, sig.SIGTERM)
