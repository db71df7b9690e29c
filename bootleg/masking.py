"""Mask samplers: which patches the encoder sees and which regions the predictor predicts.

A sampler is called as ``sampler(batch_size, generator) -> Masks`` on the CPU. Patch
indices are row-major into the ``H x W`` patch grid (``index = row * W + col``).

Samplers (see ``SAMPLER_DEFAULTS`` for their parameters):

* ``bootleg``: the paper's multi-block masking (Appendix C) with all fixes: independent
  block scale and aspect, alternating block orientation, full-size background possible,
  uniform placement over every valid position, truncation from a random corner.
* ``ijepa``: I-JEPA's multi-block masking kept faithfully, bugs included (shared random
  number for scale and aspect, background capped one patch short of the grid,
  off-by-one placement, truncation that keeps the first tokens in row-major order).
* ``random``: MAE's uniform random masking.
* ``cyclic``: CAPI/Franca cyclic block masking (one rectangle on the torus).
* ``inverse_block``: data2vec 2.0 inverse block masking.

All sampling is vectorised over the batch: per call a few torch ops on ``(B, ...)``
tensors, no per-sample Python loops. The tensors are tiny, so run samplers on one
intra-op thread (``torch.set_num_threads(1)``, as in data-loader workers): extra threads
only add overhead and can stall badly on a busy machine.

Every sampler also has ``sample_with_context(batch_size, generator) -> (masks, context)``
where ``context`` ``(B, H*W)`` bool marks the patches available to the encoder before
truncation to a common length (used by ``bootleg.mask_stats`` figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from bootleg.errors import BootlegError

__all__ = [
    "FIELDS",
    "SAMPLERS",
    "SAMPLER_DEFAULTS",
    "StepMasks",
    "BootlegSampler",
    "CyclicSampler",
    "IJepaSampler",
    "InverseBlockSampler",
    "MaskSampler",
    "Masks",
    "MaskingParams",
    "RandomSampler",
    "build_sampler",
    "mask_seed",
    "resolve_params",
    "validate_sampler_params",
]


# ----------------------------------------------------------------------------- data


@dataclass
class Masks:
    """Masks for one batch.

    Attributes:
        enc_idx: ``(B, L)`` long, patch indices the encoder sees, ascending per row.
        pred_idx: ``(B, K, P)`` long, patch indices of each of the ``K`` target regions,
            ascending per region.
    """

    enc_idx: torch.Tensor
    pred_idx: torch.Tensor
    enc_valid: torch.Tensor | None = None
    pred_valid: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Masks:
        """Return a copy with both index tensors on ``device``."""
        return Masks(
            enc_idx=self.enc_idx.to(device, non_blocking=non_blocking),
            pred_idx=self.pred_idx.to(device, non_blocking=non_blocking),
            enc_valid=None if self.enc_valid is None else self.enc_valid.to(device, non_blocking=non_blocking),
            pred_valid=None if self.pred_valid is None else self.pred_valid.to(device, non_blocking=non_blocking),
        )


@dataclass
class MaskingParams:
    """Stand-alone masking parameters with the same attribute names as the config's
    ``masking`` section; ``None`` means "use ``SAMPLER_DEFAULTS[sampler]``"."""

    sampler: str | None = None
    num_blocks: int | None = None
    block_scale: tuple[float, float] | None = None
    block_aspect: tuple[float, float] | None = None
    background_scale: tuple[float, float] | None = None
    min_keep: int | None = None
    mask_ratio: tuple[float, float] | None = None
    inverse_block_size: int | None = None

    @classmethod
    def from_overrides(cls, sampler: str | None, overrides: list[str] | None) -> MaskingParams:
        """Build from ``["FIELD=VALUE", ...]`` (``masking.FIELD=VALUE`` also accepted);
        each value is parsed with ``yaml.safe_load`` (e.g. ``block_scale=[0.15,0.2]``)."""
        import yaml

        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {"sampler": sampler}
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            key = key.strip().removeprefix("masking.")
            if not sep or not key:
                raise BootlegError(f"--set: {item!r} is malformed; expected FIELD=VALUE")
            if key not in names:
                raise BootlegError(f"--set: unknown field masking.{key}; expected one of {sorted(names)}")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                msg = str(exc).splitlines()[0]
                raise BootlegError(f"masking.{key}: cannot parse {raw!r} ({msg})") from None
            values[key] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


# ----------------------------------------------------------------------------- seeds

_SEED_MASK = (1 << 63) - 1


def mask_seed(seed: int, epoch: int, batch: int, rank: int = 0, worker: int = 0) -> int:
    """Map ``(seed, epoch, batch, rank, worker)`` to a well-mixed 63-bit seed.

    Uses numpy's ``SeedSequence`` hash of the whole tuple, so distinct tuples give
    distinct (uncorrelated) seeds for every GPU rank and data-loader worker.
    """
    parts = (seed, epoch, batch, rank, worker)
    if any(not isinstance(p, (int, np.integer)) or p < 0 for p in parts):
        raise BootlegError(f"mask_seed: (seed, epoch, batch, rank, worker)={parts}; expected non-negative ints")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)
    return int(state[0]) & _SEED_MASK


# ----------------------------------------------------------------------------- params

FIELDS = (
    "num_blocks",
    "block_scale",
    "block_aspect",
    "background_scale",
    "min_keep",
    "mask_ratio",
    "inverse_block_size",
)

SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "bootleg": {
        "num_blocks": 4,
        "block_scale": (0.16, 0.18),
        "block_aspect": (1.0, 1.45),
        "background_scale": (0.85, 1.0),
        "min_keep": 10,
    },
    "ijepa": {
        "num_blocks": 4,
        "block_scale": (0.15, 0.2),
        "block_aspect": (0.75, 1.5),
        "background_scale": (0.85, 1.0),
        "min_keep": 10,
    },
    "random": {"mask_ratio": (0.75, 0.75)},
    "cyclic": {"mask_ratio": (0.7, 0.8), "block_aspect": (0.5, 2.0)},
    "inverse_block": {"mask_ratio": (0.8, 0.8), "inverse_block_size": 3},
}
"""Default parameters per sampler. Only the fields a sampler uses are listed; fields a
sampler does not use are ignored by ``build_sampler``."""

SAMPLERS = tuple(SAMPLER_DEFAULTS)


def _err(field: str, value: Any, expected: str) -> BootlegError:
    return BootlegError(f"masking.{field}: {value!r}; expected {expected}")


def _as_int(field: str, value: Any, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise _err(field, value, f"an integer {rng}")
    return int(value)


def _as_range(field: str, value: Any, lo: float, hi: float, closed_hi: bool) -> tuple[float, float]:
    """Check a ``(lo, hi)`` pair with ``lo_bound < a <= b <= / < hi_bound``."""
    bound = f"{lo} < lo <= hi {'<=' if closed_hi else '<'} {hi}"
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise _err(field, value, f"a pair [lo, hi] with {bound}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise _err(field, value, f"finite numbers with {bound}")
    if a > b:
        raise _err(field, value, f"lo <= hi ({bound})")
    if a <= lo or (b > hi if closed_hi else b >= hi):
        raise _err(field, value, bound)
    return a, b


def _check_grid(grid: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise BootlegError(f"grid: {grid!r}; expected two positive integers (H, W)") from None
    if h < 1 or w < 1 or h * w < 2:
        raise BootlegError(f"grid: {grid!r}; expected two positive integers with H*W >= 2")
    return h, w


def resolve_params(cfg: Any) -> tuple[str, dict[str, Any]]:
    """Return ``(sampler name, params)`` with ``None`` fields replaced by the defaults."""
    name = getattr(cfg, "sampler", None) or "bootleg"
    if name not in SAMPLER_DEFAULTS:
        raise BootlegError(f"masking.sampler: {name!r}; expected one of {', '.join(SAMPLERS)}")
    params = dict(SAMPLER_DEFAULTS[name])
    for key in params:
        value = getattr(cfg, key, None)
        if value is not None:
            params[key] = value
    return name, params


def _round(x: float) -> int:
    """Round half away from zero (``floor(x + 0.5)`` for x >= 0), as I-JEPA's
    ``int(round(.))`` does for every non-tie value."""
    return int(math.floor(x + 0.5))


def _bootleg_hw(area: float, aspect: float) -> tuple[int, int]:
    return _round(math.sqrt(area * aspect)), _round(math.sqrt(area / aspect))


def _min_union(h: int, w: int, num_blocks: int) -> int:
    """Smallest possible union of ``num_blocks`` alternating (h, w)/(w, h) blocks."""
    if num_blocks == 1 or h == w:
        return h * w
    return 2 * h * w - min(h, w) ** 2


def validate_sampler_params(cfg: Any, grid: tuple[int, int]) -> None:
    """Raise ``BootlegError`` (one line: field, bad value, what is expected) when the
    resolved parameters of ``cfg`` cannot produce masks on ``grid``."""
    gh, gw = _check_grid(grid)
    n = gh * gw
    name, p = resolve_params(cfg)
    if name in ("bootleg", "ijepa"):
        k = _as_int("num_blocks", p["num_blocks"], 1)
        s_lo, s_hi = _as_range("block_scale", p["block_scale"], 0.0, 1.0, closed_hi=True)
        a_lo, a_hi = _as_range("block_aspect", p["block_aspect"], 0.0, math.inf, closed_hi=False)
        b_lo, _ = _as_range("background_scale", p["background_scale"], 0.0, 1.0, closed_hi=True)
        min_keep = _as_int("min_keep", p["min_keep"], 0, n - 1)
        if name == "bootleg":
            _validate_bootleg_sizes(p, gh, gw, k, (s_lo, s_hi), (a_lo, a_hi), b_lo, min_keep)
        else:
            _validate_ijepa_sizes(p, gh, gw, (s_lo, s_hi), (a_lo, a_hi), b_lo, min_keep)
    elif name == "random":
        lo, _ = _as_range("mask_ratio", p["mask_ratio"], 0.0, 1.0, closed_hi=False)
        keep = int(n * (1.0 - lo))
        if not 1 <= keep <= n - 1:
            raise _err("mask_ratio", p["mask_ratio"], f"a ratio leaving 1..{n - 1} of {n} patches")
    elif name == "cyclic":
        _as_range("mask_ratio", p["mask_ratio"], 0.0, 1.0, closed_hi=False)
        _as_range("block_aspect", p["block_aspect"], 0.0, math.inf, closed_hi=False)
    elif name == "inverse_block":
        lo, hi = _as_range("mask_ratio", p["mask_ratio"], 0.0, 1.0, closed_hi=False)
        _as_int("inverse_block_size", p["inverse_block_size"], 1, min(gh, gw))
        for m in (lo, hi):
            vis = _round((1.0 - m) * n)
            if not 1 <= vis <= n - 1:
                raise _err("mask_ratio", p["mask_ratio"], f"a ratio leaving 1..{n - 1} visible")


def _validate_bootleg_sizes(
    p: dict[str, Any],
    gh: int,
    gw: int,
    k: int,
    scale: tuple[float, float],
    aspect: tuple[float, float],
    b_lo: float,
    min_keep: int,
) -> None:
    n = gh * gw
    side = min(gh, gw)
    for s in scale:
        for a in aspect:
            h, w = _bootleg_hw(s * n, a)
            if min(h, w) < 1:
                raise _err("block_scale", p["block_scale"], "blocks of at least 1x1 patch")
            if max(h, w) > side:
                raise _err(
                    "block_scale",
                    p["block_scale"],
                    f"blocks that fit the {gh}x{gw} grid in both orientations "
                    f"(got {h}x{w} with block_aspect {p['block_aspect']})",
                )
    h, w = _bootleg_hw(scale[1] * n, aspect[1])
    if n - _min_union(h, w, k) < max(min_keep, 1):
        raise _err(
            "block_scale",
            p["block_scale"],
            f"blocks that leave at least min_keep={max(min_keep, 1)} patches visible",
        )
    bside = min(_round(math.sqrt(b_lo * n)), side)
    if bside * bside < max(min_keep, 1):
        raise _err(
            "background_scale",
            p["background_scale"],
            f"a background of at least min_keep={min_keep} patches (got {bside}x{bside})",
        )


def _validate_ijepa_sizes(
    p: dict[str, Any],
    gh: int,
    gw: int,
    scale: tuple[float, float],
    aspect: tuple[float, float],
    b_lo: float,
    min_keep: int,
) -> None:
    n = gh * gw
    for s, a in ((scale[0], aspect[0]), (scale[1], aspect[1])):
        h, w = _ijepa_hw(s, a, gh, gw)
        if min(h, w) < 1:
            raise _err("block_scale", p["block_scale"], "blocks of at least 1x1 patch")
    h, w = _ijepa_hw(b_lo, 1.0, gh, gw)
    if min(h, w) < 1 or h * w <= min_keep:
        raise _err(
            "background_scale",
            p["background_scale"],
            f"a background of more than min_keep={min_keep} patches (got {h}x{w} of {n})",
        )


# ----------------------------------------------------------------------------- helpers


class MaskSampler:
    """Base class: ``grid`` (H, W), ``num_regions`` (K) and
    ``__call__(batch_size, generator) -> Masks`` (CPU tensors)."""

    name = "base"

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


def _rand_floats(generator: torch.Generator, n: int) -> list[float]:
    """``n`` uniform floats in [0, 1) from ``generator`` (float64)."""
    return torch.rand(n, generator=generator, dtype=torch.float64).tolist()


def _uniform_ints(high: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform ints in ``[0, high)`` (``high`` broadcast against ``shape``), long."""
    u = torch.rand(shape, generator=generator)
    return torch.minimum((u * high).long(), high.long() - 1)


def _rect_template(h: int, w: int, width: int) -> torch.Tensor:
    """``(h*w,)`` long: row-major offsets of an ``h x w`` rectangle at the origin."""
    return (torch.arange(h) * width).unsqueeze(1).add(torch.arange(w)).reshape(-1)


def _box_mask(top: torch.Tensor, left: torch.Tensor, h: int, w: int, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W)`` bool: per-sample ``h x w`` box at ``(top, left)`` (each ``(B,)``)."""
    gh, gw = grid
    rows = torch.arange(gh)
    cols = torch.arange(gw)
    in_r = (rows >= top.unsqueeze(1)) & (rows < (top + h).unsqueeze(1))
    in_c = (cols >= left.unsqueeze(1)) & (cols < (left + w).unsqueeze(1))
    return (in_r.unsqueeze(2) & in_c.unsqueeze(1)).reshape(top.shape[0], gh * gw)


def _union_mask(pred_idx: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``(B, H*W)`` bool union of the regions in ``pred_idx`` ``(B, K, P)``."""
    b = pred_idx.shape[0]
    out = torch.zeros(b, num_patches, dtype=torch.bool)
    return out.scatter_(1, pred_idx.reshape(b, -1), True)


def _mask_to_idx(mask: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, N)`` bool with exactly ``length`` True per row -> ``(B, length)`` ascending."""
    return mask.nonzero()[:, 1].reshape(mask.shape[0], length)


def _scan_orders(grid: tuple[int, int]) -> torch.Tensor:
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


# ----------------------------------------------------------------------------- bootleg


class MultiBlockSampler(MaskSampler):
    """Shared settings of the multi-block samplers (Bootleg and I-JEPA): ``num_blocks``
    predictor rectangles sized by ``block_scale`` x ``block_aspect`` inside a square
    background of ``background_scale``, keeping at least ``min_keep`` visible patches."""

    def __init__(
        self,
        grid: tuple[int, int],
        num_blocks: int,
        block_scale: tuple[float, float],
        block_aspect: tuple[float, float],
        background_scale: tuple[float, float],
        min_keep: int,
    ) -> None:
        super().__init__(grid, num_blocks)
        self.block_scale = tuple(map(float, block_scale))
        self.block_aspect = tuple(map(float, block_aspect))
        self.background_scale = tuple(map(float, background_scale))
        self.min_keep = int(min_keep)


class BootlegSampler(MultiBlockSampler):
    """The paper's multi-block sampler (Appendix C, with all fixes).

    Per call: block scale and aspect magnitude drawn independently, ``h, w`` rounded
    from the unrounded area, random first orientation, blocks alternating orientation;
    one background side per call. Per sample: every block and the background placed
    uniformly over every valid top-left position; samples with fewer than ``min_keep``
    visible patches are re-placed (vectorised, bounded retries); truncation removes the
    surplus visible patches met first when scanning from a random corner in a random
    orientation (one of 8 scan orders per sample).
    """

    name = "bootleg"

    def __init__(
        self,
        grid: tuple[int, int],
        num_blocks: int = 4,
        block_scale: tuple[float, float] = (0.16, 0.18),
        block_aspect: tuple[float, float] = (1.0, 1.45),
        background_scale: tuple[float, float] = (0.85, 1.0),
        min_keep: int = 10,
        max_retries: int = 20,
    ) -> None:
        super().__init__(grid, num_blocks, block_scale, block_aspect, background_scale, min_keep)
        self.max_retries = int(max_retries)
        self._orders = _scan_orders(self.grid)

    # -- per-call sizes ------------------------------------------------------------

    def draw_scale_aspect(self, generator: torch.Generator) -> tuple[float, float, bool]:
        """Independent ``scale ~ U(block_scale)``, ``aspect ~ U(block_aspect)`` and a
        fair coin for the orientation of block 0."""
        u_s, u_a, u_o = _rand_floats(generator, 3)
        s_lo, s_hi = self.block_scale
        a_lo, a_hi = self.block_aspect
        return s_lo + u_s * (s_hi - s_lo), a_lo + u_a * (a_hi - a_lo), u_o < 0.5

    def block_size(self, generator: torch.Generator) -> tuple[int, int]:
        """``(h, w)`` of block 0 (block ``k`` is ``(w, h)`` for odd ``k``)."""
        scale, aspect, swap = self.draw_scale_aspect(generator)
        h, w = _bootleg_hw(scale * self.num_patches, aspect)
        side = min(self.grid)  # blocks alternate orientation: both sides must fit
        h, w = min(max(h, 1), side), min(max(w, 1), side)
        return (w, h) if swap else (h, w)

    def background_side(self, generator: torch.Generator) -> int:
        """Side of the square background: ``round(sqrt(b * H * W))``, ``b ~ U(background_scale)``."""
        (u,) = _rand_floats(generator, 1)
        b_lo, b_hi = self.background_scale
        side = _round(math.sqrt((b_lo + u * (b_hi - b_lo)) * self.num_patches))
        return min(max(side, 1), min(self.grid))

    # -- per-sample placement ------------------------------------------------------

    def _place(
        self, n: int, hw: tuple[int, int], side: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Place blocks and background for ``n`` samples.

        Returns ``pred_idx`` ``(n, K, P)`` and ``visible`` ``(n, H*W)`` bool.
        """
        gh, gw = self.grid
        k = self.num_regions
        h, w = hw
        shapes = torch.tensor([[h, w] if i % 2 == 0 else [w, h] for i in range(k)])  # (K, 2)
        high = torch.tensor([gh + 1, gw + 1]) - shapes  # valid tops/lefts: 0..H-h
        pos = _uniform_ints(high, (n, k, 2), generator)  # (n, K, 2)
        offset = pos[..., 0] * gw + pos[..., 1]  # (n, K)
        templates = torch.stack([_rect_template(h, w, gw), _rect_template(w, h, gw)])
        template = templates[torch.arange(k) % 2]  # (K, P)
        pred_idx = offset.unsqueeze(2) + template  # (n, K, P)
        bg_pos = _uniform_ints(torch.tensor([gh - side + 1, gw - side + 1]), (n, 2), generator)
        background = _box_mask(bg_pos[:, 0], bg_pos[:, 1], side, side, self.grid)
        visible = background & ~_union_mask(pred_idx, self.num_patches)
        return pred_idx, visible

    def _place_with_retries(
        self, batch_size: int, hw: tuple[int, int], side: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred_idx, visible = self._place(batch_size, hw, side, generator)
        need = max(self.min_keep, 1)
        for _ in range(self.max_retries):
            bad = (visible.sum(1) < need).nonzero().squeeze(1)
            if bad.numel() == 0:
                break
            pred_idx[bad], visible[bad] = self._place(bad.numel(), hw, side, generator)
        if int(visible.sum(1).min()) < 1:
            raise BootlegError(
                f"masking: could not leave any visible patch after {self.max_retries} retries "
                f"(blocks {hw}, background {side}x{side}); expected smaller "
                "block_scale/num_blocks or larger background_scale"
            )
        return pred_idx, visible

    def _truncate(self, visible: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Keep ``L = min count`` visible patches per sample, removing the surplus met
        first along one of 8 random scan orders. Returns ``((B, H*W) bool, L)``."""
        counts = visible.sum(1)  # (B,)
        length = int(counts.min())
        b = visible.shape[0]
        choice = torch.randint(0, 8, (b,), generator=generator)
        perm = self._orders[choice]  # (B, N)
        vis_scan = visible.gather(1, perm)
        seen = vis_scan.cumsum(1)
        keep_scan = vis_scan & (seen > (counts - length).unsqueeze(1))
        keep = torch.empty_like(visible).scatter_(1, perm, keep_scan)
        return keep, length

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        hw = self.block_size(generator)
        side = self.background_side(generator)
        pred_idx, visible = self._place_with_retries(batch_size, hw, side, generator)
        keep, length = self._truncate(visible, generator)
        return Masks(enc_idx=_mask_to_idx(keep, length), pred_idx=pred_idx), visible


# ----------------------------------------------------------------------------- I-JEPA


def _ijepa_hw(scale: float, aspect: float, gh: int, gw: int) -> tuple[int, int]:
    """I-JEPA's ``_sample_block_size`` given the drawn scale and aspect."""
    max_keep = int(gh * gw * scale)
    h = int(round(math.sqrt(max_keep * aspect)))
    w = int(round(math.sqrt(max_keep / aspect)))
    while h >= gh:
        h -= 1
    while w >= gw:
        w -= 1
    return h, w


class IJepaSampler(MultiBlockSampler):
    """I-JEPA's multi-block sampler, behaviour (and bugs) kept, vectorised.

    One random number drives both block scale and aspect; sizes are capped at
    ``grid - 1``; top-left corners are drawn from ``[0, H - h)`` (exclusive, 0 when
    empty); no orientation alternation. The background placement of samples with
    ``<= min_keep`` visible patches is redrawn (up to 20 times, like I-JEPA's timeout).
    I-JEPA then drops one exclusion constraint, which would let the encoder see target
    patches; instead we redraw the failing samples' predictor blocks too and start over
    (bounded), so targets are never visible. Truncation keeps the first ``L`` visible
    patches in row-major order.
    """

    name = "ijepa"

    def __init__(
        self,
        grid: tuple[int, int],
        num_blocks: int = 4,
        block_scale: tuple[float, float] = (0.15, 0.2),
        block_aspect: tuple[float, float] = (0.75, 1.5),
        background_scale: tuple[float, float] = (0.85, 1.0),
        min_keep: int = 10,
        timeout: int = 20,
        max_rounds: int = 20,
    ) -> None:
        super().__init__(grid, num_blocks, block_scale, block_aspect, background_scale, min_keep)
        self.timeout = int(timeout)
        self.max_rounds = int(max_rounds)

    def draw_scale_aspect(self, generator: torch.Generator) -> tuple[float, float]:
        """The known bug: one uniform ``r`` gives both scale and aspect."""
        (r,) = _rand_floats(generator, 1)
        s_lo, s_hi = self.block_scale
        a_lo, a_hi = self.block_aspect
        return s_lo + r * (s_hi - s_lo), a_lo + r * (a_hi - a_lo)

    def block_size(self, generator: torch.Generator) -> tuple[int, int]:
        scale, aspect = self.draw_scale_aspect(generator)
        return _ijepa_hw(scale, aspect, *self.grid)

    def background_size(self, generator: torch.Generator) -> tuple[int, int]:
        (r,) = _rand_floats(generator, 1)
        b_lo, b_hi = self.background_scale
        return _ijepa_hw(b_lo + r * (b_hi - b_lo), 1.0, *self.grid)

    def _corners(self, n: int, k: int, hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """``(n, k, 2)`` top-left corners from ``randint(0, H - h)`` (exclusive bound)."""
        high = torch.tensor([max(self.grid[0] - hw[0], 1), max(self.grid[1] - hw[1], 1)])
        return _uniform_ints(high, (n, k, 2), generator)

    def _pred(self, n: int, hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        pos = self._corners(n, self.num_regions, hw, generator)
        offset = pos[..., 0] * self.grid[1] + pos[..., 1]
        return offset.unsqueeze(2) + _rect_template(hw[0], hw[1], self.grid[1])

    def _visible(self, allowed: torch.Tensor, bg_hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        pos = self._corners(allowed.shape[0], 1, bg_hw, generator)[:, 0]
        return _box_mask(pos[:, 0], pos[:, 1], bg_hw[0], bg_hw[1], self.grid) & allowed

    def _failing(self, visible: torch.Tensor) -> torch.Tensor:
        """Indices of samples with ``<= min_keep`` visible patches (I-JEPA's test)."""
        return (visible.sum(1) <= self.min_keep).nonzero().squeeze(1)

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        p_hw = self.block_size(generator)
        e_hw = self.background_size(generator)
        n = self.num_patches
        pred_idx = self._pred(batch_size, p_hw, generator)
        allowed = ~_union_mask(pred_idx, n)
        visible = self._visible(allowed, e_hw, generator)
        for _ in range(self.max_rounds):
            for _ in range(self.timeout):
                bad = self._failing(visible)
                if bad.numel() == 0:
                    break
                visible[bad] = self._visible(allowed[bad], e_hw, generator)
            bad = self._failing(visible)
            if bad.numel() == 0:
                break
            pred_idx[bad] = self._pred(bad.numel(), p_hw, generator)
            allowed[bad] = ~_union_mask(pred_idx[bad], n)
            visible[bad] = self._visible(allowed[bad], e_hw, generator)
        counts = visible.sum(1)
        length = int(counts.min())
        if length < 1:
            raise BootlegError(
                f"masking: could not leave any visible patch (blocks {p_hw}, background "
                f"{e_hw}); expected smaller block_scale/num_blocks or larger background_scale"
            )
        keep = visible & (visible.cumsum(1) <= length)
        return Masks(enc_idx=_mask_to_idx(keep, length), pred_idx=pred_idx), visible


# ----------------------------------------------------------------------------- K = 1


class RandomSampler(MaskSampler):
    """MAE: per sample a uniform random subset of ``int(N * (1 - mask_ratio[0]))``
    patches is visible; the single target region is every other patch."""

    name = "random"

    def __init__(self, grid: tuple[int, int], mask_ratio: tuple[float, float] = (0.75, 0.75)) -> None:
        super().__init__(grid, 1)
        self.mask_ratio = tuple(map(float, mask_ratio))
        self.num_keep = int(self.num_patches * (1.0 - self.mask_ratio[0]))

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        n, keep = self.num_patches, self.num_keep
        order = torch.rand(batch_size, n, generator=generator).argsort(1)
        visible = torch.zeros(batch_size, n, dtype=torch.bool)
        visible.scatter_(1, order[:, :keep], True)  # exactly `keep` True per row
        enc = _mask_to_idx(visible, keep)
        pred = _mask_to_idx(~visible, n - keep).unsqueeze(1)
        return Masks(enc_idx=enc, pred_idx=pred), visible


class CyclicSampler(MaskSampler):
    """CAPI/Franca cyclic block: per call a ratio ``m ~ U(mask_ratio)`` and a
    log-uniform aspect give one ``h x w`` rectangle (``h*w ~= m*H*W``); per sample it
    is placed at a uniform offset on the torus (wrapping around the edges). The single
    target region is the rectangle; the encoder sees the complement."""

    name = "cyclic"

    def __init__(
        self,
        grid: tuple[int, int],
        mask_ratio: tuple[float, float] = (0.7, 0.8),
        block_aspect: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        super().__init__(grid, 1)
        self.mask_ratio = tuple(map(float, mask_ratio))
        self.block_aspect = tuple(map(float, block_aspect))

    def block_size(self, generator: torch.Generator) -> tuple[int, int]:
        u_m, u_a = _rand_floats(generator, 2)
        gh, gw = self.grid
        m_lo, m_hi = self.mask_ratio
        area = (m_lo + u_m * (m_hi - m_lo)) * gh * gw
        la, lb = math.log(self.block_aspect[0]), math.log(self.block_aspect[1])
        aspect = math.exp(la + u_a * (lb - la))
        h = min(max(_round(math.sqrt(area * aspect)), 1), gh)
        w = min(max(_round(area / h), 1), gw)
        h = min(max(_round(area / w), 1), gh)
        if h * w >= gh * gw:  # keep at least one visible patch
            h, w = (h - 1, w) if h > 1 else (h, w - 1)
        return h, w

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        gh, gw = self.grid
        h, w = self.block_size(generator)
        pos = _uniform_ints(torch.tensor([gh, gw]), (batch_size, 2), generator)
        rows = (pos[:, :1] + torch.arange(h)) % gh  # (B, h)
        cols = (pos[:, 1:] + torch.arange(w)) % gw  # (B, w)
        idx = (rows.unsqueeze(2) * gw + cols.unsqueeze(1)).reshape(batch_size, h * w)
        target = _union_mask(idx.unsqueeze(1), self.num_patches)
        pred = _mask_to_idx(target, h * w).unsqueeze(1)
        visible = ~target
        enc = _mask_to_idx(visible, self.num_patches - h * w)
        return Masks(enc_idx=enc, pred_idx=pred), visible


class InverseBlockSampler(MaskSampler):
    """data2vec 2.0 inverse block masking.

    Per call a ratio ``m ~ U(mask_ratio)``; per sample, start all-masked and unmask
    ``s x s`` squares (``s = inverse_block_size``) whose centres are uniform over the
    grid and which are *clipped* at the edges (no wrap-around), until at least
    ``n_vis = round((1 - m) * H * W)`` patches are visible. Squares are drawn for the
    whole batch at once (a fixed budget of squares, cumulative union, first index that
    reaches ``n_vis``). Then every sample is truncated (random surplus patches masked
    again) or extended (random masked patches unmasked, if the budget ran out) to exactly
    ``n_vis`` visible patches. The single target region is every non-visible patch.
    """

    name = "inverse_block"

    def __init__(
        self,
        grid: tuple[int, int],
        mask_ratio: tuple[float, float] = (0.8, 0.8),
        inverse_block_size: int = 3,
    ) -> None:
        super().__init__(grid, 1)
        self.mask_ratio = tuple(map(float, mask_ratio))
        self.block = int(inverse_block_size)

    def num_visible(self, generator: torch.Generator) -> int:
        (u,) = _rand_floats(generator, 1)
        m_lo, m_hi = self.mask_ratio
        return _round((1.0 - (m_lo + u * (m_hi - m_lo))) * self.num_patches)

    def sample_with_context(self, batch_size: int, generator: torch.Generator) -> tuple[Masks, torch.Tensor]:
        gh, gw = self.grid
        n, s = self.num_patches, self.block
        n_vis = self.num_visible(generator)
        budget = 2 * math.ceil(n_vis / (s * s)) + 4
        centre = _uniform_ints(torch.tensor([gh, gw]), (batch_size, budget, 2), generator)
        top = centre - (s - 1) // 2  # (B, T, 2), may be negative: clipped by the masks
        rows, cols = torch.arange(gh), torch.arange(gw)
        in_r = (rows >= top[..., :1]) & (rows < top[..., :1] + s)  # (B, T, H)
        in_c = (cols >= top[..., 1:]) & (cols < top[..., 1:] + s)  # (B, T, W)
        squares = (in_r.unsqueeze(3) & in_c.unsqueeze(2)).reshape(batch_size, budget, n)
        union = squares.cummax(1).values  # (B, T, N)
        reached = union.sum(2) >= n_vis  # (B, T)
        first = torch.where(reached.any(1), reached.int().argmax(1), budget - 1)
        context = union[torch.arange(batch_size), first]  # (B, N)
        score = context.float() + torch.rand(batch_size, n, generator=generator)
        keep_idx = score.topk(n_vis, dim=1).indices
        visible = torch.zeros(batch_size, n, dtype=torch.bool).scatter_(1, keep_idx, True)
        enc = _mask_to_idx(visible, n_vis)
        pred = _mask_to_idx(~visible, n - n_vis).unsqueeze(1)
        return Masks(enc_idx=enc, pred_idx=pred), context


# ----------------------------------------------------------------------------- factory


def build_sampler(cfg: Any, grid: tuple[int, int]) -> MaskSampler:
    """Build the sampler named by ``cfg.sampler`` for a ``grid = (H, W)`` patch grid.

    ``cfg`` has the attributes of ``MaskingParams``; ``None`` means the sampler's
    default (``SAMPLER_DEFAULTS``). Raises ``BootlegError`` for impossible parameters.
    """
    validate_sampler_params(cfg, grid)
    name, p = resolve_params(cfg)
    grid = _check_grid(grid)
    if name == "bootleg":
        return BootlegSampler(grid, **p)
    if name == "ijepa":
        return IJepaSampler(grid, **p)
    if name == "random":
        return RandomSampler(grid, **p)
    if name == "cyclic":
        return CyclicSampler(grid, **p)
    return InverseBlockSampler(grid, **p)


class StepMasks:
    """``(epoch, batch) -> Masks`` of one rank's micro-batch: a pure, picklable function of
    ``(seed, epoch, batch, rank)`` (the stream and its data-loader workers call it)."""

    def __init__(self, sampler: MaskSampler, batch_size: int, seed: int, rank: int = 0) -> None:
        self.sampler, self.batch_size, self.seed, self.rank = sampler, int(batch_size), int(seed), int(rank)

    def __call__(self, epoch: int, batch: int) -> Masks:
        g = torch.Generator().manual_seed(mask_seed(self.seed, epoch, batch, self.rank, 0))
        return self.sampler(self.batch_size, g)
