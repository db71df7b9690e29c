"""``protocol: paper`` for the dense probes (issue 11, item 2): a generated ADE20K-layout tree
of images of several sizes, streamed; each test states one property of the protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import bootleg.probe.online_seg as online_seg
from bootleg.errors import BootlegError
from bootleg.export import save_encoder
from bootleg.models import ViTEncoder
from bootleg.probe import ProbeConfig, ProbeReport
from bootleg.probe.config import SegPaperConfig
from bootleg.probe.online import Ranks
from bootleg.probe.runner import run_probes
from bootleg.probe.segstream import SegFolderItems, SegTrainViews, train_view, window_starts, windows

ROOT = Path(__file__).resolve().parents[1]
PROBES = ["seg_knn", "seg_linear", "seg_block"]
PALETTE = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float32)
SIZES = ((40, 56), (48, 40), (36, 36), (64, 44))

TINY: dict[str, Any] = {
    "protocol": "paper",
    "val_fraction": 0.25,
    "paper": {"eval_batch_size": 16, "workers": 0, "checkpoint_every": 1},
    "seg": {
        "num_classes": 3,
        "ks": [3, 9],
        "linear": {"lrs": [1e-4, 3e-2], "wds": [0.0]},
        "block": {"lrs": [1e-4, 1e-3], "wds": [0.0], "warmup_epochs": 0.0},
        "paper": {"epochs": 2, "batch_size": 6, "knn_bank": 200, "knn_patches_per_image": 12},
    },
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pair(rng: np.random.Generator, h: int, w: int) -> tuple[Image.Image, Image.Image]:
    """A picture whose colour gives its class (8 px cells), and its ADE20K-style mask (1..3)."""
    cells = rng.integers(0, 3, (-(-h // 8), -(-w // 8)))
    lab = np.kron(cells, np.ones((8, 8), np.int64))[:h, :w]
    img = PALETTE[lab] + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), Image.fromarray((lab + 1).astype(np.uint8))


def make_ade(root: Path, train: int = 24, val: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("training", train), ("validation", val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            img, lab = _pair(rng, *SIZES[i % len(SIZES)])
            img.save(root / "images" / split / f"{i:04d}.jpg", quality=95)
            lab.save(root / "annotations" / split / f"{i:04d}.png")
    return root


def tiny_cfg(root: Path, **seg_paper: Any) -> ProbeConfig:
    raw = json.loads(json.dumps(TINY))
    raw["seg"]["root"] = str(root)
    raw["seg"]["paper"].update(seg_paper)
    return ProbeConfig.model_validate(raw)


@pytest.fixture(scope="module")
def ade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ade(tmp_path_factory.mktemp("ade"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_encoder(ViTEncoder(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3), d / "encoder.safetensors")
    return d


@pytest.fixture(scope="module")
def reference(run_dir: Path, ade: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ProbeReport, Path]:
    out = tmp_path_factory.mktemp("ref")
    return run_probes(run_dir, out, tiny_cfg(ade), probes=PROBES, device="cpu"), out


def test_report_has_the_quick_protocols_fields(reference: tuple[ProbeReport, Path]) -> None:
    rep, out = reference
    assert rep.protocol == "paper" and [r.probe for r in rep.results] == PROBES
    assert rep.splits["seg"] == {"name": "ade20k(ade0)", "classes": 3, "train": 18, "val": 6, "test": 8, "ranks": 1}
    for r in rep.results:
        assert r.metric == "miou" and 0 <= r.score <= 100
    knn = rep.get("seg_knn")
    assert knn.selected["k"] in (3, 9) and set(knn.details["per_k"]) == {"3", "9"}
    assert 0 < knn.details["bank"] <= 200
    for name in ("seg_linear", "seg_block"):
        r = rep.get(name)
        assert set(r.selected) == {"lr", "wd"} and len(r.details["grid"]["val_miou"]) == 2
        assert len(r.details["per_class_iou"]) == 3
        assert (out / f"sweep_{name}.png").is_file()
    # colour decides the class: even a random 1-block encoder's patches carry it
    assert knn.score > 50 and rep.get("seg_linear").score > 40


def test_views_are_fresh_each_epoch_and_a_pure_function_of_seed_epoch_index(ade: Path) -> None:
    items = SegFolderItems(tiny_cfg(ade).seg, "train")
    views = SegTrainViews(items, 32, SegPaperConfig(), seed=3, ignore_index=255)
    a0, ya0, _ = views[5]
    views.epoch = 1
    a1, _, _ = views[5]
    views.epoch = 0
    again, y_again, _ = views[5]
    assert a0.shape == (3, 32, 32) and ya0.shape == (32, 32) and ya0.dtype == torch.long
    assert not torch.equal(a0, a1)
    assert torch.equal(a0, again) and torch.equal(ya0, y_again)


def test_a_view_keeps_image_and_labels_aligned_and_cuts_out_a_square(ade: Path) -> None:
    """Without jitter the colour still gives the class at every labelled pixel after the random
    resize, crop and flip; with cut-out one mean-colour square appears, labels untouched."""
    img, lab = SegFolderItems(tiny_cfg(ade).seg, "train")[1]
    means = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    stds = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for seed in range(6):
        pc = SegPaperConfig(jitter=0.0, cutout=0.0, scale=(1.0, 2.0))
        x, y = train_view(img, lab, 32, 32, pc, 255, torch.Generator().manual_seed(seed))
        rgb = x * stds + means
        ok = y != 255
        agree = (rgb.argmax(0)[ok] == y[ok]).float().mean()
        assert agree > 0.9, (seed, agree)  # only pixels on cell borders may blur
    pc = SegPaperConfig(jitter=0.0, cutout=0.25)
    x, y2 = train_view(img, lab, 32, 32, pc, 255, torch.Generator().manual_seed(0))
    zero = (x == 0).all(0)
    assert int(zero.sum()) == 8 * 8 and (y2 != 255).all()


def test_windows_cover_the_image_and_the_last_is_flush() -> None:
    assert window_starts(32, 32, 21) == [0]
    assert window_starts(20, 32, 21) == [0]
    assert window_starts(75, 32, 21) == [0, 21, 42, 43]
    x = torch.randn(3, 40, 75)
    wins, corners = windows(x, 32, 21)
    assert wins.shape == (len(corners), 3, 32, 32) and len(corners) == 2 * 4
    cover = torch.zeros(40, 75)
    for a, b in corners:
        cover[a : a + 32, b : b + 32] += 1
    assert (cover > 0).all()
    small, c = windows(torch.randn(3, 20, 28), 32, 21)  # padded with zeros (the mean colour)
    assert small.shape == (1, 3, 32, 32) and c == [(0, 0)] and (small[:, :, 20:] == 0).all()


def test_evaluation_scores_every_labelled_pixel_at_full_resolution(run_dir: Path, ade: Path) -> None:
    from bootleg.export import load_encoder

    cfg = tiny_cfg(ade)
    enc = load_encoder(run_dir / "encoder.safetensors").requires_grad_(False)
    items = SegFolderItems(cfg.seg, "test")
    groups = online_seg.build_seg_groups(["seg_linear"], cfg, enc, 3, 0, torch.device("cpu"))
    mods = {g.name: (g.module, g.feature) for g in groups}
    ev = online_seg.evaluate_seg(mods, enc, items, torch.arange(len(items)), cfg, 3, 255, torch.device("cpu"), Ranks())
    labelled = sum(int((items[i][1] != 255).sum()) for i in range(len(items)))
    assert ev.heads["seg_linear"].shape == (2, 3, 3)
    assert [int(c.sum()) for c in ev.heads["seg_linear"]] == [labelled, labelled]


def test_both_heads_share_one_encoder_forward(run_dir: Path, ade: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bootleg.export import load_encoder

    cfg = tiny_cfg(ade)
    enc = load_encoder(run_dir / "encoder.safetensors").requires_grad_(False)
    groups = online_seg.build_seg_groups(["seg_linear", "seg_block"], cfg, enc, 3, 0, torch.device("cpu"))
    calls = []
    real = enc.forward_features
    monkeypatch.setattr(enc, "forward_features", lambda x: calls.append(x.shape) or real(x))
    before = [p.detach().clone() for g in groups for p in g.module.parameters()]
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    online_seg.seg_train_step(groups, enc, x, y, 0, 10, 255)
    assert calls == [(4, 3, 32, 32)]
    after = [p.detach() for g in groups for p in g.module.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_knn_bank_is_bounded(run_dir: Path, ade: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The bank holds at most ``knn_bank`` patches, read from ceil(bank / per-image) images."""
    read: list[int] = []
    real = SegFolderItems.__getitem__
    monkeypatch.setattr(SegFolderItems, "__getitem__", lambda self, i: read.append(i) or real(self, i))
    cfg = tiny_cfg(ade, knn_bank=20, knn_patches_per_image=8)
    rep = run_probes(run_dir, tmp_path, cfg, probes=["seg_knn"], device="cpu")
    assert rep.get("seg_knn").details["bank"] == 20
    assert len(read) == 3 + 6 + 8  # bank images, then the held-out and the test images once each


def test_selection_never_reads_the_test_split(
    run_dir: Path, ade: Path, reference: tuple[ProbeReport, Path], tmp_path: Path
) -> None:
    """Shuffle the test masks among the test images (same sizes): the chosen LR and k stay."""
    import shutil

    shuffled = Path(shutil.copytree(ade, tmp_path / "ade0"))
    ann = shuffled / "annotations" / "validation"
    files = sorted(ann.glob("*.png"))
    for group in range(len(SIZES)):  # swap masks between images of one size
        same = files[group :: len(SIZES)]
        data = [f.read_bytes() for f in same]
        for f, d in zip(same, data[1:] + data[:1], strict=True):
            f.write_bytes(d)
    rep = run_probes(run_dir, tmp_path / "out", tiny_cfg(shuffled), probes=PROBES, device="cpu")
    ref = reference[0]
    for r in ref.results:
        assert rep.get(r.probe).selected == r.selected
    assert rep.get("seg_linear").details["grid"] == ref.get("seg_linear").details["grid"]


def test_a_killed_run_resumes_to_the_same_heads(
    run_dir: Path, ade: Path, reference: tuple[ProbeReport, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = online_seg.seg_train_step
    taken: list[int] = []

    def dies_at_step_4(*a: Any, **kw: Any) -> None:
        if len(taken) == 3:
            raise KeyboardInterrupt
        taken.append(1)
        real(*a, **kw)

    monkeypatch.setattr(online_seg, "seg_train_step", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_probes(run_dir, tmp_path, tiny_cfg(ade), probes=PROBES, device="cpu")
    state = torch.load(tmp_path / online_seg.SEG_STATE_FILE, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    monkeypatch.setattr(online_seg, "seg_train_step", real)
    logs: list[str] = []
    rep = run_probes(run_dir, tmp_path, tiny_cfg(ade), probes=PROBES, device="cpu", log=logs.append)
    assert any("resuming" in m and "epoch 1 step 0" in m for m in logs)
    assert rep.results == reference[0].results
    with pytest.raises(BootlegError, match="other settings"):
        run_probes(run_dir, tmp_path, tiny_cfg(ade, epochs=3), probes=PROBES, device="cpu")


def test_the_derived_task_runs_under_the_paper_protocol(run_dir: Path, tmp_path: Path) -> None:
    raw = json.loads(json.dumps(TINY))
    raw.update(data="embedded", limit=60, test_limit=20)
    raw["seg"].update(num_classes=None, train_images=24, test_images=8)
    rep = run_probes(run_dir, tmp_path, ProbeConfig.model_validate(raw), probes=PROBES, device="cpu")
    assert [r.probe for r in rep.results] == PROBES
    assert rep.splits["seg"]["classes"] == 11 and rep.splits["seg"]["test"] == 8


DDP_SCRIPT = """
import json, sys
from bootleg.probe import ProbeConfig
from bootleg.probe.runner import run_probes
cfg = ProbeConfig.model_validate(json.loads(sys.argv[3]))
run_probes(sys.argv[1], sys.argv[2], cfg, probes={probes!r}, device="cpu")
"""


@pytest.mark.slow
def test_two_ranks_choose_as_one(run_dir: Path, ade: Path, reference: tuple[ProbeReport, Path], tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` (gloo): half of every batch per rank, gradients and
    confusion matrices all-reduced, the kNN bank gathered: the selection of one process."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(probes=PROBES))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29521",
           str(script), str(run_dir), str(tmp_path / "out"), tiny_cfg(ade).model_dump_json()]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = ProbeReport.model_validate_json((tmp_path / "out" / "probe.json").read_text())
    assert rep.splits["seg"]["ranks"] == 2
    for r in reference[0].results:
        got = rep.get(r.probe)
        assert got is not None and got.selected == r.selected, (r.probe, got, r)
