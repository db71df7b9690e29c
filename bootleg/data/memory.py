"""The in-memory stream: uint8 images held in memory (on the training device when
``data.on_device``), augmented in batches by one ``grid_sample`` on that device.

A background thread prepares the next 2 steps (indices, crop boxes, masks, and for
``on_device=False`` the gathered, pinned batch); the consumer gathers on the device and runs
:func:`~bootleg.data.augment.apply_augment`. Indexing and seeds: :mod:`bootleg.data.order`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import torch

from bootleg.data.augment import IMAGENET_MEAN, IMAGENET_STD, apply_augment, sample_augment_params
from bootleg.data.order import StepOrder, StepStream
from bootleg.masking import Masks

__all__ = ["MemoryStream"]

_PREFETCH = 2


class MemoryStream(StepStream):
    """Endless resumable stream of augmented, masked micro-batches from images in memory.

    Args:
        images: ``(N, 3, H, W)`` uint8.
        data_cfg: the ``data`` section (crop_scale, crop_ratio, hflip, interpolation, on_device).
        img_size: output side ``S``; order: this rank's :class:`StepOrder`;
        masks: ``masks(epoch, batch) -> Masks`` (picklable, e.g. :class:`bootleg.masking.StepMasks`).
        device: where the yielded tensors live.
    """

    streaming = False
    bad_images = 0  # in-memory data was decoded up front (bad files already failed fast)

    def __init__(
        self,
        images: torch.Tensor,
        data_cfg: Any,
        img_size: int,
        order: StepOrder,
        masks: Callable[[int, int], Masks],
        device: torch.device,
    ) -> None:
        self.cfg, self.img_size, self.order, self.masks, self.device = data_cfg, int(img_size), order, masks, device
        self.num_images, self.steps_per_epoch = order.n, order.steps_per_epoch
        self._on_device = bool(data_cfg.on_device)
        self._cuda = device.type == "cuda"
        self.images = images.to(device) if self._on_device else images

    def _prepare(self, order: StepOrder, step: int) -> tuple[Any, ...]:
        """CPU work of one step (runs in the prefetch thread): indices, crops, masks."""
        d = order.draw(step)
        _, _, H, W = self.images.shape
        c = self.cfg
        boxes, flips = sample_augment_params(
            len(d.indices), (H, W), c.crop_scale, c.crop_ratio, c.hflip, d.aug_generator
        )
        masks = self.masks(d.epoch, d.batch)
        if self._cuda:  # pinned host memory makes the copies in _finish asynchronous
            masks = Masks(masks.enc_idx.pin_memory(), masks.pred_idx.pin_memory())
        gathered = None
        if not self._on_device:  # gather on the CPU here, copy to the device in _finish
            gathered = self.images.index_select(0, d.indices)
            if self._cuda:
                gathered = gathered.pin_memory()
        return d.indices, gathered, boxes, flips, masks

    def _finish(self, prep: tuple[Any, ...]) -> tuple[torch.Tensor, Masks]:
        """Device work of one step: gather, crop/flip/resize, normalise, move masks."""
        idx, gathered, boxes, flips, masks = prep
        if gathered is None:
            batch = self.images.index_select(0, idx.to(self.images.device, non_blocking=True))
        else:
            batch = gathered.to(self.device, non_blocking=True)
        images = apply_augment(batch, boxes, flips, self.img_size, self.cfg.interpolation, IMAGENET_MEAN, IMAGENET_STD)
        return images, masks.to(self.device, non_blocking=True)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, Masks]]:
        """Endless iterator over steps ``start, start + 1, ...``: ``images (B, 3, S, S)`` float32
        normalised and :class:`~bootleg.masking.Masks`, on the device. Close it to stop prefetching."""
        self.order.locate(start)  # validates start
        order = StepOrder(self.order.n, self.order.batch_size, self.order.seed, self.order.rank, self.order.world_size)
        return self._run(order, start)

    def _run(self, order: StepOrder, start: int) -> Iterator[tuple[torch.Tensor, Masks]]:
        q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_PREFETCH)
        stop = threading.Event()

        def produce() -> None:
            try:
                for t in count(start):
                    item = ("ok", self._prepare(order, t))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as exc:  # forwarded to the consumer
                q.put(("error", exc))

        th = threading.Thread(target=produce, name="bootleg-prefetch", daemon=True)
        th.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "error":
                    raise item
                yield self._finish(item)
        finally:
            stop.set()
            while th.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    th.join(timeout=0.05)
