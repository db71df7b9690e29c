"""Training many probe heads at once: a hyper-parameter sweep as one batched model.

A *batched head* module holds the parameters of ``H`` independent heads stacked along a
leading axis (``(H, ...)``) and maps one input batch to ``(H, B, C)`` logits. The loss is
the sum of the heads' mean losses, so each head's gradient is exactly its own; the
optimiser (:class:`BatchedAdamW`) then applies head ``h``'s learning rate and weight decay
to slice ``h`` of every parameter. One pass over the cached features trains the whole grid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bootleg.probe.config import SweepConfig
from bootleg.probe.features import autocast_for


class BatchedAdamW:
    """AdamW over parameters whose leading axis indexes ``H`` heads, with per-head LR/WD.

    Equivalent to ``H`` separate ``torch.optim.AdamW`` instances (decoupled weight decay
    ``p -= lr * wd * p``), one per slice. Parameters named in ``no_decay`` get no decay.
    """

    def __init__(
        self,
        module: nn.Module,
        lrs: torch.Tensor,
        wds: torch.Tensor,
        no_decay: set[str] = frozenset(),  # type: ignore[assignment]
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.lrs, self.wds = lrs, wds
        self.no_decay, self.betas, self.eps = set(no_decay), betas, eps
        self.m = [torch.zeros_like(p) for _, p in self.params]
        self.v = [torch.zeros_like(p) for _, p in self.params]
        self.t = 0

    def state_dict(self) -> dict[str, object]:
        return {"t": self.t, "m": [m.clone() for m in self.m], "v": [v.clone() for v in self.v]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.t = int(state["t"])  # type: ignore[call-overload]
        for dst, src in zip(self.m + self.v, list(state["m"]) + list(state["v"]), strict=True):  # type: ignore[call-overload]
            dst.copy_(src)

    @torch.no_grad()
    def step(self, lr_scale: float) -> None:
        """One update with learning rates ``lrs * lr_scale``; clears the gradients."""
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for (name, p), m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr = (self.lrs * lr_scale).to(p.device, p.dtype).view(shape)
            if name not in self.no_decay:
                p.mul_(1 - lr * self.wds.to(p.device, p.dtype).view(shape))
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.sub_(lr * (m / c1) / ((v / c2).sqrt_().add_(self.eps)))
            p.grad = None


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * t))


def grid(sweep: SweepConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head ``(lr, wd)`` of the grid, LR-major: head ``i * len(wds) + j`` has
    ``(lrs[i], wds[j])``. Returns two ``(H,)`` float32 tensors."""
    lr = torch.tensor(sweep.lrs, dtype=torch.float32)
    wd = torch.tensor(sweep.wds, dtype=torch.float32)
    return lr.repeat_interleave(len(sweep.wds)), wd.repeat(len(sweep.lrs))


StepLoss = Callable[[torch.Tensor], torch.Tensor]


def fit(
    module: nn.Module,
    step_loss: StepLoss,
    n: int,
    sweep: SweepConfig,
    generator: torch.Generator,
    views: int = 1,
    no_decay: set[str] = frozenset(),  # type: ignore[assignment]
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> None:
    """Train every head of ``module`` for ``sweep.epochs`` epochs over ``n`` items.

    Each epoch visits the ``n`` items in a seeded random order, each through one of its
    ``views`` (drawn at random): the batch handed to ``step_loss`` holds pool indices
    ``view * n + item``. ``step_loss(idx (B,) long) -> scalar`` returns the sum over heads
    of each head's mean loss. Batches are ``sweep.batch_size`` items; the remainder of an
    epoch is dropped when at least one full batch fits.
    """
    dev = torch.device(device)
    lrs, wds = grid(sweep)
    opt = BatchedAdamW(module, lrs.to(dev), wds.to(dev), no_decay)
    bs = min(sweep.batch_size, n)
    per_epoch = n // bs
    total = sweep.epochs * per_epoch
    warmup = round(sweep.warmup_epochs * per_epoch)
    module.train()
    step = 0
    for _ in range(sweep.epochs):
        order = torch.randperm(n, generator=generator)
        view = torch.randint(0, views, (n,), generator=generator)
        idx = (view * n + order).to(dev)
        for s in range(per_epoch):
            with autocast_for(dev, precision):
                loss = step_loss(idx[s * bs : (s + 1) * bs])
            loss.backward()
            opt.step(lr_factor(step, total, warmup))
            step += 1
    module.eval()


@torch.no_grad()
def predict(
    module: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> torch.Tensor:
    """Eval-mode outputs of every head on items ``0..n-1``: ``forward(idx) -> (H, B, ...)``,
    concatenated to ``(H, n, ...)`` float32 on the CPU."""
    dev = torch.device(device)
    module.eval()
    outs = []
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(n, s + batch_size), device=dev)
        with autocast_for(dev, precision):
            outs.append(forward(idx).float().cpu())
    return torch.cat(outs, 1)


def rows(x: torch.Tensor, idx: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x[idx]`` moved to ``device``, wherever ``x`` and ``idx`` live (features may stay on the
    CPU while the heads train on the GPU)."""
    return x[idx.to(x.device)].to(device, non_blocking=True)


def take_head(module: nn.Module, h: int) -> nn.Module:
    """A copy of a batched-head module keeping only head ``h`` (parameters' slice ``h``)."""
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.data = p.data[h : h + 1].clone()
    m.heads = 1  # type: ignore[assignment]
    return m


def select_best(val_acc: torch.Tensor) -> int:
    """Index of the head with the best validation accuracy ``(H,)`` (first on ties).
    Only validation scores are ever passed here; test data never chooses a head."""
    acc = torch.nan_to_num(val_acc.double(), nan=-1.0)
    return int(torch.argmax(acc))


def sweep_entry(sweep: SweepConfig, val: torch.Tensor, best: int, metric: str) -> dict[str, Any]:
    """What a probe entry says of its grid: the selected ``best`` ``{lr, wd}``, its
    ``val_<metric>`` and the ``grid`` of validation scores. ``val``: the ``H`` heads' validation
    scores in percent, LR-major (as :func:`grid`)."""
    W = len(sweep.wds)
    g = val.reshape(len(sweep.lrs), W)
    return {
        "best": {"lr": float(sweep.lrs[best // W]), "wd": float(sweep.wds[best % W])},
        f"val_{metric}": round(float(val.reshape(-1)[best]), 4),
        "grid": {
            "lr": [float(v) for v in sweep.lrs],
            "wd": [float(v) for v in sweep.wds],
            f"val_{metric}": [[round(float(v), 4) for v in row] for row in g],
        },
    }
