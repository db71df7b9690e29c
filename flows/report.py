"""Tables and figures the flows write: probe metrics flattened for MLflow and DVC, loss
curves from ``metrics.jsonl``, run reports and ablation comparison tables (markdown + CSV,
laid out like the paper's Tables 2-5)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: probe names in the paper's column order and their column labels
PROBE_COLUMNS: dict[str, str] = {
    "linear_patch": "Patch",
    "linear_cls": "CLS",
    "attentive": "X-Blk",
    "knn": "kNN",
    "seg_knn": "Seg kNN",
    "seg_linear": "Seg Lin",
    "seg_block": "Seg Blk",
}
#: leaf names that are scores (accuracy or mIoU), preferred in this order
SCORE_KEYS = ("top1", "acc", "accuracy", "miou", "mIoU")
#: keys of probe.json that are not metrics
NON_METRIC = {"dataset", "checkpoint", "seed", "device", "time_s", "config", "encoder", "splits", "seg_data"}


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


def flatten_numbers(data: Mapping[str, Any], prefix: str = "", skip: Iterable[str] = ()) -> dict[str, float]:
    """Numeric leaves of a nested dict as ``{"a.b.c": value}`` (bools, strings, NaN and the
    top-level keys in ``skip`` dropped)."""
    out: dict[str, float] = {}
    skip = set(skip)
    for k, v in data.items():
        if k in skip:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_numbers(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[key] = float(v)
    return out


def probe_metrics(result: Mapping[str, Any], prefix: str = "probe.") -> dict[str, float]:
    """``probe.json`` -> flat MLflow metric names, e.g. ``probe.knn.cls.10``."""
    return flatten_numbers(result, prefix, skip=NON_METRIC)


def probe_score_key(result: Mapping[str, Any], probe: str) -> str | None:
    """Dotted key (below ``probe``) of the headline score of one probe in ``probe.json``:
    its top-1 accuracy or mIoU (the chosen head's test score, e.g. ``best.top1`` for kNN),
    never a validation score."""
    node = result.get(probe)
    if not isinstance(node, Mapping):
        return None
    flat = {k: v for k, v in flatten_numbers(node).items() if not k.startswith("val.") and ".val." not in k}
    for key in SCORE_KEYS:
        hits = [k for k in flat if k.split(".")[-1] == key]
        if hits:
            return sorted(hits, key=lambda k: (k.count("."), 0 if "cls" in k else 1, k))[0]
    return None


def probe_score(result: Mapping[str, Any], probe: str) -> float | None:
    """The headline score of one probe (see :func:`probe_score_key`)."""
    node = result.get(probe)
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node)
    key = probe_score_key(result, probe)
    return None if key is None else flatten_numbers(node)[key]


def pick_metric(metrics: Mapping[str, float], wanted: str = "auto", prefix: str = "probe.") -> str | None:
    """Resolve ``wanted`` ('auto' = the headline score of the first probe present, in the
    paper's column order) to a key of ``metrics``."""
    if wanted != "auto":
        if wanted in metrics:
            return wanted
        if prefix + wanted in metrics:
            return prefix + wanted
        return None
    for probe in PROBE_COLUMNS:
        keys = [k for k in metrics if k.startswith(f"{prefix}{probe}.") or k == f"{prefix}{probe}"]
        if not keys:
            continue
        sub = {k[len(prefix) :]: v for k, v in metrics.items() if k in keys}
        nested: dict[str, Any] = {}
        for k, v in sub.items():
            node = nested
            parts = k.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = v
        key = probe_score_key(nested, probe)
        if key is not None:
            return f"{prefix}{probe}.{key}"
    return None


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
        return f"{v:.1f}" if column in PROBE_COLUMNS.values() else f"{v:.4g}"
    return str(v)


def comparison_rows(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """``results``: ``{"variant": name, "describe": {...}, "probe": probe.json dict,
    "final_loss": float, "run_id": str}`` per variant -> ``(columns, rows)``; probe columns
    follow the paper's order (Patch, CLS, X-Blk, kNN, ...) and hold top-1 accuracy."""
    probes = [p for p in PROBE_COLUMNS if any(p in (r.get("probe") or {}) for r in results)]
    desc_keys = [
        k
        for k in ("method", "targets", "merge", "sampler", "overrides")
        if any((r.get("describe") or {}).get(k) for r in results)
    ]
    columns = [
        "Variant",
        *[k.capitalize() for k in desc_keys],
        *[PROBE_COLUMNS[p] for p in probes],
        "Final loss",
        "MLflow run",
    ]
    rows = []
    for r in results:
        row: dict[str, Any] = {"Variant": r.get("variant", "")}
        for k in desc_keys:
            row[k.capitalize()] = (r.get("describe") or {}).get(k, "")
        for p in probes:
            row[PROBE_COLUMNS[p]] = probe_score(r.get("probe") or {}, p)
        row["Final loss"] = r.get("final_loss")
        row["MLflow run"] = r.get("run_id", "")
        rows.append(row)
    return columns, rows


def to_markdown(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], title: str = "", note: str = "") -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("| " + " | ".join("---" if c in ("Variant", "MLflow run") else "---:" for c in columns) + " |")
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


def run_report(summary: Mapping[str, Any]) -> str:
    """Markdown summary of one pipeline run."""
    lines = [f"# Pipeline run {summary.get('run_name', '')}", ""]
    for key, label in [
        ("run_dir", "Run folder"),
        ("run_id", "MLflow run"),
        ("tracking_uri", "Tracking store"),
        ("model_uri", "Registered encoder"),
        ("alias_uri", "Alias"),
        ("data_hash", "Data sha256"),
        ("final_loss", "Final loss"),
    ]:
        if summary.get(key) not in (None, ""):
            lines.append(f"- **{label}**: `{summary[key]}`")
    probe = summary.get("probe") or {}
    if probe:
        cols = [PROBE_COLUMNS[p] for p in PROBE_COLUMNS if p in probe]
        vals = {PROBE_COLUMNS[p]: probe_score(probe, p) for p in PROBE_COLUMNS if p in probe}
        lines += ["", "## Probes (top-1 %)", "", to_markdown(cols, [vals])]
    return "\n".join(lines) + "\n"
