"""The ``study`` flow: an Optuna study over target layers and chosen hyperparameters.

Search space: one boolean per teacher block (``target_block_<i>``; a trial that chooses none
is pruned at once as infeasible) and the ranges in ``float_params`` / ``choice_params``.
Each trial pretrains for ``steps`` steps (the schedules follow that total) and probes the
teacher ``rounds`` times; each probe accuracy is reported as an intermediate value, so the
median pruner stops poor trials early. Every trial is a nested MLflow run under the
study's parent run.

Storage is ``sqlite:///<project>/optuna.db`` by default; set ``BOOTLEG_OPTUNA_STORAGE=
postgresql+psycopg2://user:pass@host/db`` (or pass ``--storage`` without the password and
keep it in ``PGPASSWORD`` / ``~/.pgpass``) to share one study between many worker processes
or machines; see :mod:`flows.storage`. Trials heartbeat every ``heartbeat_interval`` s: a
trial whose worker dies is marked failed after ``grace_period`` s and retried (``max_retry``
times) by a live worker, and the dead attempt's MLflow run is marked FAILED.

    python -m flows.study run --study-name t1 --n-trials 8 --workers 2    # the flow
    python -m flows.study worker --study-name t1                          # join (storage from the env)
    optuna-dashboard postgresql+psycopg2://user@host/db                   # watch it
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from bootleg.errors import BootlegError
from flows import report, tracking
from flows.cli import add_common_args, run_cli, ui_commands
from flows.params import StudyParams, validate
from flows.storage import ENV_STORAGE, check_sqlite_folder, default_storage, public_url, redact, sqlalchemy_url

SPEC_ATTR = "bootleg_spec"
PARENT_ATTR = "mlflow_parent_run_id"
Objective = Callable[[Any, StudyParams, str | None], float]


def make_storage(url: str | None, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2):  # noqa: ANN201
    """An :class:`optuna.storages.RDBStorage` with heartbeats and retry of failed trials;
    an unreachable database is a one-line :class:`BootlegError`."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = url or default_storage()
    engine_url = sqlalchemy_url(url)
    check_sqlite_folder(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                engine_url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BootlegError(f"optuna storage {redact(url)} unreachable ({first[:200]})") from None


def create_study(spec: StudyParams):  # noqa: ANN201
    """Create study ``spec.study_name`` (or, with ``resume``, load it) and store ``spec`` in
    it so workers need only the storage and the name. A name clash is a one-line error."""
    import optuna

    storage = make_storage(spec.storage, spec.heartbeat_interval, spec.grace_period, spec.max_retry)
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(5, spec.n_trials))
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if spec.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            study_name=spec.study_name,
            storage=storage,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=spec.resume,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise BootlegError(
            f"study {spec.study_name!r} already exists in {redact(spec.storage or default_storage())}; "
            "pass --resume to add trials to it, or choose another --study-name"
        ) from None
    study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json", exclude={"storage"}))  # no password in the db
    return study


def check_new_name(spec: StudyParams) -> None:
    """Fail early (one line) when creating a study whose name is taken."""
    import optuna

    if spec.resume:
        return
    names = optuna.get_all_study_names(make_storage(spec.storage))
    if spec.study_name in names:
        raise BootlegError(
            f"study {spec.study_name!r} already exists in {redact(spec.storage or default_storage())}; "
            "pass --resume to add trials to it, or choose another --study-name"
        )


def load_study(study_name: str, storage: str | None):  # noqa: ANN201
    """Load an existing study (with the heartbeat settings it was created with)."""
    import optuna

    probe = make_storage(storage)
    try:
        attrs = optuna.load_study(study_name=study_name, storage=probe).user_attrs
    except KeyError:
        raise BootlegError(
            f"study {study_name!r} not found in {redact(storage or default_storage())}; create it with "
            "`python -m flows.study run` first"
        ) from None
    spec = validate(StudyParams, attrs.get(SPEC_ATTR) or {"study_name": study_name}, "study spec: ")
    if storage:
        spec.storage = storage
    st = make_storage(storage, spec.heartbeat_interval, spec.grace_period, spec.max_retry)
    sampler = optuna.samplers.TPESampler(seed=None, n_startup_trials=min(5, spec.n_trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if spec.pruner == "median" else optuna.pruners.NopPruner()
    return optuna.load_study(study_name=study_name, storage=st, sampler=sampler, pruner=pruner), spec


def resolve_objective(path: str | None) -> Objective:
    if not path:
        return pretrain_probe_objective
    mod, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise BootlegError(f"objective: cannot import {path!r} ({e}); expected module:function") from None


# ------------------------------------------------------------------ the trial


def trial_overrides(trial: Any, spec: StudyParams, depth: int) -> list[str]:
    """The trial's sampled config overrides (target blocks first)."""
    import optuna

    out: list[str] = []
    if spec.search_targets:
        chosen = [b for b in range(1, depth + 1) if trial.suggest_categorical(f"target_block_{b}", [True, False])]
        if not chosen:
            trial.set_user_attr("infeasible", "no target block chosen")
            raise optuna.TrialPruned("no target block chosen; at least one is needed")
        out.append(f"targets.blocks=[{','.join(map(str, chosen))}]")
    for key, rng in spec.float_params.items():
        out.append(f"{key}={trial.suggest_float(key, rng.low, rng.high, log=rng.log)!r}")
    for key, choices in spec.choice_params.items():
        out.append(f"{key}={json.dumps(trial.suggest_categorical(key, choices))}")
    return out


def pretrain_probe_objective(trial: Any, spec: StudyParams, run_id: str | None) -> float:
    """Short pretrain + ``spec.probe`` probe after each of ``spec.rounds`` segments; the
    probe score is reported as the intermediate value (pruning) and the last one returned."""
    import optuna

    from bootleg.config import load_config
    from bootleg.probe.runner import run_probes
    from bootleg.train import export_checkpoint, pretrain

    base = load_config(spec.params, spec.overrides)
    sampled = trial_overrides(trial, spec, base.model.depth)
    out = Path(spec.out or Path("runs") / "study" / spec.study_name) / f"trial-{trial.number:04d}"
    if out.exists():
        shutil.rmtree(out)  # a previous attempt of this trial number
    seg = max(1, spec.steps // spec.rounds)
    overrides = [
        *spec.overrides,
        *sampled,
        f"run.steps={spec.steps}",
        f"run.checkpoint_every={seg}",
        "run.log_every=1",
        "run.progress=false",
        f"run.out={out}",
    ]
    cfg = load_config(spec.params, overrides)
    trial.set_user_attr("overrides", sampled)
    trial.set_user_attr("run_dir", str(out))
    cb = tracking.MLflowCallback(run_id, uri=spec.tracking_uri) if run_id else None
    value = float("nan")
    try:
        for r in range(1, spec.rounds + 1):
            stop = seg * r if r < spec.rounds else None
            pretrain(cfg, out, resume=r > 1, callbacks=[cb] if cb else [], stop_at=stop)
            weights = export_checkpoint(out, out / f"round-{r}") if stop else out
            run_probes(
                weights, out / f"probe-{r}", cfg=getattr(cfg, "probe", None), probes=[spec.probe], seed=cfg.run.seed
            )
            rep = report.as_report(out / f"probe-{r}" / "probe.json")
            assert rep is not None
            key = report.headline_metric(rep, spec.metric)
            if key is None:
                raise BootlegError(f"metric {spec.metric!r} not in the probe results ({', '.join(rep.metrics())})")
            value = rep.metrics()[key]
            step = stop or spec.steps
            trial.report(value, step)
            if run_id:
                tracking.log_metrics(run_id, {key: value}, step=step, uri=spec.tracking_uri)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{key}={value:.2f} at step {step}")
    finally:
        if cb is not None:
            cb.close()
    return value


def run_trial(trial: Any, spec: StudyParams, objective: Objective, parent_run_id: str | None) -> float:
    """One trial inside its nested MLflow run (status follows the trial's outcome)."""
    import optuna

    trial.set_user_attr("worker_pid", os.getpid())
    close_dead_runs(trial.study, spec.tracking_uri)  # this may be the retry of a dead worker's trial
    run_id = None
    if parent_run_id:
        try:
            run_id = tracking.start_run(
                None,
                spec.experiment,
                run_name=f"{spec.study_name}-trial-{trial.number}",
                parent_run_id=parent_run_id,
                tags={"optuna.study": spec.study_name, "optuna.trial": str(trial.number)},
                uri=spec.tracking_uri,
            )
            trial.set_user_attr("mlflow_run_id", run_id)
        except Exception as e:  # tracking trouble must not cost the trial
            print(f"warning: trial {trial.number}: no MLflow run ({tracking.first_line(e)})", file=sys.stderr)
    status = "FAILED"
    try:
        value = objective(trial, spec, run_id)
        status = "FINISHED"
        return value
    except optuna.TrialPruned:
        status = "KILLED"
        raise
    finally:
        if run_id:
            try:
                tracking.log_params(run_id, trial.params, uri=spec.tracking_uri)
            except Exception:
                pass
            tracking.end_run(run_id, status, uri=spec.tracking_uri)


def close_dead_runs(study: Any, uri: str | None) -> int:
    """Mark FAILED the MLflow runs of failed trials (a dead worker's, failed by heartbeat)
    that are still RUNNING; returns how many were marked."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        rid = t.user_attrs.get("mlflow_run_id")
        if not rid:
            continue
        try:
            if tracking.client(uri).get_run(rid).info.status == "RUNNING":
                tracking.end_run(rid, "FAILED", uri=uri)
                n += 1
        except Exception as e:  # bookkeeping must not cost a trial
            print(f"warning: trial {t.number}: run {rid} not marked FAILED ({tracking.first_line(e)})", file=sys.stderr)
    return n


def work(study_name: str, storage: str | None, n_trials: int | None = None, log: Callable[[str], None] = print) -> int:
    """Run trials of an existing study until ``n_trials`` (default: the study's) have
    finished, then stay to take over trials of dead workers (retried after their grace
    period). Returns how many trials this worker ran."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    study, spec = load_study(study_name, storage)
    objective = resolve_objective(spec.objective)
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent or spec.tracking_uri:
        tracking.configure(spec.tracking_uri)
    target = n_trials or spec.n_trials
    ran = 0

    def func(trial: Any) -> float:
        nonlocal ran
        ran += 1
        return run_trial(trial, spec, objective, parent)

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    stop = MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED))

    def too_many_failures(st: Any, _trial: Any) -> None:
        # trials that raised (or whose worker died): give up after as many failures as the
        # study has trials, rather than loop forever on a broken config
        failed = st.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if len(failed) >= max(3, target):
            log(f"worker {os.getpid()}: {len(failed)} trials failed; stopping")
            st.stop()

    if finished() < target:
        study.optimize(func, callbacks=[stop, too_many_failures], catch=(Exception,))
    # drain: take over trials of workers that died (stale heartbeat -> failed -> retried)
    patience = spec.grace_period + 3 * spec.heartbeat_interval
    deadline = time.monotonic() + patience
    while True:
        optuna.storages.fail_stale_trials(study)
        close_dead_runs(study, spec.tracking_uri)
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if waiting:
            log(f"worker {os.getpid()}: running {len(waiting)} retried trial(s)")
            study.optimize(func, n_trials=len(waiting), catch=(Exception,))
            deadline = time.monotonic() + patience
            continue
        if not running or time.monotonic() > deadline:
            break
        time.sleep(min(spec.heartbeat_interval, 2))
    return ran


# ------------------------------------------------------------------ summaries


def trials_table(study: Any) -> tuple[list[str], list[dict[str, Any]]]:
    from bootleg.config import flatten  # noqa: F401 - keeps the import graph honest

    params = sorted({k for t in study.trials for k in t.params})
    targets = [p for p in params if p.startswith("target_block_")]
    others = [p for p in params if p not in targets]
    columns = ["Trial", "State", "Value", "Targets", *others, "Retry of", "MLflow run"]
    rows = []
    for t in study.trials:
        chosen = [p.rsplit("_", 1)[-1] for p in targets if t.params.get(p)]
        rows.append(
            {
                "Trial": t.number,
                "State": t.state.name,
                "Value": t.value,
                "Targets": ",".join(chosen),
                **{p: t.params.get(p) for p in others},
                "Retry of": t.system_attrs.get("failed_trial", ""),
                "MLflow run": t.user_attrs.get("mlflow_run_id", ""),
            }
        )
    return columns, rows


@flow(name="study", log_prints=True)
def study(spec: StudyParams = StudyParams()) -> dict[str, Any]:  # noqa: B008 - pydantic default
    """Create the study, run ``workers`` worker processes until ``n_trials`` trials have
    finished, and publish the trials table (Prefect table artifact, MLflow artifact)."""
    from optuna.trial import TrialState

    spec = validate(StudyParams, spec)
    logger = get_run_logger()
    tracking.configure(spec.tracking_uri)
    st = create_study(spec)
    parent = st.user_attrs.get(PARENT_ATTR)
    if not parent:
        parent = tracking.start_run(
            None,
            spec.experiment,
            run_name=f"study-{spec.study_name}",
            tags={"optuna.study": spec.study_name},
            uri=spec.tracking_uri,
        )
        st.set_user_attr(PARENT_ATTR, parent)
    storage = spec.storage or default_storage()
    try:
        progress = create_progress_artifact(0.0, description=f"study {spec.study_name}: finished trials")
    except Exception:
        progress = None
    env = {**os.environ, ENV_STORAGE: storage}  # the full URL (password included) only in the environment
    if spec.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    cmd = [sys.executable, "-m", "flows.study", "worker", "--study-name", spec.study_name]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(spec.workers)]
    logger.info("%d worker(s) on %s", spec.workers, public_url(storage))
    while any(p.poll() is None for p in procs):
        done = len(st.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        if progress is not None:
            try:
                update_progress_artifact(progress, min(100.0, 100.0 * done / spec.n_trials))
            except Exception:
                pass
        time.sleep(2)
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        logger.warning("%d worker(s) exited with errors: %s", len(bad), bad)
    columns, rows = trials_table(st)
    out = Path(spec.out or Path("runs") / "study" / spec.study_name)
    out.mkdir(parents=True, exist_ok=True)
    md = report.to_markdown(columns, rows, f"Study {spec.study_name}")
    (out / "trials.md").write_text(md)
    (out / "trials.csv").write_text(report.to_csv(columns, rows))
    try:
        create_table_artifact(
            report.table_records(columns, rows),
            key=f"study-{spec.study_name.lower().replace('_', '-').replace('.', '-')}",
        )
        create_markdown_artifact(md, description=f"study {spec.study_name}")
    except Exception:
        pass
    close_dead_runs(st, spec.tracking_uri)
    scored = [r for r in rows if isinstance(r.get("Value"), (int, float))]
    paths = [out / "trials.md", out / "trials.csv"]
    if scored:
        paths.append(report.plot_scores(["Trial", "Value"], scored, out / "comparison.png", f"study {spec.study_name}"))
    tracking.log_artifacts(parent, paths, uri=spec.tracking_uri)
    tracking.log_table(parent, report.table_records(columns, rows), "comparison.json", uri=spec.tracking_uri)
    states = {s.name: len(st.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    summary: dict[str, Any] = {
        "study_name": spec.study_name,
        "storage": public_url(storage),
        "states": states,
        "parent_run_id": parent,
    }
    try:
        best = st.best_trial
        summary.update(best_value=best.value, best_params=best.params, best_trial=best.number)
        tracking.log_metrics(parent, {"best_value": best.value}, uri=spec.tracking_uri)
    except ValueError:
        pass
    tracking.end_run(parent, uri=spec.tracking_uri)
    return summary


# ------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.study", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="create a study and run it with --workers local workers (the Prefect flow)")
    add_common_args(r)
    r.add_argument("--study-name")
    r.add_argument(
        "--storage",
        help=f"sqlite:///... or postgresql+psycopg2://user@host/db (default: ${ENV_STORAGE}, else optuna.db)",
    )
    r.add_argument("--resume", action="store_true", help="add trials to an existing study")
    r.add_argument("--n-trials", type=int)
    r.add_argument("--workers", type=int)
    r.add_argument("--steps", type=int, help="pretraining steps per trial")
    r.add_argument("--rounds", type=int, help="probe evaluations per trial")
    r.add_argument(
        "--float", action="append", default=[], metavar="KEY=LOW:HIGH[:log]", help="continuous hyperparameter"
    )
    r.add_argument("--choice", action="append", default=[], metavar="KEY=A,B,...", help="categorical hyperparameter")
    r.add_argument("--no-targets", action="store_true", help="do not search the target blocks")
    r.add_argument("--probe")
    r.add_argument("--out")
    r.add_argument("--objective", help=argparse.SUPPRESS)
    r.add_argument("--json", action="store_true")
    w = sub.add_parser("worker", help="join an existing study (any machine that reaches the storage)")
    w.add_argument("--study-name", required=True)
    w.add_argument("--storage", help=f"default: ${ENV_STORAGE}, else sqlite:///<project>/optuna.db")
    w.add_argument("--n-trials", type=int, help="stop after this many finished trials (default: the study's)")
    a = p.parse_args(argv)
    if a.cmd == "worker":
        n = work(a.study_name, a.storage, a.n_trials)
        print(f"worker {os.getpid()}: ran {n} trial(s)")
        return 0
    raw: dict[str, Any] = {"params": a.params, "overrides": a.set, "resume": a.resume}
    for key in (
        "study_name",
        "storage",
        "n_trials",
        "workers",
        "steps",
        "rounds",
        "probe",
        "out",
        "objective",
        "tracking_uri",
        "experiment",
    ):
        if getattr(a, key) is not None:
            raw[key] = getattr(a, key)
    if a.no_targets:
        raw["search_targets"] = False
    if a.float:
        raw["float_params"] = {}
        for item in a.float:
            key, _, rng = item.partition("=")
            parts = rng.split(":")
            if len(parts) not in (2, 3):
                raise BootlegError(f"--float {item!r}: expected KEY=LOW:HIGH[:log]")
            try:
                raw["float_params"][key] = {
                    "low": float(parts[0]),
                    "high": float(parts[1]),
                    "log": parts[2:] == ["log"],
                }
            except ValueError:
                raise BootlegError(f"--float {item!r}: LOW and HIGH must be numbers") from None
    if a.choice:
        import yaml

        raw["choice_params"] = {
            k: [yaml.safe_load(x) for x in v.split(",")] for k, _, v in (c.partition("=") for c in a.choice)
        }
    spec = validate(StudyParams, raw)
    from bootleg.config import load_config

    load_config(spec.params, spec.overrides)
    tracking.configure(spec.tracking_uri)
    check_new_name(spec)  # unreachable database or a name clash: one line, before Prefect starts
    summary = study(spec)
    if a.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(json.dumps(summary, indent=2, default=str))
        print("\nWatch it:\n  " + "\n  ".join(ui_commands(spec.storage)))
    return 0


if __name__ == "__main__":
    run_cli(main)
