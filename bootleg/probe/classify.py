"""Trained classification probes (paper Sec. 5.1) as batched heads.

* ``linear_patch``: mean patch embedding -> batch norm -> linear.
* ``linear_cls``: CLS embedding -> batch norm -> linear.
* ``attentive`` (X-Blk, V-JEPA's attentive classifier): all output tokens -> cross-attention
  block with one learnable query (pre-norm on the tokens, MLP sub-block) -> linear.

Every head of a ``len(lrs) x len(wds)`` grid trains together on the same cached feature
batches (:mod:`bootleg.probe.sweep`); the best head on the validation split is then scored
once on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bootleg.io import trunc_normal
from bootleg.probe.config import SweepConfig
from bootleg.probe.sweep import fit, predict, rows, select_best, sweep_entry, take_head

#: which cached feature each trained probe reads
PROBE_FEATURE = {"linear_patch": "mean", "linear_cls": "cls", "attentive": "tokens"}


class LinearHeads(nn.Module):
    """``H`` linear heads behind one shared ``BatchNorm1d(affine=False)`` (with no affine the
    normalisation is the same for every head, so it is computed once).

    forward: x (B, D) -> logits (H, B, C).
    """

    no_decay = {"bias"}

    def __init__(self, heads: int, dim: int, classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.heads = heads
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.weight = nn.Parameter(trunc_normal((heads, dim, classes), 0.01, generator))
        self.bias = nn.Parameter(torch.zeros(heads, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bn(x.float())
        return torch.einsum("bd,hdc->hbc", z, self.weight) + self.bias[:, None]


class AttentiveHeads(nn.Module):
    """``H`` attentive probes (one learnable query, ``num_heads`` attention heads, width ``D``).

    Per head, as V-JEPA's ``AttentiveClassifier`` (one cross-attention block)::

        t  = LN1(tokens)                       # pre-norm on the tokens (affine per head)
        q  = q0 + Proj(CrossAttn(q0, t, t))    # q0: learnable query
        q  = q + MLP(LN2(q))
        logits = Linear(q)

    The input is the *affine-free* layer norm of the tokens, shared by every head
    (``Features.tokens``). Because there is a single query, keys are never materialised:
    ``q . (W_k (g * n + b)) = ((W_k^T q) * g) . n + const`` (the constant, and the key bias,
    cancel in the softmax), and values are projected after pooling
    (``sum_t a_t W_v t_t = W_v sum_t a_t t_t``). This is exact and costs ``O(T D)`` per
    attention head instead of ``O(T D^2)``.

    forward: tokens (B, T, D) -> logits (H, B, C).
    """

    no_decay = {"query", "n1_w", "n1_b", "n2_w", "n2_b", "q_b", "v_b", "o_b", "fc1_b", "fc2_b", "head_b"}

    def __init__(
        self,
        heads: int,
        dim: int,
        num_heads: int,
        classes: int,
        generator: torch.Generator,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        H, D, M = heads, dim, int(dim * mlp_ratio)
        self.heads, self.num_heads = heads, num_heads
        self.scale = (dim // num_heads) ** -0.5

        def w(*shape: int) -> nn.Parameter:
            return nn.Parameter(trunc_normal((H, *shape), 0.02, generator))

        def const(value: float, *shape: int) -> nn.Parameter:
            return nn.Parameter(torch.full((H, *shape), value))

        self.query = w(D)
        self.n1_w, self.n1_b = const(1.0, D), const(0.0, D)
        self.q_w, self.q_b = w(D, D), const(0.0, D)
        self.k_w = w(D, D)
        self.v_w, self.v_b = w(D, D), const(0.0, D)
        self.o_w, self.o_b = w(D, D), const(0.0, D)
        self.n2_w, self.n2_b = const(1.0, D), const(0.0, D)
        self.fc1_w, self.fc1_b = w(D, M), const(0.0, M)
        self.fc2_w, self.fc2_b = w(M, D), const(0.0, D)
        self.head_w, self.head_b = w(D, classes), const(0.0, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.float()
        B, T, D = n.shape
        H, A = self.query.shape[0], self.num_heads
        q = torch.einsum("hd,hde->he", self.query, self.q_w) + self.q_b  # (H, D)
        q = q.view(H, A, D // A)
        u = torch.einsum("hdae,hae->hda", self.k_w.view(H, D, A, D // A), q)  # (H, D, A)
        u = (u * self.n1_w[:, :, None] * self.scale).permute(1, 0, 2).reshape(D, H * A)
        att = torch.softmax((n @ u).float(), dim=1)  # (B, T, H*A)
        pooled = torch.bmm(att.transpose(1, 2), n).float()  # (B, H*A, D)
        pooled = pooled.view(B, H, A, D) * self.n1_w[:, None] + self.n1_b[:, None]
        v = torch.einsum("bhad,hdae->hbae", pooled, self.v_w.view(H, D, A, D // A))
        y = v.reshape(H, B, D) + self.v_b[:, None]
        y = torch.bmm(y, self.o_w) + self.o_b[:, None]
        x = self.query[:, None] + y  # (H, B, D)
        h = F.layer_norm(x, (D,), eps=1e-6) * self.n2_w[:, None] + self.n2_b[:, None]
        h = F.gelu(torch.bmm(h, self.fc1_w) + self.fc1_b[:, None])
        x = x + torch.bmm(h, self.fc2_w) + self.fc2_b[:, None]
        return torch.bmm(x, self.head_w) + self.head_b[:, None]


def topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """logits (H, N, C), y (N,) -> (H,) fraction of items whose label is in the top ``k``."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices  # (H, N, k)
    return (top == y[None, :, None]).any(-1).float().mean(1)


@dataclass
class SweepOutcome:
    """What a trained probe returns: its ``probe.json`` entry and plot data."""

    entry: dict[str, Any]
    val_grid: torch.Tensor  # (len(lrs), len(wds)) validation top-1, percent
    confusion: torch.Tensor  # (C, C) test counts of the chosen head, rows = truth


def build_heads(kind: str, heads: int, dim: int, num_heads: int, classes: int, generator: torch.Generator) -> nn.Module:
    if kind == "attentive":
        return AttentiveHeads(heads, dim, num_heads, classes, generator)
    return LinearHeads(heads, dim, classes, generator)


def fit_and_select(
    kind: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    views: int,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    classes: int,
    num_heads: int,
    sweep: SweepConfig,
    generator: torch.Generator,
    device: torch.device,
    precision: str = "auto",
) -> tuple[nn.Module, int, torch.Tensor]:
    """Train the sweep on the training pool and choose a head on validation only.

    Args:
        kind: ``linear_patch``, ``linear_cls`` or ``attentive``.
        train_x: ``(views * N, ...)`` features, view ``v`` of item ``i`` at ``v * N + i``.
        train_y: ``(N,)`` labels.
        val_x, val_y: ``(Nv, ...)`` clean validation features and labels.

    Returns:
        (all trained heads, chosen head index, validation top-1 of every head ``(H,)``).
    """
    H = len(sweep.lrs) * len(sweep.wds)
    module = build_heads(kind, H, train_x.shape[-1], num_heads, classes, generator).to(device)
    n = train_y.shape[0]
    ty = train_y.to(device)

    def step_loss(idx: torch.Tensor) -> torch.Tensor:
        logits = module(rows(train_x, idx, device))  # (H, B, C)
        y = ty[idx % n]
        return F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(H), reduction="sum") / len(idx)

    fit(module, step_loss, n, sweep, generator, views, module.no_decay, device, precision)
    logits = predict(module, lambda i: module(rows(val_x, i, device)), len(val_y), device=device, precision=precision)
    val_acc = topk_correct(logits, val_y.cpu(), 1)
    return module, select_best(val_acc), val_acc


def run_trained_probe(
    kind: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    views: int,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    classes: int,
    num_heads: int,
    sweep: SweepConfig,
    generator: torch.Generator,
    device: torch.device,
    precision: str = "auto",
) -> SweepOutcome:
    """Train, select on validation, score the chosen head on test (top-1/top-5, percent)."""
    module, best, val_acc = fit_and_select(
        kind, train_x, train_y, views, val_x, val_y, classes, num_heads, sweep, generator, device, precision
    )
    head = take_head(module, best)
    logits = predict(head, lambda i: head(rows(test_x, i, device)), len(test_y), device=device, precision=precision)
    y = test_y.cpu()
    pred = logits[0].argmax(-1)
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    val_grid = (val_acc * 100).view(len(sweep.lrs), len(sweep.wds))
    entry = {
        "top1": round(float(topk_correct(logits, y, 1)[0]) * 100, 4),
        "top5": round(float(topk_correct(logits, y, 5)[0]) * 100, 4),
        **sweep_entry(sweep, val_grid, best, "top1"),
    }
    return SweepOutcome(entry, val_grid, confusion)
