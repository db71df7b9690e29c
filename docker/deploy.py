"""Register the pipeline, ablation and study flows as deployments on a Prefect work pool, with
their code in this image (``/work``), so that a process worker of the pool runs them.

    python /usr/local/lib/bootleg/deploy.py --pool gpu        # bootleg-entrypoint worker does this

``flows.serve`` serves the same flows from one process instead; this is the work-pool route
the compose stack uses (the worker container runs each flow run in a subprocess).
"""

from __future__ import annotations

import argparse
import os
import sys

FLOWS = {
    "pipeline": ("flows/pipeline.py:pipeline", "prepare data -> pretrain -> register -> probes -> report"),
    "ablation": ("flows/ablation.py:ablation", "variants through the pipeline and a comparison table"),
    "study": ("flows/study.py:study", "Optuna study over target layers and hyperparameters"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deploy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", default=os.environ.get("PREFECT_WORK_POOL", "gpu"), help="work pool (default gpu)")
    p.add_argument("--source", default=os.environ.get("BOOTLEG_PROJECT_DIR", "/work"), help="project folder")
    p.add_argument("--only", nargs="*", choices=sorted(FLOWS), help="register only these flows")
    a = p.parse_args(argv)
    from prefect import flow

    from flows.ablation import EXAMPLE_VARIANTS

    parameters = {"ablation": {"spec": {"variants": EXAMPLE_VARIANTS}}}
    for name in a.only or FLOWS:
        entrypoint, description = FLOWS[name]
        loaded = flow.from_source(source=a.source, entrypoint=entrypoint)
        deployment_id = loaded.deploy(
            name=name,
            work_pool_name=a.pool,
            tags=["bootleg"],
            description=description,
            parameters=parameters.get(name),
            build=False,
            push=False,
            print_next_steps=False,
            ignore_warnings=True,  # "process pool: consider .serve" - the worker is the point here
        )
        print(f"deployment {loaded.name}/{name} on pool {a.pool}: {deployment_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
