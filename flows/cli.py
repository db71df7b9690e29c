"""Command-line helpers shared by every ``python -m flows.<name>`` entry point and the DVC
stages. No Prefect import here: ``flows.stages`` parses its arguments without it."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from bootleg.errors import BootlegError
from flows import storage, tracking


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="YAML config (default: params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument(
        "--tracking-uri", help="MLflow server (default: MLFLOW_TRACKING_URI, else the embedded sqlite store)"
    )
    p.add_argument("--experiment", help="MLflow experiment")


def run_cli(main: Callable[[], int]) -> None:
    """Run ``main`` printing :class:`BootlegError` as one ``error:`` line (exit 2)."""
    try:
        code = main()
    except BootlegError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


def bindir() -> str:
    """The venv's ``bin`` folder as a user would type it (relative to the working folder if inside)."""
    b = Path(sys.executable).parent
    try:
        return str(b.relative_to(Path.cwd()))
    except ValueError:
        return str(b)


def ui_commands(optuna_storage: str | None = None) -> list[str]:
    """Commands that open the MLflow UI, the Prefect UI and the Optuna dashboard on the
    stores this project uses by default (or those set in the environment)."""
    uri = tracking.tracking_uri()
    if tracking.is_http(uri):
        mlflow_cmd = f"open {uri}/#/experiments?workflowType=machine_learning  (MLFLOW_TRACKING_URI)"
    else:
        mlflow_cmd = (
            f"{bindir()}/mlflow ui --backend-store-uri {uri} --default-artifact-root "
            f"{tracking.default_artifact_root()} --host 127.0.0.1 --port 5000   # then http://127.0.0.1:5000"
        )
    api = os.environ.get("PREFECT_API_URL")
    if api:
        prefect_cmd = f"open {api.removesuffix('/api')}  (PREFECT_API_URL)"
    else:
        home = shlex.quote(os.environ.get("PREFECT_HOME", "~/.prefect"))
        prefect_cmd = (
            f"PREFECT_HOME={home} {bindir()}/prefect server start --host 127.0.0.1 --port 4200"
            "   # then http://127.0.0.1:4200"
        )
    optuna_cmd = storage.dashboard_command(optuna_storage or storage.default_storage(), bindir())
    return [f"MLflow UI:        {mlflow_cmd}", f"Prefect UI:       {prefect_cmd}", f"Optuna dashboard: {optuna_cmd}"]
