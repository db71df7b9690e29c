"""``protocol: paper``: the paper's classification probes with the frozen encoder in the loop.

One training step::

    x, y      = a batch of fresh views (crop, flip, colour jitter drawn from (seed, epoch, image))
    f         = encoder.forward_features(x)        # once, no grad, bf16 autocast on CUDA
    for every probe (linear_patch, linear_cls, attentive):
        logits = heads(probe_inputs(f)[feature])  # (H, B, C): the whole LR x WD grid
        loss   = sum over heads of each head's mean cross-entropy; backward; per-head AdamW

Data stream from :func:`open_split` (an ImageFolder is read from disk batch by batch, so memory
does not grow with the dataset). Under ``torchrun`` every rank holds a replica of the heads,
takes its share of each global batch and all-reduces the heads' gradients (never features).
After training, every head is scored on the held-out part of train, the best per probe is
chosen there, and only that head is scored once on the test split. Heads and optimiser state
are saved atomically every ``paper.checkpoint_every`` steps and at each epoch end; a killed run
resumes from ``probe_state.pt``. ``knn`` uses a bounded, seeded bank of clean training views.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bootleg.errors import BootlegError
from bootleg.io import atomic_write, generator
from bootleg.models import ViTEncoder
from bootleg.probe.classify import PROBE_FEATURE, build_heads, topk_correct
from bootleg.probe.config import PROBE_NAMES, ProbeConfig, SweepConfig
from bootleg.probe.data import Views, eval_views, open_split, split_train_val, train_views
from bootleg.probe.features import autocast_for, probe_inputs
from bootleg.probe.knn import knn_classify
from bootleg.probe.plots import plot_confusion, plot_sweep
from bootleg.probe.sweep import BatchedAdamW, grid, lr_factor, select_best, sweep_entry, take_head

STATE_FILE = "probe_state.pt"
#: confusion matrices (and their plots) only up to this many classes
MAX_CONFUSION_CLASSES = 100
Log = Callable[[str], None]


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1


def join_ranks(device: torch.device) -> Ranks:
    """This process's place under ``torchrun`` (joins the process group once), else rank 0 of 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def _all_sum(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.world > 1:
        dist.all_reduce(t)
    return t


class RanksBatchNorm(nn.BatchNorm1d):
    """Affine-free batch norm whose training statistics span the global batch of all ranks, so
    that ``world`` processes train the linear heads as one process does (its input, frozen
    features, needs no gradient). Same buffers as ``BatchNorm1d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        D = x.shape[1]
        packed = torch.cat([x.new_tensor([x.shape[0]]), x.sum(0), (x * x).sum(0)]).detach()
        dist.all_reduce(packed)
        n, mean = packed[0], packed[1 : 1 + D] / packed[0]
        var = (packed[1 + D :] / n - mean * mean).clamp_(min=0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)  # type: ignore[union-attr]
            self.running_var.mul_(1 - m).add_(var * n / (n - 1), alpha=m)  # type: ignore[union-attr]
            self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        return (x - mean) / torch.sqrt(var + self.eps)


@dataclass
class HeadGroup:
    """One probe's grid: ``H = len(lrs) * len(wds)`` heads trained together."""

    name: str
    sweep: SweepConfig
    module: nn.Module
    opt: BatchedAdamW
    warmup: int = 0
    #: the probe input it reads (default: the classification probe's, ``PROBE_FEATURE``)
    input_key: str | None = None

    @property
    def feature(self) -> str:
        return self.input_key or PROBE_FEATURE[self.name]


def build_groups(
    names: list[str], cfg: ProbeConfig, encoder: ViTEncoder, classes: int, seed: int, device: torch.device
) -> list[HeadGroup]:
    groups = []
    for name in names:
        sweep = cfg.attentive if name == "attentive" else cfg.linear
        H = len(sweep.lrs) * len(sweep.wds)
        g = generator(seed, PROBE_NAMES.index(name), 1)
        module = build_heads(name, H, encoder.embed_dim, encoder.num_heads, classes, g).to(device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and isinstance(getattr(module, "bn", None), nn.BatchNorm1d):
            module.bn = RanksBatchNorm(encoder.embed_dim, affine=False).to(device)
        lrs, wds = grid(sweep)
        groups.append(
            HeadGroup(name, sweep, module, BatchedAdamW(module, lrs.to(device), wds.to(device), module.no_decay))
        )
    return groups


def train_step(
    groups: list[HeadGroup],
    encoder: ViTEncoder,
    x: torch.Tensor,
    y: torch.Tensor,
    step: int,
    total: int,
    precision: str = "auto",
    ranks: Ranks = Ranks(),
) -> None:
    """One encoder forward, then one optimiser step of every head of every group."""
    dev = x.device
    with torch.no_grad(), autocast_for(dev, precision):
        f = encoder.forward_features(x)
    inputs = probe_inputs(f, {g.feature for g in groups})
    for g in groups:
        with autocast_for(dev, precision):
            logits = g.module(inputs[g.feature])  # (H, B, C)
        H = logits.shape[0]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(H), reduction="sum") / len(y)
        loss.backward()
        if ranks.world > 1:
            for p in g.module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(ranks.world)
        g.opt.step(lr_factor(step, total, g.warmup))


def _fingerprint(cfg: ProbeConfig, names: list[str], seed: int, data: str, checkpoint: str) -> str:
    doc = {"cfg": cfg.model_dump(mode="json"), "names": names, "seed": seed, "data": data, "checkpoint": checkpoint}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _save_state(path: Path, groups: list[HeadGroup], epoch: int, step: int, key: str, ranks: Ranks) -> None:
    if ranks.rank != 0:
        return
    state = {
        "key": key,
        "epoch": epoch,
        "step": step,
        "heads": {g.name: g.module.state_dict() for g in groups},
        "opts": {g.name: g.opt.state_dict() for g in groups},
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path, groups: list[HeadGroup], key: str) -> tuple[int, int]:
    """(epoch, step) to continue from; (0, 0) without a state file."""
    if not path.is_file():
        return 0, 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file is one line for the user
        raise BootlegError(f"{path}: unreadable probe state ({type(e).__name__}); delete it to start over") from None
    if state.get("key") != key:
        raise BootlegError(f"{path}: written for other settings, data or checkpoint; delete it or use another --out")
    for g in groups:
        g.module.load_state_dict(state["heads"][g.name])
        g.opt.load_state_dict(state["opts"][g.name])
    return int(state["epoch"]), int(state["step"])


def _loader(views: Views, batches: list[list[int]], workers: int, device: torch.device) -> DataLoader:
    return DataLoader(views, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda")


def run_epochs(
    groups: list[HeadGroup],
    views: Any,
    idx: torch.Tensor,
    epochs: int,
    batch_size: int,
    step_fn: Callable[[torch.Tensor, torch.Tensor, int, int], None],
    cfg: ProbeConfig,
    seed: int,
    device: torch.device,
    ranks: Ranks,
    state: Path,
    key: str,
    log: Log | None = None,
    field: str = "probe.paper.batch_size",
    desc: str = "heads",
) -> int:
    """The online probes' training loop: ``epochs`` epochs over the items ``idx`` of ``views`` (a
    dataset of ``(x, y, index)`` whose ``epoch`` attribute picks the fresh augmentation), a
    seeded order per epoch, each global batch split over ranks, ``step_fn(x, y, step, total)``
    per batch; resumes from ``state`` and saves it every ``paper.checkpoint_every`` steps and at
    every epoch end. Returns the number of steps taken in this call."""
    pc = cfg.paper
    n = len(idx)
    B = min(batch_size, n - n % ranks.world)
    if B % ranks.world or B < ranks.world:
        raise BootlegError(f"{field}: {batch_size} is not divisible by the {ranks.world} ranks")
    steps = n // B
    total = epochs * steps
    for g in groups:
        g.warmup = round(g.sweep.warmup_epochs * steps)
    e0, s0 = _load_state(state, groups, key)
    if (e0, s0) != (0, 0) and log:
        log(f"probe: resuming {state} at epoch {e0} step {s0}")
    taken = 0
    bar = _bar(log is not None and ranks.rank == 0, e0 * steps + s0, total, desc)
    for epoch in range(e0, epochs):
        for g in groups:
            g.module.train()
        views.epoch = epoch
        order = idx[torch.randperm(n, generator=generator(seed, 7, epoch))]
        first = s0 if epoch == e0 else 0
        batches = [order[s * B : (s + 1) * B][ranks.rank :: ranks.world].tolist() for s in range(first, steps)]
        for s, (x, y, _) in enumerate(_loader(views, batches, pc.workers, device), start=first):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            step_fn(x, y, epoch * steps + s, total)
            taken += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"epoch {epoch + 1}/{epochs}", refresh=False)
            if pc.checkpoint_every and (s + 1) % pc.checkpoint_every == 0 and s + 1 < steps:
                _save_state(state, groups, epoch, s + 1, key, ranks)
        _save_state(state, groups, epoch + 1, 0, key, ranks)
    if bar is not None:
        bar.close()
    for g in groups:
        _sync_buffers(g.module, ranks)
        g.module.eval()
    return taken


def _bar(enabled: bool, start: int, total: int, desc: str) -> Any:
    """A tqdm progress bar of the training steps on stderr (``None`` when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=f"probe {desc}", unit="step", mininterval=1.0, dynamic_ncols=True)


def train_heads(
    groups: list[HeadGroup],
    encoder: ViTEncoder,
    train: Dataset,
    idx: torch.Tensor,
    cfg: ProbeConfig,
    seed: int,
    device: torch.device,
    ranks: Ranks,
    state: Path,
    key: str,
    log: Log | None = None,
) -> int:
    """Train every group for ``cfg.paper.epochs`` epochs over the items ``idx`` of ``train``
    (resuming from ``state``); returns the number of training steps taken in this call."""
    views = Views(train, train_views(encoder.img_size, cfg.augment), seed)

    def step(x: torch.Tensor, y: torch.Tensor, t: int, total: int) -> None:
        train_step(groups, encoder, x, y, t, total, cfg.precision, ranks)

    pc = cfg.paper
    return run_epochs(groups, views, idx, pc.epochs, pc.batch_size, step, cfg, seed, device, ranks, state, key, log)


def _sync_buffers(module: nn.Module, ranks: Ranks) -> None:
    """Average the heads' batch-norm running statistics over ranks (each saw its own shard)."""
    if ranks.world <= 1:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(ranks.world)


@dataclass
class Scores:
    """Counts over one split, summed over ranks: per head top-1 / top-5 hits, and per k the kNN hits."""

    n: int
    top1: dict[str, torch.Tensor]
    top5: dict[str, torch.Tensor]
    confusion: dict[str, torch.Tensor]
    knn: dict[str, dict[int, float]]


@torch.no_grad()
def evaluate(
    heads: dict[str, nn.Module],
    encoder: ViTEncoder,
    data: Dataset,
    idx: torch.Tensor,
    cfg: ProbeConfig,
    classes: int,
    device: torch.device,
    ranks: Ranks,
    bank: dict[str, torch.Tensor] | None = None,
    bank_y: torch.Tensor | None = None,
    confusion: bool = False,
) -> Scores:
    """Score every head (and the kNN ``bank``'s features) on the clean views of ``data[idx]``;
    one encoder forward per batch serves all of them. Nothing per image is kept."""
    pc = cfg.paper
    views = Views(data, eval_views(encoder.img_size, pc.eval_crop), 0)
    mine = idx[ranks.rank :: ranks.world]
    batches = [mine[s : s + pc.eval_batch_size].tolist() for s in range(0, len(mine), pc.eval_batch_size)]
    c1 = {k: torch.zeros(int(m.heads)) for k, m in heads.items()}
    c5 = {k: torch.zeros(int(m.heads)) for k, m in heads.items()}
    conf = {k: torch.zeros(classes, classes, dtype=torch.long) for k in heads} if confusion else {}
    ks = cfg.knn.ks
    kc = {f: torch.zeros(len(ks), dtype=torch.float64) for f in (bank or {})}
    want = {PROBE_FEATURE[k] for k in heads} | set(bank or {})
    for x, y, _ in _loader(views, batches, pc.workers, device):
        x = x.to(device, non_blocking=True)
        with autocast_for(device, cfg.precision):
            inputs = probe_inputs(encoder.forward_features(x), want)
            for name, m in heads.items():
                logits = m(inputs[PROBE_FEATURE[name]]).float().cpu()  # (H, B, C)
                c1[name] = c1[name] + topk_correct(logits, y, 1) * len(y)
                c5[name] = c5[name] + topk_correct(logits, y, 5) * len(y)
                if confusion:
                    conf[name].index_put_((y, logits[0].argmax(-1)), torch.ones_like(y), accumulate=True)
        for f in kc:
            acc = knn_classify(bank[f], bank_y, inputs[f].float(), y, ks, classes, cfg.knn.temperature)  # type: ignore
            kc[f] += torch.tensor([acc[k] * len(y) / 100 for k in ks], dtype=torch.float64)
    for d in (c1, c5):
        for k in d:
            d[k] = _all_sum(d[k].to(device), ranks).cpu()
    for k in conf:
        conf[k] = _all_sum(conf[k].to(device), ranks).cpu()
    knn = {}
    for f, t in kc.items():
        t = _all_sum(t.to(device), ranks).cpu()
        knn[f] = {k: round(float(v) / len(idx) * 100, 4) for k, v in zip(ks, t, strict=True)}
    return Scores(len(idx), c1, c5, conf, knn)


@torch.no_grad()
def knn_bank(
    encoder: ViTEncoder,
    data: Dataset,
    idx: torch.Tensor,
    cfg: ProbeConfig,
    seed: int,
    device: torch.device,
    ranks: Ranks,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clean features (``cls`` when the encoder has one, ``mean``) of a seeded subset of at most
    ``paper.knn_bank`` items of ``idx``, on ``device``, gathered on every rank (bounded by
    ``knn_bank``: the one place the paper protocol holds features)."""
    pc = cfg.paper
    pick = idx[torch.randperm(len(idx), generator=generator(seed, 8))[: pc.knn_bank]].sort().values
    kinds = ["cls", "mean"] if encoder.has_cls else ["mean"]
    views = Views(data, eval_views(encoder.img_size, pc.eval_crop), 0)
    mine = pick[ranks.rank :: ranks.world]
    batches = [mine[s : s + pc.eval_batch_size].tolist() for s in range(0, len(mine), pc.eval_batch_size)]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    ys = []
    for x, y, _ in _loader(views, batches, pc.workers, device):
        with autocast_for(device, cfg.precision):
            f = probe_inputs(encoder.forward_features(x.to(device)), kinds)
        for k in kinds:
            parts[k].append(f[k].to(torch.float16))
        ys.append(y)
    empty = torch.zeros(0, encoder.embed_dim, dtype=torch.float16, device=device)
    bank = {k: torch.cat(v) if v else empty for k, v in parts.items()}
    bank_y = torch.cat(ys).to(device) if ys else torch.zeros(0, dtype=torch.long, device=device)
    if ranks.world > 1:
        bank = {k: _gather(v, device) for k, v in bank.items()}
        bank_y = _gather(bank_y, device)
    return bank, bank_y


def _gather(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Concatenate ``t`` of every rank (sizes may differ by one row)."""
    n = torch.tensor([t.shape[0]], device=device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    pad = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=device)
    pad[: t.shape[0]] = t.to(device)
    out = [torch.zeros_like(pad) for _ in sizes]
    dist.all_gather(out, pad)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes, strict=True)])


def _entry(g: HeadGroup, val: Scores, test: Scores, best: int) -> dict[str, Any]:
    return {
        "top1": round(float(test.top1[g.name][0]) / test.n * 100, 4),
        "top5": round(float(test.top5[g.name][0]) / test.n * 100, 4),
        **sweep_entry(g.sweep, val.top1[g.name] / val.n * 100, best, "top1"),
    }


def run_online(
    encoder: ViTEncoder,
    names: list[str],
    cfg: ProbeConfig,
    data: str,
    root: str | None,
    seed: int,
    device: torch.device,
    out: Path,
    checkpoint: str,
    log: Log | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The classification probes in ``names`` under the paper protocol -> ({probe: entry}, splits).

    Entries have the same fields as the quick protocol's (``top1``, ``top5``, ``best``,
    ``val_top1``, ``grid``; ``knn``: per-feature test accuracy per k, ``val``, ``best``).
    """
    ranks = join_ranks(device)
    train = open_split(data, "train", root, cfg.limit)
    test = open_split(data, "test", root, cfg.test_limit)
    if len(test) == 0:
        raise BootlegError(f"probe.data: {data} has an empty test split; expected test images")
    classes = len(train.classes)
    tr, va = split_train_val(len(train), cfg.val_fraction, generator(seed, 6))
    entries: dict[str, dict[str, Any]] = {}
    if "linear_cls" in names and not encoder.has_cls:
        entries["linear_cls"] = {"skipped": "the encoder has no CLS token"}
    trained = [n for n in names if n in PROBE_FEATURE and n not in entries]
    groups = build_groups(trained, cfg, encoder, classes, seed, device)
    key = _fingerprint(cfg, names, seed, data, checkpoint)
    if groups:
        steps = train_heads(groups, encoder, train, tr, cfg, seed, device, ranks, out / STATE_FILE, key, log)
        if log:
            log(f"probe: trained {sum(int(g.module.heads) for g in groups)} heads, {steps} steps on rank {ranks.rank}")
    bank, bank_y = (None, None)
    if "knn" in names:
        bank, bank_y = knn_bank(encoder, train, tr, cfg, seed, device, ranks)
    full = {g.name: g.module for g in groups}
    val = evaluate(full, encoder, train, va, cfg, classes, device, ranks, bank, bank_y)
    best = {g.name: select_best(val.top1[g.name] / val.n) for g in groups}
    chosen = {g.name: take_head(g.module, best[g.name]) for g in groups}
    want_conf = classes <= MAX_CONFUSION_CLASSES
    te_idx = torch.arange(len(test))
    tst = evaluate(chosen, encoder, test, te_idx, cfg, classes, device, ranks, bank, bank_y, confusion=want_conf)
    for g in groups:
        entries[g.name] = _entry(g, val, tst, best[g.name])
        if ranks.rank == 0:
            sw = g.sweep
            grid_v = torch.tensor(entries[g.name]["grid"]["val_top1"])
            cell = (best[g.name] // len(sw.wds), best[g.name] % len(sw.wds))
            plot_sweep(grid_v, sw.lrs, sw.wds, cell, f"{g.name}: validation top-1", out / f"sweep_{g.name}.png")
            if want_conf:
                plot_confusion(tst.confusion[g.name], list(train.classes), f"{g.name}: test confusion",
                               out / f"confusion_{g.name}.png")  # fmt: skip
    if "knn" in names:
        ks = cfg.knn.ks
        label = {"cls": "cls", "mean": "patch"}
        pick = max(((f, k) for f in val.knn for k in ks), key=lambda t: (val.knn[t[0]][t[1]], -t[1]))
        e: dict[str, Any] = {label[f]: {str(k): v for k, v in tst.knn[f].items()} for f in tst.knn}
        e["best"] = {"feature": label[pick[0]], "k": pick[1], "top1": tst.knn[pick[0]][pick[1]]}
        e["val"] = {label[f]: {str(k): v for k, v in d.items()} for f, d in val.knn.items()}
        e["bank"] = len(bank_y)  # type: ignore[arg-type]
        entries["knn"] = e
    splits = {"train": len(tr), "val": len(va), "test": len(test), "ranks": ranks.world}
    return entries, splits
