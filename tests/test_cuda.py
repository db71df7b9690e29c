"""The CUDA path: bf16 autocast, fused attention, torch.compile, fused AdamW.

Runs where CUDA is present and skips elsewhere (CI has no GPU).
"""

from __future__ import annotations

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


def _cfg(*extra: str):
    base = ["run.device=cuda", "run.progress=false", "optim.batch_size=64", "run.log_every=5"]
    return load_config(ROOT / "params.yaml", [*base, *extra])


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


def test_compiled_run_matches_layout_and_loss_falls(tmp_path):
    out = pretrain(_cfg("run.steps=30", "run.compile=true"), tmp_path / "c")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    import json

    losses = [json.loads(x)["loss"] for x in lines]
    assert losses[-1] < losses[0]
    assert (out / "encoder.safetensors").is_file()


def test_fused_attention_is_used():
    from timm.layers import use_fused_attn

    assert use_fused_attn()
