"""The MLflow UI as a user meets it, in a real headless Chromium (Debian's ``chromium``;
skipped when it is not installed): on a store where the @champion rule has run, the
experiment page lists the training runs and the registered model page shows the alias on
the version the rule picked. Screenshots are kept next to the DOM the test reads."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from flows import registry, tracking

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")


def browse(url: str, out: Path) -> str:
    """Render ``url`` headless; save ``out``.png; return the page's visible text."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={out.parent / 'chromium-profile'}", "--virtual-time-budget=20000",
            "--window-size=1400,1000"]  # fmt: skip
    subprocess.run([*base, f"--screenshot={out.with_suffix('.png')}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    out.with_suffix(".html").write_text(dom)
    text = re.sub(r"<style[^>]*>.*?</style>|<script[^>]*>.*?</script>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))  # \s takes &nbsp; too


@pytest.mark.slow
def test_experiment_and_model_pages(start_mlflow_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_tracking import report_with, tiny_encoder

    server = start_mlflow_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    key = registry.CompareKey(
        dataset="embedded@abc", model="micro/32px/p4", probes="knn,linear_cls@quick", metric="probe.linear_cls.top1"
    )
    runs = [
        ("demo", 40.0, "train"),
        ("smoke", 90.0, "smoke"),
        ("ablation-late", 95.0, "ablation"),
        ("demo-2", 45.0, "train"),
    ]
    for i, (name, score, kind) in enumerate(runs):
        rep = report_with(score)
        rid = tracking.start_run(None, experiment="bootleg", run_name=f"ui-{name}")
        tracking.log_metrics(rid, rep.metrics())
        tracking.set_tags(rid, {**key.tags(), registry.TAG_KIND: kind})
        version = registry.register_encoder(rid, tiny_encoder(tmp_path / f"enc{i}", seed=i), "bootleg-encoder")
        registry.promote("bootleg-encoder", "champion", version, key, score, kind)
        tracking.end_run(rid)
    exp = tracking.experiment_id("bootleg")

    page = browse(tracking.experiment_url(server.url, exp), tmp_path / "experiment")
    assert (tmp_path / "experiment.png").stat().st_size > 10_000
    for name, _, _ in runs:
        assert f"ui-{name}" in page, page[:2000]

    page = browse(f"{server.url}/#/models/bootleg-encoder", tmp_path / "model")
    assert (tmp_path / "model.png").stat().st_size > 10_000
    versions = re.findall(r"Version (\d+) .*?(?=Version \d+ |Previous|$)", page)
    assert versions[:4] == ["4", "3", "2", "1"], page[:2000]
    holder = re.search(r"Version (\d+) [^V]*?@ champion", page)
    assert holder and holder.group(1) == "4", page[:2000]  # the rule: the better full run, not smoke or ablation
