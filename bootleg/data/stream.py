"""The training stream: ``build_stream`` picks the in-memory or the streaming class for the
config's data; both yield ``(images, masks)`` per micro-step from ``batches(start)``, a pure
function of ``(seed, epoch, batch, rank)`` (see :mod:`bootleg.data.order`), so
``batches(t)`` yields exactly what ``batches(0)`` yields at its ``t``-th item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from bootleg.data.memory import MemoryStream
from bootleg.data.order import StepOrder
from bootleg.data.sources import ImageSet, open_split
from bootleg.data.streaming import StreamingStream
from bootleg.masking import Masks

__all__ = ["Stream", "build_stream"]


class Stream(Protocol):
    """What the trainer uses of a stream."""

    steps_per_epoch: int
    num_images: int
    streaming: bool
    bad_images: int

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, Masks]]: ...


def build_stream(
    data_cfg: Any,
    img_size: int,
    batch_size: int,
    masks: Callable[[int, int], Masks],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
) -> MemoryStream | StreamingStream:
    """This rank's stream of the ``train`` split of ``data_cfg``.

    Args:
        data_cfg: the config's ``data`` section (:class:`~bootleg.data.config.DataConfig`).
        img_size: output side ``S``.
        batch_size: per-rank micro-batch ``B`` (must equal ``masks``' batch size).
        masks: ``masks(epoch, batch) -> Masks``, picklable (:class:`bootleg.masking.StepMasks`).
        seed, rank, world_size: run seed (>= 0), this rank, the number of ranks.
        device: where the yielded tensors live.

    Returns:
        :class:`MemoryStream` when the source holds the split in memory, else :class:`StreamingStream`.
    """
    device = torch.device(device)
    c = data_cfg
    split = open_split(c.name, "train", c.root, c.download, c.limit)
    order = StepOrder(len(split), int(batch_size), int(seed), int(rank), int(world_size))
    if isinstance(split, ImageSet):
        return MemoryStream(split.images, c, img_size, order, masks, device)
    return StreamingStream(split, c, img_size, order, masks, device)
