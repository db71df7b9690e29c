"""Shapes ready for speed: with bucketed masks a compiled step sees a handful of shapes.

Counts torch.compile's compilations (dynamo counters) over 200 steps of the real step function
on the CPU, with the "eager" backend (dynamo traces and guards exactly as for inductor, without
generating kernels), and checks they stay within the number of bucketed shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from bootleg.config import build_config
from bootleg.engine import Engine
from bootleg.errors import BootlegError
from bootleg.masking import StepMasks, build_sampler
from bootleg.train import attention_backend, compile_engine

RAW = {
    "method": "bootleg",
    "model": {"size": "micro", "img_size": 32, "patch_size": 4, "depth": 2, "predictor": {"kind": "vit", "depth": 1}},
    "targets": {"kind": "latent", "blocks": [1, 2]},
    "masking": {"sampler": "bootleg", "group_size": 8, "bucket": 16},
    "run": {"compile": True, "compile_backend": "eager", "device": "cpu"},
}


def test_compilations_stay_within_the_bucketed_shapes():
    torch._dynamo.reset()
    counters.clear()
    cfg = build_config(RAW, "test")
    torch.manual_seed(0)
    engine = Engine(cfg)
    step = compile_engine(engine, cfg)
    masks_of = StepMasks(build_sampler(cfg.masking, cfg.model.grid), 4, seed=0)
    images = torch.randn(4, 3, 32, 32)
    shapes = set()
    per_shape = None
    for b in range(200):
        masks = masks_of(0, b)
        shapes.add((masks.enc_idx.shape[1], masks.pred_idx.shape[2]))
        loss, _, _ = step(images, masks, True)
        loss.backward()
        if per_shape is None:  # graphs of one shape (the step may be split at graph breaks)
            per_shape = counters["stats"]["unique_graphs"]
    compiled = counters["stats"]["unique_graphs"]
    assert 1 <= len(shapes) <= 8, shapes  # 64 patches, bucket 16: a handful of (L, P) pairs
    assert per_shape >= 1 and compiled <= per_shape * len(shapes), (compiled, per_shape, shapes)
    torch._dynamo.reset()


def test_cuda_graphs_need_static_shapes_and_float8_needs_a_gpu(tmp_path):
    with pytest.raises(BootlegError, match="run.cuda_graphs"):
        build_config({**RAW, "masking": {"sampler": "bootleg"}, "run": {"compile": True, "cuda_graphs": True}})
    from bootleg.train import pretrain

    cfg = build_config({**RAW, "run": {"device": "cpu", "float8": True, "steps": 1}}, "test")
    with pytest.raises(BootlegError, match="run.float8"):
        pretrain(cfg, tmp_path / "f8")


def test_attention_backend_pins_sdpa():
    q = torch.randn(1, 2, 4, 8)
    with attention_backend("math"):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q), atol=1e-6)
    with attention_backend("auto"):
        pass
