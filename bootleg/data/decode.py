"""Decoding one streamed image straight to its random resized crop.

CPU (:func:`decode_crop`): read the header, draw the crop box and flip from the step's
generator, have libjpeg-turbo (``simplejpeg``, or PIL for other formats) decode at reduced size
when the crop will be downscaled by 2x or more anyway (DCT scaling by 1/2, 1/4 or 1/8, the same
as PIL's ``draft``; never below the output size), then crop and resize in one antialiased step:
torch's AVX2 uint8 ``resized_crop`` at full size (the common case at ImageNet sizes: 4x faster than
PIL's resize), PIL's ``resize(box=...)`` in fractional pixels when DCT-scaled. Output:
``(3, S, S)`` uint8. (Scales between 1/2 and 1, e.g. 6/8, decode
slower than full size in libjpeg-turbo, so they are not used.)

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
import simplejpeg
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from bootleg.data.augment import IMAGENET_MEAN, IMAGENET_STD, apply_augment, central_crop

__all__ = ["BadImage", "crop_box", "decode_crop", "peek_size", "decode_batch_cuda"]

_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_RESAMPLE = {"bicubic": F.InterpolationMode.BICUBIC, "bilinear": F.InterpolationMode.BILINEAR}


class BadImage(Exception):
    """An unreadable image (truncated, empty, not an image)."""


def peek_size(data: bytes) -> tuple[int, int, bool]:
    """``(H, W, is_jpeg)`` from the header alone; :class:`BadImage` if it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width, im.format == "JPEG"
    except Exception as e:
        raise BadImage(f"{type(e).__name__}: {e}") from None


def crop_box(
    u: np.ndarray, hw: tuple[int, int], scale: Sequence[float], ratio: Sequence[float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop rule (as :func:`~bootleg.data.augment.random_resized_crop_params`)
    for one image from its 40 uniforms ``u`` ``(4, 10)`` (area, log ratio, row, column per try):
    ``(y0, x0, h, w)``. Plain float math: a few microseconds per image."""
    H, W = hw
    area = float(H * W)
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    for t in range(u.shape[1]):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(u[0, t]))
        r = math.exp(lr0 + (lr1 - lr0) * float(u[1, t]))
        w, h = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < w <= W and 0 < h <= H:
            return math.floor(float(u[2, t]) * (H - h + 1)), math.floor(float(u[3, t]) * (W - w + 1)), h, w
    return central_crop(H, W, ratio)


def decode_crop(
    data: bytes,
    size: int,
    u: np.ndarray,
    flip: bool,
    scale: Sequence[float],
    ratio: Sequence[float],
    interpolation: str,
    draft: bool = True,
) -> torch.Tensor:
    """Decode ``data`` and return its random resized crop ``(3, size, size)`` uint8 (see module doc).

    The box is :func:`crop_box` of the uniforms ``u`` ``(4, 10)`` on the full-size image, so
    ``draft`` changes the pixels slightly but never the geometry; ``flip`` mirrors the result.
    """
    try:
        H = W = 0
        if data[:3] == b"\xff\xd8\xff":
            H, W, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        pass  # not a header simplejpeg reads: PIL below
    try:
        if H:  # JPEG: libjpeg-turbo via simplejpeg, DCT-scaled by 1/k
            y0, x0, h, w = crop_box(u, (H, W), scale, ratio)
            k = next((k for k in (8, 4, 2) if draft and min(h, w) >= k * size), 1)
            arr = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-H // k), min_width=-(-W // k), min_factor=k)
        else:
            with Image.open(io.BytesIO(data)) as im:
                W, H = im.size
                y0, x0, h, w = crop_box(u, (H, W), scale, ratio)
                arr, k = np.asarray(im.convert("RGB")), 1
    except Exception as e:  # the decoders raise many types on corrupt input
        raise BadImage(f"{type(e).__name__}: {e}") from None
    if k > 1:  # DCT-scaled: PIL's resize takes the box in fractional decoded pixels (same geometry)
        box = (x0 / k, y0 / k, (x0 + w) / k, (y0 + h) / k)
        pil = Image.fromarray(arr).resize((size, size), _PIL_RESAMPLE[interpolation], box=box)
        out = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    else:  # full size: torch's AVX2 uint8 antialiased resize of a channels-last view, 4x faster
        img = torch.from_numpy(arr).permute(2, 0, 1)  # than PIL's on one core, within rounding of it
        out = F.resized_crop(img, y0, x0, h, w, [size, size], interpolation=_RESAMPLE[interpolation], antialias=True)
    return (out.flip(-1) if flip else out).contiguous()


def _decode_one(d: torch.Tensor, j: bool, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    if j:
        return decode_jpeg(d, mode=ImageReadMode.RGB, device=device)
    return decode_image(d, mode=ImageReadMode.RGB).to(device)


def decode_batch_cuda(
    datas: list[torch.Tensor],
    jpeg: list[bool],
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    interpolation: str,
    device: torch.device,
) -> tuple[torch.Tensor, list[int]]:
    """Decode a batch of encoded images on ``device`` and crop/flip/resize/normalise each.

    Args:
        datas: encoded bytes as 1-D uint8 CPU tensors.
        jpeg: which of them are JPEGs (decoded on the device; the rest on the CPU).
        boxes: ``(B, 4)`` crop boxes ``(y0, x0, h, w)`` in full-size pixels; flips ``(B,)`` bool.

    Returns:
        ``(B, 3, size, size)`` float32 normalised on ``device``, and the positions of images that
        failed to decode (workers only checked their headers): those are the dataset mean (zeros
        after normalisation), the same on every run.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    on_dev = [d for d, j in zip(datas, jpeg, strict=True) if j]
    try:
        decoded: list[torch.Tensor | None] | None = (
            list(decode_jpeg(on_dev, mode=ImageReadMode.RGB, device=device)) if on_dev else []
        )
    except RuntimeError:  # a corrupt JPEG in the batch: decode one by one below
        decoded = None
    it = iter(decoded or [])
    out, failed = [], []
    for i, (d, j) in enumerate(zip(datas, jpeg, strict=True)):
        try:
            img = next(it) if (j and decoded is not None) else _decode_one(d, j, device)
        except RuntimeError:
            failed.append(i)
            out.append(torch.zeros(1, 3, size, size, device=device))
            continue
        out.append(
            apply_augment(
                img[None], boxes[i : i + 1], flips[i : i + 1], size, interpolation, IMAGENET_MEAN, IMAGENET_STD
            )
        )
    return torch.cat(out), failed
