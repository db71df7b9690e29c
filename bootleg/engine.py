"""One engine for every method: student encoder + predictor, optional EMA teacher.

Bootleg, I-JEPA, MAE and data2vec differ only by configuration: the mask sampler, the
targets (which teacher blocks, concat or mean, or pixels), the loss and the predictor.

    images (B, 3, S, S) ─┬─ student(visible enc_idx (B, L)) ─ predictor(pred_idx (B, K, P)) ─ pred (B, K, P, T)
                         └─ teacher(all patches), blocks b1..bn, z-scored, gathered ─────── target (B, K, P, T)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bootleg.config import Config
from bootleg.losses import compute_loss
from bootleg.models import ViTEncoder, ViTPredictor
from bootleg.targets import latent_targets, pixel_targets


class OnlineModel(nn.Module):
    """The trained part (what DDP wraps): student encoder and predictor."""

    def __init__(self, student: ViTEncoder, predictor: ViTPredictor) -> None:
        super().__init__()
        self.student, self.predictor = student, predictor

    def forward(self, images: torch.Tensor, enc_idx: torch.Tensor, pred_idx: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W), enc_idx (B, L), pred_idx (B, K, P) -> predictions (B, K, P, T).

        The encoder's register outputs are discarded; CLS (if any) and patches go on.
        """
        out, _ = self.student(images, enc_idx)
        c, r = int(self.student.has_cls), self.student.num_reg
        ctx = torch.cat([out[:, :c], out[:, c + r :]], dim=1) if r else out
        return self.predictor(ctx, enc_idx, pred_idx)


class Engine(nn.Module):
    """Holds every network of a method and computes its targets and loss."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, p = cfg.model, cfg.model.predictor
        self.cfg = cfg
        student = ViTEncoder(
            img_size=m.img_size,
            patch_size=m.patch_size,
            embed_dim=m.embed_dim,
            depth=m.depth,
            num_heads=m.num_heads,
            mlp_ratio=m.mlp_ratio,
            cls_token=m.cls_token,
            reg_tokens=m.reg_tokens,
            drop_path=m.drop_path,
        )
        predictor = ViTPredictor(
            grid=student.grid,
            enc_dim=m.embed_dim,
            embed_dim=p.embed_dim,
            depth=p.depth,
            num_heads=p.num_heads,
            out_dim=cfg.target_dim(),
            reg_tokens=p.reg_tokens,
            num_ctx_prefix=int(m.cls_token),
            mlp_ratio=m.mlp_ratio,
        )
        self.online = OnlineModel(student, predictor)
        self.teacher: ViTEncoder | None = None
        if cfg.targets.kind == "latent":
            self.teacher = copy.deepcopy(student)
            self.teacher.requires_grad_(False)

    @property
    def student(self) -> ViTEncoder:
        return self.online.student

    def targets(self, images: torch.Tensor, pred_idx: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W), pred_idx (B, K, P) -> targets (B, K, P, T) float32, no grad."""
        t = self.cfg.targets
        if t.kind == "pixels":
            return pixel_targets(images, pred_idx, self.cfg.model.patch_size, t.norm_pix)
        assert self.teacher is not None
        return latent_targets(self.teacher, images, pred_idx, t.blocks, t.mid_blocks, t.merge)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, want_value: bool = True) -> torch.Tensor:
        return compute_loss(self.cfg.loss.name, pred, target, want_value, self.cfg.loss.beta)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student (fused foreach lerp)."""
        if self.teacher is None:
            return
        t = list(self.teacher.parameters())
        s = list(self.student.parameters())
        torch._foreach_lerp_(t, s, 1.0 - momentum)

    def export_encoder(self) -> ViTEncoder:
        """The encoder handed to downstream work: the EMA teacher, or the student (MAE)."""
        return self.teacher if self.teacher is not None else self.student

    def param_groups(
        self,
    ) -> list[dict]:
        """AdamW groups: no weight decay on biases and norm weights (1-D params)."""
        decay, no_decay = [], []
        for name, prm in self.online.named_parameters():
            if not prm.requires_grad:
                continue
            (no_decay if prm.ndim <= 1 or name.endswith(".bias") else decay).append(prm)
        return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]
