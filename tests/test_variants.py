"""The method variants the paper's tables need, each checked for the property that defines it."""

from __future__ import annotations

import math

import pytest
import torch

from bootleg.config import build_config
from bootleg.engine import Engine
from bootleg.masking import Masks, build_sampler
from bootleg.models import ViTEncoder
from bootleg.models.decoders import CrossPredictor

MICRO = {"size": "micro", "img_size": 32, "patch_size": 4}


def _engine(raw: dict) -> tuple[Engine, object]:
    cfg = build_config({"model": dict(MICRO), **raw}, "test")
    torch.manual_seed(0)
    return Engine(cfg).train(), cfg


def test_data2vec_teacher_runs_once_per_m_student_passes():
    engine, cfg = _engine({"method": "data2vec", "mask_repeats": 4})
    calls = {"teacher": 0, "student_rows": 0}
    engine.teacher.register_forward_pre_hook(
        lambda m, a, kw: calls.__setitem__("teacher", calls["teacher"] + 1), with_kwargs=True
    )
    engine.student.patch_embed.register_forward_pre_hook(
        lambda m, a: calls.__setitem__("student_rows", calls["student_rows"] + a[0].shape[0])
    )
    # the teacher's forward_intermediates does not go through __call__: count its patch embedding instead
    engine.teacher.patch_embed.register_forward_pre_hook(
        lambda m, a: calls.__setitem__("teacher", calls["teacher"] + 1)
    )
    masks = build_sampler(cfg.masking, cfg.model.grid)(8 * 4, torch.Generator().manual_seed(0))
    loss, pred, target = engine(torch.randn(8, 3, 32, 32), masks)
    assert calls["teacher"] == 1 and calls["student_rows"] == 32  # one teacher pass, four masks per image
    assert pred.shape[0] == target.shape[0] == 32 and torch.isfinite(loss)
    # the M rows of one image share its target map
    full = engine.target_kind.maps(torch.randn(1, 3, 32, 32), engine.teacher, 4)
    assert full.shape == (1, 64, cfg.target_dim())


def test_cross_decoder_mask_tokens_do_not_attend_to_each_other():
    torch.manual_seed(0)
    dec = CrossPredictor(
        (8, 8), enc_dim=48, embed_dim=32, depth=2, num_heads=4, out_dim=16, num_ctx_prefix=1, mlp_ratio=4.0
    ).eval()
    ctx = torch.randn(1, 1 + 5, 48)
    enc_idx = torch.tensor([[0, 9, 18, 27, 36]])
    a = dec(ctx, enc_idx, torch.tensor([[[1, 2, 3], [40, 41, 42]]]))
    b = dec(ctx, enc_idx, torch.tensor([[[1, 2, 3], [50, 60, 63]]]))  # region 2 changes
    c = dec(ctx, enc_idx, torch.tensor([[[1, 2, 63]]]))  # a lone token predicts as in a crowd
    assert torch.allclose(a[0, 0], b[0, 0], atol=1e-6) and not torch.allclose(a[0, 1], b[0, 1])
    assert torch.allclose(a[0, 0, :2], c[0, 0, :2], atol=1e-6)


def test_teacher_never_runs_stochastic_depth():
    engine, cfg = _engine({"method": "bootleg", "model": {**MICRO, "drop_path": 0.5}})
    assert engine.training and engine.student.training and not engine.teacher.training
    x = torch.randn(2, 3, 32, 32)
    idx = torch.arange(64).expand(2, 1, 64)
    t1 = engine.target_kind.compute(x, idx, engine.teacher, 4)
    t2 = engine.target_kind.compute(x, idx, engine.teacher, 4)
    assert torch.equal(t1, t2)  # no random drop path


def test_ijepa_init_rescales_each_layer():
    torch.manual_seed(0)
    enc = ViTEncoder(
        img_size=32, patch_size=4, embed_dim=96, depth=8, num_heads=3, cls_token=False, reg_tokens=0, init="ijepa"
    )
    stds = [float(b.mlp.fc2.weight.detach().std()) for b in enc.blocks]
    for layer, s in enumerate(
        stds, start=1
    ):  # trunc-normal(0.02) / sqrt(2 * layer); I-JEPA truncates at +-2 absolute, i.e. not at all
        assert s == pytest.approx(0.02 / math.sqrt(2 * layer), rel=0.1)
    assert float(enc.blocks[0].attn.qkv.weight.detach().std()) == pytest.approx(0.02, rel=0.1)  # not rescaled


def test_ijepa_target_is_the_final_block_after_the_encoder_norm():
    engine, cfg = _engine({"method": "ijepa"})
    x = torch.randn(2, 3, 32, 32)
    idx = torch.arange(64).reshape(1, 1, 64).expand(2, 1, 64)
    target = engine.target_kind.compute(x, idx, engine.teacher, 4)
    out = engine.teacher(x)  # after the final norm
    assert torch.allclose(target[:, 0], torch.nn.functional.layer_norm(out, (out.shape[-1],), eps=1e-6), atol=1e-5)


def test_ema_encoder_for_pixel_targets_is_kept_and_exported_but_not_a_target():
    engine, cfg = _engine({"method": "mae", "model": {**MICRO, "ema_encoder": True}})
    assert engine.teacher is not None and engine.export_encoder() is engine.teacher
    plain, _ = _engine({"method": "mae"})
    masks = build_sampler(cfg.masking, cfg.model.grid)(2, torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(engine(x, masks)[2], plain(x, masks)[2])  # same pixel targets


@pytest.mark.parametrize(
    "raw", [{"method": "bootleg"}, {"method": "mae", "model": {**MICRO, "predictor": {"kind": "cross"}}}]
)
def test_padding_changes_nothing_but_the_shapes(raw):
    """Padded visible tokens are never attended to and padded targets do not count."""
    engine, cfg = _engine(raw)
    engine.eval()
    masks = build_sampler(cfg.masking, cfg.model.grid)(2, torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 32, 32)
    loss, pred, _ = engine(x, masks)
    b, length = masks.enc_idx.shape
    _, k, p = masks.pred_idx.shape
    pad_enc = torch.cat([masks.enc_idx, masks.enc_idx[:, :3]], 1)
    pad_pred = torch.cat([masks.pred_idx, masks.pred_idx[:, :, :2]], 2)
    enc_valid = torch.arange(length + 3).expand(b, -1) < length
    pred_valid = (torch.arange(p + 2) < p).expand(b, k, -1)
    loss2, pred2, _ = engine(x, Masks(pad_enc, pad_pred, enc_valid, pred_valid))
    assert torch.allclose(loss, loss2, atol=1e-5)
    assert torch.allclose(pred, pred2[:, :, :p], atol=1e-5)


def test_l1_loss_and_single_hidden_block_targets_run():
    for raw in ({"loss": {"name": "l1"}}, {"method": "mae", "targets": {"kind": "latent", "blocks": [2]}}):
        engine, cfg = _engine(raw)
        masks = build_sampler(cfg.masking, cfg.model.grid)(2, torch.Generator().manual_seed(0))
        loss, pred, target = engine(torch.randn(2, 3, 32, 32), masks)
        assert torch.isfinite(loss) and pred.shape == target.shape
