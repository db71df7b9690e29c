import pytest
import torch
import torch.nn.functional as F

from bootleg.losses import LOSSES, mse_no_forward
from bootleg.models import ViTEncoder
from bootleg.targets import TARGETS, LatentTargets, PixelTargets, gather_regions, patchify, zscore


def loss(name: str, pred, target, want_value=True, valid=None, **kw):
    return LOSSES.get(name)(**kw)(pred, target, want_value, valid)


def test_gather_regions():
    x = torch.arange(2 * 6 * 3, dtype=torch.float).reshape(2, 6, 3)
    idx = torch.tensor([[[0, 1], [5, 2]], [[3, 3], [4, 0]]])
    g = gather_regions(x, idx)
    assert g.shape == (2, 2, 2, 3)
    assert torch.equal(g[1, 0, 1], x[1, 3]) and torch.equal(g[0, 1, 0], x[0, 5])


def test_latent_targets_zscored_per_block_and_concatenated_in_order():
    torch.manual_seed(0)
    t = ViTEncoder(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, reg_tokens=2).eval()
    x = torch.randn(2, 3, 32, 32)
    idx = torch.tensor([[[1, 2, 3], [9, 10, 11]], [[60, 61, 62], [0, 8, 16]]])
    tgt = LatentTargets(blocks=[1, 4]).compute(x, idx, t, 4)
    assert tgt.shape == (2, 2, 3, 96)
    _, (h1, h4) = t.forward_intermediates(x, [1, 4], stop_early=True)
    p = t.num_prefix_tokens
    exp1 = F.layer_norm(h1[:, p:], (48,), eps=1e-6)
    exp4 = F.layer_norm(h4[:, p:], (48,), eps=1e-6)
    assert torch.allclose(tgt[..., :48], gather_regions(exp1, idx), atol=1e-5)  # block 1 first
    assert torch.allclose(tgt[..., 48:], gather_regions(exp4, idx), atol=1e-5)
    # each block's slice is standardised per token
    assert torch.allclose(tgt[..., 48:].mean(-1), torch.zeros(2, 2, 3), atol=1e-5)
    assert torch.allclose(tgt[..., :48].std(-1, unbiased=False), torch.ones(2, 2, 3), atol=1e-3)
    mean = LatentTargets(blocks=[1, 4], merge="mean").compute(x, idx, t, 4)
    assert torch.allclose(mean, (tgt[..., :48] + tgt[..., 48:]) / 2, atol=1e-6)


def test_pixel_targets_norm_pix():
    x = torch.randn(1, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (1, 4, 48)
    assert torch.equal(p[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    t = PixelTargets().compute(x, torch.tensor([[[1, 3]]]), None, 4)
    assert torch.allclose(t[0, 0, 0], zscore(p[0, 1]), atol=1e-6)


def test_no_forward_mse_gradient_equals_mse():
    torch.manual_seed(0)
    pred = torch.randn(2, 4, 5, 7, requires_grad=True)
    target = torch.randn(2, 4, 5, 7)
    (3.0 * F.mse_loss(pred, target)).backward()
    g_ref = pred.grad.clone()
    pred.grad = None
    dummy = mse_no_forward(pred, target)
    assert float(dummy.detach()) == 0.0
    (3.0 * dummy).backward()  # downstream scaling flows into the backward, like MSE's
    assert torch.allclose(pred.grad, g_ref, atol=1e-7)
    real = loss("mse_noforward", pred, target, want_value=True)
    assert torch.allclose(real, F.mse_loss(pred, target))


def test_smooth_l1_l1_and_unknown_loss():
    a, b = torch.zeros(3), torch.tensor([0.5, 2.0, -3.0])
    assert torch.allclose(loss("smooth_l1", a, b), F.smooth_l1_loss(a, b))
    assert torch.allclose(loss("smooth_l1", a, b, beta=0.5), F.smooth_l1_loss(a, b, beta=0.5))
    assert torch.allclose(loss("l1", a, b), F.l1_loss(a, b))
    with pytest.raises(KeyError, match="l7"):
        LOSSES.get("l7")


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_counts_only_valid_positions(name):
    """Contract over the loss registry: padded (invalid) positions never change the loss or get a gradient."""
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 4, 5, requires_grad=True)
    target = torch.randn(2, 3, 4, 5)
    valid = torch.ones(2, 3, 4, dtype=torch.bool)
    valid[:, :, -1] = False
    fn = LOSSES.get(name)()
    ref = fn(pred[:, :, :-1], target[:, :, :-1], True)
    got = fn(pred, target, True, valid)
    assert torch.allclose(got, ref) and torch.isfinite(got)
    fn(pred, target, False, valid).backward()
    assert pred.grad[:, :, -1].abs().sum() == 0 and pred.grad[:, :, :-1].abs().sum() > 0


@pytest.mark.parametrize("kind", TARGETS.names())
def test_every_target_kind_has_its_declared_length(kind):
    """Contract over the target registry: compute() returns (B, K, P, dim()) float32 without grad."""
    torch.manual_seed(0)
    t = ViTEncoder(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, reg_tokens=1).eval()
    spec = TARGETS.get(kind)().resolve(t.depth)
    spec.check(t.depth)
    x = torch.randn(2, 3, 16, 16)
    idx = torch.tensor([[[0, 1], [5, 6]], [[2, 3], [14, 15]]])
    out = spec.compute(x, idx, t if spec.teacher_depth() else None, 4)
    assert out.shape == (2, 2, 2, spec.dim(24, 4)) and out.dtype == torch.float32 and not out.requires_grad
