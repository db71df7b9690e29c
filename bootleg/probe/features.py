"""Frozen feature extraction: the backbone runs once per image per view, in eval mode.

Everything a probe needs is computed in that one pass and kept in memory (on the GPU when
asked and possible): the probes then train on cached features only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bootleg.data import batch_augment, eval_transform
from bootleg.errors import BootlegError
from bootleg.models import ViTEncoder

#: what :func:`extract` can keep, see :class:`Features`
FEATURE_KINDS = ("cls", "mean", "tokens", "patch", "seq")
STORE_DTYPE = torch.float16


@dataclass
class Features:
    """Cached backbone outputs of ``N`` images (``D`` width, ``T`` tokens, ``P`` patches).

    Attributes:
        cls: ``(N, D)`` float32 CLS embedding (after the final norm), or None.
        mean: ``(N, D)`` float32 mean of the patch embeddings, or None.
        tokens: ``(N, T, D)`` float16 all output tokens ``[CLS, registers, patches]``,
            layer-normalised without affine (the attentive probe's input norm, whose affine
            lives in the probe), or None.
        patch: ``(N, P, D)`` float16 patch embeddings (row-major grid), or None.
        seq: ``(N, T, D)`` float16 all output tokens as the backbone returns them, or None.
    """

    cls: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    patch: torch.Tensor | None = None
    seq: torch.Tensor | None = None

    def __len__(self) -> int:
        for t in (self.cls, self.mean, self.tokens, self.patch, self.seq):
            if t is not None:
                return int(t.shape[0])
        return 0

    def get(self, kind: str) -> torch.Tensor:
        t = getattr(self, kind)
        if t is None:
            raise KeyError(f"feature {kind!r} was not extracted")
        return t


def cat_features(parts: Iterable[Features]) -> Features:
    """Concatenate along the image axis (views of the same images, or splits)."""
    parts = list(parts)
    out = Features()
    for kind in FEATURE_KINDS:
        ts = [getattr(p, kind) for p in parts]
        if all(t is not None for t in ts):
            setattr(out, kind, torch.cat(ts))
    return out


def color_jitter(images_uint8: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter (torchvision ``ColorJitter(s, s, s)``
    factors, applied in that fixed order). Random factors are drawn on the CPU.

    images_uint8: (B, 3, H, W) uint8 -> (B, 3, H, W) uint8 on the same device.
    """
    if strength <= 0:
        return images_uint8
    B = images_uint8.shape[0]
    f = 1 - strength + 2 * strength * torch.rand(B, 3, generator=generator)
    f = f.to(images_uint8.device)
    x = images_uint8.float()
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    x = (x * f[:, 0, None, None, None]).clamp_(0, 255)
    gray_mean = (x * w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - gray_mean) * f[:, 1, None, None, None] + gray_mean).clamp_(0, 255)
    gray = (x * w).sum(1, keepdim=True)
    x = ((x - gray) * f[:, 2, None, None, None] + gray).clamp_(0, 255)
    return x.round_().to(torch.uint8)


Transform = Callable[[torch.Tensor], torch.Tensor]


def probe_inputs(f: dict[str, torch.Tensor | None], want: Iterable[str]) -> dict[str, torch.Tensor]:
    """One ``encoder.forward_features`` output -> the probes' inputs (float32):
    ``cls`` (B, D), ``mean`` (B, D) mean patch embedding, ``tokens`` (B, T, D) affine-free
    layer norm of all tokens, ``patch`` (B, P, D), ``seq`` (B, T, D) raw tokens."""
    tokens, patch = f["tokens"].float(), f["patch"].float()  # type: ignore[union-attr]
    out: dict[str, torch.Tensor] = {}
    for k in want:
        if k == "cls":
            out[k] = f["cls"].float()  # type: ignore[union-attr]
        elif k == "mean":
            out[k] = patch.mean(1)
        elif k == "tokens":
            out[k] = F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6)
        elif k == "patch":
            out[k] = patch
        else:
            out[k] = tokens
    return out


def clean_transform(size: int) -> Transform:
    """Evaluation view: resize to ``size`` and normalise. (B,3,H,W) uint8 -> (B,3,S,S) float."""
    return lambda x: eval_transform(x, size)


def augment_transform(
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool,
    jitter: float,
    generator: torch.Generator,
) -> Transform:
    """Training view: colour jitter, random resized crop, flip, normalise (seeded)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        x = color_jitter(x, jitter, generator)
        return batch_augment(x, size, scale, ratio, hflip, "bicubic", generator=generator)

    return f


def autocast_for(device: torch.device, precision: str) -> torch.autocast | nullcontext:
    """bf16 autocast on CUDA for ``auto``; ``bf16`` forces it on any device."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def extract(
    encoder: ViTEncoder,
    images_uint8: torch.Tensor,
    transform: Transform,
    want: Iterable[str],
    batch_size: int = 256,
    precision: str = "auto",
    store: torch.device | str = "cpu",
) -> Features:
    """Run the frozen ``encoder`` once over ``images_uint8`` and keep the ``want`` features.

    Args:
        encoder: the backbone, already on its device and in eval mode.
        images_uint8: ``(N, 3, H, W)`` uint8 (any device; batches move to the encoder's).
        transform: ``(B, 3, H, W)`` uint8 -> ``(B, 3, S, S)`` float normalised.
        want: subset of :data:`FEATURE_KINDS`.
        batch_size: images per forward.
        precision: ``auto`` (bf16 on CUDA), ``bf16`` or ``fp32``.
        store: device of the returned tensors.

    Returns:
        :class:`Features` with the requested fields filled.
    """
    want = set(want)
    bad = want - set(FEATURE_KINDS)
    if bad:
        raise ValueError(f"unknown feature kinds {sorted(bad)}")
    if "cls" in want and not encoder.has_cls:
        raise BootlegError("checkpoint: the encoder has no CLS token; drop the CLS probes (linear_cls)")
    device = next(encoder.parameters()).device
    n = images_uint8.shape[0]
    chunks: dict[str, list[torch.Tensor]] = {k: [] for k in want}
    for s in range(0, n, batch_size):
        x = transform(images_uint8[s : s + batch_size].to(device, non_blocking=True))
        with autocast_for(device, precision):
            f = encoder.forward_features(x)
        for k, v in probe_inputs(f, want).items():
            chunks[k].append(v.to(STORE_DTYPE if v.dim() == 3 else v.dtype).to(store))
    out = Features()
    for k, parts in chunks.items():
        if parts:
            setattr(out, k, torch.cat(parts))
        else:
            setattr(out, k, torch.empty(0))
    return out
