"""Contract over every registry entry (timm style): every method preset, sampler, predictor,
target kind and loss goes through the one ``Engine.forward`` with the same shapes, a finite loss
and a gradient on every trainable parameter."""

from __future__ import annotations

import pytest
import torch

from bootleg.config import build_config
from bootleg.engine import Engine
from bootleg.losses import LOSSES
from bootleg.masking import SAMPLERS, build_sampler
from bootleg.models import PREDICTORS
from bootleg.presets import METHODS
from bootleg.targets import TARGETS

MICRO = {"model": {"size": "micro", "img_size": 32, "patch_size": 4}}


def _check_step(raw: dict) -> None:
    cfg = build_config(raw, "contract")
    torch.manual_seed(0)
    engine = Engine(cfg).train()
    masks = build_sampler(cfg.masking, cfg.model.grid)(4, torch.Generator().manual_seed(0))
    images = torch.randn(4, 3, 32, 32)
    loss, pred, target = engine(images, masks)
    b, k, p = masks.pred_idx.shape
    assert pred.shape == target.shape == (b, k, p, cfg.target_dim())
    assert torch.isfinite(loss) and not target.requires_grad
    loss.backward()
    missing = [n for n, prm in engine.online.named_parameters() if prm.requires_grad and prm.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    if engine.teacher is not None:
        assert not engine.teacher.training and all(not q.requires_grad for q in engine.teacher.parameters())


@pytest.mark.parametrize("sampler", SAMPLERS.names())
@pytest.mark.parametrize("method", METHODS)
def test_every_method_with_every_sampler(method: str, sampler: str) -> None:
    _check_step({**MICRO, "method": method, "masking": {"sampler": sampler}})


@pytest.mark.parametrize("kind", PREDICTORS.names())
def test_every_predictor(kind: str) -> None:
    _check_step({**MICRO, "model": {**MICRO["model"], "predictor": {"kind": kind}}})


@pytest.mark.parametrize("kind", TARGETS.names())
def test_every_target_kind(kind: str) -> None:
    _check_step({**MICRO, "targets": {"kind": kind}})


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss(name: str) -> None:
    _check_step({**MICRO, "loss": {"name": name}})
