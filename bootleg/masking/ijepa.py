"""``ijepa``: I-JEPA's multi-block masking kept faithfully, bugs included."""

from __future__ import annotations

import math
from typing import Literal

import torch

from bootleg.errors import BootlegError
from bootleg.masking.base import (
    Masks,
    Pair,
    box_mask,
    grid_error,
    mask_to_idx,
    rand_floats,
    rect_template,
    uniform_ints,
    union_mask,
)
from bootleg.masking.multiblock import MultiBlockParams, MultiBlockSampler
from bootleg.masking.registry import SAMPLERS


def ijepa_hw(scale: float, aspect: float, gh: int, gw: int) -> tuple[int, int]:
    """I-JEPA's ``_sample_block_size`` given the drawn scale and aspect."""
    max_keep = int(gh * gw * scale)
    h = int(round(math.sqrt(max_keep * aspect)))
    w = int(round(math.sqrt(max_keep / aspect)))
    while h >= gh:
        h -= 1
    while w >= gw:
        w -= 1
    return h, w


@SAMPLERS.register
class IJepaParams(MultiBlockParams):
    """I-JEPA's multi-block masking: 4 blocks of 15-20% of the grid, aspect 0.75-1.5, a
    background of 85-100% (capped one patch short), more than 10 patches seen."""

    sampler: Literal["ijepa"] = "ijepa"
    block_scale: Pair = (0.15, 0.2)
    block_aspect: Pair = (0.75, 1.5)

    def check_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        gh, gw = super().check_grid(grid)
        for s, a in zip(self.block_scale, self.block_aspect, strict=True):
            if min(ijepa_hw(s, a, gh, gw)) < 1:
                raise grid_error("block_scale", self.block_scale, "blocks of at least 1x1 patch")
        h, w = ijepa_hw(self.background_scale[0], 1.0, gh, gw)
        if min(h, w) < 1 or h * w <= self.min_keep:
            raise grid_error(
                "background_scale",
                self.background_scale,
                f"a background of more than min_keep={self.min_keep} patches (got {h}x{w} of {gh * gw})",
            )
        return gh, gw

    def build(self, grid: tuple[int, int]) -> IJepaSampler:
        return IJepaSampler(grid, *self.block_args())


class IJepaSampler(MultiBlockSampler):
    """I-JEPA's multi-block sampler, behaviour (and bugs) kept, vectorised.

    One random number drives both block scale and aspect; sizes are capped at
    ``grid - 1``; top-left corners are drawn from ``[0, H - h)`` (exclusive, 0 when
    empty); no orientation alternation. The background placement of samples with
    ``<= min_keep`` visible patches is redrawn (up to 20 times, like I-JEPA's timeout).
    I-JEPA then drops one exclusion constraint, which would let the encoder see target
    patches; instead we redraw the failing samples' predictor blocks too and start over
    (bounded), so targets are never visible. Truncation keeps the first ``L`` visible
    patches in row-major order.
    """

    name = "ijepa"

    def __init__(
        self,
        grid: tuple[int, int],
        num_blocks: int = 4,
        block_scale: Pair = (0.15, 0.2),
        block_aspect: Pair = (0.75, 1.5),
        background_scale: Pair = (0.85, 1.0),
        min_keep: int = 10,
        timeout: int = 20,
        max_rounds: int = 20,
    ) -> None:
        super().__init__(grid, num_blocks, block_scale, block_aspect, background_scale, min_keep)
        self.timeout = int(timeout)
        self.max_rounds = int(max_rounds)

    def draw_scale_aspect(self, generator: torch.Generator) -> tuple[float, float]:
        """The known bug: one uniform ``r`` gives both scale and aspect."""
        (r,) = rand_floats(generator, 1)
        s_lo, s_hi = self.block_scale
        a_lo, a_hi = self.block_aspect
        return s_lo + r * (s_hi - s_lo), a_lo + r * (a_hi - a_lo)

    def block_size(self, generator: torch.Generator) -> tuple[int, int]:
        scale, aspect = self.draw_scale_aspect(generator)
        return ijepa_hw(scale, aspect, *self.grid)

    def background_size(self, generator: torch.Generator) -> tuple[int, int]:
        (r,) = rand_floats(generator, 1)
        b_lo, b_hi = self.background_scale
        return ijepa_hw(b_lo + r * (b_hi - b_lo), 1.0, *self.grid)

    def _corners(self, n: int, k: int, hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """``(n, k, 2)`` top-left corners from ``randint(0, H - h)`` (exclusive bound)."""
        high = torch.tensor([max(self.grid[0] - hw[0], 1), max(self.grid[1] - hw[1], 1)])
        return uniform_ints(high, (n, k, 2), generator)

    def _pred(self, n: int, hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        pos = self._corners(n, self.num_regions, hw, generator)
        offset = pos[..., 0] * self.grid[1] + pos[..., 1]
        return offset.unsqueeze(2) + rect_template(hw[0], hw[1], self.grid[1])

    def _visible(self, allowed: torch.Tensor, bg_hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        pos = self._corners(allowed.shape[0], 1, bg_hw, generator)[:, 0]
        return box_mask(pos[:, 0], pos[:, 1], bg_hw[0], bg_hw[1], self.grid) & allowed

    def _failing(self, visible: torch.Tensor) -> torch.Tensor:
        """Indices of samples with ``<= min_keep`` visible patches (I-JEPA's test)."""
        return (visible.sum(1) <= self.min_keep).nonzero().squeeze(1)

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        p_hw = self.block_size(generator)
        e_hw = self.background_size(generator)
        n = self.num_patches
        pred_idx = self._pred(batch_size, p_hw, generator)
        allowed = ~union_mask(pred_idx, n)
        visible = self._visible(allowed, e_hw, generator)
        for _ in range(self.max_rounds):
            for _ in range(self.timeout):
                bad = self._failing(visible)
                if bad.numel() == 0:
                    break
                visible[bad] = self._visible(allowed[bad], e_hw, generator)
            bad = self._failing(visible)
            if bad.numel() == 0:
                break
            pred_idx[bad] = self._pred(bad.numel(), p_hw, generator)
            allowed[bad] = ~union_mask(pred_idx[bad], n)
            visible[bad] = self._visible(allowed[bad], e_hw, generator)
        counts = visible.sum(1)
        length = int(counts.min())
        if length < 1:
            raise BootlegError(
                f"masking: could not leave any visible patch (blocks {p_hw}, background "
                f"{e_hw}); expected smaller block_scale/num_blocks or larger background_scale"
            )
        keep = visible & (visible.cumsum(1) <= length)
        return Masks(enc_idx=mask_to_idx(keep, length), pred_idx=pred_idx), visible
