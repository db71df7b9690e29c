"""Serve every flow as a deployment of one process (``flow.serve``): they appear in the
Prefect UI with forms built from their pydantic parameters, and runs started there execute
in this process's subprocesses.

    prefect server start --host 127.0.0.1 &              # or the compose stack's server
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve

Run it from the project root (deployments point at ``flows/*.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bootleg.errors import BootlegError
from flows.ablation import EXAMPLE_VARIANTS, ablation
from flows.pipeline import pipeline, run_cli
from flows.study import study

DEPLOYMENTS = ("pipeline", "ablation", "study")


def deployments(tags: Sequence[str] = ("bootleg",)) -> list:
    """The three ``RunnerDeployment`` objects (pipeline, ablation, study)."""
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=1, help="flow runs executed at once (default 1: one GPU)")
    a = p.parse_args(argv)
    url = check_api()
    print(f"serving {', '.join(DEPLOYMENTS)} on {url}", file=sys.stderr)
    from prefect import serve

    serve(*deployments(), limit=a.limit, print_starting_message=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
