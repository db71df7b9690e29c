"""A per-sample, loop-based re-implementation of I-JEPA's multi-block ``MaskCollator``.

Written from the description of I-JEPA's collator (``_sample_block_size``,
``_sample_block_mask``, ``__call__``): per call one predictor size and one background
size (from a single random number each, shared by scale and aspect), then per sample a
Python loop over blocks, ``torch.randint`` per block corner, the acceptable-region
retries for the background and truncation of every mask list to the shortest one.

Used only as the speed baseline of ``bench/masks.py`` (``bootleg.masking.IJepaSampler``
is the vectorised equivalent used for training). Unlike the original, every draw comes
from the generator passed in (the original draws corners from the global RNG).
"""

from __future__ import annotations

import math

import torch

from bootleg.masking import Masks


class IJepaReferenceSampler:
    """``sampler(batch_size, generator) -> Masks`` with I-JEPA's per-sample loops."""

    name = "ijepa_reference"

    def __init__(
        self,
        grid: tuple[int, int] = (14, 14),
        num_blocks: int = 4,
        pred_scale: tuple[float, float] = (0.15, 0.2),
        enc_scale: tuple[float, float] = (0.85, 1.0),
        aspect: tuple[float, float] = (0.75, 1.5),
        min_keep: int = 10,
        timeout: int = 20,
    ) -> None:
        self.grid = grid
        self.height, self.width = grid
        self.num_regions = num_blocks
        self.pred_scale = pred_scale
        self.enc_scale = enc_scale
        self.aspect = aspect
        self.min_keep = min_keep
        self.timeout = timeout

    def _block_size(
        self, generator: torch.Generator, scale: tuple[float, float], aspect: tuple[float, float]
    ) -> tuple[int, int]:
        r = torch.rand(1, generator=generator).item()
        max_keep = int(self.height * self.width * (scale[0] + r * (scale[1] - scale[0])))
        ar = aspect[0] + r * (aspect[1] - aspect[0])
        h = int(round(math.sqrt(max_keep * ar)))
        w = int(round(math.sqrt(max_keep / ar)))
        while h >= self.height:
            h -= 1
        while w >= self.width:
            w -= 1
        return h, w

    def _block_mask(
        self,
        size: tuple[int, int],
        generator: torch.Generator,
        acceptable: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block: ``(indices (n,), complement (H, W) int32)``."""
        h, w = size
        tries, left_to_try = 0, self.timeout
        while True:
            top = int(torch.randint(0, max(self.height - h, 1), (1,), generator=generator))
            left = int(torch.randint(0, max(self.width - w, 1), (1,), generator=generator))
            mask = torch.zeros((self.height, self.width), dtype=torch.int32)
            mask[top : top + h, left : left + w] = 1
            if acceptable is not None:
                for region in acceptable[: max(len(acceptable) - tries, 0)]:
                    mask *= region
            idx = torch.nonzero(mask.flatten()).squeeze(1)
            if len(idx) > self.min_keep:
                break
            left_to_try -= 1
            if left_to_try == 0:
                tries += 1
                left_to_try = self.timeout
        complement = torch.ones((self.height, self.width), dtype=torch.int32)
        complement[top : top + h, left : left + w] = 0
        return idx, complement

    def __call__(self, batch_size: int, generator: torch.Generator) -> Masks:
        p_size = self._block_size(generator, self.pred_scale, self.aspect)
        e_size = self._block_size(generator, self.enc_scale, (1.0, 1.0))
        preds, encs = [], []
        min_pred = min_enc = self.height * self.width
        for _ in range(batch_size):
            blocks, complements = [], []
            for _ in range(self.num_regions):
                idx, comp = self._block_mask(p_size, generator)
                blocks.append(idx)
                complements.append(comp)
                min_pred = min(min_pred, len(idx))
            enc, _ = self._block_mask(e_size, generator, acceptable=complements)
            min_enc = min(min_enc, len(enc))
            preds.append(blocks)
            encs.append(enc)
        pred_idx = torch.stack([torch.stack([b[:min_pred] for b in blocks]) for blocks in preds])
        enc_idx = torch.stack([e[:min_enc] for e in encs])
        return Masks(enc_idx=enc_idx, pred_idx=pred_idx)
