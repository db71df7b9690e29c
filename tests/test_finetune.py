"""``bootleg finetune``: end-to-end fine-tuning with timm's parts (issue 11, item 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bootleg.export import save_encoder
from bootleg.finetune import RECIPES, FinetuneConfig
from bootleg.finetune.run import (
    CLASSIFIER_FILE,
    RESULT_FILE,
    STATE_FILE,
    class_balanced_subset,
    finetune,
    load_classifier,
)
from bootleg.models import ViTEncoder
from bootleg.probe import ProbeConfig
from bootleg.probe.data import labels_of, open_split
from bootleg.probe.runner import run_probes

ROOT = Path(__file__).resolve().parents[1]

#: the full MAE recipe pieces (mixup, cutmix, RandAugment, erasing, drop path, layer decay), small
SHORT = {"data": "embedded", "limit": 400, "test_limit": 100, "epochs": 2, "batch_size": 32, "warmup_epochs": 0.5,
         "workers": 0, "eval_crop": 1.0, "checkpoint_every": 4}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two shared cores: one intra-op thread is much faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_encoder(ViTEncoder(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3), d / "encoder.safetensors")
    return d


def test_mae_recipe_is_the_default() -> None:
    cfg = FinetuneConfig()
    assert (cfg.weight_decay, cfg.smoothing, cfg.mixup, cfg.cutmix, cfg.reprob) == (0.05, 0.1, 0.8, 1.0, 0.25)
    assert cfg.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.batch_size == 1024 and cfg.warmup_epochs == 5
    b, large = cfg.resolved(768), cfg.resolved(1024)
    assert (b.recipe, b.epochs, b.blr, b.layer_decay, b.drop_path) == ("vit_b", 100, 5e-4, 0.65, 0.1)
    assert (large.recipe, large.epochs, large.blr, large.layer_decay, large.drop_path) == ("vit_l", 50, 1e-3, 0.75, 0.2)
    assert cfg.resolved(384).recipe == "vit_s" and RECIPES["vit_s"] == RECIPES["vit_b"]
    assert FinetuneConfig(epochs=3).resolved(768).epochs == 3  # explicit values win


def test_low_shot_subset_is_fixed_and_class_balanced() -> None:
    labels = labels_of(open_split("embedded", "train"))
    a, b = class_balanced_subset(labels, 0.01), class_balanced_subset(labels, 0.01)
    assert torch.equal(a, b) and len(a) == 50
    assert torch.bincount(labels[a], minlength=10).tolist() == [5] * 10
    assert len(set(a.tolist())) == len(a)


def test_low_shot_subset_with_10000_classes() -> None:
    """iNat21's label space: 1% of 10,000 classes of 2 to 20 images keeps one image of every
    class, and the subset is the one a per-class scan of the labels draws."""
    from bootleg.io import generator

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10_000).repeat_interleave(torch.randint(2, 21, (10_000,), generator=g))
    labels = labels[torch.randperm(len(labels), generator=g)]
    sub = class_balanced_subset(labels, 0.01)
    per_class = torch.bincount(labels[sub], minlength=10_000)
    assert per_class.min() == 1 and per_class.max() == 1  # max(1, round(0.01 * n))
    reference = []
    for c in range(10_000):
        idx = (labels == c).nonzero().flatten()
        k = max(1, round(0.5 * len(idx)))
        reference.append(idx[torch.randperm(len(idx), generator=generator(0, 13, c))[:k]])
    assert torch.equal(class_balanced_subset(labels, 0.5), torch.cat(reference).sort().values)


def test_writes_result_and_a_timm_classifier(run_dir: Path, tmp_path: Path) -> None:
    cfg = FinetuneConfig.model_validate({**SHORT, "fraction": 0.5})
    epochs: list[dict[str, float]] = []
    res = finetune(run_dir, tmp_path, cfg, device="cpu", on_epoch=epochs.append)
    assert res["metric"] == "top1" and 0 <= res["score"] <= res["top5"] <= 100
    per_epoch = res["steps"] // 2
    assert [(e["epoch"], e["step"]) for e in epochs] == [(1, per_epoch), (2, 2 * per_epoch)]
    assert all(e["train_loss"] > 0 and e["lr"] > 0 for e in epochs)
    assert epochs[1]["lr"] < epochs[0]["lr"]  # past the warm-up, the cosine decays
    expected = class_balanced_subset(labels_of(open_split("embedded", "train", limit=400)), 0.5)
    assert res["train_images"] == len(expected) and 190 <= len(expected) <= 210 and res["classes"] == 10
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == res
    model = load_classifier(tmp_path / CLASSIFIER_FILE)
    assert type(model).__name__ == "VisionTransformer" and model.num_classes == 10
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def _cli(out: Path, *extra: str) -> subprocess.Popen[str]:
    sets = {**SHORT, "epochs": 3, "limit": 1000}
    args = [sys.executable, "-m", "bootleg.cli", "finetune", "--checkpoint", str(out.parent / "run"), "--out", str(out),
            "--device", "cpu", "--quiet", *extra]  # fmt: skip
    for k, v in sets.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "run").symlink_to(run_dir)
    ref = _cli(tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()  # type: ignore[union-attr]
    victim = _cli(tmp_path / "cut")
    state = tmp_path / "cut" / STATE_FILE
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert victim.poll() is None, "run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "cut" / CLASSIFIER_FILE).exists()
    killed_at = torch.load(state, weights_only=False)["step"]
    assert 0 < killed_at < 93
    resumed = _cli(tmp_path / "cut")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    a = (tmp_path / "ref" / CLASSIFIER_FILE).read_bytes()
    b = (tmp_path / "cut" / CLASSIFIER_FILE).read_bytes()
    assert a == b
    ra, rb = (json.loads((tmp_path / d / RESULT_FILE).read_text()) for d in ("ref", "cut"))
    assert ra["score"] == rb["score"] and ra["steps"] == 93


@pytest.mark.slow
def test_finetuning_beats_the_frozen_linear_probe(run_dir: Path, tmp_path: Path) -> None:
    """Same encoder, same 5000 training / 500 test images: a short end-to-end run (light crops,
    no mixup or RandAugment: 6 epochs are too few for them) against the best of 25 linear heads."""
    probe: dict[str, Any] = {"data": "embedded", "test_limit": 500, "augment": {"views": 0}, "linear": {"epochs": 10}}
    rep = run_probes(run_dir, tmp_path / "probe", ProbeConfig.model_validate(probe),
                     probes=["linear_patch", "linear_cls"], device="cpu")  # fmt: skip
    cfg = FinetuneConfig.model_validate({
        "data": "embedded", "test_limit": 500, "epochs": 6, "batch_size": 64, "warmup_epochs": 0.5, "blr": 4e-3,
        "layer_decay": 0.75, "drop_path": 0.0, "mixup": 0, "cutmix": 0, "auto_augment": None, "reprob": 0,
        "crop_scale": (0.6, 1.0), "eval_crop": 1.0, "workers": 0,
    })  # fmt: skip
    res = finetune(run_dir, tmp_path / "ft", cfg, device="cpu")
    linear = max(rep.score("linear_patch"), rep.score("linear_cls"))  # type: ignore[type-var]
    assert res["score"] > linear + 2, (res["score"], linear)
