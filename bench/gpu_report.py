"""Reading and writing ``make gpu-check``'s results: one-line summaries, the markdown report,
the targets of issue 9 and the baseline figures they are judged against."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: images in one CIFAR-10 training epoch
CIFAR10_TRAIN = 50_000

#: issue 9's targets: part -> [(label, field, comparison, threshold)]
TARGETS: dict[str, list[tuple[str, str, str, float]]] = {
    "step-bootleg-vit-b16": [
        ("images/s >= 4,500", "images_per_s", ">=", 4500),
        ("MFU >= 45%", "mfu", ">=", 0.45),
        ("targets + loss <= 1% of the step", "share_targets_loss", "<=", 0.01),
    ],
    "step-bootleg-vit-s16": [
        ("images/s >= 9,000", "images_per_s", ">=", 9000),
        ("targets + loss <= 1% of the step", "share_targets_loss", "<=", 0.01),
    ],
    "epoch-bootleg-vit-s4": [("CIFAR-10 epoch <= 2.5 s", "epoch_s", "<=", 2.5)],
}

#: issue 9's figures to beat (one H200, synthetic data): (step, batch, images/s, MFU)
BASELINES = [
    ("I-JEPA's official ViT-B/16 step", 128, 1357, 0.115),
    ("compiled Bootleg-style prototype, ViT-B/16", 128, 2537, 0.285),
    ("same prototype, ViT-B/16", 256, 2674, 0.301),
    ("prototype ViT-S/16", 256, 3785, None),
    ("prototype ViT-T/4 at 32 px (CIFAR scale)", 2048, 13617, None),
]


def junit(path: Path) -> dict[str, Any]:
    """Counts and names from a pytest ``--junitxml`` file."""
    root = ET.parse(path).getroot()
    cases = root.iter("testcase")
    out: dict[str, Any] = {"passed": [], "failed": [], "skipped": []}
    for c in cases:
        name = c.get("name", "?")
        if c.find("failure") is not None or c.find("error") is not None:
            out["failed"].append(name)
        elif c.find("skipped") is not None:
            out["skipped"].append(f"{name}: {c.find('skipped').get('message', '')}")  # type: ignore[union-attr]
        else:
            out["passed"].append(name)
    return out


def metric(part: dict[str, Any], field: str) -> float | None:
    """A figure of a step/epoch part's data (``share_<key>`` reads the profiler's shares)."""
    d = part.get("data") or {}
    if field.startswith("share_"):
        return ((d.get("profile") or {}).get("shares") or {}).get(field[len("share_") :])
    if field == "epoch_s":
        ips = d.get("images_per_s")
        return CIFAR10_TRAIN / ips if ips else None
    v = d.get(field)
    return float(v) if isinstance(v, (int, float)) else None


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _share(part: dict[str, Any], key: str) -> str:
    prof = (part.get("data") or {}).get("profile")
    if not prof:
        return "not profiled"
    if key in (prof.get("missing") or []):
        return "scope not found"
    return _pct(prof["shares"].get(key))


def _config(d: dict[str, Any]) -> str:
    return (
        f"{d.get('method')} {d.get('size')}/{d.get('patch_size')} {d.get('img_size')} px, batch {d.get('batch_size')}"
    )


def summarize(part: dict[str, Any]) -> str:
    """One line for a part's result."""
    if part["status"] == "skipped-for-budget":
        return f"estimate {part['estimate_s']:.0f} s > {part.get('left_s', 0):.0f} s left"
    d = part.get("data") or {}
    text = ""
    if part["kind"] == "tests" and d:
        text = f"{len(d['passed'])} passed, {len(d['failed'])} failed, {len(d['skipped'])} skipped"
        if d["failed"]:
            text += f" ({', '.join(d['failed'])})"
    elif part["kind"] in ("step", "epoch") and d:
        text = f"{_config(d)}: {d['images_per_s']:,.0f} img/s, MFU {_pct(d.get('mfu'))}"
        if d.get("peak_mem_gib") is not None:
            text += f", peak {d['peak_mem_gib']:.1f} GiB"
        if part["kind"] == "epoch":
            text += f", epoch {metric(part, 'epoch_s'):.2f} s"
        else:
            text += f"; teacher {_share(part, 'teacher')}, targets+loss {_share(part, 'targets_loss')}"
            text += f", optimizer+EMA {_share(part, 'optimizer_ema')}"
    elif part["kind"] == "race" and d:
        bits = []
        for e in d.get("methods", []):
            if e.get("status") != "pass":
                bits.append(f"{e['method']} failed")
                continue
            t = e["top1"]
            bits.append(f"{e['method']} kNN {_num(t.get('knn'))} / linear {_num(t.get('linear_patch'))}")
        text = "; ".join(bits)
    if part.get("error"):
        text = (text + "; " if text else "") + part["error"]
    return text


def _num(v: float | None, fmt: str = ".1f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _targets(parts: list[dict[str, Any]]) -> list[str]:
    by_name = {p["name"]: p for p in parts}
    rows = ["| part | target | measured | met |", "|---|---|---|---|"]
    for name, checks in TARGETS.items():
        p = by_name.get(name)
        for label, field, op, thr in checks:
            v = metric(p, field) if p and p["status"] == "pass" else None
            if v is None:
                shown, met = ("not run" if not p or p["status"] != "pass" else "not measured"), "?"
            else:
                shown = _pct(v) if field == "mfu" or field.startswith("share_") else f"{v:,.2f}"
                met = "yes" if (v >= thr if op == ">=" else v <= thr) else "no"
            rows.append(f"| {name} | {label} | {shown} | {met} |")
    return rows


def render_markdown(doc: dict[str, Any]) -> str:
    """The report as markdown: one line per part, then the step, race and target tables."""
    env = doc.get("environment", {})
    parts = doc["parts"]
    out = [
        f"# gpu-check report ({doc['mode']})",
        "",
        f"{doc['started']} on {env.get('device')} (torch {env.get('torch')}, commit {env.get('git')}); "
        f"{doc['elapsed_s']:.0f} s of a {doc['budget_s']:.0f} s budget; estimates from {doc.get('estimates_from')}.",
    ]
    if doc["mode"] == "smoke":
        out += ["", "Smoke mode: CPU and tiny sizes. It proves the script runs; its figures mean nothing."]
    out += ["", "| part | status | seconds (estimate) | summary |", "|---|---|---|---|"]
    for p in parts:
        out.append(
            f"| {p['name']} | {p['status']} | {p['seconds']:.1f} ({p['estimate_s']:.0f}) | {p.get('summary', '')} |"
        )
    steps = [p for p in parts if p["kind"] in ("step", "epoch") and p["status"] == "pass"]
    if steps:
        out += ["", "## Training step", ""]
        out += [
            "| part | config | img/s | MFU | peak GiB | teacher | student | predictor | targets+loss | optimizer+EMA "
            "| warm-up s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in steps:
            d = p["data"]
            mem = _num(d.get("peak_mem_gib"))
            out.append(
                f"| {p['name']} | {_config(d)} | {d['images_per_s']:,.0f} | {_pct(d.get('mfu'))} | {mem} | "
                f"{_share(p, 'teacher')} | {_share(p, 'student')} | {_share(p, 'predictor')} | "
                f"{_share(p, 'targets_loss')} | {_share(p, 'optimizer_ema')} | "
                f"{_num(d.get('warmup_s'))} |"
            )
    race = next((p for p in parts if p["kind"] == "race" and p.get("data")), None)
    if race:
        d = race["data"]
        out += ["", f"## Quality race ({d.get('recipe')}, {d.get('seconds')} s of pretraining each)", ""]
        out += [
            "| method | steps | epochs | img/s | final loss | kNN | linear patch | linear CLS | status |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in d.get("methods", []):
            if e.get("status") != "pass":
                out.append(f"| {e['method']} | | | | | | | | fail: {e.get('error', '')} |")
                continue
            t = e["top1"]
            out.append(
                f"| {e['method']} | {e['steps']} | {_num(e.get('epochs'), '.2f')} | {_num(e.get('images_per_s'), ',.0f')} "
                f"| {_num(e.get('final_loss'), '.4g')} | {_num(t.get('knn'))} | {_num(t.get('linear_patch'))} "
                f"| {_num(t.get('linear_cls'))} | pass |"
            )
        if d.get("plot"):
            out += ["", f"![loss curves](race/{d['plot']})"]
    if doc["mode"] == "full":
        out += ["", "## Targets (issue 9)", "", *_targets(parts)]
    return "\n".join(out) + "\n"
