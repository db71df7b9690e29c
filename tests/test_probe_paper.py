"""``protocol: paper``: online probes with the frozen encoder in the loop (issue 11, item 1).

A tiny encoder on the embedded CIFAR-10 subset; each test states one property of the protocol.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import bootleg.probe.online as online
from bootleg.errors import BootlegError
from bootleg.export import save_encoder
from bootleg.models import ViTEncoder
from bootleg.probe import ProbeConfig, ProbeReport
from bootleg.probe.config import AugmentConfig
from bootleg.probe.data import Views, open_split, train_views
from bootleg.probe.runner import run_probes

ROOT = Path(__file__).resolve().parents[1]

#: 180 train / 20 val / 100 test images, batch 30 -> 6 steps per epoch, 2 epochs
TINY: dict[str, Any] = {
    "protocol": "paper",
    "data": "embedded",
    "limit": 200,
    "test_limit": 100,
    "paper": {"epochs": 2, "batch_size": 30, "eval_batch_size": 50, "workers": 0, "eval_crop": 1.0,
              "checkpoint_every": 2, "knn_bank": 120},
    "linear": {"lrs": [1e-4, 0.3], "wds": [0.0, 0.1]},
    "attentive": {"lrs": [1e-4, 1e-2], "wds": [0.0], "warmup_epochs": 0.5},
    "knn": {"ks": [5, 10]},
}  # fmt: skip
PROBES = ["linear_patch", "linear_cls", "attentive", "knn"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two shared cores: one intra-op thread is much faster than two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cfg(**paper: Any) -> ProbeConfig:
    raw = json.loads(json.dumps(TINY))
    raw["paper"].update(paper)
    return ProbeConfig.model_validate(raw)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    save_encoder(ViTEncoder(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3), d / "encoder.safetensors")
    return d


@pytest.fixture(scope="module")
def reference(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ProbeReport:
    return run_probes(run_dir, tmp_path_factory.mktemp("ref"), tiny_cfg(), probes=PROBES, device="cpu")


def test_report_has_the_quick_protocols_fields(reference: ProbeReport, run_dir: Path) -> None:
    rep = reference
    assert rep.protocol == "paper" and [r.probe for r in rep.results] == PROBES
    assert {k: rep.splits[k] for k in ("train", "val", "test")} == {"train": 180, "val": 20, "test": 100}
    for r in rep.results[:3]:
        assert r.metric == "top1" and 0 <= r.score <= r.details["top5"] <= 100
        assert set(r.selected) == {"lr", "wd"} and "grid" in r.details
    knn = rep.get("knn")
    assert knn is not None and knn.details["bank"] == 120
    assert knn.score == knn.details[knn.selected["feature"]][str(knn.selected["k"])]


def test_all_heads_share_one_encoder_forward_per_batch(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    steps: list[int] = []
    real_forward, real_step = ViTEncoder.forward_features, online.train_step

    def counting_forward(self: ViTEncoder, x: torch.Tensor) -> Any:
        calls.append(x.shape[0])
        return real_forward(self, x)

    def counting_step(groups: list[online.HeadGroup], *a: Any, **kw: Any) -> None:
        before = len(calls)
        real_step(groups, *a, **kw)
        assert len(calls) - before == 1  # one forward ...
        steps.append(sum(int(g.module.heads) for g in groups))  # ... for every head of every grid

    monkeypatch.setattr(ViTEncoder, "forward_features", counting_forward)
    monkeypatch.setattr(online, "train_step", counting_step)
    run_probes(run_dir, tmp_path, tiny_cfg(), probes=PROBES[:3], device="cpu")
    assert steps == [4 + 4 + 2] * 12  # 3 grids, 10 heads, 2 epochs x 6 steps
    assert calls == [30] * 12 + [20] + [50, 50]  # training, then validation, then test: no other forward


def test_views_are_fresh_every_epoch_and_reproducible() -> None:
    ds = open_split("embedded", "train", limit=8)
    views = Views(ds, train_views(32, AugmentConfig()), seed=0)
    first = torch.stack([views[i][0] for i in range(8)])
    again = torch.stack([views[i][0] for i in range(8)])
    views.epoch = 1
    second = torch.stack([views[i][0] for i in range(8)])
    assert torch.equal(first, again)
    assert all(not torch.equal(first[i], second[i]) for i in range(8))
    assert first.shape == (8, 3, 32, 32) and first.dtype == torch.float32


def test_test_labels_never_choose(
    run_dir: Path, reference: ProbeReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = online.open_split

    def shuffled(name: str, split: str, *a: Any) -> Any:
        ds = real(name, split, *a)
        if split == "test":
            ds.labels = ds.labels[torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))]
        return ds

    monkeypatch.setattr(online, "open_split", shuffled)
    rep = run_probes(run_dir, tmp_path, tiny_cfg(), probes=PROBES, device="cpu")
    for r in reference.results:
        got = rep.get(r.probe)
        assert got is not None and got.selected == r.selected
        assert got.details.get("grid") == r.details.get("grid") and got.details.get("val") == r.details.get("val")
    assert [rep.score(p) for p in PROBES] != [reference.score(p) for p in PROBES]


def test_resume_after_a_kill_gives_the_same_report(
    run_dir: Path, reference: ProbeReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = online.train_step
    taken = []

    def dies_at_step_9(*a: Any, **kw: Any) -> None:
        if len(taken) == 9:
            raise KeyboardInterrupt  # the process dies in epoch 1, after the checkpoint at step 8
        taken.append(1)
        real_step(*a, **kw)

    monkeypatch.setattr(online, "train_step", dies_at_step_9)
    with pytest.raises(KeyboardInterrupt):
        run_probes(run_dir, tmp_path, tiny_cfg(), probes=PROBES, device="cpu")
    state = torch.load(tmp_path / online.STATE_FILE, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(online, "train_step", real_step)
    logs: list[str] = []
    rep = run_probes(run_dir, tmp_path, tiny_cfg(), probes=PROBES, device="cpu", log=logs.append)
    assert any("resuming" in m and "epoch 1 step 2" in m for m in logs)
    assert rep.results == reference.results
    with pytest.raises(BootlegError, match="other settings"):
        run_probes(run_dir, tmp_path, tiny_cfg(epochs=3), probes=PROBES, device="cpu")


DDP_SCRIPT = """
import json, sys
from bootleg.probe import ProbeConfig
from bootleg.probe.runner import run_probes
cfg = ProbeConfig.model_validate(json.loads(sys.argv[3]))
run_probes(sys.argv[1], sys.argv[2], cfg, probes={probes!r}, device="cpu")
"""


@pytest.mark.slow
def test_two_ranks_choose_as_one(run_dir: Path, reference: ProbeReport, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` (gloo, CPU): each rank takes half of every batch and
    all-reduces the heads' gradients; the selected configurations are those of one process."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(probes=PROBES))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(script), str(run_dir), str(tmp_path / "out"), tiny_cfg().model_dump_json()]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = ProbeReport.model_validate_json((tmp_path / "out" / "probe.json").read_text())
    assert rep.splits["ranks"] == 2
    for r in reference.results:
        got = rep.get(r.probe)
        assert got is not None and got.selected == r.selected, (r.probe, got, r)
    for name in ("linear_patch", "linear_cls", "attentive"):  # the same training (float sums in another order)
        a = torch.tensor(rep.get(name).details["grid"]["val_top1"])
        b = torch.tensor(reference.get(name).details["grid"]["val_top1"])
        assert (a - b).abs().max() <= 5, (name, a, b)  # at most one of the 20 validation images
