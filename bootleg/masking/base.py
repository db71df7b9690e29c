"""What every sampler shares: the ``Masks`` of one batch, the seed mixer, the runtime
``MaskSampler`` base, the ``SamplerParams`` base of every registered params class, and the
vectorised tensor helpers the samplers are built from.

Patch indices are row-major into the ``H x W`` patch grid (``index = row * W + col``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import model_validator

from bootleg.errors import BootlegError
from bootleg.io import mix_seed
from bootleg.schema import Strict

Pair = tuple[float, float]


# ----------------------------------------------------------------------------- data


@dataclass
class Masks:
    """Masks for one batch.

    Attributes:
        enc_idx: ``(B, L)`` long, patch indices the encoder sees, ascending per row over the
            valid positions.
        pred_idx: ``(B, K, P)`` long, patch indices of each of the ``K`` target regions,
            ascending per region over the valid positions.
        enc_valid: ``(B, L)`` bool or ``None`` (every position valid). A position flagged
            ``False`` is padding: it holds an in-range index (a repeat of the row's last
            valid index) and must be excluded from attention and loss.
        pred_valid: ``(B, K, P)`` bool or ``None``, the same for the target regions.
    """

    enc_idx: torch.Tensor
    pred_idx: torch.Tensor
    enc_valid: torch.Tensor | None = None
    pred_valid: torch.Tensor | None = None

    def _map(self, fn: Any) -> Masks:
        opt = [None if t is None else fn(t) for t in (self.enc_valid, self.pred_valid)]
        return Masks(fn(self.enc_idx), fn(self.pred_idx), *opt)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Masks:
        """Return a copy with every tensor (valid flags included) on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Masks:
        """Return a copy in pinned host memory (for asynchronous host-to-device copies)."""
        return self._map(lambda t: t.pin_memory())

    def rows(self, start: int, stop: int) -> Masks:
        """Rows ``start:stop`` of the batch (copies)."""
        return self._map(lambda t: t[start:stop].clone())


def mask_seed(seed: int, epoch: int, batch: int, rank: int = 0, worker: int = 0) -> int:
    """Map ``(seed, epoch, batch, rank, worker)`` to a well-mixed 63-bit seed
    (:func:`bootleg.io.mix_seed` of the tuple)."""
    return mix_seed(seed, epoch, batch, rank, worker)


# ----------------------------------------------------------------------------- runtime


class MaskSampler:
    """Base of the runtime samplers: ``grid`` (H, W), ``num_regions`` (K) and
    ``__call__(batch_size, generator) -> Masks`` (CPU tensors, every position valid).

    ``group_size`` and ``bucket`` are copied from the params by
    :func:`bootleg.masking.build_sampler`; :class:`~bootleg.masking.StepMasks` reads them.
    """

    name = "base"
    group_size: int | None = None
    bucket: int | None = None

    def __init__(self, grid: tuple[int, int], num_regions: int) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_regions = num_regions

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def __call__(self, batch_size: int, generator: torch.Generator) -> Masks:
        return self.sample_with_context(batch_size, generator)[0]

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        """Return ``(masks, context)`` where ``context`` is ``(B, H*W)`` bool: the
        patches available to the encoder before truncation to a common length."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid={self.grid}, num_regions={self.num_regions})"


# ----------------------------------------------------------------------------- params


def field_error(field: str, value: Any, expected: str) -> ValueError:
    """``ValueError("masking.<field>: <value>; expected <what>")`` (pydantic keeps the text)."""
    return ValueError(f"masking.{field}: {value!r}; expected {expected}")


def grid_error(field: str, value: Any, expected: str) -> BootlegError:
    """The same one line as a :class:`BootlegError` (raised by ``check_grid``)."""
    return BootlegError(str(field_error(field, value, expected)))


def check_range(field: str, value: Pair, lo: float, hi: float, closed_hi: bool) -> Pair:
    """Check a ``(a, b)`` pair with ``lo < a <= b <= hi`` (``< hi`` when not ``closed_hi``)."""
    bound = f"{lo} < lo <= hi {'<=' if closed_hi else '<'} {hi}"
    a, b = value
    if not (math.isfinite(a) and math.isfinite(b)):
        raise field_error(field, value, f"finite numbers with {bound}")
    if a > b:
        raise field_error(field, value, f"lo <= hi ({bound})")
    if a <= lo or (b > hi if closed_hi else b >= hi):
        raise field_error(field, value, bound)
    return value


def check_grid_shape(grid: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise BootlegError(f"grid: {grid!r}; expected two positive integers (H, W)") from None
    if h < 1 or w < 1 or h * w < 2:
        raise BootlegError(f"grid: {grid!r}; expected two positive integers with H*W >= 2")
    return h, w


class SamplerParams(Strict):
    """Base of every sampler's params class (registered in ``SAMPLERS``).

    A subclass adds ``sampler: Literal["<name>"] = "<name>"``, its own fields, field checks in
    :meth:`check_fields` (raise :func:`field_error`), grid checks in :meth:`check_grid` (raise
    :func:`grid_error`) and :meth:`build`.

    Fields of every sampler:
        group_size: images of one rank whose masks are sampled together (one block size,
            truncation to the group's minimum; Appendix C uses a GPU worker's 256), whatever
            the micro-batch; see :class:`~bootleg.masking.StepMasks`.
        bucket: ``None``, or pad ``L`` and ``P`` of every micro-batch up to a multiple of it
            (padding flagged invalid), so a compiled step sees at most
            ``ceil(N / bucket) ** 2`` shapes, ``N = H*W`` (far fewer in practice).
    """

    group_size: int = 256
    bucket: int | None = None

    def check_fields(self) -> None:
        """Raise ``ValueError("masking.<field>: ...")`` for a value no grid can use."""

    @model_validator(mode="after")
    def _fields(self) -> SamplerParams:
        if self.group_size < 1:
            raise field_error("group_size", self.group_size, "an integer >= 1")
        if self.bucket is not None and self.bucket < 1:
            raise field_error("bucket", self.bucket, "null or an integer >= 1")
        self.check_fields()
        return self

    def check_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Raise a one-line :class:`BootlegError` naming ``masking.<field>`` when these params
        cannot produce masks on ``grid``; return ``(H, W)``."""
        return check_grid_shape(grid)

    def build(self, grid: tuple[int, int]) -> MaskSampler:
        raise NotImplementedError


# ----------------------------------------------------------------------------- helpers


def round_half_up(x: float) -> int:
    """Round half away from zero (``floor(x + 0.5)`` for x >= 0), as I-JEPA's
    ``int(round(.))`` does for every non-tie value."""
    return int(math.floor(x + 0.5))


def rand_floats(generator: torch.Generator, n: int) -> list[float]:
    """``n`` uniform floats in [0, 1) from ``generator`` (float64)."""
    return torch.rand(n, generator=generator, dtype=torch.float64).tolist()


def uniform_ints(high: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform ints in ``[0, high)`` (``high`` broadcast against ``shape``), long."""
    u = torch.rand(shape, generator=generator)
    return torch.minimum((u * high).long(), high.long() - 1)


def rect_template(h: int, w: int, width: int) -> torch.Tensor:
    """``(h*w,)`` long: row-major offsets of an ``h x w`` rectangle at the origin."""
    return (torch.arange(h) * width).unsqueeze(1).add(torch.arange(w)).reshape(-1)


def box_mask(top: torch.Tensor, left: torch.Tensor, h: int, w: int, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W)`` bool: per-sample ``h x w`` box at ``(top, left)`` (each ``(B,)``)."""
    gh, gw = grid
    rows = torch.arange(gh)
    cols = torch.arange(gw)
    in_r = (rows >= top.unsqueeze(1)) & (rows < (top + h).unsqueeze(1))
    in_c = (cols >= left.unsqueeze(1)) & (cols < (left + w).unsqueeze(1))
    return (in_r.unsqueeze(2) & in_c.unsqueeze(1)).reshape(top.shape[0], gh * gw)


def union_mask(pred_idx: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``(B, H*W)`` bool union of the regions in ``pred_idx`` ``(B, K, P)``."""
    b = pred_idx.shape[0]
    out = torch.zeros(b, num_patches, dtype=torch.bool)
    return out.scatter_(1, pred_idx.reshape(b, -1), True)


def mask_to_idx(mask: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, N)`` bool with exactly ``length`` True per row -> ``(B, length)`` ascending."""
    return mask.nonzero()[:, 1].reshape(mask.shape[0], length)


def scan_orders(grid: tuple[int, int]) -> torch.Tensor:
    """``(8, H*W)`` long: the 8 scan orders (4 corners x rows-/columns-first), each
    listing patch indices in the order met when scanning from that corner inwards."""
    gh, gw = grid
    idx = torch.arange(gh * gw).reshape(gh, gw)
    orders = []
    for flip_r in (False, True):
        for flip_c in (False, True):
            g = idx
            if flip_r:
                g = g.flip(0)
            if flip_c:
                g = g.flip(1)
            orders.append(g.reshape(-1))
            orders.append(g.t().reshape(-1))
    return torch.stack(orders)


__all__ = [
    "MaskSampler",
    "Masks",
    "Pair",
    "SamplerParams",
    "box_mask",
    "check_grid_shape",
    "check_range",
    "field_error",
    "grid_error",
    "mask_seed",
    "mask_to_idx",
    "rand_floats",
    "rect_template",
    "round_half_up",
    "scan_orders",
    "uniform_ints",
    "union_mask",
]
