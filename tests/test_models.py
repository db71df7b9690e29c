import torch

from bootleg.export import load_encoder, load_timm, save_encoder
from bootleg.models import ViTEncoder, ViTPredictor
from bootleg.models.pos_embed import sincos_2d


def _enc(**kw):
    torch.manual_seed(0)
    return ViTEncoder(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, **kw).eval()


def test_sincos_fixed_and_distinct():
    pe = sincos_2d(48, (8, 8))
    assert pe.shape == (64, 48)
    assert torch.unique(pe, dim=0).shape[0] == 64
    assert torch.equal(pe, sincos_2d(48, (8, 8)))


def test_encoder_runs_only_visible_tokens_and_returns_blocks():
    enc = _enc(reg_tokens=4)
    x = torch.randn(2, 3, 32, 32)
    idx = torch.tensor([[0, 5, 9, 63], [1, 2, 3, 4]])
    out, inter = enc.forward_intermediates(x, [1, 4], [2], idx=idx)
    assert out.shape == (2, 1 + 4 + 4, 48)
    assert [t.shape for t in inter] == [(2, 9, 48)] * 3
    # the pos embed is fixed (a buffer), not learned
    assert "pos_embed" not in dict(enc.named_parameters())
    # patches given in idx only: changing an unseen patch's pixels changes nothing
    x2 = x.clone()
    x2[0, :, 4:8, 4:8] += 10.0  # patch 9 of a 8x8 grid is row 1, col 1 -> pixels 4..8
    x3 = x.clone()
    x3[0, :, 28:32, 0:4] += 10.0  # patch 56, not visible in sample 0
    assert not torch.allclose(enc(x2, idx)[0], out[0])
    assert torch.allclose(enc(x3, idx)[0], out[0])


def test_stop_early_and_mid_block_is_post_attention():
    enc = _enc(reg_tokens=0)
    x = torch.randn(1, 3, 32, 32)
    out, inter = enc.forward_intermediates(x, [2], [2], stop_early=True)
    assert out is None
    blk = enc.blocks[1]
    _, (h1,) = enc.forward_intermediates(x, [1], stop_early=True)
    mid = h1 + blk.attn(blk.norm1(h1))
    assert torch.allclose(inter[1], mid, atol=1e-5)
    assert torch.allclose(inter[0], mid + blk.mlp(blk.norm2(mid)), atol=1e-5)


def test_predictor_regions_do_not_attend_to_each_other():
    torch.manual_seed(0)
    pred = ViTPredictor((8, 8), enc_dim=48, embed_dim=32, depth=2, num_heads=4, out_dim=96).eval()
    ctx = torch.randn(1, 1 + 10, 48)
    enc_idx = torch.arange(10).unsqueeze(0)
    regions = torch.tensor([[[20, 21, 22], [40, 41, 42], [50, 51, 52], [60, 61, 62]]])
    out = pred(ctx, enc_idx, regions)
    assert out.shape == (1, 4, 3, 96)
    moved = regions.clone()
    moved[0, 1] = torch.tensor([30, 31, 32])
    out2 = pred(ctx, enc_idx, moved)
    assert torch.allclose(out[0, [0, 2, 3]], out2[0, [0, 2, 3]], atol=1e-6)
    assert not torch.allclose(out[0, 1], out2[0, 1])


def test_encoder_round_trips_and_loads_into_timm(tmp_path):
    enc = _enc(reg_tokens=4)
    save_encoder(enc, tmp_path / "encoder.safetensors")
    back = load_encoder(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back.forward_features(x)["tokens"], enc.forward_features(x)["tokens"])
    tm = load_timm(tmp_path / "encoder.safetensors")
    assert torch.allclose(tm.forward_features(x), enc.forward_features(x)["tokens"], atol=1e-5)
    assert tm(x).shape == (2, 48)  # head-less, CLS pooled
