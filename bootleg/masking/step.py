"""``StepMasks``: the masks of one rank's micro-batch as a pure function of
``(seed, epoch, batch, rank)`` plus the static sizes ``(B, G, bucket)``.

Masks are sampled per *group* of ``G`` images of one rank (Appendix C: the paper samples per
GPU worker's batch of 256): one block size for the group and truncation to the group's
minimum visible count, whatever the micro-batch ``B`` is.

* ``G >= B`` (``G % B == 0``): micro-batch ``b`` takes rows ``(b*B) % G ...`` of group
  ``g = (b*B) // G``; a group spans ``G / B`` consecutive micro-batches (accumulation steps).
* ``G < B`` (``B % G == 0``): micro-batch ``b`` holds groups ``b*B/G ... (b+1)*B/G - 1``, each
  sampled on its own; ``L`` and ``P`` are padded to the longest group's, and the padding is
  flagged in ``enc_valid`` / ``pred_valid``.
* ``bucket``: ``L`` and ``P`` are padded up to a multiple of ``bucket`` (padding flagged), so a
  compiled step sees few shapes.

Group ``g`` of epoch ``e`` is sampled with a generator seeded by
``mask_seed(seed, e, g, rank, 0)``; with ``G == B`` this is exactly the per-micro-batch
sampling of earlier versions. Valid flags are ``None`` when no padding can occur (``G >= B``
and no bucket) and tensors otherwise, so one run always sees the same structure.
"""

from __future__ import annotations

import math

import torch

from bootleg.errors import BootlegError
from bootleg.masking.base import Masks, MaskSampler, mask_seed


def _pad_last(idx: torch.Tensor, valid: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the last dim of ``idx`` to ``length`` by repeating each row's last index."""
    if valid is None:
        valid = torch.ones(idx.shape, dtype=torch.bool)
    extra = length - idx.shape[-1]
    if extra <= 0:
        return idx, valid
    fill = idx[..., -1:].expand(*idx.shape[:-1], extra)
    return torch.cat([idx, fill], -1), torch.cat([valid, torch.zeros(fill.shape, dtype=torch.bool)], -1)


def pad_masks(masks: Masks, length: int, targets: int) -> Masks:
    """``masks`` padded to ``L = length`` and ``P = targets``, with valid flags."""
    enc, enc_valid = _pad_last(masks.enc_idx, masks.enc_valid, length)
    pred, pred_valid = _pad_last(masks.pred_idx, masks.pred_valid, targets)
    return Masks(enc, pred, enc_valid, pred_valid)


def concat_masks(parts: list[Masks]) -> Masks:
    """Stack the rows of several batches, padding ``L`` and ``P`` to the longest."""
    length = max(m.enc_idx.shape[1] for m in parts)
    targets = max(m.pred_idx.shape[2] for m in parts)
    padded = [pad_masks(m, length, targets) for m in parts]
    return Masks(
        *(torch.cat([getattr(m, f) for m in padded]) for f in ("enc_idx", "pred_idx", "enc_valid", "pred_valid"))
    )


def bucket_masks(masks: Masks, bucket: int) -> Masks:
    """``masks`` with ``L`` and ``P`` padded up to multiples of ``bucket``."""
    length = math.ceil(masks.enc_idx.shape[1] / bucket) * bucket
    targets = math.ceil(masks.pred_idx.shape[2] / bucket) * bucket
    return pad_masks(masks, length, targets)


class StepMasks:
    """``(epoch, batch) -> Masks`` of one rank's micro-batch (the stream and its data-loader
    workers call it; picklable).

    Args:
        sampler: the runtime sampler (:func:`bootleg.masking.build_sampler`).
        batch_size: ``B``, this rank's micro-batch.
        seed: the run's seed.
        rank: this rank.
        group_size: ``G``, images per mask group; ``None`` takes ``sampler.group_size``,
            and ``B`` when that is ``None`` too.
        bucket: pad ``L`` and ``P`` up to multiples of it; ``None`` takes ``sampler.bucket``.
    """

    def __init__(
        self,
        sampler: MaskSampler,
        batch_size: int,
        seed: int,
        rank: int = 0,
        group_size: int | None = None,
        bucket: int | None = None,
    ) -> None:
        self.sampler, self.batch_size, self.seed, self.rank = sampler, int(batch_size), int(seed), int(rank)
        g = group_size if group_size is not None else getattr(sampler, "group_size", None)
        self.group_size = int(g) if g is not None else self.batch_size
        b = bucket if bucket is not None else getattr(sampler, "bucket", None)
        self.bucket = int(b) if b is not None else None
        B, G = self.batch_size, self.group_size
        if B < 1 or G < 1 or (G % B and B % G):
            raise BootlegError(
                f"masking.group_size: {G} with micro-batch {B}; expected one of the two to divide the other"
            )
        self._cache: tuple[tuple[int, int], Masks] | None = None

    def group(self, epoch: int, index: int) -> Masks:
        """The masks of group ``index`` of ``epoch`` (``G`` rows; the last one is cached)."""
        key = (int(epoch), int(index))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        g = torch.Generator().manual_seed(mask_seed(self.seed, key[0], key[1], self.rank, 0))
        masks = self.sampler(self.group_size, g)
        self._cache = (key, masks)
        return masks

    def __call__(self, epoch: int, batch: int) -> Masks:
        B, G = self.batch_size, self.group_size
        if G >= B:
            index, start = divmod(batch * B, G)
            masks = self.group(epoch, index)
            if G > B:
                masks = masks.rows(start, start + B)
        else:
            per = B // G
            masks = concat_masks([self.group(epoch, batch * per + j) for j in range(per)])
        if self.bucket is not None:
            masks = bucket_masks(masks, self.bucket)
        return masks

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}
