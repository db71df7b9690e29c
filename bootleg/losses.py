"""Losses between predictions (B, K, P, T) and targets of the same shape.

Each loss is a registered config class (``loss.name``) with its own parameters. ``valid``
(B, K, P) bool, when given, marks the real (not padded) target positions: only they count.
Add a loss: one class registered in :data:`LOSSES`, plus its tests.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bootleg.registry import Registry
from bootleg.schema import Strict

LOSSES: Registry = Registry("loss", "name")


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


def _valid_rows(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Keep only the valid positions: (B, K, P, T) -> (M, T) (unchanged when ``valid`` is None)."""
    if valid is None:
        return pred, target
    return pred[valid], target[valid]


class Loss(Strict):
    name: str

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, want_value: bool = True, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scalar float32 loss, mean over valid positions and channels."""
        raise NotImplementedError


@LOSSES.register
class MSE(Loss):
    name: Literal["mse"] = "mse"

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, want_value: bool = True, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        pred, target = _valid_rows(pred, target, valid)
        return F.mse_loss(pred.float(), target.float())


@LOSSES.register
class MSENoForward(Loss):
    """MSE whose value is computed only when ``want_value`` (logging steps); same gradient."""

    name: Literal["mse_noforward"] = "mse_noforward"

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, want_value: bool = True, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        pred, target = _valid_rows(pred, target, valid)
        if want_value:
            return F.mse_loss(pred.float(), target.float())
        return mse_no_forward(pred, target)


@LOSSES.register
class SmoothL1(Loss):
    """I-JEPA's loss."""

    name: Literal["smooth_l1"] = "smooth_l1"
    beta: float = Field(1.0, gt=0)

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, want_value: bool = True, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        pred, target = _valid_rows(pred, target, valid)
        return F.smooth_l1_loss(pred.float(), target.float(), beta=self.beta)


@LOSSES.register
class L1(Loss):
    """Appendix A's L1 alternative."""

    name: Literal["l1"] = "l1"

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, want_value: bool = True, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        pred, target = _valid_rows(pred, target, valid)
        return F.l1_loss(pred.float(), target.float())
