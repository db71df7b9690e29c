"""Typed probe results: what ``run_probes`` returns and ``probe.json`` holds.

Each probe states its own headline metric and score; reports, MLflow metrics and the
registry's alias rule read :attr:`ProbeResult.score` / :meth:`ProbeReport.headline` and never
guess from key names.
"""

from __future__ import annotations

from typing import Any

from bootleg.schema import Strict

#: which probe's score heads a report, first present wins (the paper's main probe first)
HEADLINE_ORDER = ("attentive", "linear_cls", "linear_patch", "knn", "seg_block", "seg_linear", "seg_knn")


class ProbeResult(Strict):
    """One probe's outcome. ``score`` is the headline number (percent) of ``metric``."""

    probe: str  # e.g. "linear_cls"
    metric: str  # e.g. "top1" or "miou"
    score: float  # percent, on the test split, of the configuration selected on validation
    selected: dict[str, float | int | str] = {}  # the chosen hyper-parameters (lr, wd, k, feature, ...)
    details: dict[str, Any] = {}  # everything else: per-config validation/test, top-5, per-class, ...


class ProbeReport(Strict):
    """All probes of one encoder on one dataset (the content of ``probe.json``)."""

    checkpoint: str
    dataset: str
    seed: int
    protocol: str = "quick"  # "quick" (cached features) or "paper" (online, frozen encoder in the loop)
    encoder: dict[str, Any] = {}
    splits: dict[str, Any] = {}
    results: list[ProbeResult] = []
    skipped: dict[str, str] = {}  # probe -> why it could not run (e.g. no CLS token)
    config: dict[str, Any] = {}

    def get(self, probe: str) -> ProbeResult | None:
        return next((r for r in self.results if r.probe == probe), None)

    def score(self, probe: str) -> float | None:
        r = self.get(probe)
        return None if r is None else r.score

    def headline(self) -> ProbeResult | None:
        """The result that stands for the whole report (see :data:`HEADLINE_ORDER`)."""
        for name in HEADLINE_ORDER:
            r = self.get(name)
            if r is not None:
                return r
        return self.results[0] if self.results else None

    def metrics(self, prefix: str = "probe.") -> dict[str, float]:
        """Flat ``{"probe.<name>.<metric>": score}`` for trackers."""
        return {f"{prefix}{r.probe}.{r.metric}": r.score for r in self.results}
