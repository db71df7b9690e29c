"""``bootleg``: the paper's multi-block masking (Appendix C) with all its fixes."""

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
    round_half_up,
    scan_orders,
    uniform_ints,
    union_mask,
)
from bootleg.masking.multiblock import MultiBlockParams, MultiBlockSampler
from bootleg.masking.registry import SAMPLERS


def bootleg_hw(area: float, aspect: float) -> tuple[int, int]:
    """``(h, w)`` rounded from the unrounded area and aspect."""
    return round_half_up(math.sqrt(area * aspect)), round_half_up(math.sqrt(area / aspect))


def min_union(h: int, w: int, num_blocks: int) -> int:
    """Smallest possible union of ``num_blocks`` alternating (h, w)/(w, h) blocks."""
    if num_blocks == 1 or h == w:
        return h * w
    return 2 * h * w - min(h, w) ** 2


@SAMPLERS.register
class BootlegParams(MultiBlockParams):
    """Bootleg multi-block masking: 4 blocks of 16-18% of the grid, aspect 1-1.45 (either
    orientation, alternating), a square background of 85-100%, at least 10 patches seen."""

    sampler: Literal["bootleg"] = "bootleg"
    block_scale: Pair = (0.16, 0.18)
    block_aspect: Pair = (1.0, 1.45)

    def check_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        gh, gw = super().check_grid(grid)
        n, side, need = gh * gw, min(gh, gw), max(self.min_keep, 1)
        for s in self.block_scale:
            for a in self.block_aspect:
                h, w = bootleg_hw(s * n, a)
                if min(h, w) < 1:
                    raise grid_error("block_scale", self.block_scale, "blocks of at least 1x1 patch")
                if max(h, w) > side:
                    raise grid_error(
                        "block_scale",
                        self.block_scale,
                        f"blocks that fit the {gh}x{gw} grid in both orientations "
                        f"(got {h}x{w} with block_aspect {self.block_aspect})",
                    )
        h, w = bootleg_hw(self.block_scale[1] * n, self.block_aspect[1])
        if n - min_union(h, w, self.num_blocks) < need:
            raise grid_error(
                "block_scale", self.block_scale, f"blocks that leave at least min_keep={need} patches visible"
            )
        bside = min(round_half_up(math.sqrt(self.background_scale[0] * n)), side)
        if bside * bside < need:
            raise grid_error(
                "background_scale",
                self.background_scale,
                f"a background of at least min_keep={self.min_keep} patches (got {bside}x{bside})",
            )
        return gh, gw

    def build(self, grid: tuple[int, int]) -> BootlegSampler:
        return BootlegSampler(grid, *self.block_args())


class BootlegSampler(MultiBlockSampler):
    """The paper's multi-block sampler (Appendix C, with all fixes).

    Per call: block scale and aspect magnitude drawn independently, ``h, w`` rounded
    from the unrounded area, random first orientation, blocks alternating orientation;
    one background side per call. Per sample: every block and the background placed
    uniformly over every valid top-left position; samples with fewer than ``min_keep``
    visible patches are re-placed (vectorised, bounded retries); truncation removes the
    surplus visible patches met first when scanning from a random corner in a random
    orientation (one of 8 scan orders per sample).
    """

    name = "bootleg"

    def __init__(
        self,
        grid: tuple[int, int],
        num_blocks: int = 4,
        block_scale: Pair = (0.16, 0.18),
        block_aspect: Pair = (1.0, 1.45),
        background_scale: Pair = (0.85, 1.0),
        min_keep: int = 10,
        max_retries: int = 20,
    ) -> None:
        super().__init__(grid, num_blocks, block_scale, block_aspect, background_scale, min_keep)
        self.max_retries = int(max_retries)
        self._orders = scan_orders(self.grid)

    # -- per-call sizes ------------------------------------------------------------

    def draw_scale_aspect(self, generator: torch.Generator) -> tuple[float, float, bool]:
        """Independent ``scale ~ U(block_scale)``, ``aspect ~ U(block_aspect)`` and a
        fair coin for the orientation of block 0."""
        u_s, u_a, u_o = rand_floats(generator, 3)
        s_lo, s_hi = self.block_scale
        a_lo, a_hi = self.block_aspect
        return s_lo + u_s * (s_hi - s_lo), a_lo + u_a * (a_hi - a_lo), u_o < 0.5

    def block_size(self, generator: torch.Generator) -> tuple[int, int]:
        """``(h, w)`` of block 0 (block ``k`` is ``(w, h)`` for odd ``k``)."""
        scale, aspect, swap = self.draw_scale_aspect(generator)
        h, w = bootleg_hw(scale * self.num_patches, aspect)
        side = min(self.grid)  # blocks alternate orientation: both sides must fit
        h, w = min(max(h, 1), side), min(max(w, 1), side)
        return (w, h) if swap else (h, w)

    def background_side(self, generator: torch.Generator) -> int:
        """Side of the square background: ``round(sqrt(b * H * W))``, ``b ~ U(background_scale)``."""
        (u,) = rand_floats(generator, 1)
        b_lo, b_hi = self.background_scale
        side = round_half_up(math.sqrt((b_lo + u * (b_hi - b_lo)) * self.num_patches))
        return min(max(side, 1), min(self.grid))

    # -- per-sample placement ------------------------------------------------------

    def _place(
        self, n: int, hw: tuple[int, int], side: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Place blocks and background for ``n`` samples.

        Returns ``pred_idx`` ``(n, K, P)`` and ``visible`` ``(n, H*W)`` bool.
        """
        gh, gw = self.grid
        k = self.num_regions
        h, w = hw
        shapes = torch.tensor([[h, w] if i % 2 == 0 else [w, h] for i in range(k)])  # (K, 2)
        high = torch.tensor([gh + 1, gw + 1]) - shapes  # valid tops/lefts: 0..H-h
        pos = uniform_ints(high, (n, k, 2), generator)  # (n, K, 2)
        offset = pos[..., 0] * gw + pos[..., 1]  # (n, K)
        templates = torch.stack([rect_template(h, w, gw), rect_template(w, h, gw)])
        template = templates[torch.arange(k) % 2]  # (K, P)
        pred_idx = offset.unsqueeze(2) + template  # (n, K, P)
        bg_pos = uniform_ints(torch.tensor([gh - side + 1, gw - side + 1]), (n, 2), generator)
        background = box_mask(bg_pos[:, 0], bg_pos[:, 1], side, side, self.grid)
        visible = background & ~union_mask(pred_idx, self.num_patches)
        return pred_idx, visible

    def _place_with_retries(
        self, batch_size: int, hw: tuple[int, int], side: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred_idx, visible = self._place(batch_size, hw, side, generator)
        need = max(self.min_keep, 1)
        for _ in range(self.max_retries):
            bad = (visible.sum(1) < need).nonzero().squeeze(1)
            if bad.numel() == 0:
                break
            pred_idx[bad], visible[bad] = self._place(bad.numel(), hw, side, generator)
        if int(visible.sum(1).min()) < 1:
            raise BootlegError(
                f"masking: could not leave any visible patch after {self.max_retries} retries "
                f"(blocks {hw}, background {side}x{side}); expected smaller "
                "block_scale/num_blocks or larger background_scale"
            )
        return pred_idx, visible

    def _truncate(self, visible: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Keep ``L = min count`` visible patches per sample, removing the surplus met
        first along one of 8 random scan orders. Returns ``((B, H*W) bool, L)``."""
        counts = visible.sum(1)  # (B,)
        length = int(counts.min())
        b = visible.shape[0]
        choice = torch.randint(0, 8, (b,), generator=generator)
        perm = self._orders[choice]  # (B, N)
        vis_scan = visible.gather(1, perm)
        seen = vis_scan.cumsum(1)
        keep_scan = vis_scan & (seen > (counts - length).unsqueeze(1))
        keep = torch.empty_like(visible).scatter_(1, perm, keep_scan)
        return keep, length

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        hw = self.block_size(generator)
        side = self.background_side(generator)
        pred_idx, visible = self._place_with_retries(batch_size, hw, side, generator)
        keep, length = self._truncate(visible, generator)
        return Masks(enc_idx=mask_to_idx(keep, length), pred_idx=pred_idx), visible
