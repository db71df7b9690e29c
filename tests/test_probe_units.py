"""Unit tests of the probe building blocks (no backbone, seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bootleg.errors import BootlegError
from bootleg.probe.classify import AttentiveHeads, LinearHeads, topk_correct
from bootleg.probe.config import ProbeConfig, expand_probe_names
from bootleg.probe.knn import knn_classify, knn_predict, knn_segment
from bootleg.probe.segdata import finalize_classes, load_seg_folder, pasted_objects
from bootleg.probe.segment import (
    SegBlockHeads,
    confusion,
    miou,
    patch_pixels,
    pixels_from_patches,
    upsample_logits,
)
from bootleg.probe.sweep import BatchedAdamW, grid, lr_factor, select_best, take_head

ROOT = Path(__file__).resolve().parents[1]


def _perturbed(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def test_attentive_heads_match_a_plain_cross_attention_block() -> None:
    """The key-free batched form equals V-JEPA's block run head by head."""
    H, D, A, C, T, B = 3, 24, 3, 5, 7, 4
    m = _perturbed(AttentiveHeads(H, D, A, C, torch.Generator().manual_seed(0)))
    x = torch.randn(B, T, D)
    out = m(F.layer_norm(x, (D,), eps=1e-6))
    for h in range(H):
        t = F.layer_norm(x, (D,), m.n1_w[h], m.n1_b[h], eps=1e-6)
        q = (m.query[h] @ m.q_w[h] + m.q_b[h]).view(1, A, D // A).transpose(0, 1)  # (A, 1, dh)
        k = (t @ m.k_w[h]).view(B, T, A, D // A).transpose(1, 2)
        v = (t @ m.v_w[h] + m.v_b[h]).view(B, T, A, D // A).transpose(1, 2)
        o = F.scaled_dot_product_attention(q.expand(B, -1, -1, -1), k, v).transpose(1, 2).reshape(B, D)
        z = m.query[h] + o @ m.o_w[h] + m.o_b[h]
        z = (
            z
            + F.gelu(F.layer_norm(z, (D,), m.n2_w[h], m.n2_b[h], eps=1e-6) @ m.fc1_w[h] + m.fc1_b[h]) @ m.fc2_w[h]
            + m.fc2_b[h]
        )
        torch.testing.assert_close(out[h], z @ m.head_w[h] + m.head_b[h], atol=1e-5, rtol=1e-5)


def test_seg_block_heads_match_timm_block() -> None:
    from timm.models.vision_transformer import Block

    H, D, A, C, T, B, prefix = 2, 24, 3, 4, 9, 3, 1
    m = _perturbed(SegBlockHeads(H, D, A, C, prefix, torch.Generator().manual_seed(0)))
    x = torch.randn(B, T, D)
    out = m(x)
    for h in range(H):
        blk = Block(D, A, qkv_bias=True)
        blk.norm1.weight.data, blk.norm1.bias.data = m.n1_w[h].data, m.n1_b[h].data
        blk.norm1.eps = blk.norm2.eps = 1e-6
        blk.attn.qkv.weight.data, blk.attn.qkv.bias.data = m.qkv_w[h].data.T, m.qkv_b[h].data
        blk.attn.proj.weight.data, blk.attn.proj.bias.data = m.proj_w[h].data.T, m.proj_b[h].data
        blk.norm2.weight.data, blk.norm2.bias.data = m.n2_w[h].data, m.n2_b[h].data
        blk.mlp.fc1.weight.data, blk.mlp.fc1.bias.data = m.fc1_w[h].data.T, m.fc1_b[h].data
        blk.mlp.fc2.weight.data, blk.mlp.fc2.bias.data = m.fc2_w[h].data.T, m.fc2_b[h].data
        y = F.layer_norm(blk(x), (D,), m.nf_w[h], m.nf_b[h], eps=1e-6)[:, prefix:]
        torch.testing.assert_close(out[h], y @ m.head_w[h] + m.head_b[h], atol=1e-5, rtol=1e-5)


def test_batched_adamw_equals_one_adamw_per_head() -> None:
    H, D, C, B = 3, 6, 4, 16
    g = torch.Generator().manual_seed(0)
    heads = LinearHeads(H, D, C, g)
    heads.bn = torch.nn.Identity()  # type: ignore[assignment]
    lrs, wds = torch.tensor([1e-3, 1e-2, 3e-2]), torch.tensor([0.0, 0.1, 0.5])
    singles = [take_head(heads, h) for h in range(H)]
    opts = [
        torch.optim.AdamW(s.parameters(), lr=float(lrs[h]), weight_decay=float(wds[h])) for h, s in enumerate(singles)
    ]
    for o, s in zip(opts, singles, strict=True):  # no decay on the bias, as in the batched optimiser
        o.param_groups[0]["params"] = [s.weight]
        o.add_param_group({"params": [s.bias], "weight_decay": 0.0})
    batched = BatchedAdamW(heads, lrs, wds, heads.no_decay)
    for _ in range(5):
        x, y = torch.randn(B, D, generator=g), torch.randint(0, C, (B,), generator=g)
        loss = F.cross_entropy(heads(x).flatten(0, 1), y.repeat(H), reduction="sum") / B
        loss.backward()
        batched.step(1.0)
        for o, s in zip(opts, singles, strict=True):
            F.cross_entropy(s(x)[0], y).backward()
            o.step()
            o.zero_grad()
    for h, s in enumerate(singles):
        torch.testing.assert_close(heads.weight[h], s.weight[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(heads.bias[h], s.bias[0], atol=1e-6, rtol=1e-5)


def test_grid_selection_and_schedule() -> None:
    cfg = ProbeConfig().linear
    lr, wd = grid(cfg)
    assert len(lr) == 25 and float(lr[7]) == pytest.approx(cfg.lrs[1]) and float(wd[7]) == pytest.approx(cfg.wds[2])
    assert select_best(torch.tensor([0.1, 0.5, 0.5, float("nan")])) == 1
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(99, 100, 0) < 0.01


def test_topk() -> None:
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]]])
    assert topk_correct(logits, torch.tensor([2, 1]), 1).tolist() == [0.5]
    assert topk_correct(logits, torch.tensor([2, 1]), 2).tolist() == [1.0]
    assert topk_correct(logits, torch.tensor([0, 2]), 5).tolist() == [1.0]  # k clipped to C


def test_knn_classify_separable_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    y = torch.arange(4).repeat_interleave(20)
    bank = centres[y] + torch.randn(80, 4, generator=g)
    q = centres[y] + torch.randn(80, 4, generator=g)
    acc = knn_classify(bank, y, q, y, [1, 5, 20], classes=4)
    assert acc == {1: 100.0, 5: 100.0, 20: 100.0}


def _one_hot_vote(
    bank: torch.Tensor, bank_y: torch.Tensor, queries: torch.Tensor, ks: list[int], classes: int
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """The weighted kNN vote written the direct way: a ``(Q, K, C)`` one-hot of the neighbours'
    labels times ``exp(cos / 0.07)``, summed over the first ``k`` neighbours; argmax (ties: the
    lowest class). Returns the predictions and the summed votes ``(Q, K, C)``."""
    sims, idx = (F.normalize(queries, dim=-1) @ F.normalize(bank, dim=-1).T).topk(min(max(ks), len(bank)), dim=-1)
    votes = (F.one_hot(bank_y[idx], classes).float() * (sims / 0.07).exp()[..., None]).cumsum(1)
    return {k: votes[:, min(k, votes.shape[1]) - 1].argmax(-1) for k in ks}, votes


def test_knn_vote_equals_the_one_hot_vote_ties_included() -> None:
    """Bank items repeated under other labels tie exactly: the vote into one (q, C) tensor
    picks what the one-hot sum picks, the lowest class among the tied ones included."""
    g = torch.Generator().manual_seed(0)
    points = torch.randn(40, 8, generator=g)
    bank = points.repeat(3, 1)  # every point three times
    bank_y = torch.randint(0, 6, (120,), generator=g)
    queries = torch.cat([points[:20], torch.randn(80, 8, generator=g)])
    ks = [1, 2, 3, 5, 20, 20, 500]  # a repeat, and more than the bank holds
    want, votes = _one_hot_vote(bank, bank_y, queries, ks, 6)
    top2 = votes.topk(2, dim=-1).values
    assert int((top2[..., 0] == top2[..., 1]).sum()) > 50  # the data ties often
    got = knn_predict(bank, bank_y, queries, ks, 6)
    for k in ks:
        assert torch.equal(got[k], want[k]), k
    acc = knn_classify(bank, bank_y, queries, bank_y[:100], ks, 6)
    assert acc == {k: round(100.0 * int((want[k] == bank_y[:100]).sum()) / 100, 4) for k in ks}


def test_knn_with_10000_classes_holds_no_one_hot() -> None:
    """iNat21's label space: 10,000 classes and 100 neighbours give the one-hot vote's answers,
    and 2,000 queries on a bank of 20,000 grow the process by far less than the 4 GB a
    (1024, 100, 10000) one-hot chunk would take (measured in a fresh process)."""
    g = torch.Generator().manual_seed(0)
    bank, bank_y = torch.randn(20_000, 64, generator=g), torch.randint(0, 10_000, (20_000,), generator=g)
    bank_y[:2_000] = bank_y[2_000:4_000]  # neighbours share classes: the votes add up
    queries = bank[:16] + 0.1 * torch.randn(16, 64, generator=g)
    want, _ = _one_hot_vote(bank, bank_y, queries, [1, 10, 100], 10_000)
    got = knn_predict(bank, bank_y, queries, [1, 10, 100], 10_000)
    assert all(torch.equal(got[k], want[k]) for k in (1, 10, 100))
    code = (
        "import resource, torch\n"
        "from bootleg.probe.knn import knn_classify\n"
        "g = torch.Generator().manual_seed(0)\n"
        "bank, q = torch.randn(20_000, 64, generator=g), torch.randn(2_000, 64, generator=g)\n"
        "by, qy = torch.randint(0, 10_000, (20_000,), generator=g), torch.randint(0, 10_000, (2_000,), generator=g)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "knn_classify(bank, by, q, qy, [10, 20, 100], 10_000)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) < 512, f"peak grew by {r.stdout.strip()} MB"


def test_knn_segment_pixelwise_majority() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    labels = torch.tensor([[1, 2], [1, 255], [0, 2], [3, 3]])  # 2 pixels per patch
    pred = knn_segment(bank, labels, torch.tensor([[1.0, 0.0]]), [1, 3], classes=4)
    assert pred[1].tolist() == [[1, 2]]
    assert pred[3].tolist() == [[1, 2]]  # pixel 0: votes 1,1,0 ; pixel 1: 2,(ignored),2


def test_miou_and_patch_layout() -> None:
    truth = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 1], [1, 1]])
    c = confusion(pred, truth, 3, 255)
    m, per = miou(c)
    assert per == [50.0, pytest.approx(66.6667, abs=1e-3), None]
    assert m == pytest.approx((50 + 200 / 3) / 2, abs=1e-3)
    masks = torch.arange(2 * 8 * 8).view(2, 8, 8)
    pp = patch_pixels(masks, 4)
    assert pp.shape == (2, 4, 16) and pp[0, 1, :4].tolist() == [4, 5, 6, 7]
    assert torch.equal(pixels_from_patches(pp, 4), masks)
    up = upsample_logits(torch.zeros(3, 2, 4, 5), 8)
    assert up.shape == (6, 5, 8, 8)


def test_pasted_objects_task() -> None:
    g = torch.Generator().manual_seed(0)
    imgs = torch.full((4, 3, 28, 28), 200, dtype=torch.uint8)
    imgs[:, :, :, :10] = 0  # dark left part: not object under threshold masks
    labels = torch.tensor([0, 1, 2, 3])
    box = pasted_objects(imgs, labels, list("abcd"), 20, 32, 2, (0.4, 0.6), "box", g)
    assert box.images.shape == (20, 3, 32, 32) and box.masks.shape == (20, 32, 32)
    assert box.classes == ["background", "a", "b", "c", "d"]
    assert int(box.masks.min()) == 0 and 1 <= int(box.masks.max()) <= 4
    thr = pasted_objects(
        imgs, labels, list("abcd"), 20, 32, 1, (0.5, 0.5), "threshold", torch.Generator().manual_seed(0)
    )
    frac = (thr.masks > 0).float().mean().item()
    assert 0.1 < frac < 0.25  # 16x16 objects minus their dark third, on a 32x32 canvas
    again = pasted_objects(imgs, labels, list("abcd"), 20, 32, 2, (0.4, 0.6), "box", torch.Generator().manual_seed(0))
    assert torch.equal(again.images, box.images) and torch.equal(again.masks, box.masks)


def _png(path, array) -> None:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_seg_folders_ade20k_plain_cityscapes(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    lab = np.zeros((40, 60), np.uint8)
    lab[:, 30:] = 3
    ade = tmp_path / "ade"
    for split in ("training", "validation"):
        _png(ade / "images" / split / "a.png", img)
        _png(ade / "annotations" / split / "a.png", lab)
    s = load_seg_folder(ade, "train", 16)
    assert s.images.shape == (1, 3, 16, 16) and s.masks.shape == (1, 16, 16)
    assert set(s.masks.unique().tolist()) == {2, 255}  # reduce_zero_label: 0 -> ignore, 3 -> 2
    test = load_seg_folder(ade, "test", 16)
    assert finalize_classes(s, test, None) == 3

    plain = tmp_path / "plain"
    for split in ("train", "test"):
        _png(plain / "images" / split / "x" / "b.jpg", img)
        _png(plain / "masks" / split / "x" / "b.png", lab)
    p = load_seg_folder(plain, "test", 16)
    assert set(p.masks.unique().tolist()) == {0, 3}

    city = tmp_path / "city"
    for split in ("train", "val"):
        _png(city / "leftImg8bit" / split / "aachen" / "c_leftImg8bit.png", img)
        _png(city / "gtFine" / split / "aachen" / "c_gtFine_labelTrainIds.png", lab)
    c = load_seg_folder(city, "test", 16)
    assert c.name.startswith("cityscapes") and set(c.masks.unique().tolist()) == {0, 3}

    (plain / "masks" / "train" / "x" / "b.png").unlink()
    with pytest.raises(BootlegError, match="no label mask"):
        load_seg_folder(plain, "train", 16)
    with pytest.raises(BootlegError, match="not a folder"):
        load_seg_folder(tmp_path / "nope", "train", 16)


def test_probe_config_names_and_overrides() -> None:
    assert expand_probe_names(["classify"]) == ["linear_patch", "linear_cls", "attentive", "knn"]
    assert expand_probe_names(["seg_knn,knn", "knn"]) == ["knn", "seg_knn"]
    with pytest.raises(ValueError, match="'bogus' is unknown"):
        expand_probe_names(["bogus"])
    cfg = ProbeConfig.model_validate({"linear": {"epochs": 3}, "seg": {"block": {"lrs": [1e-3]}}})
    assert cfg.linear.epochs == 3 and len(cfg.linear.lrs) == 5
    assert cfg.seg.block.lrs == [1e-3] and cfg.seg.block.epochs == 10
    with pytest.raises(ValueError):
        ProbeConfig.model_validate({"linear": {"epoch": 3}})


def test_config_has_probe_section() -> None:
    from bootleg.config import dump_config, load_config

    cfg = load_config(None, ["probe.knn.ks=[5, 7]", "probe.probes=[knn]"])
    assert cfg.probe.knn.ks == [5, 7] and cfg.probe.probes == ["knn"]
    import yaml

    again = ProbeConfig.model_validate(yaml.safe_load(dump_config(cfg))["probe"])
    assert again == cfg.probe
    with pytest.raises(BootlegError, match="probe"):
        load_config(None, ["probe.probes=[nope]"])


def test_package_modules_are_light() -> None:
    """``bootleg.config`` imports ``bootleg.probe`` (and may import ``bootleg.finetune``) for their
    settings: those package modules import neither torch nor the runners."""
    import subprocess
    import sys

    code = (
        "import sys, bootleg.probe, bootleg.finetune; "
        "print(sorted(m for m in ('torch', 'timm', 'bootleg.probe.runner', 'bootleg.finetune.run') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
