"""MLflow tracking for the flows: where runs go, runs with provenance tags, metrics streamed
from training, artifacts. The registry (versions, the ``@champion`` rule) is in
:mod:`flows.registry`.

Where runs go:

* ``MLFLOW_TRACKING_URI`` set (e.g. ``http://127.0.0.1:5000``): that server. It must answer
  at start, else :class:`~bootleg.errors.BootlegError` says so in one line.
* otherwise the embedded default: ``sqlite:///<project>/mlflow.db`` with artifacts in
  ``<project>/mlartifacts`` (``<project>``: :func:`flows.provenance.project_dir`).

Training never waits on the tracking server: :class:`MLflowCallback` hands each record to
MLflow's asynchronous logging (``log_batch(..., synchronous=False)``), whose HTTP client retries
with back-off for minutes, and samples ``system/*`` metrics with MLflow's own
``SystemMetricsMonitor``. ``tests/test_tracking.py`` takes the server away for 60 s mid-run
and checks that training carries on and every metric arrives. The run folder's
``metrics.jsonl`` always holds every record as well.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootleg.errors import BootlegError
from bootleg.schema import flatten
from flows.provenance import data_hash, dvc_data_md5, git_commit, project_dir

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "bootleg"
#: tags every run carries
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_DIRTY = "bootleg.git_dirty"
TAG_DATA_HASH = "bootleg.data_hash"
TAG_DATASET = "bootleg.dataset"
TAG_DVC_DATA = "bootleg.dvc_data_md5"
TAG_RUN_DIR = "bootleg.run_dir"
#: experiment tag that makes MLflow 3's UI open the experiment on its training runs (not GenAI)
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: MLflow's limits per ``log_batch`` call and on a param's length
MAX_BATCH = 1000
MAX_PARAMS = 100
MAX_PARAM_LEN = 6000


# ------------------------------------------------------------------ where runs go


def default_tracking_uri() -> str:
    return f"sqlite:///{project_dir() / 'mlflow.db'}"


def default_artifact_root() -> str:
    return (project_dir() / "mlartifacts").as_uri()


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message`` (at most 300 characters)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def quiet_mlflow() -> None:
    """No telemetry, no emoji links on every run end, no tqdm bars on downloads."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.model_registry.abstract_store"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise a one-line :class:`BootlegError` unless the server at ``uri`` answers ``/health``."""
    if not is_http(uri):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:  # noqa: S310
            if resp.status >= 400:
                raise OSError(f"HTTP {resp.status}")
    except (OSError, urllib.error.URLError) as e:
        raise BootlegError(
            f"tracking server {uri} unreachable ({getattr(e, 'reason', e)}); start it, or unset "
            "MLFLOW_TRACKING_URI to use the embedded sqlite store"
        ) from None


def configure(uri: str | None = None, check: bool = True) -> str:
    """Resolve ``tracking_uri(uri)`` (checking a server answers, creating the embedded store's
    folder) and return it. MLflow's process-wide URI is left alone: every call here passes
    the URI explicitly, so one flow's store never leaks into another's."""
    quiet_mlflow()
    resolved = tracking_uri(uri)
    if check:
        check_server(resolved)
    if resolved.startswith("sqlite:///"):
        Path(resolved[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return resolved


def client(uri: str | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    resolved = configure(uri, check=False)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def experiment_id(name: str = DEFAULT_EXPERIMENT, uri: str | None = None) -> str:
    """Id of experiment ``name``, created if missing (artifacts in ``mlartifacts/`` for the
    embedded store) and tagged as a model-training experiment for MLflow's UI."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        location = None if is_http(tracking_uri(uri)) else default_artifact_root() + f"/{name}"
        try:
            c.create_experiment(name, artifact_location=location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except Exception:  # created meanwhile by another process
            pass
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise BootlegError(f"MLflow experiment {name!r} could not be created in {tracking_uri(uri)}")
    if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
        c.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return exp.experiment_id


def experiment_url(ui: str, exp_id: str) -> str:
    """The experiment's page in the MLflow UI at ``ui``, on its training runs."""
    return f"{ui.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning"


# ------------------------------------------------------------------ runs


def flat_params(cfg: Any) -> dict[str, str]:
    """The flattened config as MLflow params (strings, at most ``MAX_PARAM_LEN`` long). A
    config's ``finetune:`` section is left out: the ``finetune-encoder`` task logs its resolved
    settings, under the same ``finetune.`` names, when it runs (MLflow params never change)."""
    flat = dict(cfg) if isinstance(cfg, Mapping) else flatten(cfg)
    if not isinstance(cfg, Mapping):
        flat = {k: v for k, v in flat.items() if not k.startswith("finetune.")}
    return {k: (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_LEN] for k, v in flat.items()}


def provenance_tags(cfg: Any, run_dir: str | Path | None = None) -> dict[str, str]:
    """Git commit (and whether the tree is dirty), dataset name and sha256, DVC data md5, run folder."""
    tags: dict[str, str] = {}
    commit, dirty = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
        tags[TAG_GIT_DIRTY] = str(dirty).lower()
    if cfg is not None:
        tags[TAG_DATASET] = str(cfg.data.name)
        if h := data_hash(cfg):
            tags[TAG_DATA_HASH] = h
        if md5 := dvc_data_md5():
            tags[TAG_DVC_DATA] = md5
    if run_dir is not None:
        tags[TAG_RUN_DIR] = str(Path(run_dir).resolve())
    return tags


def start_run(
    cfg: Any,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    run_dir: str | Path | None = None,
    uri: str | None = None,
) -> str:
    """Create a run with the flattened config as params and :func:`provenance_tags`; return
    its id. ``cfg`` may be ``None`` (a parent run for a study or ablation)."""
    resolved = configure(uri)
    all_tags = provenance_tags(cfg, run_dir)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.update(tags or {})
    run = client(resolved).create_run(experiment_id(experiment, resolved), run_name=run_name, tags=all_tags)
    if cfg is not None:
        log_params(run.info.run_id, flat_params(cfg), uri=resolved)
    return run.info.run_id


def log_params(run_id: str, params: Mapping[str, Any], uri: str | None = None) -> None:
    from mlflow.entities import Param

    items = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
    c = client(uri)
    for i in range(0, len(items), MAX_PARAMS):
        c.log_batch(run_id, params=items[i : i + MAX_PARAMS])


def set_tags(run_id: str, tags: Mapping[str, str], uri: str | None = None) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    """Mark the run ended; a failure to reach the server is a warning, never an error."""
    try:
        client(uri).set_terminated(run_id, status=status)
    except Exception as e:
        warnings.warn(f"tracking: could not mark run {run_id} {status} ({first_line(e)})", stacklevel=2)


def log_artifacts(run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None, uri=None) -> int:
    """Upload files or folders (missing ones are skipped); returns how many were sent."""
    c = client(uri)
    n = 0
    for p in map(Path, paths):
        if p.is_dir():
            c.log_artifacts(run_id, str(p), artifact_path)
        elif p.is_file():
            c.log_artifact(run_id, str(p), artifact_path)
        else:
            continue
        n += 1
    return n


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0, uri: str | None = None) -> None:
    """Log the finite numeric ``metrics`` at ``step`` (synchronously)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if finite(v)]
    c = client(uri)
    for i in range(0, len(items), MAX_BATCH):
        c.log_batch(run_id, metrics=items[i : i + MAX_BATCH])


def log_table(run_id: str, rows: list[dict[str, Any]], artifact_file: str, uri: str | None = None) -> None:
    """``rows`` as an MLflow table artifact (shown in the run's Artifacts and Evaluation views)."""
    import pandas as pd

    client(uri).log_table(run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)


# ------------------------------------------------------------------ the training callback


class MLflowCallback:
    """``pretrain(..., callbacks=[cb])``: each metrics record goes to run ``run_id`` through
    MLflow's asynchronous logging; ``system_every`` > 0 also starts MLflow's system-metrics
    monitor (CPU, memory, disk, network, GPU) on the run. ``cb(record)`` only enqueues and
    never raises into training. :meth:`close` waits for delivery (MLflow's HTTP client retries
    an unreachable server with back-off), resends what failed once, and returns how many
    metrics could not be delivered (they are in ``metrics.jsonl``)."""

    def __init__(self, run_id: str, uri: str | None = None, system_every: float = 10.0, progress: Any = None) -> None:
        self.run_id = run_id
        self.uri = configure(uri, check=False)
        self.progress = progress
        self._client = client(self.uri)
        self._pending: list[tuple[Any, list]] = []
        self.sent = 0
        self._monitor = None
        if system_every > 0:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(run_id, sampling_interval=system_every, tracking_uri=self.uri)
                self._monitor.start()
            except Exception as e:  # psutil missing etc.: no system metrics, training goes on
                log.warning("no system metrics: %s", first_line(e))

    def __call__(self, record: Mapping[str, Any]) -> None:
        try:
            from mlflow.entities import Metric

            step, now = int(record.get("step", 0)), int(time.time() * 1000)
            items = [Metric(k, float(v), now, step) for k, v in record.items() if k != "step" and finite(v)]
            if items:
                ops = self._client.log_batch(self.run_id, metrics=items, synchronous=False)
                self._pending.append((ops, items))
            if self.progress is not None:
                self.progress(record)
        except Exception as e:  # never into training
            log.warning("tracking callback: %s", first_line(e))

    def close(self) -> int:
        """Wait for every queued batch; resend failed ones once; return the undelivered count."""
        if self._monitor is not None:
            try:
                # MLflow's monitor publishes only after a full sampling interval: a run shorter than
                # that would leave no system metrics, so publish the sample of the end
                self._monitor.collect_metrics()
                self._monitor.publish_metrics(self._monitor.aggregate_metrics())
                self._monitor.finish()
            except Exception as e:
                log.warning("system metrics: %s", first_line(e))
        failed: list = []
        for ops, items in self._pending:
            try:
                ops.wait()
                self.sent += len(items)
            except Exception:
                failed.extend(items)
        self._pending = []
        left = 0
        for i in range(0, len(failed), MAX_BATCH):
            batch = failed[i : i + MAX_BATCH]
            try:
                self._client.log_batch(self.run_id, metrics=batch)
                self.sent += len(batch)
            except Exception as e:
                left += len(batch)
                why = first_line(e)
        if left:
            msg = (
                f"tracking server unreachable; {left} metrics of run {self.run_id} not delivered "
                f"(every record is in the run folder's metrics.jsonl; {why})"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
        return left

    def __enter__(self) -> MLflowCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
