"""Streamed segmentation data for the dense probes under ``protocol: paper``.

* :class:`SegFolderItems` reads one (image, mask) pair of an ADE20K, Cityscapes or plain tree
  from disk per item, at full resolution; :class:`SegMemoryItems` serves a
  :class:`~bootleg.probe.segdata.SegSet` (the derived task) the same way.
* :class:`SegTrainViews`: item ``i`` of epoch ``e`` as a fresh training view (random resize,
  crop, flip, colour jitter, cut-out), its random numbers a pure function of ``(seed, e, i)``.
* :func:`eval_resize` and :func:`window_starts`: the sliding-window evaluation's geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bootleg.data import IMAGENET_MEAN, IMAGENET_STD
from bootleg.errors import BootlegError
from bootleg.io import mix_seed
from bootleg.probe.config import SegConfig, SegPaperConfig
from bootleg.probe.segdata import SegSet, open_seg_root, read_pair, seg_pairs

#: classes of the benchmark layouts (ADE20K SceneParse-150 after ``reduce_zero_label``,
#: Cityscapes train ids)
LAYOUT_CLASSES = {"ade20k": 150, "cityscapes": 19}

Pair = tuple[torch.Tensor, torch.Tensor]


class SegFolderItems(Dataset):
    """Items ``(uint8 (3, H, W), long (H, W))`` of one split of a segmentation folder, read one
    pair at a time (nothing held in memory but the file list)."""

    def __init__(self, sc: SegConfig, split: str) -> None:
        assert sc.root is not None
        self.root, self.layout = open_seg_root(sc.root, sc.layout)
        self.reduce = (self.layout == "ade20k") if sc.reduce_zero_label is None else sc.reduce_zero_label
        self.ignore_index = sc.ignore_index
        self.pairs = seg_pairs(self.root, self.layout, split, sc.limit if split == "train" else sc.test_limit)
        self.name = f"{self.layout}({self.root.name})/{split}"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Pair:
        return read_pair(*self.pairs[i], self.reduce, self.ignore_index)

    def max_label(self) -> int:
        """The largest label of the split (reads every mask once, one at a time)."""
        from PIL import Image

        top = -1
        for _, lab_path in self.pairs:
            with Image.open(lab_path) as im:
                lab = torch.from_numpy(np.asarray(im).astype(np.int64))
            if self.reduce:
                lab = lab - 1
            keep = (lab != self.ignore_index) & (lab >= 0)
            top = max(top, int(lab[keep].max()) if bool(keep.any()) else -1)
        return top


class SegMemoryItems(Dataset):
    """A :class:`~bootleg.probe.segdata.SegSet` as items ``(uint8 (3, S, S), long (S, S))``."""

    def __init__(self, seg: SegSet) -> None:
        self.seg, self.name, self.ignore_index = seg, seg.name, seg.ignore_index

    def __len__(self) -> int:
        return len(self.seg)

    def __getitem__(self, i: int) -> Pair:
        return self.seg.images[i], self.seg.masks[i].long()


def num_classes(sc: SegConfig, train: Dataset, layout: str | None) -> int:
    """``seg.num_classes``, else the benchmark's count, else 1 + the largest training label."""
    if sc.num_classes is not None:
        return sc.num_classes
    if layout in LAYOUT_CLASSES:
        return LAYOUT_CLASSES[layout]
    top = train.max_label() if isinstance(train, SegFolderItems) else -1
    if top < 1:
        raise BootlegError("probe.seg.num_classes: no labels found in the training masks; set it")
    return top + 1


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.float() / 255 - mean) / std


def eval_resize(img: torch.Tensor, short: int) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> normalised float ``(3, h, w)`` with ``min(h, w) == short``."""
    H, W = img.shape[-2:]
    h, w = max(1, round(H * short / min(H, W))), max(1, round(W * short / min(H, W)))
    x = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    return _normalise(x.clamp_(0, 255))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of ``window``-long windows every ``stride`` covering ``[0, length)``, the last one
    flush with the end (a single window at 0 when ``length <= window``)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def windows(x: torch.Tensor, size: int, stride: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``(3, h, w)`` -> ``(n, 3, S, S)`` windows (zero-padded, i.e. the mean colour, where the
    image is smaller than ``S``) and their top-left corners."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        x = F.pad(x, (0, max(0, size - w), 0, max(0, size - h)))
    corners = [(y, z) for y in window_starts(h, size, stride) for z in window_starts(w, size, stride)]
    return torch.stack([x[:, y : y + size, z : z + size] for y, z in corners]), corners


class SegTrainViews(Dataset):
    """Items ``(float (3, S, S) normalised, long (S, S) labels, index)``: a fresh training view
    of item ``i`` in epoch ``epoch``, drawn from ``(seed, epoch, i)`` (same on any worker)."""

    def __init__(self, base: Dataset, size: int, pc: SegPaperConfig, seed: int, ignore_index: int) -> None:
        self.base, self.size, self.pc, self.seed, self.ignore = base, size, pc, seed, ignore_index
        self.short = pc.short_side or size
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        img, lab = self.base[i]
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, int(i)))
        x, y = train_view(img, lab, self.size, self.short, self.pc, self.ignore, g)
        return x, y, int(i)


def train_view(
    img: torch.Tensor, lab: torch.Tensor, size: int, short: int, pc: SegPaperConfig, ignore: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training view: ``(3, S, S)`` normalised float and ``(S, S)`` long labels.

    Resize (image bilinear, mask nearest) to a short side of ``short x U(pc.scale)``, pad to at
    least ``S`` (mean colour, ignored labels), random ``S x S`` crop, flip (both), colour jitter
    and one ``pc.cutout x S`` square set to the mean colour (image only)."""

    def u(lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    H, W = img.shape[-2:]
    r = u(*pc.scale) * short / min(H, W)
    h, w = max(1, round(H * r)), max(1, round(W * r))
    x = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    y = F.interpolate(lab[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0].long()
    x = _jitter(x.clamp_(0, 255) / 255, pc.jitter, g)
    x = _normalise(x * 255)
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        x, y = F.pad(x, (0, pw, 0, ph)), F.pad(y, (0, pw, 0, ph), value=ignore)
    top, left = int(u() * (x.shape[1] - size + 1)), int(u() * (x.shape[2] - size + 1))
    x, y = x[:, top : top + size, left : left + size], y[top : top + size, left : left + size]
    if pc.hflip and u() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    side = round(pc.cutout * size)
    if side:
        cy, cx = int(u() * (size - side + 1)), int(u() * (size - side + 1))
        x = x.clone()
        x[:, cy : cy + side, cx : cx + side] = 0  # the mean colour after normalisation
    return x.contiguous(), y.contiguous()


def _jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of ``x`` in ``[0, 1]``, factors
    ``U(1 - s, 1 + s)`` in a random order (torchvision ``ColorJitter``'s rule, seeded by ``g``)."""
    if strength <= 0:
        return x
    import torchvision.transforms.v2.functional as TF

    ops: Sequence = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    factors = 1 - strength + 2 * strength * torch.rand(3, generator=g, dtype=torch.float64)
    for k in torch.randperm(3, generator=g).tolist():
        x = ops[k](x, float(factors[k]))
    return x


def open_seg_items(sc: SegConfig, split: str, derived: SegSet | None) -> tuple[Dataset, str | None]:
    """``(items, layout)`` of ``split``: the folder at ``seg.root``, else the derived task."""
    if sc.root:
        items = SegFolderItems(sc, split)
        return items, items.layout
    assert derived is not None
    return SegMemoryItems(derived), None


__all__ = [
    "LAYOUT_CLASSES",
    "SegFolderItems",
    "SegMemoryItems",
    "SegTrainViews",
    "eval_resize",
    "num_classes",
    "open_seg_items",
    "train_view",
    "window_starts",
    "windows",
]
