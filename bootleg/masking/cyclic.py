"""``cyclic``: CAPI/Franca cyclic block masking (one rectangle on the torus)."""

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
    grid_error,
    mask_to_idx,
    rand_floats,
    round_half_up,
    uniform_ints,
    union_mask,
)
from bootleg.masking.registry import SAMPLERS


@SAMPLERS.register
class CyclicParams(SamplerParams):
    """Cyclic block: a rectangle of 70-80% of the grid, log-uniform aspect 0.5-2, wrapping."""

    sampler: Literal["cyclic"] = "cyclic"
    mask_ratio: Pair = (0.7, 0.8)
    block_aspect: Pair = (0.5, 2.0)

    def check_fields(self) -> None:
        check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, closed_hi=False)
        check_range("block_aspect", self.block_aspect, 0.0, math.inf, closed_hi=False)

    def check_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        gh, gw = super().check_grid(grid)
        n = gh * gw
        for m in self.mask_ratio:
            if not 1 <= round_half_up(m * n) <= n - 1:
                raise grid_error("mask_ratio", self.mask_ratio, f"a ratio masking 1..{n - 1} of {n} patches")
        return gh, gw

    def build(self, grid: tuple[int, int]) -> CyclicSampler:
        return CyclicSampler(grid, self.mask_ratio, self.block_aspect)


class CyclicSampler(MaskSampler):
    """CAPI/Franca cyclic block: per call a ratio ``m ~ U(mask_ratio)`` and a
    log-uniform aspect give one ``h x w`` rectangle (``h*w ~= m*H*W``); per sample it
    is placed at a uniform offset on the torus (wrapping around the edges). The single
    target region is the rectangle; the encoder sees the complement."""

    name = "cyclic"

    def __init__(self, grid: tuple[int, int], mask_ratio: Pair = (0.7, 0.8), block_aspect: Pair = (0.5, 2.0)) -> None:
        super().__init__(grid, 1)
        self.mask_ratio = tuple(map(float, mask_ratio))
        self.block_aspect = tuple(map(float, block_aspect))

    def block_size(self, generator: torch.Generator) -> tuple[int, int]:
        u_m, u_a = rand_floats(generator, 2)
        gh, gw = self.grid
        m_lo, m_hi = self.mask_ratio
        area = (m_lo + u_m * (m_hi - m_lo)) * gh * gw
        la, lb = math.log(self.block_aspect[0]), math.log(self.block_aspect[1])
        aspect = math.exp(la + u_a * (lb - la))
        h = min(max(round_half_up(math.sqrt(area * aspect)), 1), gh)
        w = min(max(round_half_up(area / h), 1), gw)
        h = min(max(round_half_up(area / w), 1), gh)
        if h * w >= gh * gw:  # keep at least one visible patch
            h, w = (h - 1, w) if h > 1 else (h, w - 1)
        return h, w

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        gh, gw = self.grid
        h, w = self.block_size(generator)
        pos = uniform_ints(torch.tensor([gh, gw]), (batch_size, 2), generator)
        rows = (pos[:, :1] + torch.arange(h)) % gh  # (B, h)
        cols = (pos[:, 1:] + torch.arange(w)) % gw  # (B, w)
        idx = (rows.unsqueeze(2) * gw + cols.unsqueeze(1)).reshape(batch_size, h * w)
        target = union_mask(idx.unsqueeze(1), self.num_patches)
        pred = mask_to_idx(target, h * w).unsqueeze(1)
        visible = ~target
        enc = mask_to_idx(visible, self.num_patches - h * w)
        return Masks(enc_idx=enc, pred_idx=pred), visible
