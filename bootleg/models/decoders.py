"""Other predictors of the paper's comparisons (section 6.2, Tables 3 and 5).

* ``cross``: CrossMAE's decoder: mask tokens cross-attend to the encoder's tokens and never to
  each other, so the K regions' mask tokens are simply concatenated (not deduplicated: the
  paper's footnote, overlapping regions weigh their patches more).
* ``conv``: data2vec 2.0's light convolutional decoder: the visible tokens and learned mask
  tokens are laid out on the patch grid and refined by residual blocks of grouped 2D
  convolution, LayerNorm and GELU; predictions are read at the masked regions.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from timm.layers import Mlp
from torch import nn

from bootleg.models.encoder import ijepa_init_, xavier_init_
from bootleg.models.pos_embed import sincos_2d
from bootleg.models.predictor import PREDICTORS, AttentionPredictorConfig, PredictorConfig


class CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries: mask tokens; keys/values: context) + MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_q, self.norm_kv, self.norm2 = (
            nn.LayerNorm(dim, eps=1e-6),
            nn.LayerNorm(dim, eps=1e-6),
            nn.LayerNorm(dim, eps=1e-6),
        )
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Q, d) queries, ctx (B, S, d), ctx_valid (B, S) bool or None -> (B, Q, d)."""
        b, q, d = x.shape
        h = self.num_heads
        query = self.q(self.norm_q(x)).reshape(b, q, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(ctx)).reshape(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if ctx_valid is None else ctx_valid[:, None, None, :]
        a = F.scaled_dot_product_attention(query, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, q, d))
        return x + self.mlp(self.norm2(x))


class CrossPredictor(nn.Module):
    """CrossMAE decoder: (ctx, enc_idx, pred_idx) -> (B, K, P, out_dim); regions are independent."""

    def __init__(
        self,
        grid: tuple[int, int],
        enc_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        out_dim: int,
        num_ctx_prefix: int,
        mlp_ratio: float,
        init: str = "xavier",
    ) -> None:
        super().__init__()
        self.num_ctx_prefix = num_ctx_prefix
        self.embed = nn.Linear(enc_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_2d(embed_dim, grid), persistent=False)
        self.blocks = nn.ModuleList(CrossBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Linear(embed_dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        if init == "ijepa":
            ijepa_init_(self, nn.ModuleList())
        else:
            xavier_init_(self)

    def forward(
        self,
        ctx: torch.Tensor,
        enc_idx: torch.Tensor,
        pred_idx: torch.Tensor,
        enc_valid: torch.Tensor | None = None,
        pred_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, k, p = pred_idx.shape
        c = self.num_ctx_prefix
        x = self.embed(ctx)
        pos = self.pos_embed.to(x.dtype)
        ctx = torch.cat([x[:, :c], x[:, c:] + pos[enc_idx]], dim=1)  # (B, C + L, d)
        valid = None
        if enc_valid is not None:
            valid = torch.cat([torch.ones(b, c, dtype=torch.bool, device=x.device), enc_valid], 1)
        q = (self.mask_token.to(x.dtype) + pos[pred_idx]).reshape(b, k * p, -1)  # all regions' mask tokens
        for blk in self.blocks:
            q = blk(q, ctx, valid)
        return self.proj(self.norm(q)).reshape(b, k, p, -1)


@PREDICTORS.register
class CrossPredictorConfig(AttentionPredictorConfig):
    kind: Literal["cross"] = "cross"
    depth: int = Field(8, ge=1)
    embed_dim: int = Field(256, ge=8)
    num_heads: int = Field(8, ge=1)

    def build(
        self,
        grid: tuple[int, int],
        enc_dim: int,
        out_dim: int,
        num_ctx_prefix: int,
        mlp_ratio: float,
        init: str = "xavier",
    ) -> nn.Module:
        return CrossPredictor(
            grid, enc_dim, self.embed_dim, self.depth, self.num_heads, out_dim, num_ctx_prefix, mlp_ratio, init
        )

    def flops_per_image(
        self, enc_len: int, k: int, p: int, num_ctx_prefix: int, out_dim: int, mlp_ratio: float
    ) -> float:
        q, s, d = k * p, num_ctx_prefix + enc_len, self.embed_dim
        per_block = 2 * q * d * d * (2 + 2 * mlp_ratio) + 2 * s * 2 * d * d + 4 * q * s * d
        return self.depth * per_block + 2 * q * d * out_dim


class ConvPredictor(nn.Module):
    """data2vec 2.0's decoder: residual blocks of [grouped conv k x k, LayerNorm, GELU] on the grid."""

    def __init__(
        self,
        grid: tuple[int, int],
        enc_dim: int,
        embed_dim: int,
        depth: int,
        kernel: int,
        groups: int,
        out_dim: int,
        num_ctx_prefix: int,
    ) -> None:
        super().__init__()
        self.grid, self.num_ctx_prefix = grid, num_ctx_prefix
        self.embed = nn.Linear(enc_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        self.convs = nn.ModuleList(
            nn.Conv2d(embed_dim, embed_dim, kernel, padding=kernel // 2, groups=groups) for _ in range(depth)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(depth))
        self.proj = nn.Linear(embed_dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        xavier_init_(self)

    def forward(
        self,
        ctx: torch.Tensor,
        enc_idx: torch.Tensor,
        pred_idx: torch.Tensor,
        enc_valid: torch.Tensor | None = None,
        pred_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, k, p = pred_idx.shape
        h, w = self.grid
        x = self.embed(ctx[:, self.num_ctx_prefix :])  # (B, L, d): the visible patches
        if enc_valid is not None:
            x = x * enc_valid[..., None].to(x.dtype)
        d = x.shape[-1]
        grid = self.mask_token.to(x.dtype).expand(b, h * w, d).clone()
        grid.scatter_(1, enc_idx[..., None].expand(-1, -1, d), x)  # visible tokens on their patches
        y = grid.transpose(1, 2).reshape(b, d, h, w)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            z = conv(y)
            z = F.gelu(norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
            y = y + z
        out = self.proj(y.flatten(2).transpose(1, 2))  # (B, N, T)
        return torch.gather(out, 1, pred_idx.reshape(b, k * p, 1).expand(-1, -1, out.shape[-1])).reshape(b, k, p, -1)


@PREDICTORS.register
class ConvPredictorConfig(PredictorConfig):
    """data2vec 2.0's image decoder settings (its released image config: 768 channels, kernel 3,
    16 groups; the depth and width scale with the encoder here)."""

    kind: Literal["conv"] = "conv"
    depth: int = Field(6, ge=1)
    embed_dim: int = Field(768, ge=8)
    kernel: int = Field(3, ge=1)
    groups: int = Field(16, ge=1)

    def check(self) -> None:
        if self.embed_dim % self.groups:
            raise ValueError(
                f"model.predictor.embed_dim: {self.embed_dim} is not divisible by model.predictor.groups {self.groups}"
            )
        if self.kernel % 2 == 0:
            raise ValueError(f"model.predictor.kernel: {self.kernel}; expected an odd kernel size")

    def build(
        self,
        grid: tuple[int, int],
        enc_dim: int,
        out_dim: int,
        num_ctx_prefix: int,
        mlp_ratio: float,
        init: str = "xavier",
    ) -> nn.Module:
        return ConvPredictor(
            grid, enc_dim, self.embed_dim, self.depth, self.kernel, self.groups, out_dim, num_ctx_prefix
        )

    def flops_per_image(
        self, enc_len: int, k: int, p: int, num_ctx_prefix: int, out_dim: int, mlp_ratio: float
    ) -> float:
        return 0.0  # grid size is not known here; the conv decoder is a small share of the step


__all__ = ["ConvPredictor", "ConvPredictorConfig", "CrossPredictor", "CrossPredictorConfig"]
