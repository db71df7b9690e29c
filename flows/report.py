"""Tables and figures the flows write: probe metrics flattened for MLflow and DVC, loss
curves from ``metrics.jsonl``, run reports and ablation comparison tables (markdown + CSV,
laid out like the paper's Tables 2-5)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bootleg.probe.results import ProbeReport

#: probe names in the paper's column order and their column labels
#: marks the columns that hold the paper's numbers beside ours
PAPER_SUFFIX = "(paper)"
PROBE_COLUMNS: dict[str, str] = {
    "linear_patch": "Patch",
    "linear_cls": "CLS",
    "attentive": "X-Blk",
    "knn": "kNN",
    "seg_knn": "Seg kNN",
    "seg_linear": "Seg Lin",
    "seg_block": "Seg Blk",
}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash
    return out


def as_report(probe: ProbeReport | Mapping[str, Any] | str | Path | None) -> ProbeReport | None:
    """A :class:`ProbeReport` from itself, its ``model_dump()`` or a ``probe.json`` path."""
    if probe is None or isinstance(probe, ProbeReport):
        return probe
    if isinstance(probe, (str, Path)):
        return ProbeReport.model_validate_json(Path(probe).read_text())
    return ProbeReport.model_validate(probe) if probe else None


def headline_metric(probe: ProbeReport, wanted: str = "auto") -> str | None:
    """The metric key that ranks versions: the report's headline (``probe.<name>.<metric>``),
    or ``wanted`` (a key of :meth:`ProbeReport.metrics`, with or without ``probe.``)."""
    metrics = probe.metrics()
    if wanted == "auto":
        h = probe.headline()
        return None if h is None else f"probe.{h.probe}.{h.metric}"
    for key in (wanted, f"probe.{wanted}"):
        if key in metrics:
            return key
    return None


def probe_suite(probe: ProbeReport) -> str:
    """``name,name,...@protocol#hash``: which probes ran, under which protocol and probe
    config (sha256 prefix of ``probe.config``); part of the promotion key."""
    digest = hashlib.sha256(json.dumps(probe.config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return ",".join(sorted(r.probe for r in probe.results)) + f"@{probe.protocol}#{digest}"


# ------------------------------------------------------------------ curves


def loss_csv(metrics_jsonl: str | Path, out_csv: str | Path) -> Path:
    """``step,loss,lr,...`` from ``metrics.jsonl`` (for ``dvc plots``)."""
    rows = read_jsonl(metrics_jsonl)
    cols = ["step", "loss", "lr", "wd", "ema", "images_per_s", "pred_std", "target_std", "rankme"]
    present = [c for c in cols if any(c in r for r in rows)] or ["step", "loss"]
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=present, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in present})
    return out


def plot_curves(metrics_jsonl: str | Path, out_png: str | Path, title: str = "") -> Path | None:
    """Loss, learning rate and collapse monitors against step, one PNG."""
    rows = read_jsonl(metrics_jsonl)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "loss"), ("lr", "learning rate")]
    monitors = [k for k in ("pred_std", "target_std", "rankme") if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, 2 + bool(monitors), figsize=(4.2 * (2 + bool(monitors)), 3.2), layout="constrained")
    for ax, (key, label) in zip(axes, panels, strict=False):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True))
        ax.set_xlabel("step")
        ax.set_title(label)
        if key == "loss":
            ax.set_yscale("log")
    if monitors:
        ax = axes[-1]
        for key in monitors:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*pts, strict=True), marker=".", label=key)
        ax.set_xlabel("step")
        ax.set_title("collapse monitors")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ------------------------------------------------------------------ tables


def _fmt(v: Any, column: str = "") -> str:
    """Probe scores are percentages (one decimal, as in the paper); other numbers 4 digits."""
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.1f}" if is_score_column(column) else f"{v:.4g}"
    return str(v)


def comparison_rows(
    results: Sequence[Mapping[str, Any]],
    paper_columns: Mapping[str, Mapping[str, Any]] | None = None,
    references: Sequence[Mapping[str, Any]] = (),
) -> tuple[list[str], list[dict[str, Any]]]:
    """``results``: ``{"variant": name, "describe": {...}, "probe": ProbeReport (or its dump),
    "final_loss": float, "run_id": str, "paper": {column: number}}`` per variant -> ``(columns,
    rows)``; probe columns follow the paper's order (Patch, CLS, X-Blk, kNN, ...) and hold each
    probe's own score. ``paper_columns`` (an experiment file's ``columns``: key -> {label, probe})
    adds, beside each probe we ran, the paper's number for it; ``references`` are paper-only rows."""
    reports = [as_report(r.get("probe")) for r in results]
    present = {x.probe for rep in reports if rep for x in rep.results}
    probes = [p for p in PROBE_COLUMNS if p in present] + sorted(present - set(PROBE_COLUMNS))
    desc_keys = [
        k
        for k in ("method", "targets", "merge", "sampler", "overrides")
        if any((r.get("describe") or {}).get(k) for r in results)
    ]
    labels = [PROBE_COLUMNS.get(p, p) for p in probes]
    # the paper's column for each probe we ran (the first column of the file naming that probe)
    paper_key = {}
    for key, col in (paper_columns or {}).items():
        if col.get("probe") in probes and col["probe"] not in paper_key:
            paper_key[col["probe"]] = key
    score_cols: list[str] = []
    for p, label in zip(probes, labels, strict=True):
        score_cols += [label, f"{label} {PAPER_SUFFIX}"] if p in paper_key else [label]
    columns = ["Variant", *[k.capitalize() for k in desc_keys], *score_cols, "Final loss", "MLflow run"]
    rows = []
    for r, rep in zip(results, reports, strict=True):
        row: dict[str, Any] = {"Variant": r.get("variant", "")}
        for k in desc_keys:
            row[k.capitalize()] = (r.get("describe") or {}).get(k, "")
        for p, label in zip(probes, labels, strict=True):
            row[label] = rep.score(p) if rep else None
            if p in paper_key:
                row[f"{label} {PAPER_SUFFIX}"] = (r.get("paper") or {}).get(paper_key[p])
        row["Final loss"] = r.get("final_loss")
        row["MLflow run"] = r.get("run_id", "")
        rows.append(row)
    for ref in references:
        row = {"Variant": f"{ref.get('name', '')} (paper only)"}
        for p, label in zip(probes, labels, strict=True):
            if p in paper_key:
                row[f"{label} {PAPER_SUFFIX}"] = (ref.get("paper") or {}).get(paper_key[p])
        rows.append(row)
    return columns, rows


def score_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in PROBE_COLUMNS.values() or c in ("Value",)]


def is_score_column(column: str) -> bool:
    return column in PROBE_COLUMNS.values() or column.removesuffix(f" {PAPER_SUFFIX}") in PROBE_COLUMNS.values()


def plot_scores(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]], out_png: str | Path, title: str = ""
) -> Path:
    """Grouped bars: each row's (variant's or trial's) probe scores, one colour per probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label_col = columns[0]
    scores = [c for c in score_columns(columns) if any(isinstance(r.get(c), (int, float)) for r in rows)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) * max(1, len(scores)) ** 0.5), 3.4), layout="constrained")
    width = 0.8 / max(1, len(scores))
    for j, c in enumerate(scores):
        xs = [i + (j - (len(scores) - 1) / 2) * width for i in range(len(rows))]
        ys = [float(r[c]) if isinstance(r.get(c), (int, float)) else 0.0 for r in rows]
        bars = ax.bar(xs, ys, width, label=c)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(rows)), [str(r.get(label_col, "")) for r in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("score (%)")
    if len(scores) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def to_markdown(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], title: str = "", note: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    left = ("Variant", "MLflow run", "Probe", "Metric", "Trial", "State")
    lines.append("| " + " | ".join("---" if c in left else "---:" for c in columns) + " |")
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c), c) for c in columns) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def to_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def table_records(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for ``prefect.artifacts.create_table_artifact`` (numbers formatted as in markdown)."""
    return [{c: _fmt(r.get(c), c) for c in columns} for r in rows]


def probe_table(probe: ProbeReport, baseline: ProbeReport | None = None) -> str:
    """Markdown: one row per probe with its metric and score, and the random-init score and
    the gain beside it when ``baseline`` is given."""
    cols = ["Probe", "Metric", "Pretrained"] + (["Random init", "Gain"] if baseline else [])
    rows = []
    for r in probe.results:
        row: dict[str, Any] = {"Probe": r.probe, "Metric": r.metric, "Pretrained": f"{r.score:.1f}"}
        if baseline:
            b = baseline.score(r.probe)
            row["Random init"] = "–" if b is None else f"{b:.1f}"
            row["Gain"] = "–" if b is None else f"{r.score - b:+.1f}"
        rows.append(row)
    return to_markdown(cols, rows)


def finetune_line(ft: Mapping[str, Any]) -> str:
    """One markdown line with the end-to-end fine-tuning score of ``finetune.json``."""
    subset = f", {ft['fraction']:g} of each class" if ft.get("fraction") else ""
    return (
        f"**Fine-tuned end to end** ({ft['dataset']}, `finetune/finetune.json`): top-1 **{ft['score']:.1f}** %, "
        f"top-5 {ft['top5']:.1f} % ({ft['train_images']} train images{subset}, {ft['config']['epochs']} epochs)"
    )


def run_report(summary: Mapping[str, Any]) -> str:
    """Markdown summary of one pipeline run: where things are, probe scores (beside a randomly
    initialised encoder's when measured), the fine-tuning score when it ran, and what the
    ``@champion`` rule decided."""
    lines = [f"# Pipeline run {summary.get('run_name', '')}", ""]
    for key, label in [
        ("run_dir", "Run folder"),
        ("run_id", "MLflow run"),
        ("tracking_uri", "Tracking store"),
        ("model_uri", "Registered encoder"),
        ("data_hash", "Data sha256"),
        ("steps", "Steps"),
        ("final_loss", "Final loss"),
        ("kind", "Run kind"),
    ]:
        if summary.get(key) not in (None, ""):
            lines.append(f"- **{label}**: `{summary[key]}`")
    probe = as_report(summary.get("probe"))
    if probe and probe.results:
        baseline = as_report(summary.get("baseline_probe"))
        lines += ["", f"## Probes ({probe.dataset}, {probe.protocol} protocol; scores in %)", ""]
        lines.append(probe_table(probe, baseline))
        if baseline:
            gains = [r.score - b for r in probe.results if (b := baseline.score(r.probe)) is not None]
            verdict = (
                "Pretraining beat random initialisation on every probe."
                if gains and min(gains) > 0
                else "Pretraining did NOT beat random initialisation on every probe: this run is too short or "
                "too small to learn useful features (see README, `make demo LONG=1`)."
            )
            lines += [verdict, ""]
    if ft := summary.get("finetune"):
        lines += ([""] if lines[-1] and not lines[-1].endswith("\n") else []) + [finetune_line(ft), ""]
    promo = summary.get("promotion")
    if promo:
        lines += ["## Registry", "", f"- **Rule**: {summary.get('rule', '')}"]
        lines.append(f"- **Decision**: {'moved' if promo['moved'] else 'kept'} — {promo['reason']}")
        if promo.get("champion"):
            lines.append(f"- **@{promo['alias']}**: version {promo['champion']}")
        lines.append("")
    return "\n".join(lines) + "\n"
