"""Frozen-backbone evaluation: the paper's classification and segmentation probes.

    >>> from bootleg.probe import run_probes, ProbeConfig
    >>> results = run_probes("runs/demo", "runs/demo/probe", ProbeConfig(), seed=0)
    >>> results["linear_patch"]["top1"]

``run_probes`` is imported lazily so that :mod:`bootleg.config` can import
:class:`ProbeConfig` without a cycle. See ``docs/probes.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bootleg.probe.config import (
    CLASSIFY_PROBES,
    PROBE_GROUPS,
    PROBE_NAMES,
    SEGMENT_PROBES,
    ProbeConfig,
)

if TYPE_CHECKING:
    from bootleg.probe.runner import run_probes

__all__ = ["CLASSIFY_PROBES", "PROBE_GROUPS", "PROBE_NAMES", "SEGMENT_PROBES", "ProbeConfig", "run_probes"]


def __getattr__(name: str) -> Any:
    if name == "run_probes":
        from bootleg.probe.runner import run_probes

        return run_probes
    raise AttributeError(f"module 'bootleg.probe' has no attribute {name!r}")
