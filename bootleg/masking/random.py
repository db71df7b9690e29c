"""``random``: MAE's uniform random masking."""

from __future__ import annotations

from typing import Literal

import torch

from bootleg.masking.base import Masks, MaskSampler, Pair, SamplerParams, check_range, grid_error, mask_to_idx
from bootleg.masking.registry import SAMPLERS


@SAMPLERS.register
class RandomParams(SamplerParams):
    """MAE: ``mask_ratio[0]`` of the patches masked uniformly at random (75%)."""

    sampler: Literal["random"] = "random"
    mask_ratio: Pair = (0.75, 0.75)

    def check_fields(self) -> None:
        check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, closed_hi=False)

    def check_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        gh, gw = super().check_grid(grid)
        n = gh * gw
        if not 1 <= int(n * (1.0 - self.mask_ratio[0])) <= n - 1:
            raise grid_error("mask_ratio", self.mask_ratio, f"a ratio leaving 1..{n - 1} of {n} patches")
        return gh, gw

    def build(self, grid: tuple[int, int]) -> RandomSampler:
        return RandomSampler(grid, self.mask_ratio)


class RandomSampler(MaskSampler):
    """MAE: per sample a uniform random subset of ``int(N * (1 - mask_ratio[0]))``
    patches is visible; the single target region is every other patch."""

    name = "random"

    def __init__(self, grid: tuple[int, int], mask_ratio: Pair = (0.75, 0.75)) -> None:
        super().__init__(grid, 1)
        self.mask_ratio = tuple(map(float, mask_ratio))
        self.num_keep = int(self.num_patches * (1.0 - self.mask_ratio[0]))

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        n, keep = self.num_patches, self.num_keep
        order = torch.rand(batch_size, n, generator=generator).argsort(1)
        visible = torch.zeros(batch_size, n, dtype=torch.bool)
        visible.scatter_(1, order[:, :keep], True)  # exactly `keep` True per row
        enc = mask_to_idx(visible, keep)
        pred = mask_to_idx(~visible, n - keep).unsqueeze(1)
        return Masks(enc_idx=enc, pred_idx=pred), visible
