"""MLflow tracking, registry and model download: the only module in ``bootleg`` that
imports :mod:`mlflow` (lazily, so the library works without it).

Where runs go:

* ``MLFLOW_TRACKING_URI`` set (e.g. ``http://127.0.0.1:5000``): that server. It must answer
  at start, else :class:`~bootleg.errors.BootlegError` says so in one line.
* otherwise the embedded default: ``sqlite:///<project>/mlflow.db`` with artifacts in
  ``<project>/mlartifacts`` (``<project>`` is ``BOOTLEG_PROJECT_DIR``, else the checkout
  that holds this package, else the working directory). ``mlflow ui --backend-store-uri
  sqlite:///mlflow.db`` opens it.

Training never waits on the tracking server: :class:`MLflowCallback` queues metrics and a
background thread sends them in batches. When the server cannot be reached the metrics are
kept (bounded) and retried with back-off, with one warning ``tracking server unreachable;
buffering N metrics``; the run folder's ``metrics.jsonl`` always holds every record.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootleg.errors import BootlegError

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
#: most metrics one REST ``log-batch`` call may carry (MLflow's limit)
MAX_BATCH = 1000
#: params per batch (MLflow's limit) and longest param value
MAX_PARAMS = 100
MAX_PARAM_LEN = 6000


# ------------------------------------------------------------------ where runs go


def project_dir() -> Path:
    """The project folder the embedded store lives in."""
    env = os.environ.get("BOOTLEG_PROJECT_DIR")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").is_file():
        return here
    return Path.cwd().resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{project_dir() / 'mlflow.db'}"


def default_artifact_root() -> str:
    return (project_dir() / "mlartifacts").as_uri()


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _quiet_mlflow() -> None:
    """No telemetry, no emoji links on every run end, no tqdm bars on downloads."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.model_registry.abstract_store").setLevel(logging.WARNING)


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise a one-line :class:`BootlegError` unless the server at ``uri`` answers ``/health``."""
    if not _is_http(uri):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given tracking URI
            if resp.status >= 400:
                raise OSError(f"HTTP {resp.status}")
    except (OSError, urllib.error.URLError) as e:
        reason = getattr(e, "reason", e)
        raise BootlegError(
            f"tracking server {uri} unreachable ({reason}); start it, or unset MLFLOW_TRACKING_URI "
            "to use the embedded sqlite store"
        ) from None


def configure(uri: str | None = None, check: bool = True) -> str:
    """Point MLflow at ``tracking_uri(uri)`` (registry too) and return that URI."""
    import mlflow

    _quiet_mlflow()
    resolved = tracking_uri(uri)
    if check:
        check_server(resolved)
    if resolved.startswith("sqlite:///"):
        Path(resolved[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved


def client(uri: str | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    resolved = configure(uri, check=False)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def experiment_id(name: str = DEFAULT_EXPERIMENT, uri: str | None = None) -> str:
    """Id of experiment ``name``, created if missing (artifacts in ``mlartifacts/`` for the
    embedded store; the server's artifact store otherwise)."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = default_artifact_root() + f"/{name}" if not _is_http(tracking_uri(uri)) else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ------------------------------------------------------------------ provenance


def git_commit(cwd: str | Path | None = None) -> tuple[str | None, bool]:
    """``(commit, dirty)`` of the checkout at ``cwd`` (default: the one holding this package,
    else the working directory; read-only git calls); ``(None, False)`` outside git."""
    if cwd is None:
        here = Path(__file__).resolve().parents[1]
        cwd = here if (here / ".git").exists() else Path.cwd()
    cwd = Path(cwd)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit or None, bool(status)


def data_hash(cfg: Any) -> str | None:
    """sha256 fingerprint of the config's dataset (``bootleg.data.dataset_fingerprint``);
    ``None`` if it cannot be computed (the reason is logged)."""
    try:
        from bootleg.data import dataset_fingerprint

        return dataset_fingerprint(cfg.data.name, cfg.data.root)
    except Exception as e:  # a missing dataset must not stop tracking
        log.warning("no data hash for %s: %s", getattr(getattr(cfg, "data", None), "name", "?"), e)
        return None


def dvc_data_md5(root: str | Path | None = None) -> str | None:
    """md5 that ``dvc.lock`` records for the ``prepare`` stage's output (the DVC hash of the
    prepared data), if this checkout has run the DVC pipeline."""
    lock = Path(root or Path.cwd()) / "dvc.lock"
    if not lock.is_file():
        lock = project_dir() / "dvc.lock"
    try:
        import yaml

        outs = yaml.safe_load(lock.read_text())["stages"]["prepare"]["outs"]
        return str(outs[0]["md5"])
    except Exception:
        return None


def flat_params(cfg: Any) -> dict[str, str]:
    """The flattened config as MLflow params (strings, at most ``MAX_PARAM_LEN`` long)."""
    from bootleg.config import flatten

    flat = flatten(cfg) if not isinstance(cfg, Mapping) else dict(cfg)
    out = {}
    for k, v in flat.items():
        text = v if isinstance(v, str) else json.dumps(v)
        out[k] = text[:MAX_PARAM_LEN]
    return out


# ------------------------------------------------------------------ runs


def start_run(
    cfg: Any,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    run_dir: str | Path | None = None,
    uri: str | None = None,
) -> str:
    """Create a run with the flattened config as params and the git commit and DVC data hash
    as tags; return its id. ``cfg`` may be ``None`` (a parent run for a study or ablation)."""
    from mlflow.entities import Param

    resolved = configure(uri)
    c = client(resolved)
    all_tags: dict[str, str] = {}
    commit, dirty = git_commit()
    if commit:
        all_tags[TAG_GIT_COMMIT] = commit
        all_tags[TAG_GIT_DIRTY] = str(dirty).lower()
    if cfg is not None:
        all_tags[TAG_DATASET] = str(cfg.data.name)
        h = data_hash(cfg)
        if h:
            all_tags[TAG_DATA_HASH] = h
        md5 = dvc_data_md5()
        if md5:
            all_tags[TAG_DVC_DATA] = md5
    if run_dir is not None:
        all_tags[TAG_RUN_DIR] = str(Path(run_dir).resolve())
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.update(tags or {})
    run = c.create_run(experiment_id(experiment, resolved), run_name=run_name, tags=all_tags)
    rid = run.info.run_id
    if cfg is not None:
        items = [Param(k, v) for k, v in flat_params(cfg).items()]
        for i in range(0, len(items), MAX_PARAMS):
            c.log_batch(rid, params=items[i : i + MAX_PARAMS])
    return rid


def end_run(run_id: str, status: str = "FINISHED", uri: str | None = None) -> None:
    """Mark the run ended; a failure to reach the server is a warning, never an error."""
    try:
        client(uri).set_terminated(run_id, status=status)
    except Exception as e:
        warnings.warn(f"tracking: could not mark run {run_id} {status} ({_first_line(e)})", stacklevel=2)


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


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0, uri: str | None = None) -> None:
    """Log finite numeric ``metrics`` at ``step`` in one call."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
    c = client(uri)
    for i in range(0, len(items), MAX_BATCH):
        c.log_batch(run_id, metrics=items[i : i + MAX_BATCH])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# ------------------------------------------------------------------ the training callback


class MLflowCallback:
    """``pretrain(..., callbacks=[cb])``: sends each metrics record to run ``run_id``.

    ``cb(record)`` only appends to a queue; a daemon thread sends batches every
    ``flush_every`` seconds (or at ``batch_size`` records). Failed sends keep the metrics
    (at most ``max_buffer``, oldest dropped first) and are retried with back-off up to
    ``max_backoff`` seconds; the first failure warns once ``tracking server unreachable;
    buffering N metrics``, and recovery is logged. Nothing here ever raises into training.
    ``system_every`` > 0 also samples CPU, memory and CUDA use as ``system/*`` metrics.
    Call :meth:`close` (or use as a context manager) to flush at the end.
    """

    def __init__(
        self,
        run_id: str,
        uri: str | None = None,
        flush_every: float = 2.0,
        batch_size: int = 200,
        max_buffer: int = 200_000,
        max_backoff: float = 30.0,
        request_timeout: float = 5.0,
        system_every: float = 10.0,
        progress: Any | None = None,
    ) -> None:
        self.run_id = run_id
        self.uri = tracking_uri(uri)
        self.flush_every = flush_every
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self.system_every = system_every
        self.progress = progress
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failures = 0
        self._next_try = 0.0
        self._warned = False
        self.dropped = 0
        self.sent = 0
        self._last_system = 0.0
        self._proc = None
        self._client: Any = None
        self._thread = threading.Thread(target=self._loop, name="bootleg-mlflow", daemon=True)
        self._thread.start()

    # -- called from training (rank 0)
    def __call__(self, record: Mapping[str, Any]) -> None:
        try:
            step = int(record.get("step", 0))
            now = int(time.time() * 1000)
            items = [(k, float(v), now, step) for k, v in record.items() if k != "step" and _finite(v)]
            with self._lock:
                self._queue.extend(items)
                over = len(self._queue) - self.max_buffer
                for _ in range(max(0, over)):
                    self._queue.popleft()
                    self.dropped += 1
                big = len(self._queue) >= self.batch_size
            if big:
                self._wake.set()
            if self.progress is not None:
                self.progress(record)
        except Exception as e:  # never into training
            log.debug("tracking callback: %s", e)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- the sender thread
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_every)
            self._wake.clear()
            self._sample_system()
            self._flush_once()

    def _sample_system(self) -> None:
        if self.system_every <= 0 or time.monotonic() - self._last_system < self.system_every:
            return
        self._last_system = time.monotonic()
        try:
            sample = system_metrics(self)
        except Exception as e:
            log.debug("system metrics: %s", e)
            return
        now = int(time.time() * 1000)
        step = int(self._last_system)
        with self._lock:
            self._queue.extend((k, v, now, step) for k, v in sample.items())

    def _flush_once(self, force: bool = False) -> bool:
        """Send what is queued; ``False`` if the server could not be reached."""
        if not force and time.monotonic() < self._next_try:
            return False
        while True:
            with self._lock:
                batch = [self._queue[i] for i in range(min(MAX_BATCH, len(self._queue)))]
            if not batch:
                return True
            try:
                self._send(batch)
            except Exception as e:
                self._failures += 1
                delay = min(self.max_backoff, self.flush_every * 2 ** min(self._failures, 8))
                self._next_try = time.monotonic() + delay
                if not self._warned:
                    self._warned = True
                    msg = (
                        f"tracking server unreachable; buffering {self.pending} metrics "
                        f"(retrying every <= {self.max_backoff:.0f} s; {_first_line(e)})"
                    )
                    warnings.warn(msg, RuntimeWarning, stacklevel=1)
                    log.warning(msg)
                return False
            with self._lock:
                for _ in range(len(batch)):
                    self._queue.popleft()
            self.sent += len(batch)
            if self._failures:
                log.warning("tracking server reachable again; sent buffered metrics")
                self._failures = 0
                self._warned = False
                self._next_try = 0.0

    def _send(self, batch: list[tuple[str, float, int, int]]) -> None:
        if _is_http(self.uri):
            from mlflow.utils.credentials import get_default_host_creds
            from mlflow.utils.rest_utils import http_request

            body = {
                "run_id": self.run_id,
                "metrics": [{"key": k, "value": v, "timestamp": t, "step": s} for k, v, t, s in batch],
            }
            resp = http_request(
                get_default_host_creds(self.uri),
                "/api/2.0/mlflow/runs/log-batch",
                "POST",
                max_retries=0,
                timeout=self.request_timeout,
                json=body,
            )
            if resp.status_code != 200:
                raise OSError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        else:
            from mlflow.entities import Metric

            if self._client is None:
                self._client = client(self.uri)
            self._client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in batch])

    def close(self, timeout: float = 30.0) -> int:
        """Stop the thread and try to send what is left within ``timeout`` seconds; returns the
        number of metrics that could not be delivered (they are in ``metrics.jsonl``)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(1.0, timeout / 3))
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            if self._flush_once(force=True):
                break
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        left = self.pending
        if left:
            msg = (
                f"tracking server unreachable; {left} metrics of run {self.run_id} not delivered "
                "(every record is in the run folder's metrics.jsonl)"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
        return left

    def __enter__(self) -> MLflowCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def system_metrics(owner: Any = None) -> dict[str, float]:
    """One sample of ``system/*`` metrics, named as MLflow's system-metrics monitor names them."""
    import psutil

    out: dict[str, float] = {}
    out["system/cpu_utilization_percentage"] = psutil.cpu_percent(interval=None)
    vm = psutil.virtual_memory()
    out["system/system_memory_usage_megabytes"] = (vm.total - vm.available) / 2**20
    out["system/system_memory_usage_percentage"] = vm.percent
    proc = getattr(owner, "_proc", None)
    if proc is None:
        proc = psutil.Process()
        if owner is not None:
            owner._proc = proc
    out["system/process_rss_megabytes"] = proc.memory_info().rss / 2**20
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out[f"system/gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_allocated(i) / 2**20
                out[f"system/gpu_{i}_max_memory_megabytes"] = torch.cuda.max_memory_allocated(i) / 2**20
    except Exception:
        pass
    return out


# ------------------------------------------------------------------ registry


def register_encoder(run_id: str, path: str | Path, name: str, uri: str | None = None) -> str:
    """Upload the encoder (a run folder or ``encoder.safetensors``; the run folder's
    ``config.yaml`` goes along) as artifact ``encoder/`` of ``run_id`` and register it as a
    new version of model ``name``; returns the version."""
    from bootleg.export import resolve_encoder_path

    weights = resolve_encoder_path(path)
    c = client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "encoder"
        stage.mkdir()
        shutil.copy2(weights, stage / weights.name)
        cfg = weights.parent / "config.yaml"
        if cfg.is_file():
            shutil.copy2(cfg, stage / "config.yaml")
        c.log_artifacts(run_id, str(stage), "encoder")
    try:
        c.create_registered_model(name, description="Bootleg ViT encoder (encoder.safetensors, timm keys)")
    except Exception as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    source = f"{c.get_run(run_id).info.artifact_uri}/encoder"
    mv = c.create_model_version(name, source=source, run_id=run_id)
    return str(mv.version)


def metric_of_version(name: str, version: str, metric: str, uri: str | None = None) -> float | None:
    """Latest value of ``metric`` in the run that produced ``name`` version ``version``."""
    c = client(uri)
    mv = c.get_model_version(name, version)
    if not mv.run_id:
        return None
    value = c.get_run(mv.run_id).data.metrics.get(metric)
    return None if value is None or not math.isfinite(value) else float(value)


def set_alias_by_metric(
    name: str, alias: str, metric: str, higher_is_better: bool = True, uri: str | None = None
) -> tuple[str, float] | None:
    """Point ``name@alias`` at the version whose run has the best ``metric``; returns
    ``(version, value)``, or ``None`` when no version has that metric."""
    c = client(uri)
    best: tuple[str, float] | None = None
    for mv in c.search_model_versions(f"name='{name}'"):
        value = metric_of_version(name, mv.version, metric, uri)
        if value is None:
            continue
        if best is None or (value > best[1] if higher_is_better else value < best[1]):
            best = (str(mv.version), value)
    if best is not None:
        c.set_registered_model_alias(name, alias, best[0])
    return best


def download_encoder(uri: str, dst: str | Path | None = None) -> Path:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/ID/encoder`` -> a local
    folder holding ``encoder.safetensors`` (what :func:`bootleg.export.load_encoder` takes)."""
    import mlflow

    configure(check=True)
    if dst is None:
        dst = Path(tempfile.mkdtemp(prefix="bootleg-encoder-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as e:
        raise BootlegError(f"{uri}: cannot download the encoder ({_first_line(e)})") from None
    if local.is_file():
        local = local.parent
    if not (local / "encoder.safetensors").is_file():
        found = sorted(local.rglob("encoder.safetensors"))
        if not found:
            raise BootlegError(f"{uri}: no encoder.safetensors in the downloaded artifacts")
        local = found[0].parent
    return local
