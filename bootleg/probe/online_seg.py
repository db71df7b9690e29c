"""``protocol: paper`` for the dense probes: Segmenter heads and kNN segmentation, streamed.

One training step (``seg_linear`` and ``seg_block`` share it)::

    x, y   = a batch of fresh views (resize x U(0.5, 2), crop, flip, jitter, cut-out)  # (B,3,S,S), (B,S,S)
    f      = encoder.forward_features(x)            # once, no grad, bf16 autocast on CUDA
    for each head group (the LR x WD grid of one probe):
        logits = heads(f[patch or seq])             # (H, B, P, C)
        loss   = sum over heads of the pixel cross-entropy of bilinearly upsampled logits

Evaluation is per image at full resolution: the short side resized to ``short_side``,
``S x S`` windows every ``eval_stride x S`` pixels, the windows' upsampled logits averaged
where they overlap, then resized to the label's own size and scored there (confusion
matrices summed over images and ranks; nothing per image kept). The head with the best
mIoU on a held-out part of train is scored once on the test split.

``seg_knn`` (CAPI-style): clean windows of a seeded subset of training images give a memory
bank of at most ``seg.paper.knn_bank`` patch embeddings with the pixel labels under each
patch; every test pixel takes the majority label of its patch's ``k`` nearest bank patches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bootleg.io import generator
from bootleg.models import ViTEncoder
from bootleg.probe.config import PROBE_NAMES, ProbeConfig, SweepConfig
from bootleg.probe.data import split_train_val
from bootleg.probe.features import autocast_for, probe_inputs
from bootleg.probe.knn import knn_segment
from bootleg.probe.online import (
    HeadGroup,
    Log,
    Ranks,
    _all_sum,
    _fingerprint,
    _gather,
    join_ranks,
    run_epochs,
)
from bootleg.probe.plots import plot_sweep
from bootleg.probe.segdata import SegSet
from bootleg.probe.segment import (
    SegBlockHeads,
    SegLinearHeads,
    confusion,
    miou,
    patch_pixels,
    pixels_from_patches,
    upsample_logits,
)
from bootleg.probe.segstream import SegTrainViews, eval_resize, num_classes, open_seg_items, windows
from bootleg.probe.sweep import BatchedAdamW, grid, lr_factor, select_best, sweep_entry, take_head

SEG_STATE_FILE = "probe_seg_state.pt"
TRAINED = ("seg_linear", "seg_block")


def build_seg_groups(
    names: list[str], cfg: ProbeConfig, encoder: ViTEncoder, classes: int, seed: int, device: torch.device
) -> list[HeadGroup]:
    """One :class:`~bootleg.probe.online.HeadGroup` per trained dense probe in ``names``."""
    groups = []
    for name in (n for n in TRAINED if n in names):
        sweep: SweepConfig = cfg.seg.block if name == "seg_block" else cfg.seg.linear
        H = len(sweep.lrs) * len(sweep.wds)
        g = generator(seed, PROBE_NAMES.index(name), 1)
        D = encoder.embed_dim
        module: nn.Module = (
            SegBlockHeads(H, D, encoder.num_heads, classes, encoder.num_prefix_tokens, g)
            if name == "seg_block"
            else SegLinearHeads(H, D, classes, g)
        ).to(device)
        lrs, wds = grid(sweep)
        opt = BatchedAdamW(module, lrs.to(device), wds.to(device), module.no_decay)
        groups.append(HeadGroup(name, sweep, module, opt, input_key="seq" if name == "seg_block" else "patch"))
    return groups


def seg_train_step(
    groups: list[HeadGroup],
    encoder: ViTEncoder,
    x: torch.Tensor,
    y: torch.Tensor,
    step: int,
    total: int,
    ignore_index: int,
    precision: str = "auto",
    ranks: Ranks = Ranks(),
) -> None:
    """One encoder forward on ``x`` ``(B, 3, S, S)``, then one optimiser step of every head of
    every group against the labels ``y`` ``(B, S, S)``. Each head's loss is its mean pixel
    cross-entropy over the global batch (all ranks' valid pixels), so ``world`` ranks take the
    step one process takes."""
    dev, S = x.device, x.shape[-1]
    with torch.no_grad(), autocast_for(dev, precision):
        f = encoder.forward_features(x)
    inputs = probe_inputs(f, {g.feature for g in groups})
    valid = _all_sum((y != ignore_index).sum().float(), ranks).clamp(min=1)
    for g in groups:
        with autocast_for(dev, precision):
            logits = g.module(inputs[g.feature])  # (H, B, P, C)
        H = logits.shape[0]
        up = upsample_logits(logits, S)  # (H*B, C, S, S)
        loss = F.cross_entropy(up, y.repeat(H, 1, 1), ignore_index=ignore_index, reduction="sum") / valid
        loss.backward()
        if ranks.world > 1:
            for p in g.module.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
        g.opt.step(lr_factor(step, total, g.warmup))


def _features(encoder: ViTEncoder, wins: torch.Tensor, want: set[str], batch: int, precision: str) -> dict:
    """Probe inputs of the windows ``(n, 3, S, S)``, ``batch`` windows per forward."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in want}
    for s in range(0, wins.shape[0], batch):
        with autocast_for(wins.device, precision):
            f = probe_inputs(encoder.forward_features(wins[s : s + batch]), want)
        for k in want:
            parts[k].append(f[k])
    return {k: torch.cat(v) for k, v in parts.items()}


def _label_windows(lab: torch.Tensor, hw: tuple[int, int], corners: list, size: int, ignore: int) -> torch.Tensor:
    """Labels ``(H0, W0)`` -> ``(n, S, S)`` under the windows of the image resized to ``hw``."""
    y = F.interpolate(lab[None, None].float(), size=hw, mode="nearest-exact")[0, 0].long()
    y = F.pad(y, (0, max(0, size - hw[1]), 0, max(0, size - hw[0])), value=ignore)
    return torch.stack([y[a : a + size, b : b + size] for a, b in corners])


class SegEval:
    """Summed confusion matrices of one split: ``heads[name]`` ``(H, C, C)``, ``knn[k]`` ``(C, C)``."""

    def __init__(self, heads: dict[str, torch.Tensor], knn: dict[int, torch.Tensor]) -> None:
        self.heads, self.knn = heads, knn


@torch.no_grad()
def evaluate_seg(
    modules: dict[str, tuple[nn.Module, str]],
    encoder: ViTEncoder,
    items: Dataset,
    idx: torch.Tensor,
    cfg: ProbeConfig,
    classes: int,
    ignore: int,
    device: torch.device,
    ranks: Ranks,
    bank: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SegEval:
    """Sliding-window, full-resolution scores of every head of ``modules`` (name -> (module,
    input key)) and of the kNN ``bank`` on the items ``idx`` (this rank's share; summed)."""
    pc = cfg.seg.paper
    S, p = encoder.img_size, encoder.patch_size
    stride = max(1, round(pc.eval_stride * S))
    short = pc.short_side or S
    want = {key for _, key in modules.values()} | ({"patch"} if bank is not None else set())
    confs = {n: torch.zeros(int(m.heads), classes, classes, dtype=torch.long) for n, (m, _) in modules.items()}
    kconf = {k: torch.zeros(classes, classes, dtype=torch.long) for k in (cfg.seg.ks if bank else [])}
    for i in idx[ranks.rank :: ranks.world].tolist():
        img, lab = items[i]
        x = eval_resize(img, short)
        h, w = x.shape[-2:]
        wins, corners = windows(x, S, stride)
        inputs = _features(encoder, wins.to(device), want, cfg.paper.eval_batch_size, cfg.precision)
        lab = lab.to(device)
        for name, (m, key) in modules.items():
            with autocast_for(device, cfg.precision):
                logits = m(inputs[key])  # (H, n, P, C)
            for hd in range(logits.shape[0]):
                acc = torch.zeros(classes, max(h, S), max(w, S), device=device)
                cnt = torch.zeros(1, max(h, S), max(w, S), device=device)
                for j, (a, b) in enumerate(corners):
                    acc[:, a : a + S, b : b + S] += upsample_logits(logits[hd, j : j + 1], S)[0]
                    cnt[:, a : a + S, b : b + S] += 1
                full = F.interpolate((acc / cnt)[None, :, :h, :w], size=lab.shape, mode="bilinear", align_corners=False)
                confs[name][hd] += confusion(full[0].argmax(0), lab, classes, ignore)
        if bank is not None:
            q = inputs["patch"]  # (n, P, D)
            pred = knn_segment(bank[0], bank[1], q.reshape(-1, q.shape[-1]), cfg.seg.ks, classes, ignore)
            for k, lk in pred.items():
                maps = pixels_from_patches(lk.view(q.shape[0], q.shape[1], -1), p).to(device)  # (n, S, S)
                votes = torch.zeros(classes, max(h, S), max(w, S), dtype=torch.int16, device=device)
                for j, (a, b) in enumerate(corners):
                    votes[:, a : a + S, b : b + S] += F.one_hot(maps[j], classes).permute(2, 0, 1).to(torch.int16)
                base = votes[:, :h, :w].argmax(0).float()
                full_lab = F.interpolate(base[None, None], size=lab.shape, mode="nearest-exact")[0, 0]
                kconf[k] += confusion(full_lab, lab, classes, ignore)
    for d in (confs, kconf):
        for k in d:
            d[k] = _all_sum(d[k].to(device), ranks).cpu()
    return SegEval(confs, kconf)


@torch.no_grad()
def seg_knn_bank(
    encoder: ViTEncoder,
    items: Dataset,
    idx: torch.Tensor,
    cfg: ProbeConfig,
    ignore: int,
    seed: int,
    device: torch.device,
    ranks: Ranks,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, D)`` float16 patch embeddings and ``(M, p*p)`` labels of clean training windows:
    ``knn_patches_per_image`` seeded patches (with a labelled pixel) from each of a seeded
    subset of ``ceil(knn_bank / knn_patches_per_image)`` images of ``idx``; ``M <= knn_bank``,
    gathered on every rank."""
    pc = cfg.seg.paper
    S, p = encoder.img_size, encoder.patch_size
    n_img = min(len(idx), math.ceil(pc.knn_bank / pc.knn_patches_per_image))
    pick = idx[torch.randperm(len(idx), generator=generator(seed, 12))[:n_img]].sort().values
    feats, labs = [], []
    for i in pick[ranks.rank :: ranks.world].tolist():
        img, lab = items[i]
        x = eval_resize(img, pc.short_side or S)
        wins, corners = windows(x, S, max(1, round(pc.eval_stride * S)))
        f = _features(encoder, wins.to(device), {"patch"}, cfg.paper.eval_batch_size, cfg.precision)["patch"]
        y = patch_pixels(_label_windows(lab, tuple(x.shape[-2:]), corners, S, ignore), p)  # (n, P, p*p)
        f, y = f.reshape(-1, f.shape[-1]), y.reshape(-1, p * p)
        keep = (y != ignore).any(1).nonzero().squeeze(1)
        sel = keep[torch.randperm(len(keep), generator=generator(seed, 13, i))[: pc.knn_patches_per_image]]
        feats.append(f[sel.to(f.device)].to(torch.float16))
        labs.append(y[sel].to(torch.int16))
    D = encoder.embed_dim
    bank = torch.cat(feats) if feats else torch.zeros(0, D, dtype=torch.float16, device=device)
    lab_t = torch.cat(labs).to(device) if labs else torch.zeros(0, p * p, dtype=torch.int16, device=device)
    if ranks.world > 1:
        bank, lab_t = _gather(bank, device), _gather(lab_t.int(), device).to(torch.int16)  # gloo: no int16
    return bank[: pc.knn_bank], lab_t[: pc.knn_bank]


def run_online_seg(
    encoder: ViTEncoder,
    names: list[str],
    cfg: ProbeConfig,
    derived: tuple[SegSet, SegSet] | None,
    seed: int,
    device: torch.device,
    out: Path,
    checkpoint: str,
    log: Log | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The dense probes in ``names`` under the paper protocol -> ({probe: entry}, data info).

    Data: the folder at ``seg.root`` (streamed), else the ``derived`` (train, test) task. The
    entries have the quick protocol's fields (``miou``, ``best``, ``val_miou``, ``grid``,
    ``per_class_iou``; ``seg_knn``: ``miou``, ``k``, ``per_k``, ``val_miou``, plus ``bank``).
    """
    ranks = join_ranks(device)
    sc = cfg.seg
    train, layout = open_seg_items(sc, "train", derived[0] if derived else None)
    test, _ = open_seg_items(sc, "test", derived[1] if derived else None)
    ignore = sc.ignore_index if sc.root else derived[0].ignore_index  # type: ignore[index]
    classes = num_classes(sc, train, layout) if sc.root else len(derived[0].classes)  # type: ignore[index]
    tr, va = split_train_val(len(train), cfg.val_fraction, generator(seed, 11))  # type: ignore[arg-type]
    groups = build_seg_groups(names, cfg, encoder, classes, seed, device)
    key = _fingerprint(cfg, names, seed, f"seg:{getattr(train, 'name', '')}", checkpoint)
    pc = sc.paper
    if groups:
        views = SegTrainViews(train, encoder.img_size, pc, seed, ignore)

        def step(x: torch.Tensor, y: torch.Tensor, t: int, total: int) -> None:
            seg_train_step(groups, encoder, x, y, t, total, ignore, cfg.precision, ranks)

        taken = run_epochs(groups, views, tr, pc.epochs, pc.batch_size, step, cfg, seed, device, ranks,
                           out / SEG_STATE_FILE, key, log, field="probe.seg.paper.batch_size", desc="dense heads")  # fmt: skip
        if log:
            log(f"probe: trained {sum(int(g.module.heads) for g in groups)} dense heads, {taken} steps")
    bank = seg_knn_bank(encoder, train, tr, cfg, ignore, seed, device, ranks) if "seg_knn" in names else None
    full = {g.name: (g.module, g.feature) for g in groups}
    val = evaluate_seg(full, encoder, train, va, cfg, classes, ignore, device, ranks, bank)
    val_m = {n: torch.tensor([miou(c)[0] for c in conf]) for n, conf in val.heads.items()}
    best = {n: select_best(v) for n, v in val_m.items()}
    chosen = {g.name: (take_head(g.module, best[g.name]), g.feature) for g in groups}
    val_knn = {k: miou(c)[0] for k, c in val.knn.items()}
    k_best = max(sc.ks, key=lambda k: (val_knn[k], -k)) if bank is not None else None
    te_idx = torch.arange(len(test))  # type: ignore[arg-type]
    tst = evaluate_seg(chosen, encoder, test, te_idx, cfg, classes, ignore, device, ranks, bank)
    entries: dict[str, dict[str, Any]] = {}
    for g in groups:
        test_m, per_class = miou(tst.heads[g.name][0])
        entries[g.name] = {"miou": test_m, **sweep_entry(g.sweep, val_m[g.name], best[g.name], "miou"),
                           "per_class_iou": per_class}  # fmt: skip
        if ranks.rank == 0:
            sw, b = g.sweep, best[g.name]
            plot_sweep(val_m[g.name].view(len(sw.lrs), len(sw.wds)), sw.lrs, sw.wds, (b // len(sw.wds), b % len(sw.wds)),
                       f"{g.name}: validation mIoU", out / f"sweep_{g.name}.png", metric="val mIoU (%)")  # fmt: skip
    if bank is not None:
        per_k = {str(k): miou(c)[0] for k, c in tst.knn.items()}
        entries["seg_knn"] = {
            "miou": per_k[str(k_best)],
            "k": k_best,
            "per_k": per_k,
            "val_miou": {str(k): v for k, v in val_knn.items()},
            "bank": int(bank[0].shape[0]),
        }
    info = {
        "name": getattr(train, "name", "seg").rsplit("/", 1)[0],
        "classes": classes,
        "train": len(tr),
        "val": len(va),
        "test": len(test),  # type: ignore[arg-type]
        "ranks": ranks.world,
    }
    return entries, info
