"""Target kinds: what the predictor must output at the masked patches.

Each kind is a registered config class (``targets.kind``) that owns its parameters, their
check against the model, its length per patch and its computation:

* ``latent``: hidden blocks of the EMA teacher, z-scored per token and per block, then
  concatenated (Bootleg, I-JEPA) or averaged (data2vec-style).
* ``pixels``: the masked patches' pixels, normalised per patch (MAE).
* ``pixels_latent``: both, concatenated (Figure 2).

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


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """data2vec 2.0's per-layer target norm: each channel standardised over the image's tokens.
    (B, N, D) -> (B, N, D) float32."""
    x = x.float()
    return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)


def every_fourth_block(depth: int) -> list[int]:
    """Bootleg's rule of thumb (Sec. 4): blocks 1, 4, 8, ... up to ``depth``."""
    return [1, *range(4, depth + 1, 4)] if depth >= 4 else list(range(1, depth + 1))


class TargetKind(Strict):
    """Base of every target kind: a per-patch target map, gathered at the masked regions."""

    kind: str

    def dim(self, embed_dim: int, patch_size: int, in_chans: int = 3) -> int:
        """Length T of one patch's target vector."""
        raise NotImplementedError

    def teacher_depth(self) -> int:
        """Deepest teacher block the kind reads (0: needs no teacher)."""
        return 0

    def check(self, depth: int) -> None:
        """Raise ``ValueError`` (one line, naming the field) if the kind does not fit the model."""

    def resolve(self, depth: int) -> TargetKind:
        """A copy with the depth-dependent defaults filled in for a ``depth``-block model."""
        return self

    def maps(self, images: torch.Tensor, teacher: ViTEncoder | None, patch_size: int) -> torch.Tensor:
        """images (B, C, H, W) -> per-patch targets (B, N, T) float32 for every patch."""
        raise NotImplementedError

    @torch.no_grad()
    def compute(
        self, images: torch.Tensor, pred_idx: torch.Tensor, teacher: ViTEncoder | None, patch_size: int
    ) -> torch.Tensor:
        """images (B, C, H, W), pred_idx (B * M, K, P) -> targets (B * M, K, P, T) float32, no grad.

        The teacher runs once per image; with M mask repetitions (``mask_repeats``) each image's
        target map serves its M rows of masks (data2vec 2.0's multi-mask training).
        """
        m = self.maps(images, teacher, patch_size)
        reps = pred_idx.shape[0] // m.shape[0]
        return gather_regions(m.repeat_interleave(reps, 0) if reps > 1 else m, pred_idx)


@TARGETS.register
class LatentTargets(TargetKind):
    """Streams of the EMA teacher, 1-indexed blocks: outputs (``blocks``), post-attention streams
    (``mid_blocks``), attention and MLP residual-branch terms (``attn_branch``, ``mlp_branch``;
    section 6.1), in that order.

    ``norm`` standardises each stream: ``token`` z-scores every token (Bootleg), ``final`` applies
    the encoder's final norm first (I-JEPA's code: LayerNorm of the encoder's output),
    ``instance`` standardises each channel over the image's patches (data2vec 2.0). Streams are
    concatenated (``merge: concat``) or averaged (``mean``); ``post_norm`` z-scores the merged
    target per token (data2vec 2.0: instance norm -> average -> layer norm).
    """

    kind: Literal["latent"] = "latent"
    blocks: list[int] | None = (
        None  # None: every 4th block of the model (1, 4, 8, ...), or none if other streams are set
    )
    mid_blocks: list[int] = []
    attn_branch: list[int] = []
    mlp_branch: list[int] = []
    merge: Literal["concat", "mean"] = "concat"
    norm: Literal["token", "final", "instance"] = "token"
    post_norm: bool = False

    def streams(self) -> int:
        return len(self.blocks or ()) + len(self.mid_blocks) + len(self.attn_branch) + len(self.mlp_branch)

    def resolve(self, depth: int) -> LatentTargets:
        if self.blocks is not None:
            return self
        others = self.mid_blocks or self.attn_branch or self.mlp_branch
        return self.model_copy(update={"blocks": [] if others else every_fourth_block(depth)})

    def dim(self, embed_dim: int, patch_size: int, in_chans: int = 3) -> int:
        return embed_dim * (self.streams() if self.merge == "concat" else 1)

    def teacher_depth(self) -> int:
        return max([*(self.blocks or ()), *self.mid_blocks, *self.attn_branch, *self.mlp_branch], default=0)

    def check(self, depth: int) -> None:
        if not self.streams():
            raise ValueError("targets.blocks: empty; expected at least one teacher block (1-indexed)")
        for name in ("blocks", "mid_blocks", "attn_branch", "mlp_branch"):
            bad = [b for b in getattr(self, name) or () if not 1 <= b <= depth]
            if bad:
                raise ValueError(f"targets.{name}: {bad} out of range; expected blocks in 1..{depth} (model.depth)")

    @torch.no_grad()
    def maps(self, images: torch.Tensor, teacher: ViTEncoder | None, patch_size: int) -> torch.Tensor:
        """The teacher sees the whole image and stops after the deepest requested block."""
        assert teacher is not None, "latent targets need the EMA teacher"
        _, inter = teacher.forward_intermediates(
            images,
            self.blocks or (),
            self.mid_blocks,
            norm=self.norm == "final",
            stop_early=True,
            attn_indices=self.attn_branch,
            mlp_indices=self.mlp_branch,
        )
        patches = [split_prefix(h, teacher.num_prefix_tokens)[1] for h in inter]
        feats = [instance_norm(h) if self.norm == "instance" else zscore(h) for h in patches]
        out = torch.stack(feats).mean(0) if self.merge == "mean" else torch.cat(feats, dim=-1)
        return zscore(out) if self.post_norm else out


@TARGETS.register
class PixelTargets(TargetKind):
    """MAE: pixels of the masked patches, normalised per patch (``norm_pix``)."""

    kind: Literal["pixels"] = "pixels"
    norm_pix: bool = True

    def dim(self, embed_dim: int, patch_size: int, in_chans: int = 3) -> int:
        return patch_size**2 * in_chans

    @torch.no_grad()
    def maps(self, images: torch.Tensor, teacher: ViTEncoder | None, patch_size: int) -> torch.Tensor:
        t = patchify(images.float(), patch_size)
        return zscore(t) if self.norm_pix else t


@TARGETS.register
class PixelLatentTargets(LatentTargets):
    """Pixels and teacher streams together (Figure 2, green line): ``[pixels, latent]`` per patch."""

    kind: Literal["pixels_latent"] = "pixels_latent"  # type: ignore[assignment]
    norm_pix: bool = True

    def dim(self, embed_dim: int, patch_size: int, in_chans: int = 3) -> int:
        return patch_size**2 * in_chans + super().dim(embed_dim, patch_size, in_chans)

    @torch.no_grad()
    def maps(self, images: torch.Tensor, teacher: ViTEncoder | None, patch_size: int) -> torch.Tensor:
        pix = PixelTargets(norm_pix=self.norm_pix).maps(images, None, patch_size)
        return torch.cat([pix, super().maps(images, teacher, patch_size)], dim=-1)
