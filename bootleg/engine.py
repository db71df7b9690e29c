"""One engine for every method: student encoder + predictor, optional EMA teacher.

Bootleg, I-JEPA, MAE and data2vec differ only by configuration: the mask sampler, the target
kind (which teacher blocks, concat or mean, or pixels), the predictor and the loss. The whole
training step of every method is :meth:`Engine.forward`:

    images (B, 3, S, S) ─┬─ student(visible enc_idx (B, L)) ─ predictor(pred_idx (B, K, P)) ─ pred   (B, K, P, T)
                         └─ teacher(all patches): blocks b1..bn, z-scored, gathered at pred_idx ─ target (B, K, P, T)
    loss(pred, target)
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.profiler import record_function

from bootleg.config import Config
from bootleg.masking import Masks
from bootleg.models import ViTEncoder, split_prefix
from bootleg.models.encoder import key_mask


class OnlineModel(nn.Module):
    """The trained networks: student encoder and predictor (the optimiser's parameters)."""

    def __init__(self, student: ViTEncoder, predictor: nn.Module) -> None:
        super().__init__()
        self.student, self.predictor = student, predictor


class Engine(nn.Module):
    """Every network of a method, and its training step (:meth:`forward`).

    Attributes:
        online: student + predictor (trained).
        teacher: EMA copy of the student (no gradient, always in eval mode), or ``None`` for
            methods whose targets need no teacher (MAE).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.target_kind, self.loss_fn = cfg.targets, cfg.loss
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
            init=m.init,
        )
        predictor = m.predictor.build(
            grid=student.grid,
            enc_dim=m.embed_dim,
            out_dim=cfg.target_dim(),
            num_ctx_prefix=int(m.cls_token),
            mlp_ratio=m.mlp_ratio,
            init=m.init,
        )
        self.online = OnlineModel(student, predictor)
        self.teacher: ViTEncoder | None = None
        if cfg.targets.teacher_depth() > 0 or m.ema_encoder:
            self.teacher = copy.deepcopy(student).requires_grad_(False).eval()

    @property
    def student(self) -> ViTEncoder:
        return self.online.student

    def train(self, mode: bool = True) -> Engine:
        """The teacher never runs stochastic depth or dropout: it stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(
        self, images: torch.Tensor, masks: Masks, want_value: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training step's forward pass.

        Args:
            images: (B, C, H, W) normalised images.
            masks: ``enc_idx`` (B * M, L) patches the student sees; ``pred_idx`` (B * M, K, P)
                patches of the K target regions; M = ``mask_repeats`` masks per image (1 but for
                data2vec 2.0). Optional ``enc_valid`` (B * M, L) and ``pred_valid``
                (B * M, K, P) flag padding (mask groups of several sizes, shape buckets): padded
                tokens are never attended to and padded targets do not count in the loss.
            want_value: compute the loss's value (only the no-forward MSE may skip it).

        Returns:
            loss: () float32 scalar.
            pred: (B * M, K, P, T) the predictor's output.
            target: (B * M, K, P, T) float32, no gradient.
        """
        enc_valid, pred_valid = masks.enc_valid, masks.pred_valid
        with torch.no_grad(), record_function("bootleg.teacher"):
            # (B * M, K, P, T): teacher streams (or pixels) at the masked regions, one teacher pass per image
            target = self.target_kind.compute(images, masks.pred_idx, self.teacher, self.cfg.model.patch_size)
        with record_function("bootleg.student"):
            reps = masks.enc_idx.shape[0] // images.shape[0]
            x = images.repeat_interleave(reps, 0) if reps > 1 else images  # (B * M, C, H, W)
            attn = None
            if enc_valid is not None:  # prefix tokens are always real
                prefix_ok = enc_valid.new_ones(enc_valid.shape[0], self.student.num_prefix_tokens)
                attn = key_mask(torch.cat([prefix_ok, enc_valid], 1))
            tokens = self.student(x, masks.enc_idx, attn)  # (B * M, cls + reg + L, D)
            prefix, patches = split_prefix(tokens, self.student.num_prefix_tokens)
            # (B * M, cls + L, D): the registers are dropped, CLS (if any) goes on
            ctx = torch.cat([prefix[:, : int(self.student.has_cls)], patches], dim=1)
        with record_function("bootleg.predictor"):
            pred = self.online.predictor(ctx, masks.enc_idx, masks.pred_idx, enc_valid, pred_valid)  # (B * M, K, P, T)
        with record_function("bootleg.loss"):
            loss = self.loss_fn(pred, target, want_value, pred_valid)
        return loss, pred, target

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

    def param_groups(self) -> list[dict]:
        """AdamW groups: no weight decay on biases and norm weights (1-D params)."""
        decay, no_decay = [], []
        for name, prm in self.online.named_parameters():
            if not prm.requires_grad:
                continue
            (no_decay if prm.ndim <= 1 or name.endswith(".bias") else decay).append(prm)
        return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]
