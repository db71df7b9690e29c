"""Batched augmentation on any device: random resized crop + horizontal flip in one
``F.grid_sample`` call, then normalisation.

Random numbers are always drawn on the CPU from the given ``torch.Generator`` (in the order:
crop scales ``(n, 10)``, log aspect ratios ``(n, 10)``, row offsets ``(n, 10)``, column offsets
``(n, 10)``, then flips ``(n,)`` when ``hflip``), and only the resulting parameters move to the
images' device, so a generator seeded the same way gives the same crops on CPU and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "random_resized_crop_params",
    "sample_augment_params",
    "apply_augment",
    "batch_augment",
    "eval_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TRIES = 10


def central_crop(H: int, W: int, ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop fallback: the largest central crop within ``ratio``,
    as ``(top, left, height, width)``."""
    in_ratio = W / H
    if in_ratio < min(ratio):
        fw, fh = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = H, int(round(H * max(ratio)))
    else:
        fw, fh = W, H
    return (H - fh) // 2, (W - fw) // 2, fh, fw


def random_resized_crop_params(
    n: int,
    in_hw: tuple[int, int],
    scale: Sequence[float] = (0.35, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``n`` crop boxes with torchvision's ``RandomResizedCrop.get_params`` rule, vectorised.

    Per sample: up to 10 tries of ``area * U(scale)`` and ``exp(U(log ratio))``, giving
    ``w = round(sqrt(area * r))``, ``h = round(sqrt(area / r))``; the first try with
    ``0 < w <= W`` and ``0 < h <= H`` wins, its offset uniform in ``[0, H - h]`` x ``[0, W - w]``.
    If no try fits, the central crop clamped to the ratio range. All 10 tries are drawn for
    every sample (so the stream of random numbers does not depend on which try wins).

    Args:
        n: number of boxes.
        in_hw: input ``(H, W)`` in pixels.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio ``w / h``.
        generator: CPU generator (``None``: the global one).

    Returns:
        ``(n, 4)`` int64 boxes ``(y0, x0, h, w)`` in pixels (CPU).
    """
    H, W = int(in_hw[0]), int(in_hw[1])
    area = float(H * W)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    u_area = torch.rand(n, _TRIES, generator=generator, dtype=torch.float64)
    u_ratio = torch.rand(n, _TRIES, generator=generator, dtype=torch.float64)
    u_y = torch.rand(n, _TRIES, generator=generator, dtype=torch.float64)
    u_x = torch.rand(n, _TRIES, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    r = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u_ratio)
    w = torch.round(torch.sqrt(target * r)).long()
    h = torch.round(torch.sqrt(target / r)).long()
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    # offsets uniform over the integers [0, H - h] (floor(u * (H - h + 1)))
    y0 = torch.floor(u_y * (H - h + 1).clamp(min=1)).long()
    x0 = torch.floor(u_x * (W - w + 1).clamp(min=1)).long()
    first = torch.argmax(ok.to(torch.int8), dim=1)  # first True, 0 when none
    take = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    boxes = torch.stack([take(y0), take(x0), take(h), take(w)], dim=1)

    fallback = torch.tensor(central_crop(int(H), int(W), ratio), dtype=torch.long)
    none_ok = ~ok.any(dim=1)
    boxes[none_ok] = fallback
    return boxes


def sample_augment_params(
    n: int,
    in_hw: tuple[int, int],
    scale: Sequence[float] = (0.35, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw crop boxes ``(n, 4)`` int64 and flip flags ``(n,)`` bool on the CPU.

    Flags are all ``False`` (and no random numbers are drawn for them) when ``hflip`` is off.
    """
    boxes = random_resized_crop_params(n, in_hw, scale, ratio, generator)
    if hflip:
        flips = torch.rand(n, generator=generator) < 0.5
    else:
        flips = torch.zeros(n, dtype=torch.bool)
    return boxes, flips


def _normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``x`` float in [0, 255], ``(B, C, H, W)`` -> ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 255.0
    return (x - m) / s


def apply_augment(
    images_uint8: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    out_size: int,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Crop ``boxes``, resize to ``out_size``, flip where ``flips``, normalise: one ``grid_sample``.

    Output pixel ``k`` of a box ``(y0, x0, h, w)`` samples the input at
    ``x0 + (k + 0.5) * w / S - 0.5`` (pixel centres, ``align_corners=False``), which is what
    cropping then resizing with ``F.interpolate`` does (no antialiasing); taps outside the
    image repeat the border. Bicubic output is clamped to [0, 255] before normalising.

    Args:
        images_uint8: ``(B, C, H, W)`` uint8, any device.
        boxes: ``(B, 4)`` ``(y0, x0, h, w)`` pixels (any device; used on the CPU).
        flips: ``(B,)`` bool.
        out_size: output side ``S``.
        interpolation: ``bicubic`` or ``bilinear``.

    Returns:
        ``(B, C, S, S)`` float32 on the images' device.
    """
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation {interpolation!r} is not 'bicubic' or 'bilinear'")
    B, C, H, W = images_uint8.shape
    b = boxes.detach().to("cpu", torch.float64)
    y0, x0, h, w = b.unbind(1)
    sx = w / W
    sx = torch.where(flips.detach().cpu(), -sx, sx)
    theta = torch.zeros(B, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * x0 + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * y0 + h) / H - 1
    dev = images_uint8.device
    theta = theta.to(device=dev, dtype=torch.float32, non_blocking=True)
    grid = F.affine_grid(theta, [B, C, out_size, out_size], align_corners=False)
    x = images_uint8.float()
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    if interpolation == "bicubic":
        out = out.clamp_(0.0, 255.0)
    return _normalise(out, mean, std)


def batch_augment(
    images_uint8: torch.Tensor,
    out_size: int,
    scale: Sequence[float] = (0.35, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    interpolation: str = "bicubic",
    generator: torch.Generator | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Random resized crop + optional horizontal flip + normalisation of a batch.

    Args:
        images_uint8: ``(B, C, H, W)`` uint8 on any device.
        out_size: output side ``S``.
        scale, ratio: crop area fraction and aspect-ratio ranges (torchvision semantics).
        hflip: flip each sample with probability 1/2.
        interpolation: ``bicubic`` or ``bilinear``.
        generator: CPU generator for the random numbers (``None``: the global one).
        mean, std: per-channel normalisation of ``x / 255``.

    Returns:
        ``(B, C, S, S)`` float32 normalised, on the images' device.
    """
    B, _, H, W = images_uint8.shape
    boxes, flips = sample_augment_params(B, (H, W), scale, ratio, hflip, generator)
    return apply_augment(images_uint8, boxes, flips, out_size, interpolation, mean, std)


def eval_transform(
    images_uint8: torch.Tensor,
    out_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Deterministic evaluation transform: bicubic resize of the shorter side to ``out_size``
    (antialiased when shrinking, as torchvision's ``Resize``), centre crop ``S x S`` (a no-op
    for square inputs), clamp to [0, 255], normalise.

    Args:
        images_uint8: ``(B, C, H, W)`` uint8 on any device.
        out_size: output side ``S``.

    Returns:
        ``(B, C, S, S)`` float32 normalised, on the images' device.
    """
    _, _, H, W = images_uint8.shape
    x = images_uint8.float()
    if (H, W) != (out_size, out_size):
        short = min(H, W)
        nh, nw = round(H * out_size / short), round(W * out_size / short)
        nh, nw = max(nh, out_size), max(nw, out_size)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=(nh < H or nw < W))
        top, left = (nh - out_size) // 2, (nw - out_size) // 2
        x = x[:, :, top : top + out_size, left : left + out_size].clamp_(0.0, 255.0)
    return _normalise(x, mean, std)
