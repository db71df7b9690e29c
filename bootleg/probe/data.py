"""Streamed, freshly augmented data for the paper protocol and fine-tuning.

:func:`open_split` is the one place that reads a dataset (through :mod:`bootleg.data`'s public
API): an ``imagefolder`` is a streaming torchvision ``ImageFolder`` (nothing decoded up front),
the small named sets come from memory. :class:`Views` turns its items into augmented tensors,
the random draw of item ``i`` in epoch ``e`` being a pure function of ``(seed, e, i)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from bootleg.data import IMAGENET_MEAN, IMAGENET_STD, ImageSet, Items
from bootleg.data import open_split as open_data_split
from bootleg.errors import BootlegError
from bootleg.io import mix_seed

Transform = Callable[[Any], torch.Tensor]


class MemorySplit(Dataset):
    """Items ``(uint8 (3, H, W) tensor, label)`` of images held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> None:
        self.images, self.labels, self.classes = images, labels, list(classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


class SubsetSplit(Dataset):
    """``base`` restricted to ``indices`` (keeps ``classes`` and ``targets``)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base, self.indices, self.classes = base, list(indices), list(base.classes)
        self.targets = [int(base.targets[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


class ItemsSplit(Dataset):
    """Items ``(PIL image, label)`` of a streamed split (an ImageFolder or shards): bytes are read
    and decoded one image at a time, nothing is held in memory."""

    def __init__(self, items: Items) -> None:
        self.items, self.classes = items, list(items.classes)
        self.targets = [int(items.label(i)) for i in range(len(items))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import io

        from PIL import Image

        try:
            img = Image.open(io.BytesIO(self.items.read(i))).convert("RGB")
        except Exception as e:
            raise BootlegError(f"{self.items.name(i)}: unreadable image ({type(e).__name__})") from None
        return img, self.targets[i]


def open_split(name: str, split: str, root: str | None = None, limit: int | None = None) -> Any:
    """A split as a map-style dataset of ``(image, label)`` with ``classes`` and ``targets``.

    Datasets that fit in memory come as uint8 tensors; a large ImageFolder and shards stream
    (:class:`ItemsSplit`), as :func:`bootleg.data.open_split` decides. ``limit`` keeps a fixed
    subset (the data sources' rule).
    """
    if name in ("imagefolder", "shards") and not root:
        raise BootlegError(f"probe.root: required for data={name} (a folder with train/ and test/, or shards)")
    s = open_data_split(name, split, root, False, limit)
    if isinstance(s, ImageSet):
        return MemorySplit(s.images, s.labels, s.classes)
    return ItemsSplit(s)


def labels_of(ds: Any) -> torch.Tensor:
    """All labels of a split, without decoding an image."""
    return torch.as_tensor(list(ds.targets), dtype=torch.long)


class Views(Dataset):
    """Items ``(transform(image), label, index)`` of ``base``; the transform's random numbers come
    from ``(seed, epoch, index)``, so views are fresh every epoch and reproducible on any worker."""

    def __init__(self, base: Any, transform: Transform, seed: int, epoch: int = 0) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img, y = self.base[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, int(i)))
            x = self.transform(img)
        return x, int(y), int(i)


def train_views(size: int, aug: Any) -> Transform:
    """The paper's probe augmentation: colour jitter, random resized crop, horizontal flip,
    normalisation (``aug``: :class:`~bootleg.probe.config.AugmentConfig`)."""
    from torchvision.transforms import InterpolationMode, v2

    j = aug.jitter
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio),
                             interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(0.5 if aug.hflip else 0.0),
        v2.ColorJitter(j, j, j),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


def eval_views(size: int, crop: float = 0.875) -> Transform:
    """Evaluation view: resize the short side to ``round(size / crop)``, centre crop, normalise."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(round(size / crop), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


def split_train_val(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``n`` items -> (train indices, validation indices), each sorted."""
    if n < 2:
        raise BootlegError(f"probe.limit: {n} training image(s); expected at least 2 to carve a validation split")
    perm = torch.randperm(n, generator=generator)
    n_val = min(n - 1, max(1, round(n * fraction)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values
