"""Losses between predictions (B, K, P, T) and targets of the same shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _MSENoForward(torch.autograd.Function):
    """Appendix D: skip the loss's forward value, keep MSE's exact gradient."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(pred, target)
        return pred.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        pred, target = ctx.saved_tensors  # type: ignore[attr-defined]
        g = (pred.float() - target.float()) * (2.0 / pred.numel()) * grad
        return g.to(pred.dtype), None


def mse_no_forward(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Returns a dummy 0 whose backward equals ``F.mse_loss(pred, target)``'s."""
    return _MSENoForward.apply(pred, target)


def compute_loss(
    name: str, pred: torch.Tensor, target: torch.Tensor, want_value: bool = True, beta: float = 1.0
) -> torch.Tensor:
    """Scalar loss (float32). ``mse_noforward`` computes the real MSE only when
    ``want_value`` (logging steps); its gradient is MSE's either way."""
    if name == "mse" or (name == "mse_noforward" and want_value):
        return F.mse_loss(pred.float(), target.float())
    if name == "mse_noforward":
        return mse_no_forward(pred, target)
    if name == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), target.float(), beta=beta)
    raise ValueError(f"unknown loss {name!r}; expected mse, smooth_l1 or mse_noforward")
