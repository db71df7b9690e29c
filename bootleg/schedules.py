"""Schedules as pure functions of the step (resume is exact: no generator state).

LR: linear warmup ``lr_init -> lr_max`` over ``warmup`` steps, then cosine to ``lr_final``.
Weight decay: cosine from ``wd_init`` to ``wd_final`` over the run (I-JEPA's rule).
EMA momentum: linear from ``ema_init`` to ``ema_final`` over the run.
"""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total``), clamped after."""
    t = min(max(step, 0), total) / max(total, 1)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def lr_at(step: int, total: int, warmup: int, lr_init: float, lr_max: float, lr_final: float) -> float:
    if step < warmup:
        return lr_init + (lr_max - lr_init) * step / warmup
    return cosine(step - warmup, total - warmup, lr_max, lr_final)


def wd_at(step: int, total: int, wd_init: float, wd_final: float) -> float:
    return cosine(step, total, wd_init, wd_final)


def ema_at(step: int, total: int, ema_init: float, ema_final: float) -> float:
    return ema_init + (ema_final - ema_init) * min(step, total) / max(total, 1)


def warmup_steps(total: int, warmup_epochs: float, epochs: int) -> int:
    """Warmup scales with the run's length (Appendix B): the same fraction of ``total``."""
    return int(round(total * warmup_epochs / epochs))
