"""ViT encoder that runs only the patches it is given.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed``, ``cls_token``,
``reg_token``, ``pos_embed``, ``blocks.i``, ``norm``) so a trained encoder loads into
``timm.create_model(**encoder.timm_kwargs())`` unchanged (see ``bootleg.export``).
Token order is ``[CLS, registers, patches]``; only patches carry position embeddings
(timm's ``no_embed_class=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from bootleg.models.pos_embed import sincos_2d


def split_prefix(x: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, prefix + N, D) in order [CLS, registers, patches] -> (prefix (B, prefix, D), patches (B, N, D))."""
    return x[:, :num_prefix], x[:, num_prefix:]


def block_forward(
    blk: Block, x: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One timm block, also returning the mid-block (post-attention) residual stream.

    x: (B, T, D) -> (out (B, T, D), mid (B, T, D))
    """
    a = blk.attn(blk.norm1(x), attn_mask=attn_mask) if attn_mask is not None else blk.attn(blk.norm1(x))
    mid = x + blk.drop_path1(blk.ls1(a))
    return mid + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(mid)))), mid


class ViTEncoder(nn.Module):
    """ViT with fixed 2D sin-cos position embeddings, 1 CLS and ``reg_tokens`` registers."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        cls_token: bool = True,
        reg_tokens: int = 4,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depth, self.num_heads, self.mlp_ratio = (
            embed_dim,
            depth,
            num_heads,
            mlp_ratio,
        )
        self.num_reg = reg_tokens
        self.has_cls = cls_token
        self.num_prefix_tokens = int(cls_token) + reg_tokens
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid: tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        self.num_patches = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.register_buffer("pos_embed", sincos_2d(embed_dim, self.grid).unsqueeze(0), persistent=True)
        dpr = [x.item() for x in torch.linspace(0, drop_path, depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE/I-JEPA init: xavier-uniform linears (patch embed as a linear), small tokens."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for tok in (self.cls_token, self.reg_token):
            if tok is not None:
                nn.init.normal_(tok, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def embed(self, images: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, C, H, W), idx (B, L) visible patch indices or None (all N).

        Returns tokens (B, prefix + L, D) in order [CLS, registers, patches].
        """
        x = self.patch_embed(images) + self.pos_embed.to(images.dtype)  # (B, N, D)
        if idx is not None:
            x = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        return torch.cat([*prefix, x], dim=1) if prefix else x

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: Sequence[int] = (),
        mid_indices: Sequence[int] = (),
        idx: torch.Tensor | None = None,
        norm: bool = False,
        stop_early: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """timm's ``forward_intermediates`` vocabulary, with 1-indexed blocks as in the paper.

        images (B, C, H, W); idx (B, L) visible patch indices or None (all N patches).
        ``indices`` / ``mid_indices``: blocks whose output / post-attention stream is returned
        (raw, or through the final norm with ``norm=True``), in the order ``indices`` then
        ``mid_indices``. ``stop_early`` stops after the deepest requested block and returns
        ``None`` as the final output. ``attn_mask`` (B, 1, T, T) bool, True = may attend.

        Returns (final tokens (B, prefix + L, D) after the norm, or None; intermediates, each
        (B, prefix + L, D)).
        """
        x = self.embed(images, idx)
        want_out, want_mid = set(indices), set(mid_indices)
        last = max([*indices, *mid_indices], default=0) if stop_early else self.depth
        outs: dict[int, torch.Tensor] = {}
        mids: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[:last], start=1):
            if i in want_mid:
                x, mids[i] = block_forward(blk, x, attn_mask)
            else:
                x = blk(x, attn_mask=attn_mask) if attn_mask is not None else blk(x)
            if i in want_out:
                outs[i] = x
        inter = [outs[b] for b in indices] + [mids[b] for b in mid_indices]
        if norm:
            inter = [self.norm(h) for h in inter]
        return (None if stop_early else self.norm(x)), inter

    def forward(
        self, images: torch.Tensor, idx: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images (B, C, H, W), idx (B, L) or None -> tokens (B, prefix + L, D) after the final norm."""
        out, _ = self.forward_intermediates(images, idx=idx, attn_mask=attn_mask)
        assert out is not None
        return out

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Frozen-probe view of the full image.

        Returns ``cls`` (B, D) or None, ``reg`` (B, R, D) or None, ``patch`` (B, N, D),
        ``tokens`` (B, prefix + N, D) — all after the final norm.
        """
        out = self.forward(images)
        prefix, patch = split_prefix(out, self.num_prefix_tokens)
        c, r = int(self.has_cls), self.num_reg
        return {
            "cls": prefix[:, 0] if c else None,
            "reg": prefix[:, c : c + r] if r else None,
            "patch": patch,
            "tokens": out,
        }

    def arch(self) -> dict[str, object]:
        """Constructor arguments (saved with the weights)."""
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "cls_token": self.has_cls,
            "reg_tokens": self.num_reg,
        }

    def timm_kwargs(self) -> dict[str, object]:
        """Arguments for ``timm.create_model`` that build the same network."""
        a = self.arch()
        return {
            "model_name": "vit_base_patch16_224",
            "pretrained": False,
            "num_classes": 0,
            "img_size": a["img_size"],
            "patch_size": a["patch_size"],
            "in_chans": a["in_chans"],
            "embed_dim": a["embed_dim"],
            "depth": a["depth"],
            "num_heads": a["num_heads"],
            "mlp_ratio": a["mlp_ratio"],
            "class_token": a["cls_token"],
            "reg_tokens": a["reg_tokens"],
            "no_embed_class": True,
            "global_pool": "token" if a["cls_token"] else "avg",
        }
