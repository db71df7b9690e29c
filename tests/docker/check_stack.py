"""What ``make test-docker`` checks once the pipeline deployment has run on the compose stack:
talks to the stack's Prefect and MLflow servers over their REST APIs (standard library only,
loopback addresses only) and exits 1 naming every check that failed.

    python3 tests/docker/check_stack.py wait-deployment --prefect http://127.0.0.1:14200/api --name pipeline/pipeline
    python3 tests/docker/check_stack.py check --prefect ... --mlflow http://127.0.0.1:15000 \\
        --flow-run-name NAME --experiment E --model M --alias champion --steps 30 --pool P

Not collected by pytest (it needs the running stack); scripts/test_docker.sh calls it.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

LOOPBACK = ("127.", "localhost", "[::1]")


def _check_loopback(url: str) -> str:
    host = urllib.parse.urlsplit(url).netloc
    if not host.startswith(LOOPBACK):
        raise SystemExit(f"error: {url} is not a loopback address; this test talks to this machine only")
    return url.rstrip("/")


def call(url: str, body: dict[str, Any] | None = None, timeout: float = 15.0, raw: bool = False) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
        payload = r.read()
    return payload if raw else json.loads(payload or b"null")


def mlflow_get(base: str, endpoint: str, **query: Any) -> Any:
    return call(f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}")


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str, detail: Any = "") -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}" + (f": {detail}" if detail != "" else ""))
        if not ok:
            self.failed.append(what)
        return ok


def wait_deployment(prefect: str, name: str, timeout: float) -> int:
    flow_name, dep_name = name.split("/", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            dep = call(f"{prefect}/deployments/name/{urllib.parse.quote(flow_name)}/{urllib.parse.quote(dep_name)}")
            print(f"deployment {name} registered on pool {dep.get('work_pool_name')} ({dep['id']})")
            return 0
        except (urllib.error.URLError, OSError, ValueError) as e:
            if time.monotonic() > deadline:
                print(f"error: deployment {name} not registered after {timeout:.0f} s ({e})", file=sys.stderr)
                return 1
        time.sleep(3)


def check(a: argparse.Namespace) -> int:
    ok = Checks()
    prefect, mlflow = a.prefect, a.mlflow

    print("Prefect:")
    runs = call(f"{prefect}/flow_runs/filter", {"flow_runs": {"name": {"any_": [a.flow_run_name]}}, "limit": 5})
    fr = runs[0] if runs else {}
    ok(len(runs) == 1, f"one flow run named {a.flow_run_name}", len(runs))
    state = (fr.get("state") or {}).get("type")
    ok(state == "COMPLETED", "flow run completed", state)
    ok(bool(fr.get("deployment_id")), "it is a run of a deployment", fr.get("deployment_id"))
    ok(fr.get("work_pool_name") == a.pool, f"picked up from work pool {a.pool}", fr.get("work_pool_name"))
    if fr.get("deployment_id"):
        dep = call(f"{prefect}/deployments/{fr['deployment_id']}")
        ok(dep.get("name") == "pipeline", "deployment is pipeline", dep.get("name"))

    print("MLflow:")
    exp = mlflow_get(mlflow, "experiments/get-by-name", experiment_name=a.experiment)["experiment"]
    ok(bool(exp.get("experiment_id")), f"experiment {a.experiment}", exp.get("experiment_id"))
    found = call(
        f"{mlflow}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp["experiment_id"]], "filter": f"attributes.run_name = '{a.flow_run_name}'"},
    ).get("runs", [])
    ok(len(found) == 1, f"one MLflow run named {a.flow_run_name}", len(found))
    if not found:
        return report(ok)
    run = found[0]
    run_id = run["info"]["run_id"]
    ok(run["info"]["status"] == "FINISHED", "run FINISHED", run["info"]["status"])
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    ok(
        tags.get("prefect.flow_run_id") == fr.get("id"),
        "run tagged with the Prefect flow run id",
        tags.get("prefect.flow_run_id"),
    )
    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    history = mlflow_get(mlflow, "metrics/get-history", run_id=run_id, metric_key="loss").get("metrics", [])
    steps = sorted(int(m["step"]) for m in history)
    ok(
        len(steps) >= 2 and steps[-1] == a.steps,
        f"loss curve streamed up to step {a.steps}",
        f"{len(steps)} points, last {steps[-1:]}",
    )
    ok(all(m["value"] == m["value"] and abs(m["value"]) < 1e6 for m in history), "loss values finite")
    probe = {k: v for k, v in metrics.items() if k.startswith("probe.")}
    ok(bool(probe), "probe metrics logged", ", ".join(f"{k}={v:.3g}" for k, v in sorted(probe.items())[:6]))
    ok("train_time_s" in metrics, "train_time_s logged", metrics.get("train_time_s"))

    print("Model registry:")
    versions = mlflow_get(mlflow, "model-versions/search", filter=f"name='{a.model}'").get("model_versions", [])
    mine = [v for v in versions if v.get("run_id") == run_id]
    ok(len(mine) == 1, f"a version of {a.model} from this run", [v["version"] for v in mine])
    if mine:
        v = mine[0]
        ok(v.get("status") == "READY", "version READY", v.get("status"))
        model = mlflow_get(mlflow, "registered-models/get", name=a.model)["registered_model"]
        aliases = {al["alias"]: al["version"] for al in model.get("aliases", [])}
        ok(
            aliases.get(a.alias) == v["version"],
            f"alias @{a.alias} on that version (only one in a fresh stack)",
            aliases,
        )

    print("Artifacts (served by the MLflow server from its volume):")
    listed = mlflow_get(mlflow, "artifacts/list", run_id=run_id, path="encoder").get("files", [])
    sizes = {f["path"]: int(f.get("file_size", 0)) for f in listed}
    ok(sizes.get("encoder/encoder.safetensors", 0) > 0, "encoder/encoder.safetensors uploaded", sizes)
    if sizes.get("encoder/encoder.safetensors"):
        blob = call(
            f"{mlflow}/get-artifact?{urllib.parse.urlencode({'path': 'encoder/encoder.safetensors', 'run_uuid': run_id})}",
            raw=True,
            timeout=60,
        )
        n = struct.unpack("<Q", blob[:8])[0] if len(blob) >= 8 else 0
        try:
            header = json.loads(blob[8 : 8 + n])
        except ValueError:
            header = {}
        tensors = [k for k in header if k != "__metadata__"]
        ok(
            len(blob) == sizes["encoder/encoder.safetensors"] and bool(tensors),
            "encoder downloads as safetensors",
            f"{len(tensors)} tensors, {len(blob)} bytes",
        )
    top = {f["path"] for f in mlflow_get(mlflow, "artifacts/list", run_id=run_id).get("files", [])}
    ok({"report.md", "probe"} <= top, "report.md and probe/ artifacts", sorted(top))
    return report(ok)


def report(ok: Checks) -> int:
    if ok.failed:
        print(f"{len(ok.failed)} checks failed: {'; '.join(ok.failed)}")
        return 1
    print("all stack checks passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-deployment")
    w.add_argument("--prefect", required=True)
    w.add_argument("--name", default="pipeline/pipeline")
    w.add_argument("--timeout", type=float, default=300)
    c = sub.add_parser("check")
    c.add_argument("--prefect", required=True)
    c.add_argument("--mlflow", required=True)
    c.add_argument("--flow-run-name", required=True)
    c.add_argument("--experiment", required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--alias", default="champion")
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--pool", required=True)
    a = p.parse_args(argv)
    a.prefect = _check_loopback(a.prefect)
    if a.cmd == "wait-deployment":
        return wait_deployment(a.prefect, a.name, a.timeout)
    a.mlflow = _check_loopback(a.mlflow)
    return check(a)


if __name__ == "__main__":
    sys.exit(main())
