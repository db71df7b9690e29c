"""Quality race: Bootleg, I-JEPA and MAE, each pretrained for the same number of seconds, then probed.

    python bench/race.py --recipe configs/cifar10-vit-t4.yaml --seconds 25 --out runs/gpu-check/race

Bootleg runs the recipe as written. I-JEPA and MAE run their own presets (Appendix B) with the
recipe's shared settings (:data:`SHARED_KEYS`: model size and resolution, data, batch size).
Each method's step time is measured first (compilation included in the warm-up, excluded from
the race), which fixes its number of steps as ``seconds / step time``; the LR, WD and EMA
schedules then run over those steps. The encoder is probed with the recipe's ``probe:``
settings (kNN and linear probes). Writes ``race.json`` and ``loss_curves.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.step import measure  # noqa: E402
from bootleg.config import apply_override, build_config, read_params  # noqa: E402

METHODS = ("bootleg", "ijepa", "mae")
#: what I-JEPA and MAE take over from the (Bootleg) recipe; the rest is their own preset
SHARED_KEYS = (
    "model.size",
    "model.img_size",
    "model.patch_size",
    "data",
    "optim.batch_size",
    "run",
    "probe",
)
PROBES = ["linear_patch", "linear_cls", "knn"]


def _get(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _put(raw: dict[str, Any], key: str, value: Any) -> None:
    *head, last = key.split(".")
    node = raw
    for part in head:
        node = node.setdefault(part, {})
    node[last] = copy.deepcopy(value)


def method_raw(recipe: dict[str, Any], method: str) -> dict[str, Any]:
    """The raw config of ``method`` in the race: the recipe itself for its own method, else the
    method's preset plus the recipe's :data:`SHARED_KEYS`."""
    if method == recipe.get("method", "bootleg"):
        return copy.deepcopy(recipe)
    raw: dict[str, Any] = {"method": method}
    for key in SHARED_KEYS:
        v = _get(recipe, key)
        if v is not None:
            _put(raw, key, v)
    return raw


def _with_run(raw: dict[str, Any], **run: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    out.setdefault("run", {}).update(run)
    return out


def _probe_scores(doc: Any) -> dict[str, float | None]:
    """Top-1 per probe from ``run_probes``' result (typed report or the older dict)."""
    scores: dict[str, float | None] = {}
    for name in PROBES:
        if hasattr(doc, "score"):
            scores[name] = doc.score(name)
            continue
        entry = doc.get(name) if isinstance(doc, dict) else None
        if not isinstance(entry, dict) or "skipped" in entry:
            scores[name] = None
        elif name == "knn":
            scores[name] = float(entry["best"]["top1"])
        else:
            scores[name] = float(entry["top1"])
    return scores


def run_method(
    raw: dict[str, Any], seconds: float, out: Path, calib_warmup: int, calib_steps: int, log_points: int = 50
) -> dict[str, Any]:
    """Calibrate, pretrain for ``seconds`` worth of steps, probe. Returns the method's entry."""
    from bootleg.probe.runner import run_probes
    from bootleg.train import pretrain

    method = raw.get("method", "bootleg")
    cal_cfg = build_config(_with_run(raw, steps=calib_warmup + calib_steps + 1, progress=False), f"race:{method}")
    cal = measure(cal_cfg, calib_warmup, calib_steps)
    step_s = cal["step_ms"] / 1e3
    steps = max(2, int(seconds / step_s))
    log_every = max(1, steps // log_points)
    cfg = build_config(
        _with_run(raw, steps=steps, log_every=log_every, checkpoint_every=steps, monitor_every=10**9, progress=False),
        f"race:{method}",
    )
    run_dir = out / method
    t0 = time.perf_counter()
    pretrain(cfg, run_dir)
    wall = time.perf_counter() - t0
    curve, train_s, last_step, epochs = [], 0.0, 0, 0.0
    rates = []  # images/s per log window; the first window also holds the compilation
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        window = (rec["step"] - last_step) * cfg.optim.batch_size
        last_step, epochs = rec["step"], rec.get("epoch", 0.0)
        train_s += window / max(rec["images_per_s"], 1e-9)
        rates.append((window, rec["images_per_s"]))
        curve.append({"step": rec["step"], "seconds": train_s, "loss": rec["loss"]})
    steady = rates[1:] or rates
    images_per_s = sum(w for w, _ in steady) / sum(w / r for w, r in steady) if steady else None
    t1 = time.perf_counter()
    doc = run_probes(run_dir, out / f"{method}-probe", cfg.probe, None, list(cfg.probe.probes), cfg.run.seed, "auto")
    return {
        "method": method,
        "status": "pass",
        "calibration_step_ms": cal["step_ms"],
        "compile": cfg.run.compile,
        "steps": steps,
        "batch_size": cfg.optim.batch_size,
        "pretrain_s": train_s,
        "pretrain_wall_s": wall,
        "images_per_s": images_per_s,
        "epochs": epochs,
        "final_loss": curve[-1]["loss"] if curve else None,
        "curve": curve,
        "probe_s": time.perf_counter() - t1,
        "top1": _probe_scores(doc),
    }


def plot_curves(entries: list[dict[str, Any]], path: Path) -> None:
    """One panel per method (their losses have different scales): loss against pretraining seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [e for e in entries if e.get("curve")]
    fig, axes = plt.subplots(1, max(1, len(done)), figsize=(4 * max(1, len(done)), 3.2), squeeze=False)
    for ax, e in zip(axes[0], done, strict=False):
        ax.plot([c["seconds"] for c in e["curve"]], [c["loss"] for c in e["curve"]])
        ax.set_title(f"{e['method']} ({e['steps']} steps)")
        ax.set_xlabel("pretraining seconds")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "configs" / "cifar10-vit-t4.yaml")
    p.add_argument("--seconds", type=float, default=25.0, help="pretraining seconds per method")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value over the recipe")
    p.add_argument("--calib-warmup", type=int, default=3, help="untimed calibration steps (compilation)")
    p.add_argument("--calib-steps", type=int, default=5, help="timed calibration steps")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "race")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    recipe = read_params(a.recipe)
    for item in a.overrides:
        apply_override(recipe, item)
    a.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for method in a.methods:
        t0 = time.perf_counter()
        try:
            entry = run_method(method_raw(recipe, method), a.seconds, a.out, a.calib_warmup, a.calib_steps)
        except Exception as e:  # one method failing does not stop the others
            entry = {"method": method, "status": "fail", "error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        entry["wall_s"] = time.perf_counter() - t0
        entries.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "curve"}), flush=True)
        write_results(a, entries)  # after every method: a race cut short keeps what it finished
    plot = a.out / "loss_curves.png"
    try:
        plot_curves(entries, plot)
    except Exception:
        traceback.print_exc()
    write_results(a, entries, plot if plot.is_file() else None)
    return 0 if all(e["status"] == "pass" for e in entries) else 1


def write_results(a: argparse.Namespace, entries: list[dict[str, Any]], plot: Path | None = None) -> None:
    doc = {
        "recipe": str(a.recipe),
        "overrides": a.overrides,
        "seconds": a.seconds,
        "plot": plot.name if plot else None,
        "methods": entries,
    }
    tmp = a.out / "race.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(a.out / "race.json")


if __name__ == "__main__":
    sys.exit(main())
