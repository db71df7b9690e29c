"""Collapse monitors and a cheap FLOP count (nanoGPT's ``estimate_mfu`` style)."""

from __future__ import annotations

import torch

from bootleg.config import Config
from bootleg.models import ViTEncoder, split_prefix
from bootleg.models.encoder import vit_flops


@torch.no_grad()
def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023): exp(entropy of the normalised singular values).

    z (N, D) embeddings -> effective rank in [1, min(N, D)].
    """
    s = torch.linalg.svdvals(z.float())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def collapse_monitors(
    encoder: ViTEncoder, images: torch.Tensor, pred: torch.Tensor, target: torch.Tensor
) -> dict[str, float]:
    """Prediction / target std over tokens (mean over channels), and RankMe of the exported
    encoder's (teacher's, or the student's for MAE) mean-patch embeddings of this batch."""
    _, patches = split_prefix(encoder(images), encoder.num_prefix_tokens)
    z = patches.float().mean(1)
    return {
        "pred_std": float(pred.float().flatten(0, -2).std(0).mean()),
        "target_std": float(target.float().flatten(0, -2).std(0).mean()),
        "rankme": rankme(z),
    }


def step_flops(cfg: Config, enc_len: int, k: int, p: int, batch: int) -> float:
    """FLOPs of one training step on ``batch`` images: student and predictor forward +
    backward (x3), teacher forward up to its deepest target block (x1)."""
    m = cfg.model
    prefix = int(m.cls_token) + m.reg_tokens
    n = (m.img_size // m.patch_size) ** 2
    s_seq = prefix + enc_len
    student = vit_flops(batch * s_seq, m.embed_dim, m.depth, s_seq, m.mlp_ratio)
    predictor = batch * m.predictor.flops_per_image(enc_len, k, p, int(m.cls_token), cfg.target_dim(), m.mlp_ratio)
    depth = cfg.targets.teacher_depth()
    teacher = vit_flops(batch * (prefix + n), m.embed_dim, depth, prefix + n, m.mlp_ratio) if depth else 0.0
    return 3 * (student + predictor) + teacher


#: dense bf16 peak FLOP/s by device name fragment
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
