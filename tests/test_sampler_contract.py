"""The contract every registered sampler keeps (one test, run over the whole registry, as timm
does for its models). A new sampler is picked up here without editing this file."""

from __future__ import annotations

import pytest
import torch

from bootleg.errors import BootlegError
from bootleg.masking import SAMPLERS, Masks, StepMasks, build_sampler, mask_seed

NAMES = SAMPLERS.names()


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(mask_seed(0, 0, batch))


def _check(m: Masks, b: int, k: int, n: int) -> None:
    """Shapes, dtypes, range, ascending valid indices, no visible target."""
    assert m.enc_idx.dtype == m.pred_idx.dtype == torch.long
    assert m.enc_idx.dim() == 2 and m.enc_idx.shape[0] == b and m.enc_idx.shape[1] >= 1
    assert m.pred_idx.dim() == 3 and m.pred_idx.shape[:2] == (b, k) and m.pred_idx.shape[2] >= 1
    for t in (m.enc_idx, m.pred_idx):
        assert int(t.min()) >= 0 and int(t.max()) < n
    ev = torch.ones_like(m.enc_idx, dtype=torch.bool) if m.enc_valid is None else m.enc_valid
    pv = torch.ones_like(m.pred_idx, dtype=torch.bool) if m.pred_valid is None else m.pred_valid
    assert ev.shape == m.enc_idx.shape and pv.shape == m.pred_idx.shape
    assert ev.any(1).all() and pv.any(2).all()
    # valid positions come first and are strictly ascending; padding repeats the last index
    assert (ev.int().diff(dim=1) <= 0).all() and (pv.int().diff(dim=2) <= 0).all()
    assert ((m.enc_idx.diff(dim=1) > 0) | ~ev[:, 1:]).all()
    assert ((m.pred_idx.diff(dim=2) > 0) | ~pv[..., 1:]).all()
    assert (m.enc_idx.diff(dim=1)[~ev[:, 1:]] == 0).all()
    for i in range(b):
        seen = set(m.enc_idx[i][ev[i]].tolist())
        target = set(m.pred_idx[i][pv[i]].tolist())
        assert not seen & target, "a target patch is visible to the encoder"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("grid", [(14, 14), (8, 12)])
def test_shapes_range_order(name: str, grid: tuple[int, int]) -> None:
    s = build_sampler(SAMPLERS.default(name), grid)
    assert s.grid == grid
    for batch in range(3):
        _check(s(16, _gen(batch)), 16, s.num_regions, grid[0] * grid[1])


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_seed_same_masks(name: str) -> None:
    s = build_sampler(SAMPLERS.default(name), (14, 14))
    a, b, c = s(32, _gen(3)), s(32, _gen(3)), s(32, _gen(4))
    assert torch.equal(a.enc_idx, b.enc_idx) and torch.equal(a.pred_idx, b.pred_idx)
    same = a.enc_idx.shape == c.enc_idx.shape and torch.equal(a.enc_idx, c.enc_idx)
    assert not (same and a.pred_idx.shape == c.pred_idx.shape and torch.equal(a.pred_idx, c.pred_idx))


@pytest.mark.parametrize("name", NAMES)
def test_grid_too_small_is_one_line_naming_the_field(name: str) -> None:
    params = SAMPLERS.default(name)
    with pytest.raises(BootlegError) as exc:
        build_sampler(params, (1, 2))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("masking.") and "expected" in msg
    field = msg.split(":")[0].removeprefix("masking.")
    assert field in type(params).model_fields


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("batch_size", "group_size"), [(8, 32), (32, 8), (16, 16)])
def test_step_masks_keep_the_contract(name: str, batch_size: int, group_size: int) -> None:
    s = build_sampler(SAMPLERS.default(name), (8, 8))
    step = StepMasks(s, batch_size, seed=1, rank=0, group_size=group_size)
    for b in range(3):
        _check(step(0, b), batch_size, s.num_regions, 64)


@pytest.mark.parametrize("name", NAMES)
def test_params_round_trip_through_the_union(name: str) -> None:
    from bootleg.masking import parse_masking

    params = SAMPLERS.default(name)
    again = parse_masking(params.model_dump(mode="json"))
    assert type(again) is type(params) and again == params
