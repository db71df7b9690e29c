"""``run_probes``: load a frozen encoder, run the requested probes, write ``probe.json`` (a
:class:`~bootleg.probe.results.ProbeReport`) and the plots.

``protocol: quick`` extracts features once and trains the heads on the cache (this module);
``protocol: paper`` runs the frozen encoder in the loop (:mod:`bootleg.probe.online`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bootleg.data import load_images
from bootleg.errors import BootlegError
from bootleg.export import load_encoder
from bootleg.io import atomic_write_text, resolve_device
from bootleg.models import ViTEncoder
from bootleg.probe.classify import PROBE_FEATURE, run_trained_probe
from bootleg.probe.config import (
    CLASSIFY_PROBES,
    PROBE_NAMES,
    SEGMENT_PROBES,
    ProbeConfig,
    expand_probe_names,
)
from bootleg.probe.data import split_train_val
from bootleg.probe.features import (
    Features,
    augment_transform,
    cat_features,
    clean_transform,
    extract,
)
from bootleg.probe.knn import knn_classify
from bootleg.probe.online import run_online
from bootleg.probe.online_seg import run_online_seg
from bootleg.probe.plots import plot_confusion, plot_sweep
from bootleg.probe.results import ProbeReport, ProbeResult
from bootleg.probe.segdata import SegSet, finalize_classes, load_seg_folder, pasted_objects
from bootleg.probe.segment import run_seg_head, run_seg_knn
from bootleg.probe.weights import resolve_checkpoint, run_config

PROBE_FILE = "probe.json"
Log = Callable[[str], None]


def probe_generator(seed: int, stream: str) -> torch.Generator:
    """An independent seeded generator per purpose, so a probe's result does not depend on
    which other probes run."""
    salt = (PROBE_NAMES + ("split", "views", "seg_data", "seg_split", "seg_views")).index(stream)
    return torch.Generator().manual_seed(int(seed) * 1009 + salt)


class _Timer:
    def __init__(self, timings: dict[str, float] | None, log: Log | None) -> None:
        self.timings = timings if timings is not None else {}
        self.log = log

    def __call__(self, name: str, t0: float, note: str = "") -> None:
        dt = time.perf_counter() - t0
        self.timings[name] = self.timings.get(name, 0.0) + dt
        if self.log:
            self.log(f"probe: {name} {dt:.1f}s{note}")


def _classify(
    encoder: ViTEncoder,
    names: list[str],
    cfg: ProbeConfig,
    train_set: Any,
    test_set: Any,
    seed: int,
    device: torch.device,
    timer: _Timer,
    out: Path,
) -> tuple[dict[str, Any], dict[str, int]]:
    """The classification probes in ``names`` -> ({probe: entry}, split sizes)."""
    results: dict[str, Any] = {}
    store = device if (device.type == "cuda" and cfg.on_device) else torch.device("cpu")
    S = encoder.img_size
    classes = len(train_set.classes)
    tr, va = split_train_val(len(train_set), cfg.val_fraction, probe_generator(seed, "split"))
    imgs = train_set.images.to(store)
    test_imgs = test_set.images.to(store)
    y_tr, y_va, y_te = train_set.labels[tr], train_set.labels[va], test_set.labels

    cls_ok = encoder.has_cls
    for name in names:
        if name == "linear_cls" and not cls_ok:
            results[name] = {"skipped": "the encoder has no CLS token"}
    trained = [n for n in names if n in PROBE_FEATURE and n not in results]
    train_kinds = {PROBE_FEATURE[n] for n in trained}
    clean_kinds = set(train_kinds)
    if "knn" in names:
        clean_kinds |= {"mean", "cls"} if cls_ok else {"mean"}
    t0 = time.perf_counter()
    ext = dict(batch_size=cfg.batch_size, precision=cfg.precision, store=store)
    clean = clean_transform(S)
    f_all = extract(encoder, imgs, clean, clean_kinds, **ext)
    f_tr, f_va = _index(f_all, tr), _index(f_all, va)
    del f_all
    f_te = extract(encoder, test_imgs, clean, clean_kinds, **ext)
    views = [f_tr]
    a = cfg.augment
    if trained and a.views:
        g = probe_generator(seed, "views")
        aug = augment_transform(S, a.crop_scale, a.crop_ratio, a.hflip, a.jitter, g)
        for _ in range(a.views):
            views.append(extract(encoder, imgs[tr.to(store)], aug, train_kinds, **ext))
    n_fwd = len(train_set) + len(test_set) + (len(tr) * a.views if trained else 0)
    timer("features", t0, f" ({n_fwd} backbone passes)")
    pool = cat_features(views) if len(views) > 1 else f_tr

    for name in trained:
        t0 = time.perf_counter()
        kind = PROBE_FEATURE[name]
        sweep = cfg.attentive if name == "attentive" else cfg.linear
        res = run_trained_probe(
            name, pool.get(kind), y_tr, len(views), f_va.get(kind), y_va, f_te.get(kind), y_te,
            classes, encoder.num_heads, sweep, probe_generator(seed, name), device, cfg.precision,
        )  # fmt: skip
        results[name] = res.entry
        best = (sweep.lrs.index(res.entry["best"]["lr"]), sweep.wds.index(res.entry["best"]["wd"]))
        plot_sweep(res.val_grid, sweep.lrs, sweep.wds, best, f"{name}: validation top-1", out / f"sweep_{name}.png")
        plot_confusion(res.confusion, list(train_set.classes), f"{name}: test confusion", out / f"confusion_{name}.png")
        timer(name, t0, f" top1={res.entry['top1']:.2f}")

    if "knn" in names:
        t0 = time.perf_counter()
        results["knn"] = _knn(f_tr, y_tr, f_va, y_va, f_te, y_te, cfg, classes, cls_ok)
        timer("knn", t0)
    return results, {"train": len(tr), "val": len(va), "test": len(test_set)}


def _index(f: Features, idx: torch.Tensor) -> Features:
    out = Features()
    for k in ("cls", "mean", "tokens", "patch", "seq"):
        t = getattr(f, k)
        if t is not None:
            setattr(out, k, t[idx.to(t.device)])
    return out


def _knn(
    f_tr: Features, y_tr: torch.Tensor, f_va: Features, y_va: torch.Tensor, f_te: Features, y_te: torch.Tensor,
    cfg: ProbeConfig, classes: int, cls_ok: bool,
) -> dict[str, Any]:  # fmt: skip
    """``knn``: test accuracy per feature and k; the best (feature, k) chosen on validation."""
    k = cfg.knn
    entry: dict[str, Any] = {}
    val: dict[str, dict[int, float]] = {}
    feats = (("cls", "cls"), ("patch", "mean")) if cls_ok else (("patch", "mean"),)
    for label, kind in feats:
        bank = f_tr.get(kind)
        val[label] = knn_classify(bank, y_tr, f_va.get(kind), y_va, k.ks, classes, k.temperature)
        test = knn_classify(bank, y_tr, f_te.get(kind), y_te, k.ks, classes, k.temperature)
        entry[label] = {str(kk): v for kk, v in test.items()}
    best = max(((lab, kk) for lab in val for kk in k.ks), key=lambda t: (val[t[0]][t[1]], -t[1]))
    entry["best"] = {"feature": best[0], "k": best[1], "top1": entry[best[0]][str(best[1])]}
    entry["val"] = {lab: {str(kk): v for kk, v in d.items()} for lab, d in val.items()}
    return entry


def _seg_sets(cfg: ProbeConfig, S: int, data: str, train_set: Any, test_set: Any, seed: int) -> tuple[SegSet, SegSet]:
    sc = cfg.seg
    if sc.root:
        train = load_seg_folder(sc.root, "train", S, sc.layout, sc.reduce_zero_label, sc.ignore_index, sc.limit)
        test = load_seg_folder(sc.root, "test", S, sc.layout, sc.reduce_zero_label, sc.ignore_index, sc.test_limit)
        finalize_classes(train, test, sc.num_classes)
        return train, test
    mask = sc.mask if sc.mask != "auto" else ("threshold" if data == "fashion_mnist" else "box")
    g = probe_generator(seed, "seg_data")
    args = (sc.objects, sc.object_scale, mask, g)
    train = pasted_objects(
        train_set.images, train_set.labels, list(train_set.classes), sc.train_images, S, *args,
        name=f"pasted({data})/train",
    )  # fmt: skip
    test = pasted_objects(
        test_set.images, test_set.labels, list(test_set.classes), sc.test_images, S, *args,
        name=f"pasted({data})/test",
    )  # fmt: skip
    return train, test


def _segment(
    encoder: ViTEncoder,
    names: list[str],
    cfg: ProbeConfig,
    train: SegSet,
    test: SegSet,
    seed: int,
    device: torch.device,
    timer: _Timer,
    out: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dense probes in ``names`` -> ({probe: entry}, description of the seg data)."""
    sc = cfg.seg
    store = device if (device.type == "cuda" and cfg.on_device) else torch.device("cpu")
    S, p = encoder.img_size, encoder.patch_size
    classes = len(train.classes)
    tr, va = split_train_val(len(train), cfg.val_fraction, probe_generator(seed, "seg_split"))
    kinds = set()
    if {"seg_knn", "seg_linear"} & set(names):
        kinds.add("patch")
    if "seg_block" in names:
        kinds.add("seq")
    t0 = time.perf_counter()
    ext = dict(batch_size=cfg.batch_size, precision=cfg.precision, store=store)
    clean = clean_transform(S)
    f_all = extract(encoder, train.images.to(store), clean, kinds, **ext)
    f_tr, f_va = _index(f_all, tr), _index(f_all, va)
    del f_all
    f_te = extract(encoder, test.images.to(store), clean, kinds, **ext)
    m_tr, m_va, m_te = train.masks[tr].to(store), train.masks[va].to(store), test.masks.to(store)
    trained = [n for n in names if n in ("seg_linear", "seg_block")]
    pool, m_pool, views = f_tr, m_tr, 1
    if trained and sc.views == 2:
        flipped = extract(encoder, train.images[tr].flip(-1).to(store), clean, kinds, **ext)
        pool, m_pool, views = cat_features([f_tr, flipped]), torch.cat([m_tr, m_tr.flip(-1)]), 2
    timer("seg_features", t0, f" ({len(train) + len(test) + (len(tr) if views == 2 else 0)} backbone passes)")

    results: dict[str, Any] = {}
    if "seg_knn" in names:
        t0 = time.perf_counter()
        res = run_seg_knn(
            f_tr.get("patch"), m_tr, f_va.get("patch"), m_va, f_te.get("patch"), m_te, sc.ks, classes, p,
            train.ignore_index,
        )  # fmt: skip
        results["seg_knn"] = res.entry
        timer("seg_knn", t0, f" miou={res.entry['miou']:.2f}")
    for name in trained:
        t0 = time.perf_counter()
        kind = "seq" if name == "seg_block" else "patch"
        sweep = sc.block if name == "seg_block" else sc.linear
        res = run_seg_head(
            name, pool.get(kind), m_pool, views, f_va.get(kind), m_va, f_te.get(kind), m_te, classes,
            encoder.num_heads, encoder.num_prefix_tokens, train.ignore_index, sweep,
            probe_generator(seed, name), device, cfg.precision,
        )  # fmt: skip
        results[name] = res.entry
        best = (sweep.lrs.index(res.entry["best"]["lr"]), sweep.wds.index(res.entry["best"]["wd"]))
        assert res.val_grid is not None
        plot_sweep(res.val_grid, sweep.lrs, sweep.wds, best, f"{name}: validation mIoU", out / f"sweep_{name}.png",
                   metric="val mIoU (%)")  # fmt: skip
        timer(name, t0, f" miou={res.entry['miou']:.2f}")
    info = {
        "name": train.name.rsplit("/", 1)[0],
        "classes": classes,
        "train": len(tr),
        "val": len(va),
        "test": len(test),
    }
    return results, info


def run_probes(
    checkpoint: str | Path,
    out: str | Path,
    cfg: ProbeConfig | None = None,
    data: str | None = None,
    probes: list[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    log: Log | None = None,
    timings: dict[str, float] | None = None,
) -> ProbeReport:
    """Probe a frozen encoder; write ``probe.json`` and plots into ``out``; return the report.

    Args:
        checkpoint: run folder, ``encoder.safetensors``, or MLflow URI (``models:/``, ``runs:/``).
        out: output folder (created).
        cfg: probe settings (default :class:`ProbeConfig()`).
        data: dataset name (default ``cfg.data``, else the run's own dataset, else ``embedded``).
        probes: probe or group names (default ``cfg.probes``).
        seed: seeds the validation split, augmentation, head initialisation and batch order.
        device: ``auto``, ``cpu`` or ``cuda``.
        log: called with one progress line per stage (e.g. ``print``).
        timings: filled with seconds per stage (not written to ``probe.json``).

    Returns:
        :class:`ProbeReport`: one :class:`ProbeResult` per probe that ran (its ``metric``,
        ``top1`` or ``miou``, and ``score`` in percent on the test split for the configuration
        selected on the validation split), probes that could not run in ``skipped``.

    Raises:
        BootlegError: unknown probe, unreadable or mismatched weights, missing dataset, ...
    """
    t_start = time.perf_counter()
    timer = _Timer(timings, log)
    cfg = cfg or ProbeConfig()
    try:
        names = expand_probe_names(probes) if probes else list(cfg.probes)
    except ValueError as e:
        raise BootlegError(f"--probes: {e}") from None
    paper = cfg.protocol == "paper"
    dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")), field="device")
    t0 = time.perf_counter()
    weights = resolve_checkpoint(checkpoint)
    encoder = load_encoder(weights, map_location=dev).requires_grad_(False)
    run = run_config(weights)
    run_data = run.get("data") if isinstance(run.get("data"), dict) else {}
    name = data or cfg.data or run_data.get("name") or "embedded"
    root = cfg.root if cfg.root else (run_data.get("root") if name == run_data.get("name") else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cls_names = [n for n in names if n in CLASSIFY_PROBES]
    seg_names = [n for n in names if n in SEGMENT_PROBES]
    need_images = (bool(cls_names) and not paper) or (bool(seg_names) and not cfg.seg.root)
    train_set = test_set = None
    if need_images:
        train_set = load_images(name, "train", root=root, limit=cfg.limit)
        test_set = load_images(name, "test", root=root, limit=cfg.test_limit)
        if len(test_set) == 0:
            raise BootlegError(f"probe.data: {name} has an empty test split; expected test images")
    timer("load", t0)

    report = ProbeReport(
        checkpoint=str(checkpoint), dataset=name, seed=seed, protocol=cfg.protocol, encoder=encoder.arch()
    )
    if cls_names and paper:
        t0 = time.perf_counter()
        results, splits = run_online(encoder, cls_names, cfg, name, root, seed, dev, out, str(checkpoint), log)
        report.splits.update(splits)
        _add_results(report, cls_names, results)
        timer("paper", t0)
    elif cls_names:
        results, splits = _classify(encoder, cls_names, cfg, train_set, test_set, seed, dev, timer, out)
        report.splits.update(splits)
        _add_results(report, cls_names, results)
    if seg_names and paper:
        t0 = time.perf_counter()
        derived = None if cfg.seg.root else _seg_sets(cfg, encoder.img_size, name, train_set, test_set, seed)
        results, info = run_online_seg(encoder, seg_names, cfg, derived, seed, dev, out, str(checkpoint), log)
        report.splits["seg"] = info
        _add_results(report, seg_names, results)
        timer("paper_seg", t0)
    elif seg_names:
        train, test = _seg_sets(cfg, encoder.img_size, name, train_set, test_set, seed)
        results, info = _segment(encoder, seg_names, cfg, train, test, seed, dev, timer, out)
        report.splits["seg"] = info
        _add_results(report, seg_names, results)
    report.config = cfg.model_dump(mode="json")
    if int(os.environ.get("RANK", "0")) == 0:
        write_report(report, out)
    timer("total", t_start)
    return report


def write_report(report: ProbeReport, out: Path) -> Path:
    """``out/probe.json`` (atomic)."""
    return atomic_write_text(out / PROBE_FILE, report.model_dump_json(indent=2) + "\n")


def _add_results(report: ProbeReport, names: list[str], entries: dict[str, dict[str, Any]]) -> None:
    for n in names:
        if "skipped" in entries[n]:
            report.skipped[n] = entries[n]["skipped"]
        else:
            report.results.append(to_result(n, entries[n]))


def to_result(probe: str, entry: dict[str, Any]) -> ProbeResult:
    """One probe's raw entry -> its typed result (headline metric, score, selected config)."""
    if probe == "knn":
        b = entry["best"]
        details = {k: v for k, v in entry.items() if k != "best"}
        return ProbeResult(probe=probe, metric="top1", score=b["top1"], selected={"feature": b["feature"], "k": b["k"]},
                           details=details)  # fmt: skip
    if probe == "seg_knn":
        details = {k: v for k, v in entry.items() if k not in ("miou", "k")}
        return ProbeResult(probe=probe, metric="miou", score=entry["miou"], selected={"k": entry["k"]}, details=details)
    metric = "miou" if probe in SEGMENT_PROBES else "top1"
    details = {k: v for k, v in entry.items() if k not in (metric, "best")}
    return ProbeResult(probe=probe, metric=metric, score=entry[metric], selected=dict(entry["best"]), details=details)
