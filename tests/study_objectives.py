"""Cheap Optuna objectives for the study tests (workers import them via PYTHONPATH=tests)."""

from __future__ import annotations

import os
import time
from typing import Any

from flows.study import trial_overrides


def toy(trial: Any, spec: Any, run_id: str | None) -> float:
    """Samples the real search space (target blocks of an 8-block ViT), then sleeps
    ``BOOTLEG_TOY_SLEEP`` seconds per round instead of training."""
    overrides = trial_overrides(trial, spec, depth=8)
    blocks = [int(b) for b in overrides[0].split("=", 1)[1].strip("[]").split(",")] if spec.search_targets else [1]
    value = 0.0
    for r in range(spec.rounds):
        time.sleep(float(os.environ.get("BOOTLEG_TOY_SLEEP", "0.5")))
        value = 10.0 * len(blocks) + r
        trial.report(value, r)
    return value
