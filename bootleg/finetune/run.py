"""End-to-end fine-tuning of a pretrained encoder as a timm classifier (MAE's recipe).

    bootleg finetune --checkpoint runs/demo --out runs/demo/finetune [--fraction 0.01]

The encoder is loaded into timm's ``VisionTransformer`` (global average pooling + ``fc_norm``
+ a new linear head, as MAE fine-tunes) and trained with timm's parts: AdamW with layer-wise
learning-rate decay (``timm.optim.create_optimizer_v2``), RandAugment and random erasing
(``timm.data.create_transform``), Mixup/CutMix with label smoothing (``timm.data.Mixup`` +
``timm.loss.SoftTargetCrossEntropy``) and drop path. The learning rate follows a per-step
warm-up + cosine schedule, every random draw is a pure function of ``(seed, epoch, step,
image)``, so a run killed at any point resumes from ``finetune_state.pt`` byte-identically.
Writes ``finetune.json`` and ``classifier.safetensors`` (load with :func:`load_classifier`).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch.utils.data import DataLoader

from bootleg.errors import BootlegError
from bootleg.export import canonical_safetensors, read_metadata
from bootleg.finetune.config import FinetuneConfig
from bootleg.io import atomic_write, atomic_write_bytes, atomic_write_text, generator, mix_seed, resolve_device
from bootleg.probe.data import Views, eval_views, labels_of, open_split
from bootleg.probe.features import autocast_for
from bootleg.probe.weights import resolve_checkpoint, run_config

STATE_FILE = "finetune_state.pt"
RESULT_FILE = "finetune.json"
CLASSIFIER_FILE = "classifier.safetensors"


def class_balanced_subset(labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """Sorted indices keeping ``max(1, round(fraction * n_c))`` items of each class ``c``,
    drawn with a fixed seed: the same subset for every run, method and checkpoint. One sort
    groups the classes (iNat21: 10,000 classes, 2.7M images), no pass over the labels per class."""
    order = torch.argsort(labels, stable=True)  # within a class, indices stay ascending
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    keep = []
    for c, idx in zip(classes.tolist(), order.split(counts.tolist()), strict=True):
        k = max(1, round(fraction * len(idx)))
        keep.append(idx[torch.randperm(len(idx), generator=generator(0, 13, int(c)))[:k]])
    return torch.cat(keep).sort().values


def build_classifier(weights: Path, classes: int, drop_path: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The encoder as a timm ``VisionTransformer`` classifier (avg pool + fc_norm + new head)."""
    import timm

    kwargs = json.loads(read_metadata(weights)["timm_kwargs"])
    kwargs.update(num_classes=classes, global_pool="avg", fc_norm=True, drop_path_rate=drop_path)
    model = timm.create_model(**kwargs)
    # MAE: the encoder's final norm moves behind the pooling (fc_norm); the head is new
    state = {("fc_" + k if k.startswith("norm.") else k): v for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise BootlegError(f"{weights}: weights do not fit timm's VisionTransformer ({(unexpected or missing)[:3]})")
    with torch.no_grad():
        torch.nn.init.trunc_normal_(model.head.weight, std=2e-5, generator=generator(0, 14))
        model.head.bias.zero_()
    return model, {k: v for k, v in kwargs.items() if k != "drop_path_rate"}


def load_classifier(path: str | Path) -> torch.nn.Module:
    """A fine-tuned ``classifier.safetensors`` as a timm model (eval mode)."""
    import timm

    p = Path(path)
    p = p / CLASSIFIER_FILE if p.is_dir() else p
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    if "timm_kwargs" not in meta:
        raise BootlegError(f"{p}: no 'timm_kwargs' metadata; expected a classifier written by bootleg finetune")
    model = timm.create_model(**json.loads(meta["timm_kwargs"]))
    model.load_state_dict(load_file(str(p)), strict=True)
    return model.eval()


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then half-cosine to ``min_lr`` (MAE's)."""
    if step < warmup:
        return lr * step / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def _seed_all(*parts: int) -> None:
    s = mix_seed(*parts)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def _posterize(img: Any, bits_to_keep: int, **kw: Any) -> Any:
    """timm's posterize, with 0 bits giving the black image older Pillow gave (Pillow 13 raises
    on ``bits=0``, which RandAugment's ``PosterizeIncreasing`` draws at the top magnitude)."""
    from PIL import Image
    from timm.data import auto_augment

    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kw)


def _train_transform(size: int, cfg: FinetuneConfig) -> Any:
    from timm.data import auto_augment, create_transform
    from torchvision.transforms.functional import to_pil_image

    for op in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[op] = _posterize

    t = create_transform(
        input_size=size, is_training=True, auto_augment=cfg.auto_augment, interpolation="bicubic",
        re_prob=cfg.reprob, re_mode="pixel", re_count=1, scale=tuple(cfg.crop_scale), color_jitter=cfg.color_jitter,
    )  # fmt: skip

    def f(img: Any) -> torch.Tensor:
        return t(to_pil_image(img) if isinstance(img, torch.Tensor) else img)

    return f


class _SeededViews(Views):
    """:class:`Views` whose draw also seeds Python's and NumPy's generators (timm's RandAugment)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        py, npy = random.getstate(), np.random.get_state()
        try:
            s = mix_seed(self.seed, self.epoch, int(i), 1)
            random.seed(s)
            np.random.seed(s % 2**32)
            return super().__getitem__(i)
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@torch.no_grad()
def evaluate(model: torch.nn.Module, views: Views, idx: torch.Tensor, batch: int, device: torch.device,
             precision: str) -> dict[str, float]:  # fmt: skip
    """Top-1 / top-5 (percent) of ``model`` on ``views[idx]``."""
    model.eval()
    hits1 = hits5 = 0
    loader = DataLoader(views, batch_sampler=[idx[s : s + batch].tolist() for s in range(0, len(idx), batch)])
    for x, y, _ in loader:
        with autocast_for(device, precision):
            logits = model(x.to(device)).float().cpu()
        top = logits.topk(min(5, logits.shape[1]), -1).indices
        hits1 += int((top[:, 0] == y).sum())
        hits5 += int((top == y[:, None]).any(-1).sum())
    n = max(1, len(idx))
    return {"top1": round(hits1 / n * 100, 4), "top5": round(hits5 / n * 100, 4)}


def finetune(
    checkpoint: str | Path,
    out: str | Path,
    cfg: FinetuneConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    log: Any = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` end to end on ``cfg.data``; write ``finetune.json`` and
    ``classifier.safetensors`` into ``out``; resume from ``out/finetune_state.pt`` when present.

    ``on_epoch`` (rank 0) receives ``{"epoch", "step", "train_loss", "lr"}`` at the end of
    every epoch this call trains: the mean loss of the optimiser steps it ran in that epoch
    (after a resume, those since the resume) and the base learning rate of its last step.

    Returns the content of ``finetune.json``: ``metric`` (``top1``), ``score`` (percent on the
    test split after the last epoch, as MAE reports), ``top5``, the resolved ``config``, the
    number of training images, ``steps``.
    """
    cfg = cfg or FinetuneConfig()
    out = Path(out)
    dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")), field="device")
    weights = resolve_checkpoint(checkpoint)
    run_data = run_config(weights).get("data") or {}
    run_data = run_data if isinstance(run_data, dict) else {}
    name = cfg.data or run_data.get("name") or "embedded"
    root = cfg.root or (run_data.get("root") if name == run_data.get("name") else None)
    train, test = open_split(name, "train", root, cfg.limit), open_split(name, "test", root, cfg.test_limit)
    classes = len(train.classes)
    idx = torch.arange(len(train))
    if cfg.fraction is not None and cfg.fraction < 1:
        idx = class_balanced_subset(labels_of(train), cfg.fraction)
    meta_arch = json.loads(read_metadata(weights)["arch"])
    cfg = cfg.resolved(int(meta_arch["embed_dim"]))
    model, timm_kwargs = build_classifier(weights, classes, float(cfg.drop_path))  # type: ignore[arg-type]
    model.to(dev)
    size = int(meta_arch["img_size"])

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    net: torch.nn.Module = model
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        rank = dist.get_rank()
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    B = min(cfg.batch_size, len(idx) - len(idx) % 2)
    micro = B // (world * cfg.accum)
    if micro < 2 or micro % 2 or micro * world * cfg.accum != B:
        raise BootlegError(
            f"finetune.batch_size: {B} must split into even micro-batches over {world} ranks x {cfg.accum}"
        )
    steps = len(idx) // B
    total = cfg.epochs * steps  # type: ignore[operator]
    warmup = round(cfg.warmup_epochs * steps)
    lr = float(cfg.blr) * B / 256  # type: ignore[arg-type]

    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    mix = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mix = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing, num_classes=classes)
    crit = SoftTargetCrossEntropy() if mix else LabelSmoothingCrossEntropy(cfg.smoothing)

    key = json.dumps({"cfg": cfg.model_dump(mode="json"), "seed": seed, "ck": str(checkpoint), "data": name})
    state_path = out / STATE_FILE
    step = 0
    if state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("key") != key:
            raise BootlegError(
                f"{state_path}: written for other settings, data or checkpoint; delete it or use another --out"
            )
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = int(st["step"])
        if log:
            log(f"finetune: resuming at step {step}/{total}")

    def save(at: int) -> None:
        if rank == 0:
            st = {"key": key, "step": at, "model": model.state_dict(), "opt": opt.state_dict()}
            atomic_write(state_path, lambda tmp: torch.save(st, tmp))

    views = _SeededViews(train, _train_transform(size, cfg), seed)
    while step < total:
        epoch, first = divmod(step, steps)
        views.epoch = epoch
        order = idx[torch.randperm(len(idx), generator=generator(seed, 11, epoch))]
        batches = []
        for s in range(first, steps):
            glob = order[s * B : (s + 1) * B][rank::world]
            batches += [glob[a * micro : (a + 1) * micro].tolist() for a in range(cfg.accum)]
        loader = DataLoader(views, batch_sampler=batches, num_workers=cfg.workers, pin_memory=dev.type == "cuda")
        net.train()
        loss_sum, ran = torch.zeros((), device=dev), 0
        for i, (x, y, _) in enumerate(loader):
            a = i % cfg.accum
            if a == 0:
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, warmup, lr, cfg.min_lr) * g.get("lr_scale", 1.0)
            _seed_all(seed, 12, step, a)  # mixup draws and drop path
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if mix is not None:
                x, y = mix(x, y)
            with autocast_for(dev, cfg.precision):
                loss = crit(net(x).float(), y) / cfg.accum
            if not torch.isfinite(loss):
                raise BootlegError(f"finetune: loss is {loss.item()} at step {step}; lower finetune.blr")
            loss.backward()
            loss_sum += loss.detach()
            if a + 1 < cfg.accum:
                continue
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            ran += 1
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                save(step)
        save(step)
        if log:
            log(f"finetune: epoch {epoch + 1}/{cfg.epochs} done (step {step}/{total})")
        if on_epoch is not None and rank == 0 and ran:
            last = lr_at(step - 1, total, warmup, lr, cfg.min_lr)
            on_epoch({"epoch": epoch + 1, "step": step, "train_loss": float(loss_sum) / ran, "lr": last})

    scores = evaluate(model, Views(test, eval_views(size, cfg.eval_crop), 0), torch.arange(len(test)),
                      max(1, micro), dev, cfg.precision)  # fmt: skip
    result = {
        "checkpoint": str(checkpoint), "dataset": name, "seed": seed, "metric": "top1", "score": scores["top1"],
        "top5": scores["top5"], "fraction": cfg.fraction, "train_images": len(idx), "test_images": len(test),
        "classes": classes, "steps": total, "lr": lr, "config": cfg.model_dump(mode="json"),
        "recipe_source": "MAE fine-tuning (He et al. 2022, Table 9; github.com/facebookresearch/mae FINETUNE.md)",
    }  # fmt: skip
    if rank == 0:
        blob = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        meta = {
            "format": "bootleg-classifier/1",
            "timm_kwargs": json.dumps(timm_kwargs),
            "classes": json.dumps(train.classes),
        }
        atomic_write_bytes(out / CLASSIFIER_FILE, canonical_safetensors(safetensors_bytes(blob, metadata=meta)))
        atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result
