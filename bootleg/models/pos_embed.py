"""Fixed 2D sine-cosine position embeddings (MAE / I-JEPA style)."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``pos`` (M,) -> (M, dim): half sines, half cosines over geometric frequencies."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Position embedding of an ``H x W`` patch grid, row-major: (H*W, dim) float32.

    The first half of the channels encodes the row, the second half the column.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    h, w = grid
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], dim=1).float()
