"""Dense probes (paper Sec. 5.2), scored by mIoU on the frozen patch embeddings.

* ``seg_knn`` (CAPI-style): training patches' embeddings and pixel labels form the bank;
  every pixel of a test patch takes the majority label of its ``k`` nearest bank patches
  (:func:`bootleg.probe.knn.knn_segment`).
* ``seg_linear`` (Segmenter's linear decoder): a linear map from each patch embedding to
  class logits on the patch grid, bilinearly upsampled to pixels.
* ``seg_block``: one randomly initialised transformer block (the backbone's width and heads)
  over all output tokens, a layer norm, then the linear map on the patch tokens.

The trained heads are LR x WD sweeps trained together (:mod:`bootleg.probe.sweep`), chosen on
a validation split of the training images, scored on the test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bootleg.io import trunc_normal
from bootleg.probe.config import SweepConfig
from bootleg.probe.features import autocast_for
from bootleg.probe.knn import knn_segment
from bootleg.probe.sweep import fit, rows, select_best, sweep_entry, take_head


class SegLinearHeads(nn.Module):
    """``H`` linear decoders. forward: patch (B, P, D) -> logits (H, B, P, C)."""

    no_decay = {"bias"}

    def __init__(self, heads: int, dim: int, classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.heads = heads
        self.weight = nn.Parameter(trunc_normal((heads, dim, classes), 0.02, generator))
        self.bias = nn.Parameter(torch.zeros(heads, classes))

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bpd,hdc->hbpc", patch.float(), self.weight) + self.bias[:, None, None]


class SegBlockHeads(nn.Module):
    """``H`` heads of one pre-norm ViT block + layer norm + linear decoder, batched.

    forward: seq (B, T, D) all output tokens -> logits (H, B, P, C) of the last
    ``P = T - prefix`` (patch) tokens.
    """

    no_decay = {"n1_w", "n1_b", "qkv_b", "proj_b", "n2_w", "n2_b", "fc1_b", "fc2_b", "nf_w", "nf_b", "head_b"}

    def __init__(
        self,
        heads: int,
        dim: int,
        num_heads: int,
        classes: int,
        prefix: int,
        generator: torch.Generator,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        H, D, M = heads, dim, int(dim * mlp_ratio)
        self.heads, self.num_heads, self.prefix = heads, num_heads, prefix

        def w(*shape: int) -> nn.Parameter:
            return nn.Parameter(trunc_normal((H, *shape), 0.02, generator))

        def const(value: float, *shape: int) -> nn.Parameter:
            return nn.Parameter(torch.full((H, *shape), value))

        self.n1_w, self.n1_b = const(1.0, D), const(0.0, D)
        self.qkv_w, self.qkv_b = w(D, 3 * D), const(0.0, 3 * D)
        self.proj_w, self.proj_b = w(D, D), const(0.0, D)
        self.n2_w, self.n2_b = const(1.0, D), const(0.0, D)
        self.fc1_w, self.fc1_b = w(D, M), const(0.0, M)
        self.fc2_w, self.fc2_b = w(M, D), const(0.0, D)
        self.nf_w, self.nf_b = const(1.0, D), const(0.0, D)
        self.head_w, self.head_b = w(D, classes), const(0.0, classes)

    @staticmethod
    def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x (H, B, T, D), per-head affine (H, D)."""
        return F.layer_norm(x, x.shape[-1:], eps=1e-6) * w[:, None, None] + b[:, None, None]

    def _lin(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x (H, B, T, Din) @ (H, Din, Dout) + (H, Dout)."""
        Hh, B, T, _ = x.shape
        return (torch.bmm(x.reshape(Hh, B * T, -1), w) + b[:, None]).view(Hh, B, T, -1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        B, T, D = seq.shape
        H, A = self.n1_w.shape[0], self.num_heads
        x = seq.float()[None].expand(H, B, T, D)
        qkv = self._lin(self._ln(x, self.n1_w, self.n1_b), self.qkv_w, self.qkv_b)
        q, k, v = qkv.view(H * B, T, 3, A, D // A).permute(2, 0, 3, 1, 4)  # each (H*B, A, T, dh)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(H, B, T, D)
        x = x + self._lin(o, self.proj_w, self.proj_b)
        h = F.gelu(self._lin(self._ln(x, self.n2_w, self.n2_b), self.fc1_w, self.fc1_b))
        x = x + self._lin(h, self.fc2_w, self.fc2_b)
        x = self._ln(x, self.nf_w, self.nf_b)[:, :, self.prefix :]
        return self._lin(x, self.head_w, self.head_b)  # (H, B, P, C)


# --------------------------------------------------------------------------- pixels


def patch_pixels(masks: torch.Tensor, patch: int) -> torch.Tensor:
    """masks (N, S, S) -> (N, P, patch*patch): the labels under each patch, row-major."""
    N, S, _ = masks.shape
    g = S // patch
    return masks.view(N, g, patch, g, patch).permute(0, 1, 3, 2, 4).reshape(N, g * g, patch * patch)


def pixels_from_patches(labels: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`patch_pixels`: (N, P, patch*patch) -> (N, S, S)."""
    N, P, _ = labels.shape
    g = int(round(P**0.5))
    return labels.view(N, g, g, patch, patch).permute(0, 1, 3, 2, 4).reshape(N, g * patch, g * patch)


def upsample_logits(logits: torch.Tensor, size: int) -> torch.Tensor:
    """logits (..., P, C) on a square patch grid -> (prod(...), C, S, S), bilinear."""
    *lead, P, C = logits.shape
    g = int(round(P**0.5))
    x = logits.reshape(-1, g, g, C).permute(0, 3, 1, 2)
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)


def confusion(pred: torch.Tensor, truth: torch.Tensor, classes: int, ignore_index: int) -> torch.Tensor:
    """pred, truth (..., S, S) -> (C, C) pixel counts, rows = truth; ignored pixels skipped."""
    t = truth.reshape(-1).long()
    p = pred.reshape(-1).long().to(t.device)
    ok = t != ignore_index
    return torch.bincount(t[ok] * classes + p[ok], minlength=classes * classes).view(classes, classes).cpu()


def miou(conf: torch.Tensor) -> tuple[float, list[float | None]]:
    """Mean IoU (percent) over classes present in the truth or the prediction, and each
    class's IoU (None where absent from both)."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp(min=1), torch.zeros_like(inter))
    per = [round(float(v) * 100, 4) if bool(p) else None for v, p in zip(iou, present, strict=True)]
    mean = float(iou[present].mean()) * 100 if bool(present.any()) else 0.0
    return round(mean, 4), per


# --------------------------------------------------------------------------- probes


@dataclass
class SegOutcome:
    entry: dict[str, Any]
    val_grid: torch.Tensor | None  # (len(lrs), len(wds)) validation mIoU of a trained sweep


def run_seg_knn(
    bank: torch.Tensor,
    bank_masks: torch.Tensor,
    val_x: torch.Tensor,
    val_masks: torch.Tensor,
    test_x: torch.Tensor,
    test_masks: torch.Tensor,
    ks: list[int],
    classes: int,
    patch: int,
    ignore_index: int,
) -> SegOutcome:
    """``seg_knn``: k chosen on validation mIoU, reported on test.

    bank (N, P, D) patch embeddings with masks (N, S, S); val/test likewise.
    """
    D = bank.shape[-1]
    bank_lab = patch_pixels(bank_masks.long(), patch).reshape(-1, patch * patch)

    def score(x: torch.Tensor, masks: torch.Tensor) -> dict[int, float]:
        pred = knn_segment(bank.reshape(-1, D), bank_lab, x.reshape(-1, D), ks, classes, ignore_index)
        out = {}
        for k, lab in pred.items():
            full = pixels_from_patches(lab.view(x.shape[0], x.shape[1], -1), patch)
            out[k] = miou(confusion(full, masks, classes, ignore_index))[0]
        return out

    val = score(val_x, val_masks)
    best = max(ks, key=lambda k: (val[k], -k))
    test = score(test_x, test_masks)
    entry = {
        "miou": test[best],
        "k": best,
        "per_k": {str(k): v for k, v in test.items()},
        "val_miou": {str(k): v for k, v in val.items()},
    }
    return SegOutcome(entry, None)


def _head_confusions(
    module: nn.Module,
    x: torch.Tensor,
    masks: torch.Tensor,
    classes: int,
    ignore_index: int,
    device: torch.device,
    precision: str,
    batch_size: int = 32,
) -> torch.Tensor:
    """Per-head pixel confusion matrices (H, C, C) of ``module`` on x (N, ...), masks (N, S, S)."""
    S = masks.shape[-1]
    confs: torch.Tensor | None = None
    module.eval()
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            with autocast_for(device, precision):
                logits = module(x[s : s + batch_size].to(device))  # (H, B, P, C)
            H, B = logits.shape[:2]
            m = masks[s : s + batch_size].to(device)
            batch = []
            for h in range(H):
                pred = upsample_logits(logits[h], S).argmax(1)
                batch.append(confusion(pred, m, classes, ignore_index))
            c = torch.stack(batch)
            confs = c if confs is None else confs + c
    assert confs is not None
    return confs


def run_seg_head(
    kind: str,
    train_x: torch.Tensor,
    train_masks: torch.Tensor,
    views: int,
    val_x: torch.Tensor,
    val_masks: torch.Tensor,
    test_x: torch.Tensor,
    test_masks: torch.Tensor,
    classes: int,
    num_heads: int,
    prefix: int,
    ignore_index: int,
    sweep: SweepConfig,
    generator: torch.Generator,
    device: torch.device,
    precision: str = "auto",
) -> SegOutcome:
    """``seg_linear`` (x = patch (N, P, D)) or ``seg_block`` (x = seq (N, T, D)).

    ``train_x`` / ``train_masks`` hold ``views`` views of ``N`` images (view ``v`` of image
    ``i`` at ``v * N + i``). Pixel cross-entropy on bilinearly upsampled logits; the head
    with the best validation mIoU is scored on test.
    """
    H = len(sweep.lrs) * len(sweep.wds)
    D = train_x.shape[-1]
    if kind == "seg_block":
        module: nn.Module = SegBlockHeads(H, D, num_heads, classes, prefix, generator)
    else:
        module = SegLinearHeads(H, D, classes, generator)
    module = module.to(device)
    n = train_x.shape[0] // views
    S = train_masks.shape[-1]

    def step_loss(idx: torch.Tensor) -> torch.Tensor:
        logits = module(rows(train_x, idx, device))  # (H, B, P, C)
        up = upsample_logits(logits, S)  # (H*B, C, S, S)
        y = rows(train_masks, idx, up.device).long().repeat(H, 1, 1)
        valid = (y != ignore_index).sum().clamp(min=1)
        return F.cross_entropy(up, y, ignore_index=ignore_index, reduction="sum") / (valid / H)

    fit(module, step_loss, n, sweep, generator, views, module.no_decay, device, precision)
    val_conf = _head_confusions(module, val_x, val_masks, classes, ignore_index, device, precision)
    val = torch.tensor([miou(c)[0] for c in val_conf])
    best = select_best(val)
    one = take_head(module, best)
    test_m, per_class = miou(_head_confusions(one, test_x, test_masks, classes, ignore_index, device, precision)[0])
    entry = {"miou": test_m, **sweep_entry(sweep, val, best, "miou"), "per_class_iou": per_class}
    grid_v = val.view(len(sweep.lrs), len(sweep.wds))
    return SegOutcome(entry, grid_v)
