"""Target kinds: what the predictor must output at the masked patches.

Each kind is a registered config class (``targets.kind``) that owns its parameters, their
check against the model, its length per patch and its computation:

* ``latent``: hidden blocks of the EMA teacher, z-scored per token and per block, then
  concatenated (Bootleg, I-JEPA) or averaged (data2vec-style).
* ``pixels``: the masked patches' pixels, normalised per patch (MAE).

Add a kind: one class here (or in its own module) registered in :data:`TARGETS`, plus its tests.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from bootleg.models import ViTEncoder, split_prefix
from bootleg.registry import Registry
from bootleg.schema import Strict

TARGETS: Registry = Registry("targets", "kind")


def gather_regions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, T), idx (B, K, P) patch indices -> (B, K, P, T)."""
    b, k, p = idx.shape
    flat = torch.gather(x, 1, idx.reshape(b, k * p, 1).expand(-1, -1, x.shape[-1]))
    return flat.reshape(b, k, p, x.shape[-1])


def zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Standardise each token over its embedding dimension: (..., D) -> (..., D), float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images (B, C, H, W) -> patches (B, N, p*p*C), row-major, pixels in (p, p, C) order."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


class TargetKind(Strict):
    """Base of every target kind."""

    kind: str

    def dim(self, embed_dim: int, patch_size: int, in_chans: int = 3) -> int:
        """Length T of one patch's target vector."""
        raise NotImplementedError

    def teacher_depth(self) -> int:
        """Deepest teacher block the kind reads (0: needs no teacher)."""
        return 0

    def check(self, depth: int) -> None:
        """Raise ``ValueError`` (one line, naming the field) if the kind does not fit the model."""

    def compute(
        self, images: torch.Tensor, pred_idx: torch.Tensor, teacher: ViTEncoder | None, patch_size: int
    ) -> torch.Tensor:
        """images (B, C, H, W), pred_idx (B, K, P) -> targets (B, K, P, T) float32, no grad."""
        raise NotImplementedError


@TARGETS.register
class LatentTargets(TargetKind):
    """Teacher block outputs (``blocks``) then post-attention streams (``mid_blocks``), 1-indexed."""

    kind: Literal["latent"] = "latent"
    blocks: list[int] = [1, 4, 8, 12]
    mid_blocks: list[int] = []
    merge: Literal["concat", "mean"] = "concat"

    def dim(self, embed_dim: int, patch_size: int, in_chans: int = 3) -> int:
        n = len(self.blocks) + len(self.mid_blocks)
        return embed_dim * (n if self.merge == "concat" else 1)

    def teacher_depth(self) -> int:
        return max([*self.blocks, *self.mid_blocks])

    def check(self, depth: int) -> None:
        if not self.blocks and not self.mid_blocks:
            raise ValueError("targets.blocks: empty; expected at least one teacher block (1-indexed)")
        for name in ("blocks", "mid_blocks"):
            bad = [b for b in getattr(self, name) if not 1 <= b <= depth]
            if bad:
                raise ValueError(f"targets.{name}: {bad} out of range; expected blocks in 1..{depth} (model.depth)")

    @torch.no_grad()
    def compute(
        self, images: torch.Tensor, pred_idx: torch.Tensor, teacher: ViTEncoder | None, patch_size: int
    ) -> torch.Tensor:
        """The teacher sees the whole image and stops after the deepest requested block; each
        requested stream is gathered at ``pred_idx``, z-scored per token, and concatenated in
        order (length ``D * n``) or averaged (length ``D``)."""
        assert teacher is not None
        _, inter = teacher.forward_intermediates(images, self.blocks, self.mid_blocks, stop_early=True)
        feats = [zscore(gather_regions(split_prefix(h, teacher.num_prefix_tokens)[1], pred_idx)) for h in inter]
        if self.merge == "mean":
            return torch.stack(feats).mean(0)
        return torch.cat(feats, dim=-1)


@TARGETS.register
class PixelTargets(TargetKind):
    """MAE: pixels of the masked patches, normalised per patch (``norm_pix``)."""

    kind: Literal["pixels"] = "pixels"
    norm_pix: bool = True

    def dim(self, embed_dim: int, patch_size: int, in_chans: int = 3) -> int:
        return patch_size**2 * in_chans

    @torch.no_grad()
    def compute(
        self, images: torch.Tensor, pred_idx: torch.Tensor, teacher: ViTEncoder | None, patch_size: int
    ) -> torch.Tensor:
        t = gather_regions(patchify(images.float(), patch_size), pred_idx)
        return zscore(t) if self.norm_pix else t


__all__ = ["TARGETS", "LatentTargets", "PixelTargets", "TargetKind", "gather_regions", "patchify", "zscore"]
