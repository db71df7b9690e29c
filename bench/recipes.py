"""Report of the small-scale recipe study (issue 9 item 4; driven by scripts/recipe_study.sh).

Reads ``<out>/optuna.db`` (the study flow's storage), the probe results ``<out>/<name>.probe.json``
and the wall times ``<out>/times.txt``; prints the trials table and the comparison table as
markdown, and writes the parameter-importance bar chart (``optuna.importance``, fANOVA).

    python bench/recipes.py --out runs/recipes --study recipes-micro --png docs/img/recipes-importance.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROWS = [
    ("random", "random init"),
    ("ijepa", "I-JEPA preset (its sampler, final-block target)"),
    ("mae", "MAE preset (random masking)"),
    ("bootleg-before", "Bootleg, before the study (root params.yaml)"),
    ("bootleg-before-seed1", "Bootleg, before, again with `run.seed=1` (the seed spread)"),
    ("bootleg-after", "Bootleg, after the study"),
]


def times(out: Path) -> dict[str, float]:
    f = out / "times.txt"
    if not f.exists():
        return {}
    pairs = (line.split() for line in f.read_text().splitlines() if line.strip())
    return {k: float(v) for k, v in pairs}


def pretrain_rate(run: Path) -> float | None:
    """Median images/s the run logged (the wall time is at the mercy of a shared machine)."""
    f = run / "metrics.jsonl"
    if not f.exists():
        return None
    rates = sorted(json.loads(x)["images_per_s"] for x in f.read_text().splitlines() if '"images_per_s"' in x)
    return rates[len(rates) // 2] if rates else None


def score(v: float | None) -> str:
    return "– (no CLS token)" if v is None else f"{v:.1f}"


def comparison(out: Path) -> str:
    t = times(out)
    lines = [
        "| encoder | linear patch | linear CLS | kNN | pretraining wall time | median images/s | probe wall time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in ROWS:
        f = out / f"{name}.probe.json"
        if not f.exists() or not f.read_text().strip():
            continue
        doc = json.loads(f.read_text())
        lp, lc = (doc.get(k, {}).get("top1") for k in ("linear_patch", "linear_cls"))
        knn = doc.get("knn", {}).get("best", {}).get("top1")
        pt = t.get(f"pretrain-{name}")
        rate = pretrain_rate(out / name)
        lines.append(
            f"| {label} | {score(lp)} | {score(lc)} | {score(knn)} | {f'{pt:.0f} s' if pt else '–'} | "
            f"{f'{rate:.0f}' if rate else '–'} | {t.get(f'probe-{name}', 0):.0f} s |"
        )
    return "\n".join(lines)


def trials_md(study: Any) -> str:
    params = sorted({k for t in study.trials for k in t.params})
    targets = sorted((p for p in params if p.startswith("target_block_")), key=lambda p: int(p.rsplit("_", 1)[1]))
    others = [p for p in params if p not in targets]
    short = {p: p.split(".", 1)[-1] for p in others}
    head = ["trial", "state", "kNN (last reported)", "kNN per round", "targets", *short.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in study.trials:
        chosen = ",".join(p.rsplit("_", 1)[1] for p in targets if t.params.get(p))
        inter = ", ".join(f"{v:.1f}@{s}" for s, v in sorted(t.intermediate_values.items()))
        val = f"{t.value:.1f}" if t.value is not None else "–"
        cells = [str(t.number), t.state.name.lower(), val, inter or "–", chosen or "none"]
        for p in others:
            v = t.params.get(p)
            cells.append("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def importance_png(study: Any, png: Path) -> dict[str, float]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names], color="#3b6ea8")
    ax.set_xlabel("fANOVA importance for kNN top-1 (completed trials)")
    ax.set_title(f"{study.study_name}: hyperparameter importance")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    return imp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/recipes"))
    p.add_argument("--study", default="recipes-micro")
    p.add_argument("--png", type=Path, default=Path("docs/img/recipes-importance.png"))
    a = p.parse_args()
    print("## Comparison\n\n" + comparison(a.out) + "\n")
    db = a.out / "optuna.db"
    if not db.exists():
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=a.study, storage=f"sqlite:///{db.resolve()}")
    print("## Trials\n\n" + trials_md(study) + "\n")
    try:
        best = study.best_trial
        print(f"best: trial {best.number}, kNN {best.value:.2f}, {json.dumps(best.params)}\n")
        print("overrides: " + " ".join(f"--set {o}" for o in best.user_attrs.get("overrides", [])) + "\n")
    except ValueError:
        pass
    imp = importance_png(study, a.png)
    print("## Importance\n\n" + "\n".join(f"- {k}: {v:.3f}" for k, v in imp.items()))


if __name__ == "__main__":
    main()
