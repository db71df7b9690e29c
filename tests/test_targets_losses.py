import torch
import torch.nn.functional as F

from bootleg.losses import compute_loss, mse_no_forward
from bootleg.models import ViTEncoder
from bootleg.targets import gather_regions, latent_targets, patchify, pixel_targets, zscore


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
    tgt = latent_targets(t, x, idx, blocks=[1, 4])
    assert tgt.shape == (2, 2, 3, 96)
    _, (h1, h4) = t(x, blocks=[1, 4], final=False)
    p = t.num_prefix_tokens
    exp1 = F.layer_norm(h1[:, p:], (48,), eps=1e-6)
    exp4 = F.layer_norm(h4[:, p:], (48,), eps=1e-6)
    assert torch.allclose(tgt[..., :48], gather_regions(exp1, idx), atol=1e-5)  # block 1 first
    assert torch.allclose(tgt[..., 48:], gather_regions(exp4, idx), atol=1e-5)
    # each block's slice is standardised per token
    assert torch.allclose(tgt[..., 48:].mean(-1), torch.zeros(2, 2, 3), atol=1e-5)
    assert torch.allclose(tgt[..., :48].std(-1, unbiased=False), torch.ones(2, 2, 3), atol=1e-3)
    mean = latent_targets(t, x, idx, blocks=[1, 4], merge="mean")
    assert torch.allclose(mean, (tgt[..., :48] + tgt[..., 48:]) / 2, atol=1e-6)


def test_pixel_targets_norm_pix():
    x = torch.randn(1, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (1, 4, 48)
    assert torch.equal(p[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    t = pixel_targets(x, torch.tensor([[[1, 3]]]), 4)
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
    real = compute_loss("mse_noforward", pred, target, want_value=True)
    assert torch.allclose(real, F.mse_loss(pred, target))


def test_smooth_l1_and_unknown_loss():
    a, b = torch.zeros(3), torch.tensor([0.5, 2.0, -3.0])
    assert torch.allclose(compute_loss("smooth_l1", a, b), F.smooth_l1_loss(a, b))
    try:
        compute_loss("l7", a, b)
    except ValueError as e:
        assert "l7" in str(e)
    else:
        raise AssertionError
