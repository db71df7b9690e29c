"""Statistics and figures of mask samplers (``bootleg masks stats`` / ``bootleg masks show``).

``mask_stats`` measures what the paper reports in Table 8 (block size rates), Tables 5/6
(seen and target rates) and Figures 5/6 (how often each patch is seen or predicted).
``plot_masks`` draws example masks and the two frequency maps, like Figures 4-6.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from bootleg.errors import BootlegError
from bootleg.masking import Masks, MaskSampler, StepMasks, mask_seed

__all__ = ["block_shapes", "enc_mask", "example_image", "mask_stats", "plot_masks", "union_mask"]


def _scatter(idx: torch.Tensor, valid: torch.Tensor | None, num_patches: int) -> torch.Tensor:
    """``(B, H*W)`` bool: the patches at the valid positions of ``idx`` ``(B, ...)``."""
    b = idx.shape[0]
    idx = idx.reshape(b, -1)
    if valid is None:
        return torch.zeros(b, num_patches, dtype=torch.bool).scatter_(1, idx, True)
    hits = torch.zeros(b, num_patches, dtype=torch.long).scatter_add_(1, idx, valid.reshape(b, -1).long())
    return hits > 0


def union_mask(masks: Masks, num_patches: int) -> torch.Tensor:
    """``(B, H*W)`` bool: patches in any target region (valid positions only)."""
    return _scatter(masks.pred_idx, masks.pred_valid, num_patches)


def enc_mask(masks: Masks, num_patches: int) -> torch.Tensor:
    """``(B, H*W)`` bool: patches given to the encoder (valid positions only)."""
    return _scatter(masks.enc_idx, masks.enc_valid, num_patches)


def block_shapes(pred_idx: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, K, 2)`` long: ``(h, w)`` of each region's bounding box (rows x columns).

    For the rectangular, non-wrapping blocks of multi-block samplers this is the block's
    exact height and width.
    """
    rows, cols = pred_idx // width, pred_idx % width
    h = rows.amax(-1) - rows.amin(-1) + 1
    w = cols.amax(-1) - cols.amin(-1) + 1
    return torch.stack([h, w], dim=-1)


def _mean_std(values: torch.Tensor) -> dict[str, float]:
    v = values.double()
    return {"mean": float(v.mean()), "std": float(v.std(unbiased=False))}


def mask_stats(
    sampler: MaskSampler, batch_size: int, batches: int, seed: int, group_size: int | None = None
) -> dict[str, Any]:
    """Sample ``batches`` micro-batches of ``batch_size`` masks and summarise them.

    Micro-batch ``i`` is ``StepMasks(sampler, batch_size, seed, 0, group_size)(0, i)``: masks
    are sampled per group of ``group_size`` images (``None``: the sampler's ``masking.group_size``,
    or ``batch_size`` for a sampler built without params), and only valid (non-padding) positions are counted. With
    ``group_size == batch_size``, batch ``i`` uses a generator seeded with ``mask_seed(seed, 0, i)``.

    Returns a dict with exactly these keys:

    * ``block_hw_rates``: ``{"HxW": fraction}`` of predictor blocks with height ``H``
      (rows) and width ``W`` (columns), over all blocks sampled. Only for multi-block
      samplers (``num_regions > 1``); ``{}`` for single-region samplers (random, cyclic,
      inverse block), whose region is not one rectangle.
    * ``seen_rate``: ``{"mean", "std"}`` over samples of the valid ``L / (H*W)`` (after truncation).
    * ``target_rate``: ``{"mean", "std"}`` over samples of ``|union of regions| / (H*W)``.
    * ``visible_frequency``: ``H`` lists of ``W`` floats, fraction of samples in which
      the patch is given to the encoder.
    * ``target_frequency``: same for the union of the target regions.
    """
    if batch_size < 1 or batches < 1:
        raise BootlegError(f"masks stats: batch_size={batch_size}, batches={batches}; expected both >= 1")
    gh, gw = sampler.grid
    n = gh * gw
    shapes: Counter[str] = Counter()
    seen, target = [], []
    vis_count = torch.zeros(n, dtype=torch.float64)
    tgt_count = torch.zeros(n, dtype=torch.float64)
    step = StepMasks(sampler, batch_size, seed, 0, group_size or sampler.group_size or batch_size)
    for i in range(batches):
        masks = step(0, i)
        enc = enc_mask(masks, n)
        tgt = union_mask(masks, n)
        seen.append(enc.sum(1))
        target.append(tgt.sum(1))
        vis_count += enc.sum(0)
        tgt_count += tgt.sum(0)
        if sampler.num_regions > 1:
            hw = block_shapes(masks.pred_idx, gw).reshape(-1, 2)
            pairs, counts = hw.unique(dim=0, return_counts=True)
            for (h, w), c in zip(pairs.tolist(), counts.tolist(), strict=True):
                shapes[f"{h}x{w}"] += c
    total_samples = batches * batch_size
    total_blocks = sum(shapes.values())
    return {
        "block_hw_rates": {k: shapes[k] / total_blocks for k in sorted(shapes, key=_hw_key)},
        "seen_rate": _mean_std(torch.cat(seen) / n),
        "target_rate": _mean_std(torch.cat(target) / n),
        "visible_frequency": (vis_count / total_samples).reshape(gh, gw).tolist(),
        "target_frequency": (tgt_count / total_samples).reshape(gh, gw).tolist(),
    }


def _hw_key(key: str) -> tuple[int, int]:
    h, w = key.split("x")
    return int(h), int(w)


# ----------------------------------------------------------------------------- figure

_VISIBLE = (0.30, 0.75, 0.35)
_DROPPED = (0.55, 0.55, 0.55)
_HIDDEN = (1.0, 1.0, 1.0)
_REGION_COLOURS = [
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.74, 0.74, 0.13),
    (0.09, 0.75, 0.81),
]


def example_image(masks: Masks, context: torch.Tensor, i: int, grid: tuple[int, int]) -> torch.Tensor:
    """``(H, W, 3)`` float RGB of sample ``i``: encoder-visible patches green,
    truncated-away patches (in the context but not given to the encoder) grey, each
    target region in its own colour (overlaps averaged), other patches white."""
    gh, gw = grid
    n = gh * gw
    img = torch.tensor(_HIDDEN).repeat(n, 1)
    img[context[i]] = torch.tensor(_DROPPED)
    img[masks.enc_idx[i]] = torch.tensor(_VISIBLE)
    colour_sum = torch.zeros(n, 3)
    hits = torch.zeros(n)
    for k, region in enumerate(masks.pred_idx[i]):
        colour_sum[region] += torch.tensor(_REGION_COLOURS[k % len(_REGION_COLOURS)])
        hits[region] += 1
    hit = hits > 0
    img[hit] = colour_sum[hit] / hits[hit].unsqueeze(1)
    return img.reshape(gh, gw, 3)


def plot_masks(
    sampler: MaskSampler,
    out: Path,
    seed: int,
    n_examples: int = 8,
    batches: int = 50,
    batch_size: int = 256,
) -> Path:
    """Write one PNG with ``n_examples`` example masks (from one batch of
    ``batch_size``, so truncation is realistic) and the visible/target frequency maps
    over ``batches`` batches, with colour bars. Written atomically; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if n_examples < 1 or n_examples > batch_size:
        raise BootlegError(f"masks show: n_examples={n_examples}; expected 1..{batch_size}")
    gh, gw = sampler.grid
    generator = torch.Generator().manual_seed(mask_seed(seed, 0, 0))
    masks, context = sampler.sample_with_context(batch_size, generator)
    stats = mask_stats(sampler, batch_size, batches, seed)

    fig = plt.figure(figsize=(max(1.6 * n_examples, 8.0), 6.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 2.2])
    for i, ax in enumerate(top.subplots(1, n_examples, squeeze=False)[0]):
        ax.imshow(example_image(masks, context, i, (gh, gw)).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{i}", fontsize=8)
    maps = [("visible_frequency", "seen by encoder"), ("target_frequency", "predicted (target)")]
    for ax, (key, title) in zip(bottom.subplots(1, 2), maps, strict=True):
        im = ax.imshow(stats[key], cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set_title(f"{title}: fraction of samples", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.85)
    seen, tgt = stats["seen_rate"], stats["target_rate"]
    fig.suptitle(
        f"{getattr(sampler, 'name', type(sampler).__name__)} masks on {gh}x{gw}, batch "
        f"{batch_size}: seen {100 * seen['mean']:.1f}±{100 * seen['std']:.1f}%, "
        f"target {100 * tgt['mean']:.1f}±{100 * tgt['std']:.1f}% "
        "(green seen, grey truncated, colours targets)",
        fontsize=9,
    )
    _save_atomic(fig, out)
    plt.close(fig)
    return out


def _save_atomic(fig: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
