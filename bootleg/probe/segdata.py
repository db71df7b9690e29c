"""Segmentation data for the dense probes: a task derived from labelled images, or a folder
of images and label masks (ADE20K, Cityscapes or a plain layout).

Derived task ("pasted objects"): every ``S x S`` canvas has a smooth random-colour
background (class 0, ``background``) with ``objects`` images pasted on it at random
positions and sizes (a side of ``object_scale`` times ``S``, later objects on top); each
pasted pixel is labelled with its image's class + 1. With ``mask="box"`` the whole pasted
square is the object; with ``mask="threshold"`` (the default for Fashion-MNIST, whose
objects lie on black) only pixels brighter than 10% are pasted and labelled, so masks
follow the objects' real shapes. Train canvases use train-split images and test canvases
test-split images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bootleg.errors import BootlegError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


@dataclass
class SegSet:
    """Images with per-pixel labels, all ``S x S``.

    Attributes:
        images: ``(N, 3, S, S)`` uint8.
        masks: ``(N, S, S)`` int16 class indices, ``ignore_index`` where unlabelled.
        classes: class names, index ``i`` is label ``i``.
        ignore_index: label of pixels that neither train nor score.
        name: what the data is, e.g. ``"pasted(embedded)/train"``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    classes: list[str]
    ignore_index: int
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: torch.Tensor) -> SegSet:
        return SegSet(self.images[idx], self.masks[idx], self.classes, self.ignore_index, self.name)


def _background(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, S, S) uint8 smooth colour fields: a bilinear 4x4 random grid plus pixel noise."""
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    x = x + (torch.rand(n, 3, size, size, generator=g) - 0.5) * 24
    return x.clamp_(0, 255).round_().to(torch.uint8)


def pasted_objects(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    n: int,
    size: int,
    objects: int,
    scale: tuple[float, float],
    mask: str,
    generator: torch.Generator,
    name: str = "pasted",
) -> SegSet:
    """Build ``n`` canvases of the derived task from labelled images.

    Args:
        images: ``(M, 3, H, W)`` uint8 source images; labels ``(M,)`` into ``classes``.
        n: canvases; size: canvas side ``S``; objects: images pasted per canvas.
        scale: range of an object's side as a fraction of ``S``.
        mask: ``box`` (whole square) or ``threshold`` (pixels brighter than 10%).

    Returns:
        :class:`SegSet` with ``len(classes) + 1`` classes, 0 = background.
    """
    if mask not in ("box", "threshold"):
        raise ValueError(f"mask {mask!r} is not 'box' or 'threshold'")
    canvas = _background(n, size, generator)
    target = torch.zeros(n, size, size, dtype=torch.int16)
    m = images.shape[0]
    pick = torch.randint(0, m, (n, objects), generator=generator)
    lo, hi = max(1, round(scale[0] * size)), max(1, round(scale[1] * size))
    sides = torch.randint(lo, hi + 1, (n, objects), generator=generator)
    u = torch.rand(n, objects, 2, generator=generator)
    for i in range(n):
        for j in range(objects):
            s = int(sides[i, j])
            src = images[pick[i, j]].float()[None]
            obj = F.interpolate(src, size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
            obj = obj.clamp_(0, 255).round_().to(torch.uint8)
            if mask == "threshold":
                keep = obj.float().mean(0) > 25.5
            else:
                keep = torch.ones(s, s, dtype=torch.bool)
            y0 = int(u[i, j, 0] * (size - s + 1))
            x0 = int(u[i, j, 1] * (size - s + 1))
            region = canvas[i, :, y0 : y0 + s, x0 : x0 + s]
            region[:, keep] = obj[:, keep]
            target[i, y0 : y0 + s, x0 : x0 + s][keep] = int(labels[pick[i, j]]) + 1
    return SegSet(canvas, target, ["background", *classes], 255, name)


# --------------------------------------------------------------------------- folders


def _find(root: Path, subdirs: list[str]) -> Path | None:
    for s in subdirs:
        if (root / s).is_dir():
            return root / s
    return None


def _pairs(layout: str, root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs of ``split`` (train/test) under ``root`` for ``layout``."""
    if layout == "cityscapes":
        names = ["train"] if split == "train" else ["val", "test"]
        img_dir, lab_dir = _find(root / "leftImg8bit", names), _find(root / "gtFine", names)
        if img_dir is None or lab_dir is None:
            return []
        lab_dir = root / "gtFine" / img_dir.name
        out = []
        for p in sorted(img_dir.rglob("*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            lab = lab_dir / p.parent.relative_to(img_dir) / f"{stem}_gtFine_labelTrainIds.png"
            if not lab.is_file():
                raise BootlegError(
                    f"probe.seg.root: {lab} is missing; expected Cityscapes *_gtFine_labelTrainIds.png "
                    "(made by cityscapesscripts' createTrainIdLabelImgs)"
                )
            out.append((p, lab))
        return out
    if layout == "ade20k":
        names = ["training", "train"] if split == "train" else ["validation", "val", "test"]
        img_root, lab_root = root / "images", root / "annotations"
    else:
        names = ["train", "training"] if split == "train" else ["test", "val", "validation"]
        img_root = root / "images"
        lab_root = _find(root, ["masks", "annotations", "labels"]) or root / "masks"
    img_dir = _find(img_root, names)
    if img_dir is None:
        return []
    lab_dir = lab_root / img_dir.name
    labels = {p.relative_to(lab_dir).with_suffix("").as_posix(): p for p in lab_dir.rglob("*.png")}
    out = []
    for p in sorted(img_dir.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        key = p.relative_to(img_dir).with_suffix("").as_posix()
        if key not in labels:
            raise BootlegError(f"probe.seg.root: no label mask for {p}; expected {lab_dir / key}.png")
        out.append((p, labels[key]))
    return out


def detect_layout(root: Path) -> str:
    """``cityscapes`` (leftImg8bit/, gtFine/), ``ade20k`` (images/, annotations/ with
    training/) or ``plain`` (images/, masks|annotations|labels/)."""
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    if (root / "images").is_dir() and (root / "annotations" / "training").is_dir():
        return "ade20k"
    if (root / "images").is_dir():
        return "plain"
    raise BootlegError(
        f"probe.seg.root: {root} has neither images/ nor leftImg8bit/; expected an ADE20K, "
        "Cityscapes or images/ + masks/ folder"
    )


def _square(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(C, H, W) -> (C, S, S): resize the shorter side to ``size``, centre crop."""
    _, H, W = x.shape
    short = min(H, W)
    nh, nw = max(size, round(H * size / short)), max(size, round(W * size / short))
    if mode == "nearest":
        y = F.interpolate(x[None].float(), size=(nh, nw), mode="nearest-exact")[0]
    else:
        y = F.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return y[:, top : top + size, left : left + size]


def open_seg_root(root: str | Path, layout: str = "auto") -> tuple[Path, str]:
    """``(folder, layout)`` of a segmentation tree; a one-line error when it is not one."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise BootlegError(
            f"probe.seg.root: {r} is not a folder; expected an ADE20K, Cityscapes or images/ + masks/ tree"
        )
    return r, (detect_layout(r) if layout == "auto" else layout)


def seg_pairs(root: Path, layout: str, split: str, limit: int | None = None) -> list[tuple[Path, Path]]:
    """The first ``limit`` (image, mask) pairs of ``split`` in sorted order; an error when none."""
    pairs = _pairs(layout, root, split)
    if not pairs:
        raise BootlegError(f"probe.seg.root: {root} has no {split} images for the {layout} layout; see docs/probes.md")
    return pairs[:limit] if limit else pairs


def read_pair(img_path: Path, lab_path: Path, reduce: bool, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pair at full resolution: ``(3, H, W)`` uint8 image and ``(H, W)`` long labels
    (ADE20K's ``reduce_zero_label`` applied when ``reduce``)."""
    from PIL import Image

    try:
        with Image.open(img_path) as im:
            img = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        with Image.open(lab_path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise BootlegError(
                    f"probe.seg.root: {lab_path} is a {im.mode} image; expected a single-channel label PNG"
                )
            lab = torch.from_numpy(np.asarray(im).astype(np.int64))
    except BootlegError:
        raise
    except Exception as e:  # PIL raises many types on corrupt input
        raise BootlegError(f"probe.seg.root: {img_path} or its mask is not readable ({type(e).__name__})") from None
    if lab.shape != img.shape[1:]:
        raise BootlegError(f"probe.seg.root: {lab_path} is {tuple(lab.shape)}, its image {tuple(img.shape[1:])}")
    if reduce:
        lab = torch.where((lab == 0) | (lab == ignore_index), ignore_index, lab - 1)
    return img, lab


def load_seg_folder(
    root: str | Path,
    split: str,
    size: int,
    layout: str = "auto",
    reduce_zero_label: bool | None = None,
    ignore_index: int = 255,
    limit: int | None = None,
) -> SegSet:
    """Read an image + label-mask folder into memory at ``size x size`` (shorter side resized,
    centre crop; masks nearest-neighbour).

    Masks are single-channel PNGs (mode ``L``, ``P`` or ``I``) of class indices. With
    ``reduce_zero_label`` (default for ADE20K) label 0 becomes ``ignore_index`` and the others
    shift down by one. ``limit`` keeps the first ``limit`` pairs in sorted order.
    """
    r, lay = open_seg_root(root, layout)
    reduce = (lay == "ade20k") if reduce_zero_label is None else reduce_zero_label
    images, masks = [], []
    for img_path, lab_path in seg_pairs(r, lay, split, limit):
        img, lab = read_pair(img_path, lab_path, reduce, ignore_index)
        images.append(_square(img, size, "bilinear").clamp_(0, 255).round_().to(torch.uint8))
        masks.append(_square(lab[None], size, "nearest")[0].to(torch.int16))
    return SegSet(torch.stack(images), torch.stack(masks), [], ignore_index, f"{lay}({r.name})/{split}")


def finalize_classes(train: SegSet, test: SegSet, num_classes: int | None) -> int:
    """Number of classes: ``num_classes`` or 1 + the largest label seen; names ``class_i``."""
    if num_classes is None:
        seen = [s.masks[s.masks != s.ignore_index] for s in (train, test)]
        num_classes = 1 + max(int(t.max()) if t.numel() else 0 for t in seen)
    for s in (train, test):
        bad = (s.masks != s.ignore_index) & ((s.masks < 0) | (s.masks >= num_classes))
        if bool(bad.any()):
            raise BootlegError(
                f"probe.seg: {s.name} has labels outside 0..{num_classes - 1}; set probe.seg.num_classes "
                f"or probe.seg.ignore_index"
            )
        if not s.classes:
            s.classes = [f"class_{i}" for i in range(num_classes)]
    return num_classes
