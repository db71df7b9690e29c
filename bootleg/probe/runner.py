"""``run_probes``: load a frozen encoder, extract features once, run the requested probes,
write ``probe.json`` and the plots."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from bootleg.data import load_images
from bootleg.errors import BootlegError
from bootleg.export import atomic_write_bytes, download_model, load_encoder, resolve_encoder_path
from bootleg.models import ViTEncoder
from bootleg.probe.classify import PROBE_FEATURE, run_trained_probe
from bootleg.probe.config import (
    CLASSIFY_PROBES,
    PROBE_NAMES,
    SEGMENT_PROBES,
    ProbeConfig,
    expand_probe_names,
)
from bootleg.probe.features import (
    Features,
    augment_transform,
    cat_features,
    clean_transform,
    extract,
)
from bootleg.probe.knn import knn_classify
from bootleg.probe.plots import plot_confusion, plot_sweep
from bootleg.probe.segdata import SegSet, finalize_classes, load_seg_folder, pasted_objects
from bootleg.probe.segment import run_seg_head, run_seg_knn

PROBE_FILE = "probe.json"
Log = Callable[[str], None]


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A run folder, an ``encoder.safetensors`` or an MLflow model URI -> the weights file."""
    s = str(checkpoint)
    if s.startswith(("models:/", "runs:/")):
        return resolve_encoder_path(download_model(s))
    return resolve_encoder_path(s)


def run_config(weights: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` beside the weights as a plain dict (empty when absent)."""
    path = weights.parent / "config.yaml"
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise BootlegError(f"{path}: not a readable run config ({type(e).__name__})") from None
    return raw if isinstance(raw, dict) else {}


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise BootlegError(f"device: {name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise BootlegError("device: 'cuda' requested but no CUDA device is available; expected 'cpu' or 'auto'")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def probe_generator(seed: int, stream: str) -> torch.Generator:
    """An independent seeded generator per purpose, so a probe's result does not depend on
    which other probes run."""
    salt = (PROBE_NAMES + ("split", "views", "seg_data", "seg_split", "seg_views")).index(stream)
    return torch.Generator().manual_seed(int(seed) * 1009 + salt)


def split_train_val(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``n`` items -> (train indices, validation indices), each sorted."""
    if n < 2:
        raise BootlegError(f"probe.limit: {n} training image(s); expected at least 2 to carve a validation split")
    perm = torch.randperm(n, generator=generator)
    n_val = min(n - 1, max(1, round(n * fraction)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


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
) -> dict[str, Any]:
    """Probe a frozen encoder; write ``probe.json`` and plots into ``out``; return the results.

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
        ``{"checkpoint", "dataset", "seed", "encoder", "splits", <probe>: {...}, ...}``;
        accuracies and mIoU in percent.

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
    dev = resolve_device(device)
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
    need_images = bool(cls_names) or (bool(seg_names) and not cfg.seg.root)
    train_set = test_set = None
    if need_images:
        train_set = load_images(name, "train", root=root, limit=cfg.limit)
        test_set = load_images(name, "test", root=root, limit=cfg.test_limit)
        if len(test_set) == 0:
            raise BootlegError(f"probe.data: {name} has an empty test split; expected test images")
    timer("load", t0)

    doc: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "dataset": name,
        "seed": seed,
        "encoder": encoder.arch(),
    }
    if cls_names:
        results, splits = _classify(encoder, cls_names, cfg, train_set, test_set, seed, dev, timer, out)
        doc["splits"] = splits
        doc.update({n: results[n] for n in cls_names})
    if seg_names:
        train, test = _seg_sets(cfg, encoder.img_size, name, train_set, test_set, seed)
        results, info = _segment(encoder, seg_names, cfg, train, test, seed, dev, timer, out)
        doc["seg_data"] = info
        doc.update({n: results[n] for n in seg_names})
    doc["config"] = cfg.model_dump(mode="json")
    text = json.dumps(doc, indent=2)
    atomic_write_bytes(out / PROBE_FILE, lambda tmp: Path(tmp).write_text(text + "\n"))
    timer("total", t_start)
    return doc
