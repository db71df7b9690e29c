"""Shared fixtures: an offline, isolated environment and real servers on loopback.

* every test session gets its own ``PREFECT_HOME``, an embedded MLflow store in a temporary
  project folder (``BOOTLEG_PROJECT_DIR``) and telemetry switched off (Prefect, MLflow, DVC);
* ``mlflow_server``: a real ``mlflow server`` process (sqlite backend, local artifact folder)
  on a free 127.0.0.1 port; ``start_mlflow_server`` starts extra ones (e.g. to kill);
* ``prefect_server``: a real ``prefect server start`` process on 127.0.0.1 with its own
  sqlite database, and ``prefect_api`` pointing this process's Prefect client at it;
* ``pg_url``: the PostgreSQL database that ``.ci/postgres.sh`` started (``BOOTLEG_TEST_PG_URL``
  or ``$BOOTLEG_PG_DATA/url``); skipped when absent, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# Set before anything imports prefect / mlflow: their settings are read at import time.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="bootleg-tests-"))
OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_HOME": str(_SESSION_TMP / "prefect-home"),
    "BOOTLEG_PROJECT_DIR": str(_SESSION_TMP / "project"),
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "GIT_CONFIG_NOSYSTEM": "1",
}
os.environ.update(OFFLINE_ENV)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200 (or fail with the server's log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s\n{tail}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """End ``proc`` and its process group (servers spawn workers)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a sqlite backend under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = root / f"mlflow-server-{self.port}.log"

    def start(self, timeout: float = 90) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            PY,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with open(self.log, "ab") as out:
            env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_http(self.url + "/health", timeout, self.proc, self.log)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture
def start_mlflow_server(tmp_path: Path) -> Iterator:
    """Factory for extra servers (killed by the test or at teardown)."""
    servers: list[MlflowServer] = []

    def start(port: int | None = None, root: Path | None = None) -> MlflowServer:
        s = MlflowServer(root or tmp_path / "mlflow", port).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop(signal.SIGKILL)


@pytest.fixture
def mlflow_uri(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point ``MLFLOW_TRACKING_URI`` (read at call time by ``flows.tracking``) at the server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return mlflow_server.url


class PrefectServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log = root / "prefect-server.log"
        self.env = {
            **os.environ,
            **OFFLINE_ENV,
            "PREFECT_HOME": str(root / "home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        }
        self.env.pop("PREFECT_API_URL", None)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> PrefectServer:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )
        wait_http(self.api_url + "/health", timeout, self.proc, self.log)
        return self

    def client_env(self) -> dict[str, str]:
        """Environment for a subprocess that talks to this server."""
        env = {**os.environ, **OFFLINE_ENV, "PREFECT_API_URL": self.api_url}
        return env

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server")).start()
    yield server
    server.stop()


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """This process's Prefect client talks to ``prefect_server`` for the test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url


def _pg_url() -> str | None:
    url = os.environ.get("BOOTLEG_TEST_PG_URL")
    if url:
        return url
    f = Path(os.environ.get("BOOTLEG_PG_DATA", "/tmp/bootleg-pg")) / "url"
    return f.read_text().strip() if f.is_file() and f.read_text().strip() else None


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL URL from ``.ci/postgres.sh``; reachable, or skip (fail under CI)."""
    url = _pg_url()
    why = None
    if not url:
        why = "no PostgreSQL: run `bash .ci/postgres.sh` (it sets BOOTLEG_TEST_PG_URL)"
    else:
        try:
            import psycopg2

            psycopg2.connect(url, connect_timeout=5).close()
        except Exception as e:
            why = f"PostgreSQL at {url} unreachable ({str(e).strip().splitlines()[0]}); run `bash .ci/postgres.sh`"
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return url


def run_cmd(cmd: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run ``cmd`` and return the CompletedProcess (output captured, text)."""
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
