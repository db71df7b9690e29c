"""One command that proves and measures the GPU path within a hard wall-clock budget.

    python bench/gpu_check.py                    # full check on one CUDA GPU, 8 minutes at most
    python bench/gpu_check.py --smoke            # the same parts on CPU at tiny sizes (CI)
    python bench/gpu_check.py --parts cuda-tests,race-cifar10-vit-t4 --budget-s 300

Parts, in order (see docs/gpu.md for what each figure means):

* ``cuda-tests``: ``pytest tests/test_cuda.py`` (bf16, fused AdamW, no host sync, compile,
  fused attention, DDP on one GPU);
* ``step-*``: the training-step benchmark (``bench/step.py``): images/s, MFU, peak memory and
  the profiler's shares of the step (teacher, targets + loss, optimizer + EMA);
* ``race-cifar10-vit-t4``: the quality race (``bench/race.py``): Bootleg, I-JEPA and MAE at
  ViT-T/4 on CIFAR-10, the same seconds of pretraining each, then kNN and linear probes;
* ``epoch-bootleg-vit-s4``: the step at ViT-S/4, 32 px, batch 512, as seconds per CIFAR-10 epoch.

Each part runs in its own process, so a crash, an out-of-memory or a hang in one does not stop
the others. Each has an estimated time; a part whose estimate exceeds the budget left is not
started and is reported ``skipped-for-budget``, and a started part is killed when the budget
runs out (reported ``fail``). Estimates are the measured times of the previous report in the
same folder and mode when there is one, else the defaults below.

Writes ``report.json``, ``report.md`` and the parts' files and logs into ``--out``
(default ``runs/gpu-check``); prints one line per part: pass, fail or skipped-for-budget.
Exit code 0 when no part failed, 1 otherwise, 2 when the full check finds no CUDA device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu_report import junit, render_markdown, summarize  # noqa: E402

PASS, FAIL, SKIP = "pass", "fail", "skipped-for-budget"
DEFAULT_BUDGET_S = 480.0
#: seconds kept back from the parts for writing the report
RESERVE_S = 5.0


@dataclass
class Outcome:
    status: str  # PASS or FAIL
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Part:
    """One isolated piece of the check. ``run(timeout_s)`` must return within about ``timeout_s``."""

    name: str
    estimate_s: float
    run: Callable[[float], Outcome]
    kind: str = "other"  # how the report summarises it: tests, step, race, epoch
    cmd: list[str] | None = None  # the command, for subprocess parts


def run_parts(
    parts: list[Part],
    budget_s: float,
    reserve_s: float = RESERVE_S,
    clock: Callable[[], float] = time.monotonic,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``parts`` in order within ``budget_s`` seconds; one result dict per part.

    A part is skipped (``skipped-for-budget``) when its estimate exceeds the budget left;
    otherwise it gets the whole budget left (minus ``reserve_s``) as its timeout. A part that
    raises is a ``fail`` with the exception as its error; the next part runs regardless.
    """
    start = clock()
    results = []
    for part in parts:
        left = budget_s - (clock() - start) - reserve_s
        res: dict[str, Any] = {"name": part.name, "kind": part.kind, "estimate_s": round(part.estimate_s, 1)}
        if part.estimate_s > left:
            res.update(status=SKIP, seconds=0.0, error=None, data={}, left_s=round(max(left, 0.0), 1))
        else:
            t0 = clock()
            try:
                out = part.run(left)
            except Exception as e:  # isolation: a broken part is a failed part
                out = Outcome(FAIL, error=f"{type(e).__name__}: {e}")
            res.update(status=out.status, seconds=round(clock() - t0, 2), error=out.error, data=out.data)
        results.append(res)
        if on_done is not None:
            on_done(res)
    return results


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def subprocess_part(
    name: str,
    estimate_s: float,
    cmd: list[str],
    out_file: Path | None,
    log: Path,
    env: dict[str, str],
    kind: str = "other",
    read: Callable[[Path], dict[str, Any]] = lambda p: json.loads(p.read_text()),
) -> Part:
    """A part that runs ``cmd`` in its own process group; passes when it exits 0 and (if given)
    wrote ``out_file``, which ``read`` turns into the part's data."""

    def run(timeout_s: float) -> Outcome:
        log.parent.mkdir(parents=True, exist_ok=True)
        if out_file is not None and out_file.exists():
            out_file.unlink()
        with open(log, "wb") as f:
            f.write((" ".join(cmd) + "\n").encode())
            f.flush()
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                rc: int | None = proc.wait(timeout=max(timeout_s, 0.1))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc = None
        data: dict[str, Any] = {}  # read even after a failure: partial results are results
        if out_file is not None and out_file.is_file():
            try:
                data = read(out_file)
            except Exception as e:
                return Outcome(FAIL, error=f"{out_file.name}: unreadable ({type(e).__name__}: {e})")
        if rc is None:
            return Outcome(FAIL, data, f"killed at the budget's end after {timeout_s:.0f} s (log: logs/{log.name})")
        if rc != 0:
            return Outcome(FAIL, data, f"exit code {rc}: {_last_line(log)} (log: logs/{log.name})")
        if out_file is not None and not data:
            return Outcome(FAIL, error=f"{out_file.name} was not written (log: logs/{log.name})")
        return Outcome(PASS, data)

    return Part(name, estimate_s, run, kind, cmd)


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


# ------------------------------------------------------------------ the parts


#: (name, method, size, img px, patch, batch) of the step benchmarks, full mode
STEPS = [
    ("step-bootleg-vit-b16", "bootleg", "base", 224, 16, 256),
    ("step-bootleg-vit-s16", "bootleg", "small", 224, 16, 256),
    ("step-ijepa-vit-b16", "ijepa", "base", 224, 16, 256),
    ("step-mae-vit-b16", "mae", "base", 224, 16, 256),
]
EPOCH = ("epoch-bootleg-vit-s4", "bootleg", "small", 32, 4, 512)
RACE = "race-cifar10-vit-t4"
#: default estimates (s) on one H100/H200, compilation included; replaced by measured times
ESTIMATES = {
    "cuda-tests": 75,
    "step-bootleg-vit-b16": 70,
    "step-bootleg-vit-s16": 55,
    RACE: 200,  # at the default --race-seconds 25; scales with it
    "epoch-bootleg-vit-s4": 40,
    "step-ijepa-vit-b16": 55,
    "step-mae-vit-b16": 45,
}
SMOKE_ESTIMATES = {"cuda-tests": 20, RACE: 45}  # the others: 15
#: race overrides that shrink it to a CPU smoke test (micro ViT, embedded images, 1-epoch probes)
SMOKE_RACE = [
    "model.size=micro",
    "model.predictor={depth: 2, embed_dim: 32, num_heads: 2, reg_tokens: 4}",
    "targets.blocks=[1, 4, 8]",
    "optim.batch_size=32",
    "data={name: embedded, on_device: true}",
    "run.device=cpu",
    "run.compile=false",
    "probe={probes: [linear_patch, knn], data: embedded, limit: 400, test_limit: 200, batch_size: 200, "
    "augment: {views: 0}, linear: {lrs: [0.1], wds: [0.0], epochs: 1, batch_size: 200}, knn: {ks: [10]}}",
]


def build_parts(a: argparse.Namespace, estimates: dict[str, float]) -> list[Part]:
    py = sys.executable
    out, logs = a.out, a.out / "logs"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    if a.smoke:
        env["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend
    parts = []

    def est(name: str) -> float:
        if name in estimates:
            return estimates[name]
        if a.smoke:
            return SMOKE_ESTIMATES.get(name, 15)
        if name == RACE:  # three methods: their seconds, ~35 s of calibration, load and probes each
            return 3 * (a.race_seconds + 35) + 20
        return ESTIMATES[name]

    xml = out / "cuda-tests.xml"
    tests = [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py", f"--junitxml={xml}"]
    parts.append(
        subprocess_part("cuda-tests", est("cuda-tests"), tests, xml, logs / "cuda-tests.log", env, "tests", junit)
    )

    def step_part(name: str, method: str, size: str, img: int, patch: int, batch: int, kind: str) -> Part:
        if a.smoke:
            size, img, patch, batch = "micro", 32, 4, 8
            timing = ["--warmup", "1", "--steps", "2", "--profile-steps", "1", "--device", "cpu"]
        else:
            timing = ["--warmup", "5", "--steps", "20", "--profile-steps", "3", "--device", "cuda", "--compile"]
        cmd = [py, "bench/step.py", "--method", method, "--size", size, "--img-size", str(img)]
        cmd += ["--patch-size", str(patch), "--batch-size", str(batch), *timing]
        cmd += ["--json-out", str(out / f"{name}.json")]
        return subprocess_part(name, est(name), cmd, out / f"{name}.json", logs / f"{name}.log", env, kind)

    for spec in STEPS[:2]:
        parts.append(step_part(*spec, "step"))
    race = [py, "bench/race.py", "--recipe", str(a.recipe), "--out", str(out / "race")]
    if a.smoke:
        race += ["--seconds", "1", "--calib-warmup", "1", "--calib-steps", "1"]
        race += [x for o in SMOKE_RACE for x in ("--set", o)]
    else:
        race += ["--seconds", str(a.race_seconds)]
        if a.cifar_root:
            race += ["--set", f"data.root={a.cifar_root}"]
    parts.append(subprocess_part(RACE, est(RACE), race, out / "race" / "race.json", logs / f"{RACE}.log", env, "race"))
    parts.append(step_part(*EPOCH, "epoch"))
    for spec in STEPS[2:]:
        parts.append(step_part(*spec, "step"))
    if a.parts:
        want = set(a.parts.split(","))
        unknown = want - {p.name for p in parts}
        if unknown:
            raise SystemExit(
                f"--parts: {', '.join(sorted(unknown))} unknown; expected some of {[p.name for p in parts]}"
            )
        parts = [p for p in parts if p.name in want]
    return parts


def previous_estimates(report: Path, mode: str, margin: float = 1.15) -> dict[str, float]:
    """Measured seconds x ``margin`` of the parts that passed in the previous report of ``mode``."""
    try:
        doc = json.loads(report.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if doc.get("mode") != mode:
        return {}
    return {p["name"]: p["seconds"] * margin for p in doc.get("parts", []) if p.get("status") == PASS}


def default_cifar_root() -> str | None:
    """``$BOOTLEG_DATA`` or the project's shared dataset folder (main checkout or worktree layout)."""
    if os.environ.get("BOOTLEG_DATA"):
        return None  # the library looks there itself
    for base in (ROOT, ROOT.parent, ROOT.parent.parent):
        p = base / "shared" / "datasets" / "cifar10"
        if p.is_dir():
            return str(p)
    return None


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node()}
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    try:
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    return info


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: proves the script, measures nothing")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="hard wall-clock budget (s)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check")
    p.add_argument("--parts", default=None, help="comma-separated part names to run (default: all)")
    p.add_argument("--race-seconds", type=float, default=25.0, help="pretraining seconds per method in the race")
    p.add_argument("--recipe", type=Path, default=ROOT / "configs" / "cifar10-vit-t4.yaml")
    p.add_argument("--cifar-root", default=None, help="CIFAR-10 folder or tarball (default: found)")
    p.add_argument("--list", action="store_true", help="print the parts, commands and estimates; run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    a = parse(argv)
    mode = "smoke" if a.smoke else "full"
    a.cifar_root = a.cifar_root or (None if a.smoke else default_cifar_root())
    report = a.out / "report.json"
    estimates = previous_estimates(report, mode)
    parts = build_parts(a, estimates)
    if a.list:
        total = sum(p.estimate_s for p in parts)
        for p in parts:
            print(f"{p.name}: ~{p.estimate_s:.0f} s\n    {' '.join(p.cmd or [])}")
        print(f"{len(parts)} parts, ~{total:.0f} s estimated ({'previous report' if estimates else 'defaults'}), "
              f"budget {a.budget_s:.0f} s")  # fmt: skip
        return 0
    if not a.smoke:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA device; the full check needs a GPU (on CPU run `make gpu-check SMOKE=1`)")
            return 2
    a.out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"gpu-check ({mode}): {len(parts)} parts, budget {a.budget_s:.0f} s -> {a.out}", flush=True)

    def line(res: dict[str, Any]) -> None:
        res["summary"] = summarize(res)
        took = f"{res['seconds']:.1f} s" if res["status"] != SKIP else f"needs ~{res['estimate_s']:.0f} s"
        print(f"{res['name']}: {res['status']} ({took}) {res['summary']}", flush=True)

    elapsed0 = time.monotonic() - t_start
    results = run_parts(parts, a.budget_s - elapsed0, on_done=line)
    doc = {
        "mode": mode,
        "started": started,
        "budget_s": a.budget_s,
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "environment": environment(),
        "estimates_from": "previous report" if estimates else "defaults",
        "parts": results,
    }
    report.write_text(json.dumps(doc, indent=2) + "\n")
    (a.out / "report.md").write_text(render_markdown(doc))
    print(f"gpu-check: {doc['elapsed_s']:.0f} s; report in {report} and report.md")
    return 1 if any(r["status"] == FAIL for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
