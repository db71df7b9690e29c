"""End-to-end pretraining on real (embedded CIFAR-10) images, on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bootleg.checkpoint import load_checkpoint
from bootleg.config import load_config
from bootleg.export import load_encoder
from bootleg.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
PARAMS = str(ROOT / "params.yaml")
FAST = ["optim.batch_size=32", "run.log_every=5", "run.progress=false"]
LAYOUT = {"config.yaml", "metrics.jsonl", "checkpoint.pt", "encoder.safetensors"}


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bootleg.cli", *args]
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _sets(*items: str) -> list[str]:
    out: list[str] = []
    for it in items:
        out += ["--set", it]
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_bootleg_loss_falls_on_real_images(tmp_path):
    cfg = load_config(PARAMS, [*FAST, "run.steps=40", "run.monitor_every=20", "run.checkpoint_every=20"])
    records: list[dict] = []
    out = pretrain(cfg, tmp_path / "run", callbacks=[records.append])
    assert {p.name for p in out.iterdir()} >= LAYOUT
    m = _metrics(out)
    assert m == records  # callbacks see exactly what metrics.jsonl holds
    assert [r["step"] for r in m] == list(range(5, 41, 5))
    first, last = m[0]["loss"], m[-1]["loss"]
    assert last < 0.8 * first, (first, last)
    mon = [r for r in m if "rankme" in r]
    assert mon and all(r["pred_std"] > 0 and r["target_std"] > 0 and r["rankme"] >= 1 for r in mon)
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 40 and ck["config"]["model"]["size"] == "micro"
    enc = load_encoder(out)
    feats = enc.forward_features(torch.zeros(2, 3, 32, 32))
    assert feats["patch"].shape == (2, 64, 96) and feats["cls"].shape == (2, 96)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ijepa", "mae", "data2vec"])
def test_baselines_train_through_the_same_engine(tmp_path, method):
    depth_dependent = {
        "ijepa": ["targets.blocks=[4]"],
        "mae": [],
        "data2vec": ["targets.mlp_branch=[2,3,4]", "mask_repeats=2"],
    }
    overrides = [*FAST, f"method={method}", "run.steps=6", "model.depth=4", *depth_dependent[method]]
    cfg = load_config(PARAMS, overrides)
    out = pretrain(cfg, tmp_path / method)
    assert {p.name for p in out.iterdir()} >= LAYOUT
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _metrics(out))


@pytest.mark.slow
def test_no_forward_mse_trains_like_mse(tmp_path):
    a = pretrain(load_config(PARAMS, [*FAST, "run.steps=10"]), tmp_path / "mse")
    b = pretrain(load_config(PARAMS, [*FAST, "run.steps=10", "loss.name=mse_noforward"]), tmp_path / "nf")
    ma, mb = _metrics(a), _metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    # the same gradients give the same weights (up to float rounding of the two backward formulas)
    wa, wb = load_encoder(a).state_dict(), load_encoder(b).state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    assert any(not torch.equal(wa[k], load_encoder(a).state_dict()[k] * 0) for k in wa)


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tmp_path):
    args = ["pretrain", "--params", PARAMS, "--steps", "40", "--checkpoint-every", "5", *_sets(*FAST)]
    ref = _cli(*args, "--out", str(tmp_path / "ref"))
    victim = _cli(*args, "--out", str(tmp_path / "cut"))
    ck = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ck.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert victim.poll() is None, "run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "cut" / "encoder.safetensors").exists()
    step_at_kill = load_checkpoint(ck)["step"]
    assert 0 < step_at_kill < 40
    resumed = _cli(*args, "--out", str(tmp_path / "cut"), "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    a = (tmp_path / "ref" / "encoder.safetensors").read_bytes()
    b = (tmp_path / "cut" / "encoder.safetensors").read_bytes()
    assert a == b
    steps = [r["step"] for r in _metrics(tmp_path / "cut")]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no duplicated log lines after resume


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "bootleg.cli", "pretrain", "--params", PARAMS, "--out", str(out), "--steps", "6",
        *_sets(*FAST, "run.device=cpu"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p.name for p in out.iterdir()} >= LAYOUT
    m = _metrics(out)
    assert m[-1]["step"] == 6 and len({json.dumps(r) for r in m}) == len(m)  # rank 0 writes alone
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6


def _bad(tmp_path: Path, *args: str) -> str:
    p = _cli(*args)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, (out, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_input_exits_2_with_one_line(tmp_path):
    out = str(tmp_path / "x")
    base = ["pretrain", "--params", PARAMS, "--out", out, "--steps", "2", *_sets(*FAST)]
    assert "model.sise: unknown key" in _bad(tmp_path, *base, "--set", "model.sise=3")
    assert "optim.lr_max" in _bad(tmp_path, *base, "--set", "optim.lr_max=fast")
    assert "masking.block_scale" in _bad(tmp_path, *base, "--set", "masking.block_scale=[0.9,0.95]")
    missing = _bad(tmp_path, *base, "--set", "data.name=cifar10", "--set", f"data.root={tmp_path}/nowhere")
    assert "nowhere" in missing
    assert "no such params file" in _bad(tmp_path, "pretrain", "--params", str(tmp_path / "none.yaml"))


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"\x00not a checkpoint at all")
    msg = _bad(tmp_path, "pretrain", "--params", PARAMS, "--out", str(run), "--resume", *_sets(*FAST))
    assert "checkpoint.pt" in msg and "corrupted" in msg
    # without --resume an existing checkpoint is never overwritten
    msg = _bad(tmp_path, "pretrain", "--params", PARAMS, "--out", str(run), *_sets(*FAST))
    assert "--resume" in msg
    assert (run / "checkpoint.pt").read_bytes().startswith(b"\x00not")


@pytest.mark.slow
def test_non_finite_loss_stops_clearly(tmp_path):
    msg = _bad(
        tmp_path, "pretrain", "--params", PARAMS, "--out", str(tmp_path / "nan"), "--steps", "10",
        *_sets(*FAST, "optim.lr_max=1e30", "optim.lr_init=1e30", "run.log_every=1"),
    )  # fmt: skip
    assert "loss is" in msg and ("nan" in msg or "inf" in msg)


def test_gradient_accumulation_consumes_micro_batches(tmp_path):
    cfg = load_config(PARAMS, [*FAST, "optim.accum_steps=2", "run.steps=3", "run.log_every=1"])
    from bootleg.train import Trainer

    tr = Trainer(cfg, tmp_path / "acc", resume=False, callbacks=())
    assert tr.plan.micro_batch == 16 and tr.plan.accum == 2
    assert tr.plan.steps_per_epoch == tr.stream.steps_per_epoch // 2
    out = tr.run()
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    with pytest.raises(Exception, match="not divisible"):
        Trainer(load_config(PARAMS, [*FAST, "optim.accum_steps=3"]), tmp_path / "bad", resume=False, callbacks=())


@pytest.mark.slow
def test_stop_at_pauses_and_resume_matches_uninterrupted(tmp_path):
    from bootleg.train import export_checkpoint

    cfg = load_config(PARAMS, [*FAST, "run.steps=12", "run.checkpoint_every=100"])
    pretrain(cfg, tmp_path / "full")
    paused = pretrain(cfg, tmp_path / "paused", stop_at=5)
    assert load_checkpoint(paused / "checkpoint.pt")["step"] == 5
    assert not (paused / "encoder.safetensors").exists()
    snap = export_checkpoint(paused, tmp_path / "snap")
    assert load_encoder(snap).depth == 8 and (snap / "config.yaml").is_file()
    pretrain(cfg, paused, resume=True)
    assert (paused / "encoder.safetensors").read_bytes() == (tmp_path / "full" / "encoder.safetensors").read_bytes()
