"""The training stream: an endless, resumable sequence of ``(images, masks)`` micro-batches.

Indexing (identical for both paths below), with ``B`` the per-rank micro-batch, ``W`` the
world size and ``N`` the number of training images:

* ``steps_per_epoch = N // (B * W)`` (the last partial batch of an epoch is dropped);
* step ``t`` is batch ``b = t % steps_per_epoch`` of epoch ``e = t // steps_per_epoch``;
* the epoch's order is ``torch.randperm(N)`` from a generator seeded by ``(seed, e)`` (the same
  on every rank); rank ``r`` takes ``order[b*B*W + r*B : b*B*W + (r+1)*B]``, so ranks see
  disjoint images;
* masks: ``mask_sampler(B, g)`` with ``g`` seeded by ``mask_seed(seed, e, b, r, 0)``;
* crops and flips: a generator seeded by ``mask_seed(seed, e, b, r, 0) ^ AUG_SEED_XOR`` (in-memory
  path) or, per image, by ``(seed, e, image index)`` (streaming path).

So step ``t``'s batch is a pure function of ``(seed, e, b, r)`` and the data: ``batches(t)``
yields exactly what ``batches(0)`` yields at its ``t``-th item. The ``worker`` argument of
``mask_seed`` is always 0: a DataLoader hands batches to workers round-robin from wherever the
iterator starts, so seeding by the worker id would make a resumed run differ.

Paths:

* **in memory** (``embedded``, ``cifar10``, ``fashion_mnist``, small ``imagefolder``): the uint8
  images live in memory (on the training device when ``data.on_device``, moved there once); a
  background thread prepares the next 2 steps (indices, crop parameters, masks, and for
  ``on_device=False`` the gathered, pinned uint8 batch); the main thread gathers on the device
  and runs :func:`~bootleg.data.augment.apply_augment` there.
* **streaming** (large ``imagefolder``, see :func:`~bootleg.data.datasets.imagefolder_fits_in_memory`):
  a ``DataLoader`` with ``data.num_workers`` workers over a torchvision ``ImageFolder``; each image
  is cropped/flipped on the CPU with torchvision's functional ops, the collate function builds the
  masks, and the uint8 batch is normalised on the device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from bootleg.data.augment import IMAGENET_MEAN, IMAGENET_STD, _normalise, apply_augment, sample_augment_params
from bootleg.data.datasets import (
    ImageSet,
    _limit_indices,
    _MixedSizes,
    imagefolder_fits_in_memory,
    load_imagefolder,
    load_images,
)
from bootleg.errors import BootlegError
from bootleg.masking import Masks, mask_seed

__all__ = ["TrainStream", "build_stream", "AUG_SEED_XOR", "epoch_order"]

#: XOR-ed into the mask seed to seed the crop/flip generator (keeps the two streams distinct).
AUG_SEED_XOR = 0x2545_F491_4F6C_DD1D
_PERM_TAG = 0x7065_726D  # "perm"
_SAMPLE_TAG = 0x6175_6730  # "aug0"
_PREFETCH = 2


def _mix(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative ints (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation ``(n,)`` int64 of epoch ``epoch``: ``torch.randperm`` seeded by ``(seed, epoch)``."""
    g = torch.Generator().manual_seed(_mix(seed, epoch, _PERM_TAG))
    return torch.randperm(n, generator=g)


class _Order:
    """Step -> ``(epoch, batch, indices (B,))`` for one rank, caching the current epoch's order."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.n, self.B, self.rank, self.W, self.seed = n, batch_size, rank, world_size, seed
        self.steps_per_epoch = n // (batch_size * world_size)
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> tuple[int, int, torch.Tensor]:
        e, b = divmod(step, self.steps_per_epoch)
        if e != self._epoch:
            self._perm, self._epoch = epoch_order(self.n, self.seed, e), e
        start = b * self.B * self.W + self.rank * self.B
        return e, b, self._perm[start : start + self.B]


class TrainStream:
    """Endless resumable stream of augmented, masked micro-batches for one rank.

    Args:
        data_cfg: the config's ``data`` section (``name``, ``root``, ``download``, ``limit``,
            ``crop_scale``, ``crop_ratio``, ``hflip``, ``interpolation``, ``on_device``,
            ``num_workers``).
        img_size: output side ``S`` of the images.
        batch_size: per-rank micro-batch ``B``.
        mask_sampler: ``mask_sampler(B, generator) -> Masks`` (called on the CPU).
        seed: run seed (non-negative).
        rank, world_size: this process's rank and the number of ranks.
        device: where the yielded tensors live.

    Attributes:
        steps_per_epoch: micro-steps per epoch, ``N // (B * world_size)``.
        num_images: ``N``, training images (after ``data.limit``).
        streaming: ``True`` for the DataLoader (large ImageFolder) path.
    """

    steps_per_epoch: int

    def __init__(
        self,
        data_cfg: Any,
        img_size: int,
        batch_size: int,
        mask_sampler: Callable[[int, torch.Generator], Masks],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise BootlegError(
                f"stream: batch_size={batch_size}, rank={rank}, world_size={world_size}; expected B >= 1, 0 <= rank < world"
            )
        if seed < 0:
            raise BootlegError(f"run.seed: {seed}; expected a non-negative integer")
        self.cfg = data_cfg
        self.img_size = int(img_size)
        self.batch_size = int(batch_size)
        self.sampler = mask_sampler
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"

        self._set: ImageSet | None = None
        self._folder: Any = None
        name = data_cfg.name
        streaming = False
        if name == "imagefolder":
            if not data_cfg.root:
                raise BootlegError("data.root: required for data.name=imagefolder (a folder with train/ and test/)")
            streaming = not imagefolder_fits_in_memory(data_cfg.root, "train", data_cfg.limit)
            if not streaming:
                try:
                    self._set = load_images(name, "train", data_cfg.root, data_cfg.download, data_cfg.limit)
                except _MixedSizes:
                    streaming = True
            if streaming:
                folder = load_imagefolder(data_cfg.root, "train")
                idx = _limit_indices(len(folder), data_cfg.limit)
                self._folder = folder if idx is None else Subset(folder, idx.tolist())
        else:
            self._set = load_images(name, "train", data_cfg.root, data_cfg.download, data_cfg.limit)
        self.streaming = streaming
        self.num_images = len(self._folder) if streaming else len(self._set)  # type: ignore[arg-type]
        self.steps_per_epoch = self.num_images // (self.batch_size * self.world_size)
        if self.steps_per_epoch < 1:
            raise BootlegError(
                f"optim.batch_size: one step needs {self.batch_size} x {self.world_size} ranks = "
                f"{self.batch_size * self.world_size} images but data {name} has {self.num_images}; "
                "expected a smaller batch (or more data / a larger data.limit)"
            )
        self._on_device = bool(data_cfg.on_device)
        self._images: torch.Tensor | None = None
        if self._set is not None:
            imgs = self._set.images
            self._images = imgs.to(self.device) if self._on_device else imgs
            self._set = None  # the stream only needs the (possibly moved) images

    # ------------------------------------------------------------------ seeds
    def _seeds(self, epoch: int, batch: int) -> tuple[int, int]:
        """``(mask seed, augmentation seed)`` of one step on this rank."""
        ms = mask_seed(self.seed, epoch, batch, self.rank, 0)
        return ms, ms ^ AUG_SEED_XOR

    def _masks(self, epoch: int, batch: int) -> Masks:
        return self.sampler(epoch, batch)

    # ------------------------------------------------------------------ in-memory path
    def _prepare(self, order: _Order, step: int) -> tuple[Any, ...]:
        """CPU work of one step (runs in the prefetch thread): indices, crops, masks."""
        e, b, idx = order(step)
        assert self._images is not None
        _, _, H, W = self._images.shape
        g = torch.Generator().manual_seed(self._seeds(e, b)[1])
        c = self.cfg
        boxes, flips = sample_augment_params(self.batch_size, (H, W), c.crop_scale, c.crop_ratio, c.hflip, g)
        masks = self._masks(e, b)
        if self._cuda:  # pinned host memory makes the copies in _finish truly asynchronous
            masks = Masks(masks.enc_idx.pin_memory(), masks.pred_idx.pin_memory())
        gathered = None
        if not self._on_device:  # gather on the CPU here, copy to the device in _finish
            gathered = self._images.index_select(0, idx)
            if self._cuda:
                gathered = gathered.pin_memory()
        return idx, gathered, boxes, flips, masks

    def _finish(self, prep: tuple[Any, ...]) -> tuple[torch.Tensor, Masks]:
        """Device work of one step: gather, crop/flip/resize, normalise, move masks."""
        idx, gathered, boxes, flips, masks = prep
        assert self._images is not None
        if gathered is None:
            batch = self._images.index_select(0, idx.to(self._images.device, non_blocking=True))
        else:
            batch = gathered.to(self.device, non_blocking=True)
        images = apply_augment(batch, boxes, flips, self.img_size, self.cfg.interpolation, IMAGENET_MEAN, IMAGENET_STD)
        return images, masks.to(self.device, non_blocking=True)

    def indices(self, step: int) -> torch.Tensor:
        """Training-set indices ``(B,)`` int64 of ``step`` on this rank (into the set after ``limit``)."""
        return _Order(self.num_images, self.batch_size, self.rank, self.world_size, self.seed)(step)[2]

    def batch(self, step: int) -> tuple[torch.Tensor, Masks]:
        """The batch of ``step`` alone (no prefetching): ``images (B, 3, S, S)`` float, masks."""
        return next(iter(self.batches(step)))

    def _memory_batches(self, start_step: int) -> Iterator[tuple[torch.Tensor, Masks]]:
        order = _Order(self.num_images, self.batch_size, self.rank, self.world_size, self.seed)
        q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_PREFETCH)
        stop = threading.Event()

        def produce() -> None:
            try:
                for t in count(start_step):
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

    # ------------------------------------------------------------------ streaming path
    def _stream_batches(self, start_step: int) -> Iterator[tuple[torch.Tensor, Masks]]:
        c = self.cfg
        ds = _CropDataset(self._folder, self.img_size, c.crop_scale, c.crop_ratio, c.hflip, c.interpolation, self.seed)
        sampler = _StepBatchSampler(self.num_images, self.batch_size, self.rank, self.world_size, self.seed, start_step)
        workers = int(getattr(c, "num_workers", 0))
        loader = DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=_Collate(self.sampler, self.seed, self.rank),
            pin_memory=self._cuda,
            prefetch_factor=_PREFETCH if workers > 0 else None,
        )
        for imgs, masks in loader:
            x = imgs.to(self.device, non_blocking=True).float()
            yield _normalise(x, IMAGENET_MEAN, IMAGENET_STD), masks.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ public
    def batches(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, Masks]]:
        """Endless iterator over steps ``start_step, start_step + 1, ...``.

        Yields:
            ``images`` ``(B, 3, S, S)`` float32 normalised on the device, and
            :class:`~bootleg.masking.Masks` (``enc_idx`` ``(B, L)``, ``pred_idx`` ``(B, K, P)``)
            on the device. Close the iterator (or drop it) to stop the prefetching.
        """
        if start_step < 0:
            raise BootlegError(f"stream: start_step {start_step}; expected >= 0")
        if self.streaming:
            return self._stream_batches(start_step)
        return self._memory_batches(start_step)


class _StepBatchSampler:
    """Batch sampler of the streaming path: per step, ``[(epoch, batch, image index)] * B``."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int, start_step: int) -> None:
        self.args = (n, batch_size, rank, world_size, seed)
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        order = _Order(*self.args)
        for t in count(self.start_step):
            e, b, idx = order(t)
            yield [(e, b, int(i)) for i in idx.tolist()]


class _CropDataset(Dataset):
    """Map-style dataset of the streaming path: ``(epoch, batch, index)`` -> ``(uint8 (3, S, S), epoch, batch)``.

    Each image gets torchvision's RandomResizedCrop (the same sampling rule as the batched path,
    via :func:`~bootleg.data.augment.sample_augment_params`) and flip from a generator seeded by
    ``(seed, epoch, index)``, applied to the PIL image with ``torchvision.transforms.v2.functional``.
    """

    def __init__(
        self,
        folder: Any,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        hflip: bool,
        interpolation: str,
        seed: int,
    ) -> None:
        self.folder, self.size, self.scale, self.ratio, self.hflip = folder, size, scale, ratio, hflip
        self.interpolation, self.seed = interpolation, seed

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int, int]:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        epoch, batch, index = key
        img, _ = self.folder[index]
        img = img.convert("RGB")
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, index, _SAMPLE_TAG))
        boxes, flips = sample_augment_params(1, (img.height, img.width), self.scale, self.ratio, self.hflip, g)
        y0, x0, h, w = (int(v) for v in boxes[0])
        mode = InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR
        img = TF.resized_crop(img, y0, x0, h, w, [self.size, self.size], interpolation=mode, antialias=True)
        if bool(flips[0]):
            img = TF.horizontal_flip(img)
        return TF.pil_to_tensor(img), epoch, batch


class _Collate:
    """Stack uint8 images ``(B, 3, S, S)`` and build the step's masks (seeded per step, worker 0)."""

    def __init__(self, sampler: Callable[[int, torch.Generator], Masks], seed: int, rank: int) -> None:
        self.sampler, self.seed, self.rank = sampler, seed, rank

    def __call__(self, items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, Masks]:
        imgs = torch.stack([x for x, _, _ in items])
        epoch, batch = items[0][1], items[0][2]
        return imgs, self.sampler(epoch, batch)


def build_stream(
    data_cfg: Any,
    img_size: int,
    batch_size: int,
    mask_sampler: Callable[[int, torch.Generator], Masks],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
) -> TrainStream:
    """Build this rank's :class:`TrainStream` (see the module docstring for the indexing rule)."""
    return TrainStream(data_cfg, img_size, batch_size, mask_sampler, seed, rank, world_size, device)
