"""Pretraining loop: one loop for every method, exact resume, DDP through torchrun.

The path of one batch: ``self.stream`` yields ``(images, masks)`` (a pure function of
``(seed, epoch, batch, rank)``) -> :meth:`Trainer.micro_step` runs ``Engine.forward`` (targets,
student, predictor, loss: the whole method, in ``bootleg/engine.py``) under autocast and DDP's
``no_sync``, then backward -> :meth:`Trainer.train_step` steps the optimiser, updates the EMA
teacher and advances the step -> :meth:`Trainer.run` logs (loss, images/s, MFU) and checkpoints.

Inside the step there is no host synchronisation: losses are accumulated on the device and
read (``.item()``) only at logging steps, where a non-finite loss stops the run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from bootleg.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from bootleg.config import Config, dump_config
from bootleg.data import build_stream
from bootleg.engine import Engine
from bootleg.errors import BootlegError
from bootleg.export import ENCODER_FILE, save_encoder
from bootleg.io import atomic_write_text, resolve_device
from bootleg.masking import Masks, StepMasks, build_sampler
from bootleg.monitors import collapse_monitors, peak_flops, step_flops
from bootleg.schedules import ema_at, lr_at, warmup_steps, wd_at

Callback = Callable[[dict[str, Any]], None]
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


class NonFiniteLoss(BootlegError):
    """The loss became NaN or infinite."""


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class Plan:
    """Step counts derived from the config and the dataset."""

    total: int  # optimiser steps
    warmup: int
    micro_batch: int  # per rank, per accumulation step
    accum: int
    steps_per_epoch: int  # optimiser steps per epoch
    lr_scale: float


def micro_batch_size(cfg: Config, world: int) -> int:
    """Per-rank images of one accumulation step: ``batch_size / (world x accum_steps)``."""
    per_step = world * cfg.optim.accum_steps
    if cfg.optim.batch_size % per_step:
        raise BootlegError(
            f"optim.batch_size: {cfg.optim.batch_size} is not divisible by world size x optim.accum_steps = {per_step}"
        )
    return cfg.optim.batch_size // per_step


def make_plan(cfg: Config, world: int, micro_steps_per_epoch: int) -> Plan:
    o = cfg.optim
    spe = micro_steps_per_epoch // o.accum_steps
    if spe < 1:
        raise BootlegError(
            f"optim.batch_size: {o.batch_size} is larger than the dataset ({cfg.data.name}); expected a smaller batch"
        )
    total = cfg.run.steps or o.epochs * spe
    scale = o.batch_size / o.lr_ref_batch if o.lr_ref_batch else 1.0
    return Plan(
        total, warmup_steps(total, o.warmup_epochs, o.epochs), micro_batch_size(cfg, world), o.accum_steps, spe, scale
    )


def make_optimizer(engine: Engine, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    o = cfg.optim
    return torch.optim.AdamW(
        engine.param_groups(), lr=0.0, betas=o.betas, eps=o.eps, weight_decay=o.wd_init, fused=device.type == "cuda"
    )


def set_schedules(opt: torch.optim.Optimizer, cfg: Config, plan: Plan, step: int) -> tuple[float, float, float]:
    """Write this step's LR and WD into the optimiser; return (lr, wd, ema)."""
    o = cfg.optim
    lr = plan.lr_scale * lr_at(step, plan.total, plan.warmup, o.lr_init, o.lr_max, o.lr_final)
    wd = wd_at(step, plan.total, o.wd_init, o.wd_final)
    for g in opt.param_groups:
        g["lr"] = lr
        if g.get("decay", True):
            g["weight_decay"] = wd
    return lr, wd, ema_at(step, plan.total, o.ema_init, o.ema_final)


def compile_engine(engine: Engine, cfg: Config) -> torch.nn.Module:
    """``torch.compile`` of the whole step. Bucketed masks (``masking.bucket``) give a handful of
    static shapes, compiled once each (and CUDA graphs become possible); without buckets the
    mask lengths vary every batch, so the shapes are marked dynamic."""
    static = cfg.masking.bucket is not None
    mode = "reduce-overhead" if cfg.run.cuda_graphs else None
    return torch.compile(engine, dynamic=not static, backend=cfg.run.compile_backend, mode=mode)


def attention_backend(name: str) -> Any:
    """A context that pins scaled-dot-product attention to one backend (``auto``: PyTorch's choice)."""
    if name == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    return sdpa_kernel(backend)


def enable_float8(engine: Engine, device: torch.device) -> None:
    """Swap the student's and predictor's linear layers for torchao's float8 training linears."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise BootlegError("run.float8: needs a CUDA GPU with float8 support (H100/H200, L40S); set it to false")
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise BootlegError("run.float8: needs torchao (pip install torchao); set it to false") from None

    def wanted(module: torch.nn.Module, fqn: str) -> bool:  # float8 needs dims divisible by 16
        return isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(engine.online, module_filter_fn=wanted)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trim_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(k + "\n" for k in keep))


class Trainer:
    """State and steps of one pretraining run. Use :func:`pretrain`."""

    def __init__(self, cfg: Config, out: Path, resume: bool, callbacks: Sequence[Callback]) -> None:
        self.cfg, self.out, self.callbacks = cfg, out, list(callbacks)
        kind = "cuda" if cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist = init_distributed(kind)
        self.device = resolve_device(cfg.run.device, self.dist.local_rank)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and cuda)
        ckpt_path = out / CHECKPOINT_FILE
        if ckpt_path.exists() and not resume:
            raise BootlegError(
                f"{out}: already holds a checkpoint; pass --resume to continue it or choose another --out"
            )

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.engine = Engine(cfg).to(self.device)
        self.sampler = build_sampler(cfg.masking, cfg.model.grid)
        micro = micro_batch_size(cfg, self.dist.world)
        masks = StepMasks(self.sampler, micro * cfg.mask_repeats, cfg.run.seed, self.dist.rank)
        self.stream = build_stream(
            cfg.data, cfg.model.img_size, micro, masks, cfg.run.seed, self.dist.rank, self.dist.world, self.device
        )
        self.plan = make_plan(cfg, self.dist.world, self.stream.steps_per_epoch)
        self.opt = make_optimizer(self.engine, cfg, self.device)
        self.step = 0
        if resume and ckpt_path.exists():
            self._load(ckpt_path)
        # what runs the step: the engine, compiled and/or wrapped by DDP (the engine itself is
        # what is saved, so checkpoints never see the wrappers)
        self.model: torch.nn.Module = self.engine
        if cfg.run.float8:
            enable_float8(self.engine, self.device)
        if cfg.run.compile:
            self.model = compile_engine(self.engine, cfg)
        if self.dist.world > 1:
            self.model = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        self.peak_flops = peak_flops(self.device)
        self._shape: tuple[int, int, int] = (0, 0, 0)  # (L, K, P) of the last micro-batch, for MFU

    # -------------------------------------------------------------- state
    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        saved = state.get("config", {}).get("model")
        if saved is not None and saved != self.cfg.model.model_dump(mode="json"):
            diff = [k for k in saved if saved[k] != self.cfg.model.model_dump(mode="json").get(k)]
            raise BootlegError(
                f"{path}: written for a different model (model.{diff[0]} differs); expected the same model"
            )
        try:
            self.engine.load_state_dict(state["engine"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise BootlegError(f"{path}: does not match this run's networks ({str(e).splitlines()[0]})") from None
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        if self.stream.streaming and "data" in state:  # bad-image counts carry over a resume
            self.stream.bad_images = int(state["data"]["bad_images"])
            self.stream.images_read = int(state["data"]["images_read"])

    def save(self) -> None:
        if not self.dist.main:
            return
        state = {
            "step": self.step,
            "engine": self.engine.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": rng_state(),
            "config": self.cfg.model_dump(mode="json"),
        }
        if self.stream.streaming:
            state["data"] = {"bad_images": self.stream.bad_images, "images_read": self.stream.images_read}
        save_checkpoint(self.out / CHECKPOINT_FILE, state)

    # -------------------------------------------------------------- steps
    def micro_step(self, images: torch.Tensor, masks: Masks, want_value: bool, sync: bool) -> tuple[torch.Tensor, ...]:
        """Forward (``Engine.forward``) + backward of one micro-batch. Returns detached (loss, pred, target)."""
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        no_sync = self.model.no_sync() if (self.dist.world > 1 and not sync) else nullcontext()
        with no_sync:
            with amp, attention_backend(self.cfg.run.attention):
                loss, pred, target = self.model(images, masks, want_value)
            (loss / self.plan.accum).backward()
        self._shape = (masks.enc_idx.shape[1], *masks.pred_idx.shape[1:])
        return loss.detach(), pred.detach(), target

    def train_step(
        self, batches: Iterator[tuple[torch.Tensor, Masks]], want_value: bool, monitor: bool
    ) -> dict[str, Any]:
        """One optimiser step: ``accum`` micro-batches, clip, AdamW, EMA update."""
        lr, wd, ema = set_schedules(self.opt, self.cfg, self.plan, self.step)
        loss_sum = torch.zeros((), device=self.device)
        for a in range(self.plan.accum):
            images, masks = next(batches)
            loss, pred, target = self.micro_step(images, masks, want_value, sync=a == self.plan.accum - 1)
            loss_sum += loss
        with record_function("bootleg.optimizer"):
            if self.cfg.optim.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.engine.online.parameters(), self.cfg.optim.clip_grad)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.engine.update_teacher(ema)
        self.step += 1
        out: dict[str, Any] = {"loss_t": loss_sum / self.plan.accum, "lr": lr, "wd": wd, "ema": ema}
        if monitor:
            out.update(collapse_monitors(self.engine.export_encoder(), images, pred, target))
        return out

    def mfu(self, images_per_s: float) -> float | None:
        """Model FLOPs utilisation at ``images_per_s`` (FLOPs counted as ``bench/step.py`` does)."""
        if not self.peak_flops or not self._shape[0]:
            return None
        per_image = step_flops(self.cfg, *self._shape, batch=1)
        return per_image * images_per_s * self.dist.world / self.peak_flops

    # -------------------------------------------------------------- loop
    def run(self, stop_at: int | None = None) -> Path:
        cfg, plan, main = self.cfg, self.plan, self.dist.main
        end = plan.total if stop_at is None else min(stop_at, plan.total)
        metrics_path = self.out / METRICS_FILE
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / CONFIG_FILE, dump_config(cfg))
            _trim_metrics(metrics_path, self.step)
        batches = self.stream.batches(self.step * plan.accum)
        bar = _progress(main and cfg.run.progress, self.step, plan.total)
        images_per_step = cfg.optim.batch_size
        run_loss = torch.zeros((), device=self.device)
        run_n = 0
        t0, s0 = time.perf_counter(), self.step
        try:
            while self.step < end:
                nxt = self.step + 1
                log = nxt % cfg.run.log_every == 0 or nxt == plan.total
                noforward = cfg.loss.name == "mse_noforward"
                rec = self.train_step(
                    batches, want_value=log or not noforward, monitor=nxt % cfg.run.monitor_every == 0
                )
                loss_t = rec.pop("loss_t")
                if not noforward:
                    run_loss += loss_t
                    run_n += 1
                if log:
                    # with the no-forward loss only the logging step's value is real
                    loss = float(loss_t) if noforward else float(run_loss) / run_n
                    dt = time.perf_counter() - t0
                    ips = (self.step - s0) * images_per_step / max(dt, 1e-9)
                    record = {
                        "step": self.step,
                        "epoch": self.step / plan.steps_per_epoch,
                        "loss": loss,
                        **rec,
                        "images_per_s": ips,
                        **({"bad_images": self.stream.bad_images} if self.stream.streaming else {}),
                    }
                    mfu = self.mfu(ips / self.dist.world)
                    if mfu is not None:
                        record["mfu"] = mfu
                    if not math.isfinite(loss):
                        raise NonFiniteLoss(
                            f"loss is {loss} at step {self.step}; lower optim.lr_max or check the data "
                            f"(last checkpoint kept in {self.out})"
                        )
                    self._emit(record, metrics_path, bar)
                    run_loss.zero_()
                    run_n = 0
                    t0, s0 = time.perf_counter(), self.step
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.run.checkpoint_every == 0 or self.step in (plan.total, end):
                    c0 = time.perf_counter()
                    self.save()
                    t0 += time.perf_counter() - c0  # checkpoint time is not training time
        finally:
            if bar is not None:
                bar.close()
        if main and self.step == plan.total:
            save_encoder(
                self.engine.export_encoder(), self.out / ENCODER_FILE, {"method": cfg.method, "step": str(self.step)}
            )
        if self.dist.world > 1:
            dist.barrier()
        return self.out

    def _emit(self, record: dict[str, Any], path: Path, bar: Any) -> None:
        if not self.dist.main:
            return
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if bar is not None:
            extra = {"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}", **extra, refresh=False)
        for cb in self.callbacks:
            cb(record)


def _progress(enabled: bool, start: int, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="pretrain", unit="step", mininterval=1.0, dynamic_ncols=True)


def pretrain(
    cfg: Config,
    out: str | Path,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    stop_at: int | None = None,
) -> Path:
    """Pretrain as ``cfg`` says into the run folder ``out``; returns it.

    The folder gets ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt`` (every
    ``run.checkpoint_every`` steps and at the end) and ``encoder.safetensors``. With
    ``resume`` the run continues from ``checkpoint.pt`` and ends bit-identical to an
    uninterrupted run. Each callback receives every metrics record (rank 0 only).
    ``stop_at`` pauses the run after that step (checkpoint written, no encoder file):
    continue it later with ``resume=True``; :func:`export_checkpoint` gives the encoder
    of the pause point for probing.
    """
    trainer = Trainer(cfg, Path(out), resume, callbacks)
    return trainer.run(stop_at)


def export_checkpoint(run_dir: str | Path, dst: str | Path) -> Path:
    """Write the encoder of ``run_dir/checkpoint.pt`` (teacher, or student for MAE) and
    its ``config.yaml`` into the folder ``dst``, which then loads like a finished run."""
    from bootleg.config import Config

    run_dir, dst = Path(run_dir), Path(dst)
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    cfg = Config.model_validate(state["config"])
    engine = Engine(cfg)
    engine.load_state_dict(state["engine"])
    dst.mkdir(parents=True, exist_ok=True)
    save_encoder(engine.export_encoder(), dst / ENCODER_FILE, {"method": cfg.method, "step": str(state["step"])})
    atomic_write_text(dst / CONFIG_FILE, dump_config(cfg))
    return dst
