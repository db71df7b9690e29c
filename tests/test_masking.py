"""Mask samplers: contracts, the paper's Appendix C behaviour and its Table 8 / Table 6 numbers."""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from bootleg.errors import BootlegError
from bootleg.mask_stats import enc_mask, mask_stats, union_mask
from bootleg.masking import SAMPLERS, Masks, build_sampler, mask_seed, parse_masking
from bootleg.masking.bootleg import BootlegSampler
from bootleg.masking.ijepa import IJepaSampler

GRID = (14, 14)
N = GRID[0] * GRID[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Samplers work on tiny tensors: intra-op threads only add overhead (and stall badly
    on a busy machine), so these tests run on one thread like data-loader workers do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int = 0, epoch: int = 0, batch: int = 0, rank: int = 0, worker: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(mask_seed(seed, epoch, batch, rank, worker))


def _sampler(name: str, grid: tuple[int, int] = GRID, **kw):
    return build_sampler({"sampler": name, **kw}, grid)


# ----------------------------------------------------------------------------- contracts


CORE = ("bootleg", "ijepa", "random", "cyclic", "inverse_block")


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("grid", [(14, 14), (8, 12)])
def test_shapes_and_dtypes(name: str, grid: tuple[int, int]) -> None:
    s = _sampler(name, grid)
    assert s.grid == grid
    m = s(8, _gen())
    assert isinstance(m, Masks)
    assert m.enc_idx.dtype == torch.long and m.pred_idx.dtype == torch.long
    assert m.enc_idx.dim() == 2 and m.enc_idx.shape[0] == 8 and m.enc_idx.shape[1] >= 1
    assert m.pred_idx.dim() == 3 and m.pred_idx.shape[:2] == (8, s.num_regions)
    n = grid[0] * grid[1]
    for t in (m.enc_idx, m.pred_idx):
        assert int(t.min()) >= 0 and int(t.max()) < n
    expected_k = 4 if name in ("bootleg", "ijepa") else 1
    assert s.num_regions == expected_k


@pytest.mark.parametrize("name", CORE)
def test_targets_never_visible_and_indices_sorted_unique(name: str) -> None:
    s = _sampler(name)
    for batch in range(5):
        m = s(64, _gen(batch=batch))
        enc, tgt = enc_mask(m, N), union_mask(m, N)
        assert not (enc & tgt).any()
        assert (m.enc_idx.diff(dim=1) > 0).all()  # ascending and unique
        assert (m.pred_idx.diff(dim=2) > 0).all()


@pytest.mark.parametrize("name", CORE)
def test_same_seed_same_masks_other_seed_other_masks(name: str) -> None:
    s = _sampler(name)
    a, b = s(32, _gen(batch=3)), s(32, _gen(batch=3))
    assert torch.equal(a.enc_idx, b.enc_idx) and torch.equal(a.pred_idx, b.pred_idx)
    c = s(32, _gen(batch=4))
    same = a.enc_idx.shape == c.enc_idx.shape and torch.equal(a.enc_idx, c.enc_idx)
    assert not (same and torch.equal(a.pred_idx, c.pred_idx))


def test_masks_to_device() -> None:
    m = _sampler("bootleg")(4, _gen()).to("cpu", non_blocking=True)
    assert m.enc_idx.device.type == "cpu" and m.pred_idx.shape[:2] == (4, 4)


# ----------------------------------------------------------------------------- seeds


def test_mask_seed_distinct_and_63_bit() -> None:
    tuples = list(itertools.product(range(3), range(4), range(6), range(4), range(3)))
    seeds = [mask_seed(*t) for t in tuples]
    assert len(set(seeds)) == len(tuples)
    assert all(0 <= s < 2**63 for s in seeds)
    assert mask_seed(1, 2, 3, 4, 5) == mask_seed(1, 2, 3, 4, 5)
    assert mask_seed(0, 0, 0) == mask_seed(0, 0, 0, 0, 0)
    # swapping fields must not collide (a plain sum/xor would)
    assert mask_seed(0, 1, 0) != mask_seed(0, 0, 1) != mask_seed(0, 0, 0, 1)
    with pytest.raises(BootlegError):
        mask_seed(-1, 0, 0)


def test_masks_differ_across_ranks_and_workers() -> None:
    s = _sampler("bootleg")
    masks = [s(16, _gen(0, 0, 7, rank, worker)) for rank in range(2) for worker in range(2)]
    for a, b in itertools.combinations(masks, 2):
        assert not torch.equal(a.pred_idx, b.pred_idx)


# ----------------------------------------------------------------------------- sizes


def _corr(x: list[float], y: list[float]) -> float:
    return float(torch.corrcoef(torch.tensor([x, y], dtype=torch.float64))[0, 1])


def test_bootleg_scale_and_aspect_independent_ijepa_correlated() -> None:
    b, ij = _sampler("bootleg"), _sampler("ijepa")
    g = _gen()
    bs = [b.draw_scale_aspect(g)[:2] for _ in range(4000)]
    js = [ij.draw_scale_aspect(g) for _ in range(4000)]
    assert abs(_corr(*zip(*bs, strict=True))) < 0.06
    assert _corr(*zip(*js, strict=True)) > 0.999
    # consequence in I-JEPA: landscape blocks (h < w) are only the small ones
    sizes = Counter(ij.block_size(g) for _ in range(4000))
    assert all(h * w <= 30 for (h, w) in sizes if h < w)
    assert sizes[(5, 7)] == 0 and sizes[(7, 5)] > 0


def test_bootleg_blocks_alternate_orientation() -> None:
    s = _sampler("bootleg")
    first = Counter()
    for batch in range(40):
        m = s(4, _gen(batch=batch))
        rows, cols = m.pred_idx // 14, m.pred_idx % 14
        h = rows.amax(-1) - rows.amin(-1) + 1  # (B, K)
        w = cols.amax(-1) - cols.amin(-1) + 1
        assert (h[:, 0::2] == h[:, :1]).all() and (w[:, 0::2] == w[:, :1]).all()
        assert (h[:, 1::2] == w[:, :1]).all() and (w[:, 1::2] == h[:, :1]).all()
        assert (h * w == m.pred_idx.shape[2]).all()  # rectangles
        first[bool(h[0, 0] > w[0, 0])] += int(h[0, 0] != w[0, 0])
    assert first[True] > 5 and first[False] > 5  # random first orientation


def test_background_sizes() -> None:
    g = _gen()
    sides = Counter(_sampler("bootleg").background_side(g) for _ in range(2000))
    assert set(sides) == {13, 14}
    assert sides[14] > 100 and sides[13] > 100
    ij = _sampler("ijepa")
    assert {ij.background_size(g) for _ in range(500)} == {(13, 13)}


def _frequencies(name: str, batches: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    st = mask_stats(_sampler(name), batch_size, batches, seed=1)
    return torch.tensor(st["visible_frequency"]), torch.tensor(st["target_frequency"])


def test_bootleg_placement_covers_every_patch() -> None:
    vis, tgt = _frequencies("bootleg", 20)
    assert (vis > 0).all(), "every patch (last row/col and corners included) can be seen"
    assert (tgt > 0).all(), "every patch can be a target"
    assert vis[-1].min() > 0.05 and vis[:, -1].min() > 0.05


def test_ijepa_never_uses_last_row_or_column() -> None:
    s = _sampler("ijepa")
    for batch in range(20):
        m, context = s.sample_with_context(256, _gen(batch=batch))
        grid_vis = enc_mask(m, N).reshape(-1, 14, 14) | context.reshape(-1, 14, 14)
        grid_tgt = union_mask(m, N).reshape(-1, 14, 14)
        for g in (grid_vis, grid_tgt):
            assert not g[:, 13, :].any() and not g[:, :, 13].any()


def test_truncation_bias_bootleg_balanced_ijepa_top_heavy() -> None:
    vis_b, _ = _frequencies("bootleg", 30)
    vis_i, _ = _frequencies("ijepa", 30)
    top_b, bottom_b = vis_b[:3].mean(), vis_b[-3:].mean()
    assert 0.8 < float(bottom_b / top_b) < 1.25
    left_b, right_b = vis_b[:, :3].mean(), vis_b[:, -3:].mean()
    assert 0.8 < float(right_b / left_b) < 1.25
    top_i, bottom_i = vis_i[:3, :13].mean(), vis_i[10:13, :13].mean()
    assert float(bottom_i / top_i) < 0.2


# ----------------------------------------------------------------------------- paper numbers

# Table 8 of the paper: (h, w) -> rate in % of predictor blocks on 14x14.
TABLE8 = {
    "bootleg": {(5, 6): 18.8, (6, 5): 18.7, (5, 7): 20.0, (7, 5): 20.1, (6, 6): 22.4, (5, 8): 0.0, (8, 5): 0.0},
    "ijepa": {(5, 6): 26.5, (6, 5): 12.6, (5, 7): 0.0, (7, 5): 36.5, (6, 6): 21.8, (5, 8): 0.0, (8, 5): 2.6},
}


@pytest.mark.parametrize("name", ["bootleg", "ijepa"])
def test_table8_block_size_rates(name: str) -> None:
    s = _sampler(name)
    g = _gen()
    calls = 20000
    blocks: Counter[tuple[int, int]] = Counter()
    for _ in range(calls):
        h, w = s.block_size(g)
        for k in range(s.num_regions):  # bootleg alternates (h, w), (w, h), ...
            blocks[(w, h) if isinstance(s, BootlegSampler) and k % 2 else (h, w)] += 1
    total = calls * s.num_regions
    for hw, rate in TABLE8[name].items():
        assert abs(100 * blocks[hw] / total - rate) < 1.5, (hw, 100 * blocks[hw] / total, rate)
    assert sum(blocks[hw] for hw in TABLE8[name]) == total


@pytest.mark.parametrize("name", ["bootleg", "ijepa"])
def test_block_hw_rates_of_mask_stats_match_sizes(name: str) -> None:
    rates = mask_stats(_sampler(name), batch_size=2, batches=300, seed=0, group_size=2)["block_hw_rates"]
    assert len(rates) >= 3  # 300 groups, so several block sizes
    assert abs(sum(rates.values()) - 1.0) < 1e-9
    allowed = {f"{h}x{w}" for (h, w), r in TABLE8[name].items() if r > 0}
    assert set(rates) <= allowed


# Table 6 (and Table 5): seen and target rates, mean ± std over samples, batch 256.
TABLE6 = {"bootleg": (29.2, 6.9, 47.5, 7.6), "ijepa": (24.3, 3.7, 44.5, 7.0)}


@pytest.mark.parametrize("name", ["bootleg", "ijepa"])
def test_table6_seen_and_target_rates(name: str) -> None:
    st = mask_stats(_sampler(name), batch_size=256, batches=800, seed=0)
    seen_m, seen_s, tgt_m, tgt_s = TABLE6[name]
    assert abs(100 * st["seen_rate"]["mean"] - seen_m) < 1.0
    assert abs(100 * st["seen_rate"]["std"] - seen_s) < 1.0
    assert abs(100 * st["target_rate"]["mean"] - tgt_m) < 1.0
    assert abs(100 * st["target_rate"]["std"] - tgt_s) < 1.0


def test_vectorised_ijepa_matches_loop_reference() -> None:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench.ijepa_reference import IJepaReferenceSampler

    ref, vec = IJepaReferenceSampler(GRID), _sampler("ijepa")
    seen = {}
    for name, s in (("ref", ref), ("vec", vec)):
        total, tgt = 0.0, 0.0
        for batch in range(40):
            m = s(64, _gen(batch=batch))
            total += m.enc_idx.shape[1] / N
            tgt += float(union_mask(m, N).float().mean())
            assert not (enc_mask(m, N) & union_mask(m, N)).any()
            assert int(m.enc_idx.max()) < 13 * 14 - 1 and int(m.pred_idx.max()) < 13 * 14 - 1
        seen[name] = (100 * total / 40, 100 * tgt / 40)
    assert abs(seen["ref"][0] - seen["vec"][0]) < 3.0, seen
    assert abs(seen["ref"][1] - seen["vec"][1]) < 3.0, seen


# ----------------------------------------------------------------------------- K = 1 samplers


def test_random_sampler_mae_ratio() -> None:
    m = _sampler("random")(16, _gen())
    assert m.enc_idx.shape == (16, 49) and m.pred_idx.shape == (16, 1, 147)
    assert not torch.equal(m.enc_idx[0], m.enc_idx[1])


def test_cyclic_block_is_one_wrapped_rectangle() -> None:
    s = _sampler("cyclic")
    for batch in range(10):
        m = s(16, _gen(batch=batch))
        p = m.pred_idx.shape[2]
        assert 0.65 * N <= p <= 0.85 * N
        tgt = union_mask(m, N).reshape(-1, 14, 14)
        rows, cols = tgt.any(2), tgt.any(1)  # (B, 14) rows / cols touched by the block
        assert (rows.sum(1) * cols.sum(1) == p).all()  # a product set: rectangle on the torus


def test_inverse_block_exact_visible_count() -> None:
    s = _sampler("inverse_block")
    for batch in range(5):
        m, context = s.sample_with_context(64, _gen(batch=batch))
        assert m.enc_idx.shape == (64, 39) and m.pred_idx.shape == (64, 1, N - 39)
    s = _sampler("inverse_block", inverse_block_size=1, mask_ratio=(0.5, 0.5))
    assert s(8, _gen()).enc_idx.shape == (8, 98)


def test_bootleg_min_keep_respected_under_pressure() -> None:
    s = _sampler("bootleg", block_scale=(0.3, 0.32), min_keep=30)
    for batch in range(5):
        assert s(128, _gen(batch=batch)).enc_idx.shape[1] >= 30


# ----------------------------------------------------------------------------- validation


def test_defaults_cover_every_sampler() -> None:
    assert set(CORE) <= set(SAMPLERS.names())
    for name, cls in SAMPLERS:
        params = cls()
        assert params.sampler == name
        build_sampler(params, GRID)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"sampler": "nope"}, "masking.sampler"),
        ({"block_scale": (0.2, 0.1)}, "masking.block_scale"),
        ({"block_scale": (0.9, 1.0)}, "masking.block_scale"),
        ({"block_scale": (0.0, 0.1)}, "masking.block_scale"),
        ({"block_scale": "big"}, "masking.block_scale"),
        ({"block_aspect": (-1.0, 1.0)}, "masking.block_aspect"),
        ({"background_scale": (0.01, 0.02)}, "masking.background_scale"),
        ({"background_scale": (0.9, 1.2)}, "masking.background_scale"),
        ({"num_blocks": 0}, "masking.num_blocks"),
        ({"min_keep": 500}, "masking.min_keep"),
        ({"sampler": "ijepa", "background_scale": (0.01, 0.02)}, "masking.background_scale"),
        ({"sampler": "random", "mask_ratio": (0.75, 1.0)}, "masking.mask_ratio"),
        ({"sampler": "random", "mask_ratio": (0.0, 0.5)}, "masking.mask_ratio"),
        ({"sampler": "cyclic", "mask_ratio": (0.8, 0.7)}, "masking.mask_ratio"),
        ({"sampler": "inverse_block", "inverse_block_size": 20}, "masking.inverse_block_size"),
        ({"sampler": "inverse_block", "mask_ratio": (1.5, 1.5)}, "masking.mask_ratio"),
    ],
)
def test_validate_rejects_impossible_params(kw: dict, field: str) -> None:
    with pytest.raises(BootlegError) as exc:
        build_sampler(parse_masking({"sampler": "bootleg", **kw}), GRID)
    msg = str(exc.value)
    assert msg.startswith(field + ":") and "\n" not in msg
    if kw.get("block_scale") != "big":  # a type error says what pydantic wanted instead
        assert "expected" in msg


def test_bad_grid_rejected() -> None:
    with pytest.raises(BootlegError, match="grid"):
        build_sampler({"sampler": "bootleg"}, (0, 14))


def test_build_sampler_accepts_project_config() -> None:
    from bootleg.config import load_config

    cfg = load_config(None, ["method=ijepa", "masking.min_keep=4"])
    sampler = build_sampler(cfg.masking, GRID)
    assert isinstance(sampler, IJepaSampler) and sampler.min_keep == 4


def test_truncation_removes_first_tokens_of_one_corner_scan() -> None:
    from bootleg.masking.base import scan_orders

    orders = scan_orders(GRID)  # (8, N)
    b_sampler, i_sampler = _sampler("bootleg"), _sampler("ijepa")
    used = set()
    for batch in range(4):
        m, context = b_sampler.sample_with_context(64, _gen(batch=batch))
        enc = enc_mask(m, N)
        assert not (enc & ~context).any()
        length = m.enc_idx.shape[1]
        assert int(context.sum(1).min()) == length
        for i in range(64):
            removed = context[i] & ~enc[i]
            n_drop = int(removed.sum())
            matches = []
            for o, order in enumerate(orders):
                met = order[context[i][order]]  # visible patches in scan order
                if set(met[:n_drop].tolist()) == set(removed.nonzero().squeeze(1).tolist()):
                    matches.append(o)
            assert matches, f"sample {i}: removed patches are not a corner-scan prefix"
            if n_drop >= 20:
                used.update(matches)
        m, context = i_sampler.sample_with_context(64, _gen(batch=batch))
        length = m.enc_idx.shape[1]
        first = torch.stack([row.nonzero().squeeze(1)[:length] for row in context])
        assert torch.equal(m.enc_idx, first)  # I-JEPA keeps the first L in row-major order
    assert len(used) == 8  # all 4 corners x 2 orientations occur
