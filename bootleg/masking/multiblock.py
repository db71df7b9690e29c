"""Shared settings of the multi-block samplers (Bootleg and I-JEPA): ``num_blocks`` predictor
rectangles sized by ``block_scale`` x ``block_aspect`` inside a square background of
``background_scale``, keeping at least ``min_keep`` visible patches."""

from __future__ import annotations

import math

from bootleg.masking.base import MaskSampler, Pair, SamplerParams, check_range, field_error, grid_error


class MultiBlockParams(SamplerParams):
    """Fields of both multi-block samplers (each subclass sets its own defaults)."""

    num_blocks: int = 4
    block_scale: Pair
    block_aspect: Pair
    background_scale: Pair = (0.85, 1.0)
    min_keep: int = 10

    def check_fields(self) -> None:
        if self.num_blocks < 1:
            raise field_error("num_blocks", self.num_blocks, "an integer >= 1")
        if self.min_keep < 0:
            raise field_error("min_keep", self.min_keep, "an integer >= 0")
        check_range("block_scale", self.block_scale, 0.0, 1.0, closed_hi=True)
        check_range("block_aspect", self.block_aspect, 0.0, math.inf, closed_hi=False)
        check_range("background_scale", self.background_scale, 0.0, 1.0, closed_hi=True)

    def check_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        gh, gw = super().check_grid(grid)
        if self.min_keep > gh * gw - 1:
            raise grid_error("min_keep", self.min_keep, f"an integer in [0, {gh * gw - 1}] on the {gh}x{gw} grid")
        return gh, gw

    def block_args(self) -> tuple:
        """The runtime sampler's block settings, in its constructor's order after the grid."""
        return self.num_blocks, self.block_scale, self.block_aspect, self.background_scale, self.min_keep


class MultiBlockSampler(MaskSampler):
    """Runtime base of the multi-block samplers: holds the block settings."""

    def __init__(
        self,
        grid: tuple[int, int],
        num_blocks: int,
        block_scale: Pair,
        block_aspect: Pair,
        background_scale: Pair,
        min_keep: int,
    ) -> None:
        super().__init__(grid, num_blocks)
        self.block_scale = tuple(map(float, block_scale))
        self.block_aspect = tuple(map(float, block_aspect))
        self.background_scale = tuple(map(float, background_scale))
        self.min_keep = int(min_keep)
