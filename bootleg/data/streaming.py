"""The streaming stream: a ``DataLoader`` whose item is one whole step, decoded from
:class:`~bootleg.data.sources.Items` (ImageFolder files or tar shards) by ``data.num_workers``
processes. Nothing but the file index is held in memory.

Step ``t`` (epoch ``e``, batch ``b``) takes the indices and the augmentation generator of
:meth:`StepOrder.draw` (:mod:`bootleg.data.order`). Slot ``k`` of the batch gets its own seed
``s_k`` (drawn from that generator); its crop and flip come from a generator seeded by ``s_k``.

Bad files: an image that cannot be decoded is replaced by image ``mix_seed(s_k, a) % N`` at
attempt ``a = 1, 2, ...`` (up to 16), so the replacement depends only on the step and the data
and resume stays exact. Each bad file is named in one warning (per process) and counted in
:attr:`StreamingStream.bad_images`; once at least ``min(N, 1000)`` images were read, more than
``data.max_bad_fraction`` of them bad stops the run with a one-line error.

Decode: ``cpu`` decodes in the workers (:func:`~bootleg.data.decode.decode_crop`, DCT-scaled);
``cuda`` has the workers read bytes and headers only and decodes the batch on the device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bootleg.data.augment import IMAGENET_MEAN, IMAGENET_STD
from bootleg.data.decode import BadImage, crop_box, decode_batch_cuda, decode_crop, peek_size
from bootleg.data.order import StepOrder, StepStream
from bootleg.data.sources import Items
from bootleg.errors import BootlegError
from bootleg.io import mix_seed
from bootleg.masking import Masks

__all__ = ["MAX_TRIES", "StepDataset", "StreamingStream"]

MAX_TRIES = 16
_PREFETCH = 2


class _Steps:
    """The sampler: steps ``start, start + 1, ...`` (endless)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return count(self.start)


def _identity(x: Any) -> Any:
    return x


class StepDataset(Dataset):
    """Step -> the decoded (or, for ``cuda``, read) batch of that step, its masks and bad files."""

    def __init__(
        self, items: Items, order: StepOrder, masks: Callable[[int, int], Masks], cfg: Any, size: int, cuda: bool
    ) -> None:
        self.items, self.order, self.masks, self.cfg, self.size, self.cuda = items, order, masks, cfg, size, cuda

    def __len__(self) -> int:  # endless; DataLoader only needs the sampler
        return sys.maxsize

    def _one(self, index: int, slot_seed: int, u: np.ndarray, flip: bool, bad: list[tuple[str, str]]) -> Any:
        c, n = self.cfg, len(self.items)
        i = index
        for attempt in range(1, MAX_TRIES + 1):
            try:
                data = self.items.read(i)
                if self.cuda:
                    H, W, jpeg = peek_size(data)
                    box = torch.tensor(crop_box(u, (H, W), c.crop_scale, c.crop_ratio))
                    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                    return raw, jpeg, box, torch.tensor(flip), self.items.name(i)
                return decode_crop(data, self.size, u, flip, c.crop_scale, c.crop_ratio, c.interpolation)
            except (BadImage, OSError) as e:
                bad.append((self.items.name(i), str(e)))
                i = mix_seed(slot_seed, attempt) % n
        raise BootlegError(
            f"data.root: {MAX_TRIES} unreadable images in a row, the last {bad[-1][0]}; is the data readable?"
        )

    def __getitem__(self, step: int) -> tuple[Any, ...]:
        d = self.order.draw(step)
        B, g = len(d.indices), d.aug_generator
        seeds = torch.randint(0, 2**62, (B,), generator=g).tolist()
        uniforms = torch.rand(B, 4, 10, generator=g, dtype=torch.float64).numpy()
        flips = (torch.rand(B, generator=g) < 0.5).tolist() if self.cfg.hflip else [False] * B
        bad: list[tuple[str, str]] = []
        out = [self._one(int(i), seeds[k], uniforms[k], flips[k], bad) for k, i in enumerate(d.indices.tolist())]
        m = self.masks(d.epoch, d.batch)
        if self.cuda:
            datas, jpeg, boxes, flip_t, names = zip(*out, strict=True)
            payload: Any = (list(datas), list(jpeg), torch.stack(boxes), torch.stack(flip_t), list(names))
        else:
            payload = torch.stack(out)
        return payload, m.enc_idx, m.pred_idx, bad, len(out) + len(bad)


class StreamingStream(StepStream):
    """Endless resumable stream of augmented, masked micro-batches decoded from :class:`Items`.

    Attributes:
        bad_images: unreadable images met so far by this process (each replaced, see module doc).
        images_read: images read so far (good and bad).
        bad_files: names of the bad files warned about.
    """

    streaming = True

    def __init__(
        self,
        items: Items,
        data_cfg: Any,
        img_size: int,
        order: StepOrder,
        masks: Callable[[int, int], Masks],
        device: torch.device,
    ) -> None:
        self.items, self.cfg, self.img_size, self.order, self.masks, self.device = (
            items,
            data_cfg,
            int(img_size),
            order,
            masks,
            device,
        )
        self.num_images, self.steps_per_epoch = order.n, order.steps_per_epoch
        decode = getattr(data_cfg, "decode", "auto")
        if decode == "cuda" and device.type != "cuda":
            raise BootlegError(f"data.decode: 'cuda' needs a CUDA training device, got {device}; expected cpu or auto")
        self.cuda_decode = device.type == "cuda" and decode in ("auto", "cuda")
        self.bad_images = 0
        self.images_read = 0
        self.bad_files: set[str] = set()

    def _account(self, bad: list[tuple[str, str]], read: int) -> None:
        self.images_read += read
        self.bad_images += len(bad)
        for name, why in bad:
            if name not in self.bad_files:
                self.bad_files.add(name)
                print(f"warning: skipping unreadable image {name} ({why}); replaced deterministically", file=sys.stderr)
        limit = float(getattr(self.cfg, "max_bad_fraction", 0.01))
        if self.bad_images and self.images_read >= min(self.num_images, 1000):
            if self.bad_images > limit * self.images_read:
                raise BootlegError(
                    f"data.max_bad_fraction: {self.bad_images} of {self.images_read} images read were unreadable "
                    f"(over {limit:g}); the last {bad[-1][0] if bad else sorted(self.bad_files)[-1]}"
                )

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, Masks]]:
        """Endless iterator over steps ``start, start + 1, ...``: ``images (B, 3, S, S)`` float32
        normalised and :class:`~bootleg.masking.Masks`, on the device."""
        self.order.locate(start)
        return self._run(start)

    def _run(self, start: int) -> Iterator[tuple[torch.Tensor, Masks]]:
        order = StepOrder(self.order.n, self.order.batch_size, self.order.seed, self.order.rank, self.order.world_size)
        ds = StepDataset(self.items, order, self.masks, self.cfg, self.img_size, self.cuda_decode)
        workers = int(getattr(self.cfg, "num_workers", 0))
        loader = DataLoader(
            ds,
            batch_size=None,
            sampler=_Steps(start),
            num_workers=workers,
            collate_fn=_identity,
            pin_memory=self.device.type == "cuda" and not self.cuda_decode,
            prefetch_factor=_PREFETCH if workers > 0 else None,
            persistent_workers=False,
        )
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        for payload, enc, pred, bad, read in loader:
            self._account(bad, read)
            masks = Masks(enc, pred).to(self.device, non_blocking=True)
            if self.cuda_decode:
                datas, jpeg, boxes, flips, names = payload
                x, failed = decode_batch_cuda(
                    datas, jpeg, boxes, flips, self.img_size, self.cfg.interpolation, self.device
                )
                self._account([(names[i], "not decodable on the GPU; left as the mean image") for i in failed], 0)
            else:
                x = (payload.to(self.device, non_blocking=True).float() - mean) / std
            yield x, masks
