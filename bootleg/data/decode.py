"""Decoding one streamed image straight to its random resized crop.

CPU (:func:`decode_crop`): read the header, draw the crop box and flip from the step's
generator, ask libjpeg for a reduced-size decode when the crop will be downscaled anyway
(PIL's ``draft``: DCT scaling by 1/2, 1/4 or 1/8, never below the output size), then crop
and resize in one antialiased PIL ``resize(box=...)``. Output: ``(3, S, S)`` uint8.

CUDA (:func:`decode_batch_cuda`): workers only read bytes and the header size
(:func:`peek_size`); the batch is decoded on the device by ``torchvision.io.decode_jpeg``
and cropped, flipped, resized and normalised there by
:func:`~bootleg.data.augment.apply_augment` (non-JPEG files are decoded on the CPU).

Unreadable input raises :class:`BadImage` (the stream replaces the image and counts it).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from bootleg.data.augment import IMAGENET_MEAN, IMAGENET_STD, apply_augment, sample_augment_params

__all__ = ["BadImage", "decode_crop", "peek_size", "decode_batch_cuda"]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class BadImage(Exception):
    """An unreadable image (truncated, empty, not an image)."""


def peek_size(data: bytes) -> tuple[int, int, bool]:
    """``(H, W, is_jpeg)`` from the header alone; :class:`BadImage` if it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width, im.format == "JPEG"
    except Exception as e:
        raise BadImage(f"{type(e).__name__}: {e}") from None


def decode_crop(
    data: bytes,
    size: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    hflip: bool,
    interpolation: str,
    generator: torch.Generator,
    draft: bool = True,
) -> torch.Tensor:
    """Decode ``data`` and return its random resized crop ``(3, size, size)`` uint8 (see module doc).

    The box is drawn on the full-size image with :func:`~bootleg.data.augment.sample_augment_params`
    (torchvision's rule), so ``draft`` changes the pixels slightly but never the geometry.
    """
    try:
        im = Image.open(io.BytesIO(data))
        W, H = im.size
        boxes, flips = sample_augment_params(1, (H, W), scale, ratio, hflip, generator)
        y0, x0, h, w = (int(v) for v in boxes[0])
        if draft and im.format == "JPEG" and min(h, w) >= 2 * size:
            im.draft("RGB", (math.ceil(W * size / w), math.ceil(H * size / h)))
        sx = sy = 1 / round(W / im.size[0])  # libjpeg scales by exactly 1/2^k (the last block padded)
        im = im.convert("RGB")
        out = im.resize((size, size), _RESAMPLE[interpolation], box=(x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy))
    except Exception as e:  # PIL raises many types on corrupt input
        raise BadImage(f"{type(e).__name__}: {e}") from None
    if bool(flips[0]):
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def decode_batch_cuda(
    datas: list[torch.Tensor],
    jpeg: list[bool],
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    interpolation: str,
    device: torch.device,
) -> torch.Tensor:
    """Decode a batch of encoded images on ``device`` and crop/flip/resize/normalise each.

    Args:
        datas: encoded bytes as 1-D uint8 CPU tensors.
        jpeg: which of them are JPEGs (decoded on the device; the rest on the CPU).
        boxes: ``(B, 4)`` crop boxes ``(y0, x0, h, w)`` in full-size pixels; flips ``(B,)`` bool.

    Returns:
        ``(B, 3, size, size)`` float32 normalised on ``device``.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    on_dev = [d for d, j in zip(datas, jpeg, strict=True) if j]
    decoded = iter(decode_jpeg(on_dev, mode=ImageReadMode.RGB, device=device) if on_dev else [])
    out = []
    for i, (d, j) in enumerate(zip(datas, jpeg, strict=True)):
        img = next(decoded) if j else decode_image(d, mode=ImageReadMode.RGB).to(device)
        out.append(
            apply_augment(
                img[None], boxes[i : i + 1], flips[i : i + 1], size, interpolation, IMAGENET_MEAN, IMAGENET_STD
            )
        )
    return torch.cat(out)
