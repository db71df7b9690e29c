"""``inverse_block``: data2vec 2.0 inverse block masking."""

from __future__ import annotations

import math
from typing import Literal

import torch

from bootleg.masking.base import (
    Masks,
    MaskSampler,
    Pair,
    SamplerParams,
    check_range,
    field_error,
    grid_error,
    mask_to_idx,
    rand_floats,
    round_half_up,
    uniform_ints,
)
from bootleg.masking.registry import SAMPLERS


@SAMPLERS.register
class InverseBlockParams(SamplerParams):
    """data2vec 2.0: 80% masked; visible patches grow from 3x3 squares."""

    sampler: Literal["inverse_block"] = "inverse_block"
    mask_ratio: Pair = (0.8, 0.8)
    inverse_block_size: int = 3

    def check_fields(self) -> None:
        check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, closed_hi=False)
        if self.inverse_block_size < 1:
            raise field_error("inverse_block_size", self.inverse_block_size, "an integer >= 1")

    def check_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        gh, gw = super().check_grid(grid)
        n, side = gh * gw, min(gh, gw)
        if self.inverse_block_size > side:
            raise grid_error("inverse_block_size", self.inverse_block_size, f"an integer in [1, {side}]")
        for m in self.mask_ratio:
            if not 1 <= round_half_up((1.0 - m) * n) <= n - 1:
                raise grid_error("mask_ratio", self.mask_ratio, f"a ratio leaving 1..{n - 1} visible")
        return gh, gw

    def build(self, grid: tuple[int, int]) -> InverseBlockSampler:
        return InverseBlockSampler(grid, self.mask_ratio, self.inverse_block_size)


class InverseBlockSampler(MaskSampler):
    """data2vec 2.0 inverse block masking.

    Per call a ratio ``m ~ U(mask_ratio)``; per sample, start all-masked and unmask
    ``s x s`` squares (``s = inverse_block_size``) whose centres are uniform over the
    grid and which are *clipped* at the edges (no wrap-around), until at least
    ``n_vis = round((1 - m) * H * W)`` patches are visible. Squares are drawn for the
    whole batch at once (a fixed budget of squares, cumulative union, first index that
    reaches ``n_vis``). Then every sample is truncated (random surplus patches masked
    again) or extended (random masked patches unmasked, if the budget ran out) to exactly
    ``n_vis`` visible patches. The single target region is every non-visible patch.
    """

    name = "inverse_block"

    def __init__(self, grid: tuple[int, int], mask_ratio: Pair = (0.8, 0.8), inverse_block_size: int = 3) -> None:
        super().__init__(grid, 1)
        self.mask_ratio = tuple(map(float, mask_ratio))
        self.block = int(inverse_block_size)

    def num_visible(self, generator: torch.Generator) -> int:
        (u,) = rand_floats(generator, 1)
        m_lo, m_hi = self.mask_ratio
        return round_half_up((1.0 - (m_lo + u * (m_hi - m_lo))) * self.num_patches)

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        gh, gw = self.grid
        n, s = self.num_patches, self.block
        n_vis = self.num_visible(generator)
        budget = 2 * math.ceil(n_vis / (s * s)) + 4
        centre = uniform_ints(torch.tensor([gh, gw]), (batch_size, budget, 2), generator)
        top = centre - (s - 1) // 2  # (B, T, 2), may be negative: clipped by the masks
        rows, cols = torch.arange(gh), torch.arange(gw)
        in_r = (rows >= top[..., :1]) & (rows < top[..., :1] + s)  # (B, T, H)
        in_c = (cols >= top[..., 1:]) & (cols < top[..., 1:] + s)  # (B, T, W)
        squares = (in_r.unsqueeze(3) & in_c.unsqueeze(2)).reshape(batch_size, budget, n)
        union = squares.cummax(1).values  # (B, T, N)
        reached = union.sum(2) >= n_vis  # (B, T)
        first = torch.where(reached.any(1), reached.int().argmax(1), budget - 1)
        context = union[torch.arange(batch_size), first]  # (B, N)
        score = context.float() + torch.rand(batch_size, n, generator=generator)
        keep_idx = score.topk(n_vis, dim=1).indices
        visible = torch.zeros(batch_size, n, dtype=torch.bool).scatter_(1, keep_idx, True)
        enc = mask_to_idx(visible, n_vis)
        pred = mask_to_idx(~visible, n - n_vis).unsqueeze(1)
        return Masks(enc_idx=enc, pred_idx=pred), context
