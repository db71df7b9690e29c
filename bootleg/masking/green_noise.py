"""``green_noise``: ColorMAE's green-noise masking (Hinojosa et al., ECCV 2024; paper Table 5).

Per image, white noise on the patch grid is band-pass filtered with a difference of Gaussians
(``G_sigma[0] * W - G_sigma[1] * W``, ``sigma[0] < sigma[1]`` in patches; applied in the
Fourier domain, i.e. a circular convolution), and the patches with the highest filtered values
are masked: exactly ``N - int(N * (1 - mask_ratio))`` per image (the per-image quantile), as in
MAE's count. The band-pass removes the low frequencies, so masked and visible patches form
small interleaved clusters rather than large blobs (red noise) or salt-and-pepper (white).
The single target region is every masked patch (K = 1). ColorMAE draws its patterns from a
precomputed large noise image by random crops; here each image gets fresh noise, which has the
same statistics. The default sigmas (0.4, 1.0) are our choice: a band-pass peaking near 0.3
cycles per patch. Thresholding at 75% keeps only about half of the mask's variance in the
filtered (linear) part, so the mask's low-frequency power is about half of white noise's
(measured in ``tests/test_mask_groups.py``), not zero as for the noise itself.
"""

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
)
from bootleg.masking.registry import SAMPLERS


@SAMPLERS.register
class GreenNoiseParams(SamplerParams):
    """Green noise: 75% of the patches masked by thresholding band-pass filtered noise."""

    sampler: Literal["green_noise"] = "green_noise"
    mask_ratio: float = 0.75
    sigma: Pair = (0.4, 1.0)

    def check_fields(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise field_error("mask_ratio", self.mask_ratio, "a ratio in (0, 1)")
        check_range("sigma", self.sigma, 0.0, math.inf, closed_hi=False)
        if self.sigma[0] >= self.sigma[1]:
            raise field_error("sigma", self.sigma, "[inner, outer] with inner < outer (a band-pass)")

    def check_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        gh, gw = super().check_grid(grid)
        n = gh * gw
        if not 1 <= int(n * (1.0 - self.mask_ratio)) <= n - 1:
            raise grid_error("mask_ratio", self.mask_ratio, f"a ratio leaving 1..{n - 1} of {n} patches")
        return gh, gw

    def build(self, grid: tuple[int, int]) -> GreenNoiseSampler:
        return GreenNoiseSampler(grid, self.mask_ratio, self.sigma)


def dog_transfer(grid: tuple[int, int], sigma: Pair) -> torch.Tensor:
    """``(H, W)`` float64: the Fourier transfer function of ``G_s0 - G_s1`` on the grid."""
    fy = torch.fft.fftfreq(grid[0], dtype=torch.float64).unsqueeze(1)
    fx = torch.fft.fftfreq(grid[1], dtype=torch.float64).unsqueeze(0)
    f2 = fy**2 + fx**2  # cycles per patch, squared

    def gauss(s: float) -> torch.Tensor:
        return torch.exp(-2.0 * math.pi**2 * s**2 * f2)

    return gauss(sigma[0]) - gauss(sigma[1])


class GreenNoiseSampler(MaskSampler):
    """ColorMAE green-noise masks: see the module docstring."""

    name = "green_noise"

    def __init__(self, grid: tuple[int, int], mask_ratio: float = 0.75, sigma: Pair = (0.4, 1.0)) -> None:
        super().__init__(grid, 1)
        self.mask_ratio = float(mask_ratio)
        self.sigma = tuple(map(float, sigma))
        self.num_keep = int(self.num_patches * (1.0 - self.mask_ratio))
        self._transfer = dog_transfer(self.grid, self.sigma)

    def noise(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``(B, H*W)`` float64 green noise (band-pass filtered white noise)."""
        white = torch.randn(batch_size, *self.grid, generator=generator, dtype=torch.float64)
        green = torch.fft.ifft2(torch.fft.fft2(white) * self._transfer).real
        return green.reshape(batch_size, -1)

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        n, keep = self.num_patches, self.num_keep
        lowest = self.noise(batch_size, generator).topk(keep, dim=1, largest=False).indices
        visible = torch.zeros(batch_size, n, dtype=torch.bool).scatter_(1, lowest, True)
        enc = mask_to_idx(visible, keep)
        pred = mask_to_idx(~visible, n - keep).unsqueeze(1)
        return Masks(enc_idx=enc, pred_idx=pred), visible
