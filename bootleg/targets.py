"""Prediction targets: z-scored teacher blocks (Bootleg, I-JEPA, data2vec) or pixels (MAE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bootleg.models import ViTEncoder


def gather_regions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, T), idx (B, K, P) patch indices -> (B, K, P, T)."""
    b, k, p = idx.shape
    flat = torch.gather(x, 1, idx.reshape(b, k * p, 1).expand(-1, -1, x.shape[-1]))
    return flat.reshape(b, k, p, x.shape[-1])


def zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Standardise each token over its embedding dimension: (..., D) -> (..., D), float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


@torch.no_grad()
def latent_targets(
    teacher: ViTEncoder,
    images: torch.Tensor,
    pred_idx: torch.Tensor,
    blocks: Sequence[int],
    mid_blocks: Sequence[int] = (),
    merge: str = "concat",
) -> torch.Tensor:
    """Teacher targets at the masked regions.

    The teacher sees the whole image and stops after the deepest requested block. Each
    requested block output (then each mid-block stream) is gathered at ``pred_idx``,
    z-scored per token and per block, and concatenated in that order (``merge="concat"``,
    length ``D * n_blocks``) or averaged (``merge="mean"``, data2vec-style, length ``D``).

    images (B, C, H, W), pred_idx (B, K, P) -> targets (B, K, P, T) float32.
    """
    _, inter = teacher(images, None, blocks=blocks, mid_blocks=mid_blocks, final=False)
    c = teacher.num_prefix_tokens
    feats = [zscore(gather_regions(h[:, c:], pred_idx)) for h in inter]
    if merge == "mean":
        return torch.stack(feats).mean(0)
    return torch.cat(feats, dim=-1)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images (B, C, H, W) -> patches (B, N, p*p*C), row-major, pixels in (p, p, C) order."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


@torch.no_grad()
def pixel_targets(images: torch.Tensor, pred_idx: torch.Tensor, patch_size: int, norm_pix: bool = True) -> torch.Tensor:
    """MAE targets: pixels of the masked patches, normalised per patch (``norm_pix``).

    images (B, C, H, W), pred_idx (B, K, P) -> (B, K, P, p*p*C) float32.
    """
    t = gather_regions(patchify(images.float(), patch_size), pred_idx)
    return zscore(t) if norm_pix else t
