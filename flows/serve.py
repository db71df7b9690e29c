"""Serve every flow as a deployment of one process (``flow.serve``): they appear in the
Prefect UI with forms built from their pydantic parameters, and runs started there execute
in this process's subprocesses.

    prefect server start --host 127.0.0.1 &              # or the compose stack's server
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve

Run it from the project root (deployments point at ``flows/*.py``). The first SIGTERM or
SIGINT (Ctrl-C) stops it: Prefect's runner serves in a child process group, which gets
SIGTERM and, if it is not gone within ``--grace`` seconds, SIGKILL (flow runs in progress
included; Prefect marks them crashed).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from bootleg.errors import BootlegError
from flows.cli import run_cli

DEPLOYMENTS = ("pipeline", "ablation", "study")


def deployments(tags: Sequence[str] = ("bootleg",)) -> list:
    """The three ``RunnerDeployment`` objects (pipeline, ablation, study)."""
    from flows.ablation import EXAMPLE_VARIANTS, ablation
    from flows.pipeline import pipeline
    from flows.study import study

    return [
        pipeline.to_deployment(
            name="pipeline", tags=list(tags), description="prepare data -> pretrain -> register -> probes -> report"
        ),
        ablation.to_deployment(
            name="ablation",
            tags=list(tags),
            description="variants through the pipeline and a comparison table",
            parameters={"spec": {"variants": EXAMPLE_VARIANTS}},
        ),
        study.to_deployment(
            name="study", tags=list(tags), description="Optuna study over target layers and hyperparameters"
        ),
    ]


def check_api() -> str:
    """The Prefect API this process talks to; a one-line error when none is configured or
    it does not answer (serving needs a lasting server, not a temporary one)."""
    import urllib.request

    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL")
    if not url:
        raise BootlegError(
            "PREFECT_API_URL is not set; start `prefect server start --host 127.0.0.1` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5):  # noqa: S310
            pass
    except OSError as e:
        raise BootlegError(f"Prefect API {url} unreachable ({getattr(e, 'reason', e)})") from None
    return url


def supervise(cmd: list[str], grace: float) -> int:
    """Run ``cmd`` in its own process group until it ends or this process gets SIGTERM or
    SIGINT; then SIGTERM the group, and SIGKILL it after ``grace`` seconds."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    received: list[int] = []

    def on_signal(sig: int, _frame: object) -> None:
        received.append(sig)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while proc.poll() is None and not received:
            time.sleep(0.2)
        if not received:
            return proc.returncode
        print(f"{signal.Signals(received[0]).name}: stopping the deployments", file=sys.stderr)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=1, help="flow runs executed at once (default 1: one GPU)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds to wait for a clean stop before SIGKILL")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    url = check_api()
    if not a.child:
        print(f"serving {', '.join(DEPLOYMENTS)} on {url}", file=sys.stderr)
        return supervise([sys.executable, "-m", "flows.serve", "--limit", str(a.limit), "--child"], a.grace)
    from prefect import serve

    serve(*deployments(), limit=a.limit, print_starting_message=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
