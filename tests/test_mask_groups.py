"""Mask groups (Appendix C: masks are sampled per GPU worker's batch of 256 images, whatever the
micro-batch), padding with valid flags, bucketed shapes and green-noise masks."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from bootleg.errors import BootlegError
from bootleg.mask_stats import enc_mask, mask_stats, union_mask
from bootleg.masking import Masks, StepMasks, build_sampler, mask_seed, parse_masking

GRID = (14, 14)
N = 196


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sampler(name: str = "bootleg", **kw):
    return build_sampler({"sampler": name, **kw}, GRID)


def _equal(a: Masks, b: Masks) -> bool:
    pairs = [(a.enc_idx, b.enc_idx), (a.pred_idx, b.pred_idx), (a.enc_valid, b.enc_valid), (a.pred_valid, b.pred_valid)]
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in pairs)


def test_group_size_is_a_field_of_every_sampler_with_the_paper_default() -> None:
    for name in ("bootleg", "ijepa", "random", "cyclic", "inverse_block", "green_noise"):
        assert parse_masking({"sampler": name}).group_size == 256
        assert _sampler(name).group_size == 256
    with pytest.raises(BootlegError, match=r"^masking\.group_size: 0; expected"):
        parse_masking({"sampler": "bootleg", "group_size": 0})
    with pytest.raises(BootlegError, match=r"^masking\.bucket: 0; expected"):
        parse_masking({"sampler": "random", "bucket": 0})


def test_group_larger_than_micro_batch_spans_consecutive_micro_batches() -> None:
    s = _sampler()
    step = StepMasks(s, batch_size=32, seed=7, rank=1, group_size=128)
    group = s(128, torch.Generator().manual_seed(mask_seed(7, 2, 1, 1, 0)))  # group 1 of epoch 2
    parts = [step(2, b) for b in range(4, 8)]  # micro-batches 4..7 are group 1
    assert all(p.enc_valid is None and p.pred_valid is None for p in parts)
    assert torch.equal(torch.cat([p.enc_idx for p in parts]), group.enc_idx)
    assert torch.equal(torch.cat([p.pred_idx for p in parts]), group.pred_idx)
    assert not torch.equal(step(2, 3).pred_idx, parts[0].pred_idx)  # group 0 differs


def test_group_equal_to_micro_batch_is_the_old_per_batch_sampling() -> None:
    s = _sampler("ijepa")
    m = StepMasks(s, 64, seed=3, rank=2, group_size=64)(5, 9)
    ref = s(64, torch.Generator().manual_seed(mask_seed(3, 5, 9, 2, 0)))
    assert _equal(m, ref)


def test_micro_batch_holding_several_groups_pads_with_valid_flags() -> None:
    s = _sampler()
    step = StepMasks(s, batch_size=64, seed=0, group_size=16)
    m = step(0, 3)  # groups 12..15
    assert m.enc_valid is not None and m.pred_valid is not None
    assert m.enc_idx.shape[0] == 64 and m.enc_valid.shape == m.enc_idx.shape
    for j in range(4):
        g = s(16, torch.Generator().manual_seed(mask_seed(0, 0, 12 + j, 0, 0)))
        rows = slice(16 * j, 16 * (j + 1))
        length, p = g.enc_idx.shape[1], g.pred_idx.shape[2]
        assert (m.enc_valid[rows].sum(1) == length).all()  # truncated to this group's minimum
        assert torch.equal(m.enc_idx[rows, :length], g.enc_idx)
        assert torch.equal(m.pred_idx[rows, :, :p], g.pred_idx)
        assert (m.pred_valid[rows].sum(2) == p).all()
    # padding repeats an in-range index of the row and adds nothing to the visible set
    assert torch.equal(enc_mask(m, N).sum(1), m.enc_valid.sum(1))
    lengths = {int(v) for v in m.enc_valid.sum(1)}
    assert len(lengths) > 1 and m.enc_idx.shape[1] == max(lengths)


def test_masks_of_a_micro_batch_depend_only_on_its_coordinates() -> None:
    """Resume exactness: (seed, epoch, batch, rank, B, G) -> masks, whatever came before."""
    s = _sampler()
    for batch_size, group in ((32, 256), (256, 32), (64, 64)):
        run = StepMasks(s, batch_size, seed=11, rank=0, group_size=group)
        seq = [run(1, b) for b in range(10)]
        for b in (9, 3, 0, 7):
            fresh = StepMasks(s, batch_size, seed=11, rank=0, group_size=group)
            assert _equal(fresh(1, b), seq[b])
        clone = pickle.loads(pickle.dumps(run))  # data-loader workers get a copy
        assert _equal(clone(1, 5), seq[5])
        assert not _equal(StepMasks(s, batch_size, seed=11, rank=1, group_size=group)(1, 5), seq[5])


@pytest.mark.parametrize(("batch_size", "group"), [(48, 256), (256, 48), (3, 2)])
def test_group_and_micro_batch_must_divide(batch_size: int, group: int) -> None:
    with pytest.raises(BootlegError) as exc:
        StepMasks(_sampler(), batch_size, seed=0, group_size=group)
    msg = str(exc.value)
    assert msg.startswith("masking.group_size:") and "\n" not in msg


def test_masks_to_moves_the_valid_flags() -> None:
    m = StepMasks(_sampler(), 32, seed=0, group_size=8)(0, 0).to("cpu", non_blocking=True)
    assert m.enc_valid is not None and m.enc_valid.dtype == torch.bool and m.pred_valid.shape == m.pred_idx.shape
    m = Masks(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 1, 4, dtype=torch.long)).to("cpu")
    assert m.enc_valid is None and m.pred_valid is None


# Table 6 of the paper, Bootleg's multi-block masking on 14x14: seen 29.2%, target 47.5%.
@pytest.mark.parametrize(("batch_size", "batches"), [(2048, 10), (256, 80), (32, 640)])
def test_table6_rates_hold_at_any_micro_batch_with_groups_of_256(batch_size: int, batches: int) -> None:
    st = mask_stats(_sampler(), batch_size, batches, seed=0, group_size=256)  # 80 groups each
    assert abs(100 * st["seen_rate"]["mean"] - 29.2) < 1.0, st["seen_rate"]
    assert abs(100 * st["target_rate"]["mean"] - 47.5) < 1.0, st["target_rate"]


def test_group_masks_do_not_depend_on_the_micro_batch() -> None:
    """The same 80 groups of 256, cut into micro-batches of 2048, 256 or 32: identical stats."""
    stats = [mask_stats(_sampler(), b, n, seed=0, group_size=256) for b, n in ((2048, 10), (256, 80), (32, 640))]
    assert stats[0] == stats[1] == stats[2]


def test_without_groups_the_micro_batch_moves_the_seen_rate() -> None:
    """Truncating to the minimum of each micro-batch of 32 instead of each group of 256 (the
    behaviour groups fix): more patches seen (measured 33.0% against 28.9%)."""
    grouped = mask_stats(_sampler(), 32, 640, seed=0, group_size=256)["seen_rate"]["mean"]
    per_batch = mask_stats(_sampler(), 32, 640, seed=0, group_size=32)["seen_rate"]["mean"]
    assert 100 * (per_batch - grouped) > 2.5


# ----------------------------------------------------------------------------- buckets


@pytest.mark.parametrize(("name", "group"), [("bootleg", 256), ("bootleg", 16), ("cyclic", 256), ("inverse_block", 64)])
def test_bucketed_shapes_are_few_and_padding_is_flagged(name: str, group: int) -> None:
    """With ``bucket`` b, L and P are multiples of b: at most ceil(N/b)**2 shapes (the bound
    documented on ``SamplerParams``). Bootleg's blocks on 14x14 cover 30..36 patches, so P takes
    at most 2 bucketed values (32, 48); measured: 6 to 7 shapes over 200 micro-batches."""
    bucket = 16
    s = build_sampler({"sampler": name, "bucket": bucket, "group_size": group}, GRID)
    step = StepMasks(s, 32, seed=0)
    shapes = set()
    for b in range(200):
        m = step(0, b)
        length, p = m.enc_idx.shape[1], m.pred_idx.shape[2]
        assert length % bucket == 0 and p % bucket == 0
        assert m.enc_valid is not None and m.pred_valid is not None
        assert (m.enc_valid.sum(1) > length - bucket).any()  # no more than needed
        shapes.add((length, p))
    assert len(shapes) <= math.ceil(N / bucket) ** 2
    if name == "bootleg":
        assert len({p for _, p in shapes}) <= 2 and len(shapes) <= 2 * math.ceil(N / bucket), shapes
    else:  # one region whose size varies little
        assert len(shapes) <= 4, shapes


def test_bucket_padding_keeps_rates() -> None:
    plain = mask_stats(_sampler(), 64, 8, seed=0)
    bucketed = mask_stats(_sampler(bucket=16), 64, 8, seed=0)
    assert plain == bucketed


# ----------------------------------------------------------------------------- green noise


def test_green_noise_masks_exactly_75_percent_of_every_image() -> None:
    s = _sampler("green_noise")
    assert s.num_regions == 1
    m = s(64, torch.Generator().manual_seed(0))
    assert m.enc_idx.shape == (64, 49) and m.pred_idx.shape == (64, 1, 147)
    assert not (enc_mask(m, N) & union_mask(m, N)).any()
    assert (enc_mask(m, N) | union_mask(m, N)).all()


def _power(name: str, n: int = 3000) -> torch.Tensor:
    """Mean power spectrum ``(14, 14)`` of the (mean-removed) binary target masks."""
    m = _sampler(name)(n, torch.Generator().manual_seed(1))
    t = union_mask(m, N).double()
    t = (t - t.mean(1, keepdim=True)).reshape(n, 14, 14)
    return (torch.fft.fft2(t).abs() ** 2).mean(0)


def test_green_noise_spectrum_is_high_pass() -> None:
    white, green = _power("random"), _power("green_noise")
    fy, fx = torch.fft.fftfreq(14).unsqueeze(1), torch.fft.fftfreq(14).unsqueeze(0)
    f = (fy**2 + fx**2).sqrt()  # cycles per patch
    low, mid = (f > 0) & (f <= 0.15), (f > 0.22) & (f <= 0.4)
    # same total (non-DC) power: both are binary masks with 147 of 196 patches set
    assert abs(float(green[f > 0].sum() / white[f > 0].sum()) - 1.0) < 0.02
    assert float(green[low].mean() / white[low].mean()) < 0.7  # measured 0.56
    assert float(green[mid].mean() / white[mid].mean()) > 1.1  # the energy sits in the band


def test_group_size_and_bucket_through_the_config_and_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from bootleg.cli_masks import main
    from bootleg.config import load_config

    cfg = load_config(None, ["masking.group_size=64", "masking.bucket=8"])
    s = build_sampler(cfg.masking, GRID)
    assert (s.group_size, s.bucket) == (64, 8)
    with pytest.raises(BootlegError, match="masking.group_size"):
        load_config(None, ["masking.group_size=0"])
    argv = ["stats", "--batch-size", "32", "--batches", "4", "--json"]
    assert main([*argv, "--set", "masking.group_size=32"]) == 0
    per_batch = capsys.readouterr().out
    assert main(argv) == 0  # default group of 256: the 4 micro-batches share one group
    assert per_batch != capsys.readouterr().out
    assert main([*argv, "--set", "masking.group_size=48"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: masking.group_size: 48") and "\n" not in err
