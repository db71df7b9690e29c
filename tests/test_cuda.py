"""The CUDA path: bf16 autocast, fused AdamW, no host sync, torch.compile, fused attention,
DDP on one GPU. Part 1 of ``make gpu-check`` (docs/gpu.md).

Runs where CUDA is present and skips elsewhere (CI has no GPU).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from bootleg.config import load_config
from bootleg.train import Trainer, pretrain

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
#: substrings of the kernels that PyTorch's fused SDPA backends launch (flash, mem-efficient, cuDNN)
FUSED_ATTENTION_KERNELS = ("flash", "fmha", "efficient_attention", "sdpa", "cudnn_generated_fort_native")


def _cfg(*extra: str):
    base = ["run.device=cuda", "run.progress=false", "optim.batch_size=64", "run.log_every=5"]
    return load_config(ROOT / "params.yaml", [*base, *extra])


def _loss(rec) -> float:
    return float(rec["loss_t"])


def test_bf16_fused_adamw_and_no_sync_in_step(tmp_path):
    tr = Trainer(_cfg("run.steps=10"), tmp_path / "r", resume=False, callbacks=())
    assert tr.bf16 and tr.device.type == "cuda"
    assert all(g.get("fused") for g in tr.opt.param_groups) or tr.opt.defaults.get("fused")
    batches = tr.stream.batches(0)
    tr.train_step(batches, want_value=True, monitor=False)  # warm up allocator and kernels
    torch.cuda.synchronize()
    # a step must not synchronise with the host: run it under "error on sync"
    torch.cuda.set_sync_debug_mode("error")
    try:
        rec = tr.train_step(batches, want_value=False, monitor=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(rec["loss_t"]).item()


def test_matmuls_run_in_bf16_under_autocast(tmp_path):
    tr = Trainer(_cfg("run.steps=4"), tmp_path / "r", resume=False, callbacks=())
    engine = getattr(tr, "engine", None)
    assert engine is not None, "Trainer.engine (the networks) is needed to hook the linear layers"
    dtypes: set[torch.dtype] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: dtypes.add(o.dtype))
        for m in engine.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        tr.train_step(tr.stream.batches(0), want_value=True, monitor=False)
    finally:
        for h in hooks:
            h.remove()
    assert dtypes == {torch.bfloat16}, dtypes


def test_compiled_run_matches_layout_and_loss_falls(tmp_path):
    out = pretrain(_cfg("run.steps=30", "run.compile=true"), tmp_path / "c")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(x)["loss"] for x in lines]
    assert losses[-1] < losses[0]
    assert (out / "encoder.safetensors").is_file()


def test_fused_attention_is_used():
    from timm.layers import use_fused_attn

    assert use_fused_attn()


def test_step_launches_fused_attention_kernels(tmp_path):
    from torch.profiler import ProfilerActivity, profile

    tr = Trainer(_cfg("run.steps=4"), tmp_path / "r", resume=False, callbacks=())
    batches = tr.stream.batches(0)
    tr.train_step(batches, want_value=True, monitor=False)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        tr.train_step(batches, want_value=True, monitor=False)
        torch.cuda.synchronize()
    kernels = {e.name for e in prof.events() if "CUDA" in str(e.device_type).upper()}
    fused = sorted(k for k in kernels if any(s in k.lower() for s in FUSED_ATTENTION_KERNELS))
    assert fused, f"no fused attention kernel among {len(kernels)} kernels, e.g. {sorted(kernels)[:20]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_on_one_gpu_matches_the_plain_step(tmp_path, monkeypatch):
    """DDP (NCCL, world size 1) around the trained model gives the same losses as without it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cfg = _cfg("run.steps=6")
    plain = Trainer(cfg, tmp_path / "plain", resume=False, callbacks=())
    b = plain.stream.batches(0)
    want = [_loss(plain.train_step(b, want_value=True, monitor=False)) for _ in range(3)]

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        tr = Trainer(cfg, tmp_path / "ddp", resume=False, callbacks=())
        model = getattr(tr, "model", None)
        assert model is not None, "Trainer.model (what DDP wraps) is needed to test DDP"
        if not isinstance(model, DistributedDataParallel):  # world size 1: the trainer does not wrap
            tr.model = DistributedDataParallel(model, device_ids=[tr.device.index])
        b = tr.stream.batches(0)
        got = [_loss(tr.train_step(b, want_value=True, monitor=False)) for _ in range(3)]
        dist.barrier()
    finally:
        dist.destroy_process_group()
    assert torch.isfinite(torch.tensor(got)).all()
    assert got == pytest.approx(want, rel=2e-2), (got, want)
