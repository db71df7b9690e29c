"""Frozen-backbone evaluation: the paper's classification and segmentation probes.

    >>> from bootleg.probe.runner import run_probes
    >>> from bootleg.probe import ProbeConfig
    >>> report = run_probes("runs/demo", "runs/demo/probe", ProbeConfig(), seed=0)
    >>> report.score("linear_patch"), report.headline().metric

This package module imports only the settings and the result types (light, no torch):
:mod:`bootleg.config` imports :class:`ProbeConfig` from here. ``run_probes`` lives in
:mod:`bootleg.probe.runner`. See ``docs/probes.md``.
"""

from __future__ import annotations

from bootleg.probe.config import (
    CLASSIFY_PROBES,
    PROBE_GROUPS,
    PROBE_NAMES,
    SEGMENT_PROBES,
    ProbeConfig,
)
from bootleg.probe.results import ProbeReport, ProbeResult

__all__ = [
    "CLASSIFY_PROBES",
    "PROBE_GROUPS",
    "PROBE_NAMES",
    "SEGMENT_PROBES",
    "ProbeConfig",
    "ProbeReport",
    "ProbeResult",
]
