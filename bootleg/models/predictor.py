"""Predictors: from the student's context tokens to predictions at the masked regions.

Each predictor is a registered config class (``model.predictor.kind``) whose ``build`` returns
the module; every module maps ``(ctx (B, C + L, D), enc_idx (B, L), pred_idx (B, K, P))`` to
predictions ``(B, K, P, T)``. Add a predictor: one class registered in :data:`PREDICTORS`.

* ``vit``: the K mask regions of an image are processed in parallel, each with its own copy
  of the context, so regions never attend to each other (Sec. 4).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from bootleg.models.encoder import ijepa_init_, key_mask, vit_flops, xavier_init_
from bootleg.models.pos_embed import sincos_2d
from bootleg.registry import Registry
from bootleg.schema import Strict

PREDICTORS: Registry = Registry("model.predictor", "kind")


class PredictorConfig(Strict):
    """Base of every predictor's settings."""

    kind: str

    def build(
        self,
        grid: tuple[int, int],
        enc_dim: int,
        out_dim: int,
        num_ctx_prefix: int,
        mlp_ratio: float,
        init: str = "xavier",
    ) -> nn.Module:
        """The module: ``(ctx (B, C + L, enc_dim), enc_idx (B, L), pred_idx (B, K, P), enc_valid
        (B, L) | None, pred_valid (B, K, P) | None) -> (B, K, P, out_dim)``."""
        raise NotImplementedError

    def flops_per_image(
        self, enc_len: int, k: int, p: int, num_ctx_prefix: int, out_dim: int, mlp_ratio: float
    ) -> float:
        """Forward FLOPs of one image (for MFU)."""
        return 0.0

    def check(self) -> None:
        """Raise ``ValueError`` (one line naming the field) on impossible settings."""


class AttentionPredictorConfig(PredictorConfig):
    """Settings shared by the transformer predictors: depth, width and heads."""

    depth: int = Field(6, ge=1)
    embed_dim: int = Field(96, ge=8)
    num_heads: int = Field(4, ge=1)

    def check(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"model.predictor.embed_dim: {self.embed_dim} is not divisible by "
                f"model.predictor.num_heads {self.num_heads}"
            )


@PREDICTORS.register
class ViTPredictorConfig(AttentionPredictorConfig):
    kind: Literal["vit"] = "vit"
    reg_tokens: int = Field(4, ge=0)

    def build(
        self,
        grid: tuple[int, int],
        enc_dim: int,
        out_dim: int,
        num_ctx_prefix: int,
        mlp_ratio: float,
        init: str = "xavier",
    ) -> nn.Module:
        return ViTPredictor(
            grid=grid,
            enc_dim=enc_dim,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            out_dim=out_dim,
            reg_tokens=self.reg_tokens,
            num_ctx_prefix=num_ctx_prefix,
            mlp_ratio=mlp_ratio,
            init=init,
        )

    def flops_per_image(
        self, enc_len: int, k: int, p: int, num_ctx_prefix: int, out_dim: int, mlp_ratio: float
    ) -> float:
        seq = self.reg_tokens + num_ctx_prefix + enc_len + p
        return k * vit_flops(seq, self.embed_dim, self.depth, seq, mlp_ratio) + 2 * k * p * self.embed_dim * out_dim


class ViTPredictor(nn.Module):
    """Context tokens + mask tokens -> one linear projection to the full target length.

    Token order per region: [predictor registers, context (CLS?, visible patches), mask
    tokens]. Frozen sin-cos position embeddings are added to visible and mask tokens.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        enc_dim: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        out_dim: int,
        reg_tokens: int = 4,
        num_ctx_prefix: int = 1,
        mlp_ratio: float = 4.0,
        init: str = "xavier",
    ) -> None:
        super().__init__()
        self.grid, self.num_ctx_prefix, self.num_reg = grid, num_ctx_prefix, reg_tokens
        self.embed = nn.Linear(enc_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        self.register_buffer("pos_embed", sincos_2d(embed_dim, grid), persistent=False)  # (N, d)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Linear(embed_dim, out_dim)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "xavier") -> None:
        for tok in (self.mask_token, self.reg_token):
            if tok is not None:
                nn.init.normal_(tok, std=0.02)
        if init == "ijepa":
            ijepa_init_(self, self.blocks)
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
        """ctx (B, C + L, enc_dim): encoder output with ``C = num_ctx_prefix`` leading global
        tokens (CLS) and L visible patches; enc_idx (B, L); pred_idx (B, K, P); ``enc_valid``
        (B, L) / ``pred_valid`` (B, K, P) mark real (not padded) positions: padded ones are
        never attended to.

        Returns predictions (B, K, P, out_dim).
        """
        b, k, p = pred_idx.shape
        c = self.num_ctx_prefix
        x = self.embed(ctx)
        pos = self.pos_embed.to(x.dtype)
        x = torch.cat([x[:, :c], x[:, c:] + pos[enc_idx]], dim=1)  # (B, C+L, d)
        m = self.mask_token.to(x.dtype) + pos[pred_idx]  # (B, K, P, d)
        x = x.unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b * k, x.shape[1], x.shape[2])
        parts = [x, m.reshape(b * k, p, -1)]
        if self.reg_token is not None:
            parts.insert(0, self.reg_token.to(x.dtype).expand(b * k, -1, -1))
        x = torch.cat(parts, dim=1)
        mask = None
        if enc_valid is not None or pred_valid is not None:
            ones = torch.ones(b, self.num_reg + c, dtype=torch.bool, device=x.device)
            ev = enc_valid if enc_valid is not None else torch.ones_like(enc_idx, dtype=torch.bool)
            pv = pred_valid if pred_valid is not None else torch.ones_like(pred_idx, dtype=torch.bool)
            keys = torch.cat([ones, ev], 1).unsqueeze(1).expand(b, k, -1).reshape(b * k, -1)
            mask = key_mask(torch.cat([keys, pv.reshape(b * k, p)], 1))
        for blk in self.blocks:
            x = blk(x, attn_mask=mask) if mask is not None else blk(x)
        out = self.proj(self.norm(x[:, -p:]))
        return out.reshape(b, k, p, -1)
