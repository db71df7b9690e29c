"""ViT encoder that runs only the patches it is given.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed``, ``cls_token``,
``reg_token``, ``pos_embed``, ``blocks.i``, ``norm``) so a trained encoder loads into
``timm.create_model(**encoder.timm_kwargs())`` unchanged (see ``bootleg.export``).
Token order is ``[CLS, registers, patches]``; only patches carry position embeddings
(timm's ``no_embed_class=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from bootleg.models.pos_embed import sincos_2d


def split_prefix(x: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, prefix + N, D) in order [CLS, registers, patches] -> (prefix (B, prefix, D), patches (B, N, D))."""
    return x[:, :num_prefix], x[:, num_prefix:]


#: the streams a block can hand out: its output, the post-attention residual stream (``mid``),
#: and the two residual-branch terms added to the stream (``attn``: attention, ``mlp``: MLP)
STREAMS = ("out", "mid", "attn", "mlp")


def block_forward(blk: Block, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One timm block, handing out every stream of :data:`STREAMS`.

    x: (B, T, D) -> {"out", "mid", "attn", "mlp"}, each (B, T, D); ``out = mid + mlp``,
    ``mid = x + attn`` (drop path and layer scale included in the branch terms).
    """
    a = blk.attn(blk.norm1(x), attn_mask=attn_mask) if attn_mask is not None else blk.attn(blk.norm1(x))
    attn = blk.drop_path1(blk.ls1(a))
    mid = x + attn
    mlp = blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(mid))))
    return {"out": mid + mlp, "mid": mid, "attn": attn, "mlp": mlp}


def key_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, S) bool, True = a real token -> SDPA mask (B, 1, 1, S): no query attends to padding."""
    return valid[:, None, None, :]


def vit_flops(tokens: float, dim: int, depth: int, seq: float, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of ``depth`` ViT blocks on ``tokens`` tokens in sequences of ``seq``:
    2 FLOPs per weight per token (qkv + proj + MLP) plus QK^T and AV (nanoGPT's count)."""
    weights = (4 + 2 * mlp_ratio) * dim * dim
    return depth * tokens * (2 * weights + 4 * seq * dim)


def xavier_init_(module: nn.Module) -> None:
    """MAE's initialisation of every linear layer below ``module``: xavier-uniform, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def ijepa_init_(module: nn.Module, depth_blocks: nn.ModuleList, std: float = 0.02) -> None:
    """I-JEPA's initialisation: truncated normal (std 0.02) for linear and conv weights, zero
    biases, unit LayerNorms, then each block's output projections (attention ``proj`` and MLP
    ``fc2``) divided by sqrt(2 * layer) (I-JEPA's ``fix_init_weight``, layers 1-indexed)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer, blk in enumerate(depth_blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


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
        init: str = "xavier",
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
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "xavier") -> None:
        """``xavier`` (MAE): xavier-uniform linears (patch embed as a linear), small tokens.
        ``ijepa``: I-JEPA's truncated normal with per-layer rescaling (:func:`ijepa_init_`)."""
        if init == "ijepa":
            for tok in (self.cls_token, self.reg_token):
                if tok is not None:
                    nn.init.trunc_normal_(tok, std=0.02)
            ijepa_init_(self, self.blocks)
            return
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for tok in (self.cls_token, self.reg_token):
            if tok is not None:
                nn.init.normal_(tok, std=0.02)
        xavier_init_(self.blocks)

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
        attn_indices: Sequence[int] = (),
        mlp_indices: Sequence[int] = (),
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """timm's ``forward_intermediates`` vocabulary, with 1-indexed blocks as in the paper.

        images (B, C, H, W); idx (B, L) visible patch indices or None (all N patches).
        ``indices``: blocks whose output is returned; ``mid_indices``: blocks whose
        post-attention stream is returned; ``attn_indices`` / ``mlp_indices``: blocks whose
        attention / MLP residual-branch term is returned. Intermediates come in that order,
        raw, or through the final norm with ``norm=True``. ``stop_early`` stops after the
        deepest requested block and returns ``None`` as the final output. ``attn_mask``
        (B, 1, 1 or T, T) bool, True = may attend (padded tokens are masked out).

        Returns (final tokens (B, prefix + L, D) after the norm, or None; intermediates, each
        (B, prefix + L, D)).
        """
        x = self.embed(images, idx)
        wanted = {"out": indices, "mid": mid_indices, "attn": attn_indices, "mlp": mlp_indices}
        special = set(mid_indices) | set(attn_indices) | set(mlp_indices)
        last = max([b for v in wanted.values() for b in v], default=0) if stop_early else self.depth
        got: dict[tuple[str, int], torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[:last], start=1):
            if i in special:
                streams = block_forward(blk, x, attn_mask)
                x = streams["out"]
                got.update({(k, i): streams[k] for k in ("mid", "attn", "mlp")})
            else:
                x = blk(x, attn_mask=attn_mask) if attn_mask is not None else blk(x)
            got[("out", i)] = x
        inter = [got[(k, b)] for k, blocks in wanted.items() for b in blocks]
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
