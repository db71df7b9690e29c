"""``make gpu-check``: the budget logic, part isolation, profiler shares, the report, and the
CPU smoke run that keeps the GPU check from rotting (CI runs it through ``make test``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gpu_check as gc  # noqa: E402
from bench.gpu_report import render_markdown, summarize  # noqa: E402
from bench.step import SCOPES, STEP_SCOPE, parse, profile_records, scope_shares  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _part(clock: FakeClock, name: str, estimate: float, takes: float, calls: list, status: str = gc.PASS):
    def run(timeout_s: float) -> gc.Outcome:
        calls.append((name, timeout_s))
        clock.t += takes
        if status == "raise":
            raise RuntimeError("CUDA error: out of memory")
        return gc.Outcome(status, {"took": takes})

    return gc.Part(name, estimate, run)


def test_a_part_whose_estimate_exceeds_the_budget_left_is_skipped_and_later_parts_still_run():
    clock, calls = FakeClock(), []
    parts = [
        _part(clock, "a", estimate=10, takes=30, calls=calls),  # 120 - 5 reserve -> runs, leaves 85
        _part(clock, "b", estimate=100, takes=1, calls=calls),  # 100 > 85 -> skipped, never called
        _part(clock, "c", estimate=50, takes=40, calls=calls),  # fits -> runs, leaves 45
        _part(clock, "d", estimate=45, takes=1, calls=calls),  # exactly fits -> runs
        _part(clock, "e", estimate=44.5, takes=1, calls=calls),  # 44 left -> skipped
    ]
    res = gc.run_parts(parts, budget_s=120, reserve_s=5, clock=clock)
    assert [r["status"] for r in res] == [gc.PASS, gc.SKIP, gc.PASS, gc.PASS, gc.SKIP]
    # each started part gets the whole budget left (minus the reserve) as its timeout
    assert calls == [("a", 115), ("c", 85), ("d", 45)]
    assert res[1]["left_s"] == 85 and res[1]["seconds"] == 0
    assert res[4]["left_s"] == 44
    assert summarize(res[1]) == "estimate 100 s > 85 s left"


def test_a_failing_or_raising_part_does_not_stop_the_others():
    clock, calls = FakeClock(), []
    parts = [
        _part(clock, "crash", 1, 1, calls, status="raise"),
        _part(clock, "bad", 1, 1, calls, status=gc.FAIL),
        _part(clock, "ok", 1, 1, calls),
    ]
    seen = []
    res = gc.run_parts(parts, budget_s=60, clock=clock, on_done=lambda r: seen.append(r["name"]))
    assert [r["status"] for r in res] == [gc.FAIL, gc.FAIL, gc.PASS]
    assert res[0]["error"] == "RuntimeError: CUDA error: out of memory"
    assert seen == ["crash", "bad", "ok"]


def test_subprocess_part_reads_its_json_and_reports_the_exit_code(tmp_path):
    out = tmp_path / "r.json"
    env = {"PATH": "/usr/bin:/bin"}
    ok = [sys.executable, "-c", f"import json; open({str(out)!r}, 'w').write(json.dumps({{'x': 1}}))"]
    res = gc.subprocess_part("ok", 1, ok, out, tmp_path / "ok.log", env).run(60)
    assert (res.status, res.data) == (gc.PASS, {"x": 1})
    bad = [sys.executable, "-c", "print('step 3'); raise SystemExit('CUDA out of memory')"]
    res = gc.subprocess_part("bad", 1, bad, out, tmp_path / "bad.log", env).run(60)
    assert res.status == gc.FAIL and "exit code 1: CUDA out of memory" in res.error
    silent = [sys.executable, "-c", "pass"]  # exits 0 but writes no result: a failure
    res = gc.subprocess_part("silent", 1, silent, out, tmp_path / "s.log", env).run(60)
    assert res.status == gc.FAIL and "was not written" in res.error


def test_subprocess_part_is_killed_when_the_budget_runs_out_and_keeps_its_partial_results(tmp_path):
    out = tmp_path / "partial.json"
    code = f"import json, time; open({str(out)!r}, 'w').write(json.dumps({{'done': 1}})); time.sleep(60)"
    t0 = time.monotonic()
    part = gc.subprocess_part("hang", 1, [sys.executable, "-c", code], out, tmp_path / "h.log", {"PATH": "/bin"})
    res = part.run(5.0)
    assert time.monotonic() - t0 < 30
    assert res.status == gc.FAIL and "killed at the budget's end" in res.error
    assert res.data == {"done": 1}


def test_estimates_come_from_the_previous_report_of_the_same_mode(tmp_path):
    report = tmp_path / "report.json"
    parts = [{"name": "a", "status": "pass", "seconds": 10.0}, {"name": "b", "status": "fail", "seconds": 99.0}]
    report.write_text(json.dumps({"mode": "full", "parts": parts}))
    assert gc.previous_estimates(report, "full") == {"a": pytest.approx(11.5)}
    assert gc.previous_estimates(report, "smoke") == {}
    assert gc.previous_estimates(tmp_path / "absent.json", "full") == {}


def test_scope_shares_of_a_fake_profile_prefer_the_gpu_timeline_and_name_missing_scopes():
    recs = [
        (STEP_SCOPE, "cpu", 300.0),
        (STEP_SCOPE, "cuda", 1000.0),
        (STEP_SCOPE, "cuda", 1000.0),  # two profiled steps
        ("bootleg.teacher", "cuda", 250.0),
        ("bootleg.teacher", "cuda", 250.0),
        ("bootleg.teacher", "cpu", 50.0),  # host-side launch time: ignored on the GPU timeline
        ("bootleg.loss", "cuda", 20.0),
        ("bootleg.optimizer", "cuda", 100.0),
        ("aten::mm", "cuda", 700.0),
    ]
    got = scope_shares(recs)
    assert got["timeline"] == "cuda" and got["step_us"] == 2000.0
    assert got["shares"] == pytest.approx({"teacher": 0.25, "targets_loss": 0.01, "optimizer_ema": 0.05, "other": 0.69})
    assert got["missing"] == ["student", "predictor"]
    # without GPU spans of the step: the GPU kernel time launched inside the host scopes
    kernels = [(STEP_SCOPE, "kernels", 900.0), ("bootleg.teacher", "kernels", 300.0)]
    got = scope_shares([r for r in recs if r[1] == "cpu"] + kernels)
    assert got["timeline"] == "kernels" and got["shares"]["teacher"] == pytest.approx(1 / 3)
    # and without those, the host timeline
    cpu = scope_shares([r for r in recs if r[1] == "cpu"])
    assert cpu["timeline"] == "cpu" and cpu["shares"]["teacher"] == pytest.approx(50 / 300)
    # no step scope at all: nothing can be a share
    assert scope_shares(recs[3:]) == {"timeline": None, "shares": {}, "missing": list(SCOPES), "step_us": 0.0}


def test_scope_shares_of_a_real_cpu_profile():
    from torch.profiler import ProfilerActivity, profile, record_function

    a = torch.randn(256, 256)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function(STEP_SCOPE):
                with record_function("bootleg.teacher"):
                    for _ in range(20):
                        a @ a
                with record_function("bootleg.optimizer"):
                    a.add_(1e-3)
                a @ a
    got = scope_shares(profile_records(prof.events(), [STEP_SCOPE, *SCOPES.values()]))
    assert got["timeline"] == "cpu"  # no GPU: neither GPU spans nor kernel time
    assert set(got["shares"]) == {"teacher", "optimizer_ema", "other"}
    assert 0.5 < got["shares"]["teacher"] < 1.0  # 20 of the 21 matmuls
    assert 0.0 < got["shares"]["optimizer_ema"] < got["shares"]["teacher"]
    assert got["missing"] == ["student", "predictor", "targets_loss"]


def test_report_has_one_row_per_part_and_marks_unmet_targets():
    step = {"method": "bootleg", "size": "base", "patch_size": 16, "img_size": 224, "batch_size": 256}
    step |= {"images_per_s": 3000.0, "mfu": 0.3, "peak_mem_gib": 40.0, "warmup_s": 50.0}
    step["profile"] = {"shares": {"teacher": 0.2, "targets_loss": 0.005}, "missing": ["optimizer_ema"]}
    parts = [
        {"name": "cuda-tests", "kind": "tests", "status": "pass", "seconds": 30.0, "estimate_s": 75, "error": None,
         "data": {"passed": ["t1", "t2"], "failed": [], "skipped": []}},
        {"name": "step-bootleg-vit-b16", "kind": "step", "status": "pass", "seconds": 60.0, "estimate_s": 70,
         "error": None, "data": step},
        {"name": "step-mae-vit-b16", "kind": "step", "status": gc.SKIP, "seconds": 0.0, "estimate_s": 45,
         "left_s": 10.0, "error": None, "data": {}},
    ]  # fmt: skip
    for p in parts:
        p["summary"] = summarize(p)
    assert parts[0]["summary"] == "2 passed, 0 failed, 0 skipped"
    assert "optimizer+EMA scope not found" in parts[1]["summary"] and "teacher 20.0%" in parts[1]["summary"]
    doc = {"mode": "full", "started": "now", "budget_s": 480, "elapsed_s": 90, "environment": {}, "parts": parts}
    md = render_markdown(doc)
    assert "| step-mae-vit-b16 | skipped-for-budget |" in md
    assert "| step-bootleg-vit-b16 | images/s >= 4,500 | 3,000.00 | no |" in md
    assert "| step-bootleg-vit-b16 | targets + loss <= 1% of the step | 0.5% | yes |" in md
    assert "| step-bootleg-vit-s16 | images/s >= 9,000 | not run | ? |" in md


@pytest.mark.parametrize("smoke", [False, True])
def test_every_part_command_parses_and_the_race_configs_validate(smoke, tmp_path):
    """The full check's commands cannot be run here, but their options and configs can be checked."""
    from bench import race
    from bootleg.config import apply_override, build_config, read_params

    argv = ["--out", str(tmp_path), *(["--smoke"] if smoke else ["--cifar-root", "/data/cifar10"])]
    parts = gc.build_parts(gc.parse(argv), {})
    assert [p.name for p in parts][:2] == ["cuda-tests", "step-bootleg-vit-b16"]
    for p in parts:
        script = p.cmd[1] if p.cmd[1] != "-m" else p.cmd[2]
        if script == "bench/step.py":
            a = parse(p.cmd[2:])
            assert (a.device, a.compile) == (("cpu", False) if smoke else ("cuda", True))
        elif script == "bench/race.py":
            a = race.parse(p.cmd[2:])
            recipe = read_params(a.recipe)
            for item in a.overrides:
                apply_override(recipe, item)
            for m in a.methods:
                cfg = build_config(race.method_raw(recipe, m), f"race:{m}")
                assert cfg.method == m and cfg.optim.batch_size == recipe["optim"]["batch_size"]
                assert cfg.data.name == ("embedded" if smoke else "cifar10")
                assert smoke or cfg.data.root == "/data/cifar10"
        else:
            assert p.cmd[1:3] == ["-m", "pytest"] and "tests/test_cuda.py" in p.cmd
    assert gc.build_parts(gc.parse([*argv, "--parts", "race-cifar10-vit-t4"]), {})[0].kind == "race"


@pytest.mark.parametrize("recipe", ["cifar10-vit-t4.yaml", "cifar10-vit-s4.yaml"])
def test_cifar10_recipes_validate_for_every_race_method(recipe):
    from bench.race import METHODS, method_raw
    from bootleg.config import build_config, read_params

    raw = read_params(ROOT / "configs" / recipe)
    cfgs = {m: build_config(method_raw(raw, m), recipe) for m in METHODS}
    assert cfgs["bootleg"].targets.blocks == [1, 4, 8, 12] and cfgs["bootleg"].model.img_size == 32
    assert {c.model.size for c in cfgs.values()} == {raw["model"]["size"]}
    assert cfgs["mae"].targets.kind == "pixels" and cfgs["ijepa"].targets.blocks == [12]


def test_list_prints_parts_commands_and_estimates_without_running(tmp_path, capsys):
    assert gc.main(["--list", "--out", str(tmp_path / "x"), "--race-seconds", "10"]) == 0
    out = capsys.readouterr().out
    assert "race-cifar10-vit-t4: ~155 s" in out  # 3 x (10 + 35) + 20
    assert "bench/step.py --method bootleg --size base --img-size 224" in out
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_full_check_refuses_to_run_without_cuda(tmp_path, capsys):
    assert gc.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_make_targets_call_real_options():
    make = subprocess.run(["make", "-n", "gpu-check", "SMOKE=1"], cwd=ROOT, capture_output=True, text=True)
    assert "bench/gpu_check.py --smoke" in make.stdout
    make = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True)
    line = next(ln for ln in make.stdout.splitlines() if "bench/step.py" in ln)
    parse(line.split("bench/step.py", 1)[1].split())  # argparse exits on an unknown option


@pytest.mark.slow
def test_smoke_run_on_cpu_writes_the_report_with_one_line_per_part(tmp_path):
    """What `make gpu-check SMOKE=1` runs: every part, tiny sizes, CPU."""
    out = tmp_path / "gc"
    cmd = [sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(out), "--budget-s", "900"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "report.json").read_text())
    names = ["cuda-tests", "step-bootleg-vit-b16", "step-bootleg-vit-s16", "race-cifar10-vit-t4"]
    names += ["epoch-bootleg-vit-s4", "step-ijepa-vit-b16", "step-mae-vit-b16"]
    assert [p["name"] for p in doc["parts"]] == names
    assert all(p["status"] == "pass" for p in doc["parts"]), doc["parts"]
    for name in names:
        assert any(ln.startswith(f"{name}: pass (") for ln in proc.stdout.splitlines()), name
    md = (out / "report.md").read_text()
    assert all(f"| {n} | pass |" in md for n in names)
    for p in doc["parts"]:
        if p["kind"] == "step":  # every scope is either measured or named as missing
            prof = p["data"]["profile"]
            assert set(prof["shares"]) - {"other"} | set(prof["missing"]) == set(SCOPES)
            assert all(0 < v <= 1 for k, v in prof["shares"].items() if k != "other")
            assert p["data"]["images_per_s"] > 0
    race = json.loads((out / "race" / "race.json").read_text())
    assert [m["method"] for m in race["methods"]] == ["bootleg", "ijepa", "mae"]
    for m in race["methods"]:
        assert m["steps"] >= 2 and len(m["curve"]) >= 2
        assert 0 <= m["top1"]["knn"] <= 100 and 0 <= m["top1"]["linear_patch"] <= 100
    assert (out / "race" / "loss_curves.png").stat().st_size > 1000
    tests = next(p for p in doc["parts"] if p["name"] == "cuda-tests")["data"]
    assert not tests["failed"] and (tests["passed"] or tests["skipped"])
