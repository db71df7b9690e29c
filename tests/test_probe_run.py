"""End-to-end probe runs on small real data (the embedded CIFAR-10 subset), the CLI, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from bootleg.config import build_config, dump_config
from bootleg.export import save_encoder
from bootleg.models import ViTEncoder
from bootleg.probe import PROBE_NAMES, ProbeConfig, ProbeReport
from bootleg.probe.runner import run_probes

ROOT = Path(__file__).resolve().parents[1]

#: small but complete: every probe, real images, a few epochs
SMALL: dict[str, Any] = {
    "limit": 500,
    "test_limit": 200,
    "batch_size": 250,
    "augment": {"views": 1},
    "linear": {"epochs": 2, "batch_size": 128},
    "attentive": {"lrs": [1e-3, 3e-3], "wds": [0.0, 0.1], "epochs": 1, "batch_size": 128, "warmup_epochs": 0},
    "knn": {"ks": [5, 10]},
    "seg": {
        "train_images": 120,
        "test_images": 40,
        "ks": [5, 10],
        "linear": {"epochs": 1, "batch_size": 32},
        "block": {"lrs": [1e-3, 3e-3], "epochs": 1, "batch_size": 32},
    },
}
SMALL_SET = [f"{k}={json.dumps(v)}" for k, v in SMALL.items()]


def small_cfg() -> ProbeConfig:
    return ProbeConfig.model_validate(SMALL)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: ``config.yaml`` (embedded data) and a random-init 2-block encoder."""
    d = tmp_path_factory.mktemp("run")
    cfg = build_config(
        {"model": {"size": "micro", "img_size": 32, "patch_size": 4, "depth": 2}, "targets": {"blocks": [1, 2]}}
    )
    (d / "config.yaml").write_text(dump_config(cfg))
    torch.manual_seed(0)
    save_encoder(ViTEncoder(img_size=32, patch_size=4, embed_dim=96, depth=2, num_heads=3), d / "encoder.safetensors")
    return d


@pytest.fixture(scope="module")
def full(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ProbeReport, Path]:
    out = tmp_path_factory.mktemp("probe")
    return run_probes(run_dir, out, small_cfg(), probes=["all"], seed=0), out


def test_every_probe_end_to_end(full: tuple[ProbeReport, Path], run_dir: Path) -> None:
    rep, out = full
    assert rep.dataset == "embedded"  # the run's own dataset
    assert rep.seed == 0 and rep.checkpoint == str(run_dir) and rep.protocol == "quick"
    assert {k: rep.splits[k] for k in ("train", "val", "test")} == {"train": 450, "val": 50, "test": 200}
    assert [r.probe for r in rep.results] == list(PROBE_NAMES) and not rep.skipped
    for name in ("linear_patch", "linear_cls", "attentive"):
        r = rep.get(name)
        assert r is not None and r.metric == "top1"
        assert 0 <= r.score <= r.details["top5"] <= 100
        assert set(r.selected) == {"lr", "wd"}
        assert (out / f"sweep_{name}.png").stat().st_size > 1000
        assert (out / f"confusion_{name}.png").stat().st_size > 1000
    knn = rep.get("knn")
    assert knn is not None and set(knn.details) == {"cls", "patch", "val"} and set(knn.selected) == {"feature", "k"}
    assert set(knn.details["cls"]) == {"5", "10"}
    assert knn.score == knn.details[knn.selected["feature"]][str(knn.selected["k"])]
    assert rep.splits["seg"]["classes"] == 11
    for name in ("seg_knn", "seg_linear", "seg_block"):
        assert rep.get(name).metric == "miou" and 0 < rep.score(name) <= 100
    assert ProbeReport.model_validate_json((out / "probe.json").read_text()) == rep
    assert rep.headline().probe == "attentive"
    assert rep.metrics()["probe.seg_knn.miou"] == rep.score("seg_knn")


def test_chance_is_beaten(full: tuple[ProbeReport, Path]) -> None:
    """Even a random 2-block encoder is well above chance (10%) on CIFAR-10 with these probes."""
    rep, _ = full
    assert rep.score("knn") > 15
    assert rep.score("linear_cls") > 15
    assert rep.score("seg_knn") > 1 / 11 * 100 / 2


def _argmax_rowmajor(grid: list[list[float]]) -> tuple[int, int]:
    flat = [v for row in grid for v in row]
    i = flat.index(max(flat))
    return divmod(i, len(grid[0]))


def test_sweeps_choose_on_validation(full: tuple[ProbeReport, Path]) -> None:
    rep, _ = full
    for name, metric in (("linear_patch", "val_top1"), ("attentive", "val_top1"), ("seg_linear", "val_miou")):
        r = rep.get(name)
        i, j = _argmax_rowmajor(r.details["grid"][metric])
        assert r.selected == {"lr": r.details["grid"]["lr"][i], "wd": r.details["grid"]["wd"][j]}
        assert r.details[metric] == r.details["grid"][metric][i][j]
    knn = rep.get("knn")
    val = knn.details["val"]
    best = max(((f, int(k)) for f in val for k in val[f]), key=lambda t: (val[t[0]][str(t[1])], -t[1]))
    assert (knn.selected["feature"], knn.selected["k"]) == best
    seg = rep.get("seg_knn")
    vm = seg.details["val_miou"]
    assert seg.selected["k"] == max((int(k) for k in vm), key=lambda k: (vm[str(k)], -k))


def test_test_labels_never_choose(
    run_dir: Path, full: tuple[ProbeReport, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shuffling the test labels changes test scores but not the chosen configurations
    (also: a probe's result does not depend on which other probes run)."""
    import bootleg.probe.runner as runner

    real = runner.load_images

    def shuffled(name: str, split: str = "train", **kw: Any) -> Any:
        s = real(name, split, **kw)
        if split == "test":
            g = torch.Generator().manual_seed(123)
            s = type(s)(s.images, s.labels[torch.randperm(len(s), generator=g)], s.classes, s.name)
        return s

    monkeypatch.setattr(runner, "load_images", shuffled)
    rep = run_probes(run_dir, tmp_path, small_cfg(), probes=["linear_patch", "knn"], seed=0)
    ref = full[0]
    assert rep.get("linear_patch").selected == ref.get("linear_patch").selected
    assert rep.get("linear_patch").details["grid"] == ref.get("linear_patch").details["grid"]
    assert rep.get("knn").details["val"] == ref.get("knn").details["val"]
    assert rep.get("knn").selected == ref.get("knn").selected
    assert rep.score("linear_patch") != ref.score("linear_patch")


def test_same_seed_same_results(run_dir: Path, full: tuple[ProbeReport, Path], tmp_path: Path) -> None:
    doc, out = full
    again = run_probes(run_dir, tmp_path / "a", small_cfg(), probes=["all"], seed=0)
    assert (tmp_path / "a" / "probe.json").read_text() == (out / "probe.json").read_text()
    assert again == doc
    other = run_probes(run_dir, tmp_path / "b", small_cfg(), probes=["linear_cls"], seed=1)
    assert other.get("linear_cls") != doc.get("linear_cls")


def test_cli_json_matches_file(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bootleg.cli import main

    argv = ["probe", "--checkpoint", str(run_dir / "encoder.safetensors"), "--out", str(tmp_path), "--json"]
    argv += ["--probes", "knn", "linear_cls", "--data", "embedded", "--quiet"]
    for item in SMALL_SET:
        argv += ["--set", item]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "probe.json").read_text())
    assert [r["probe"] for r in printed["results"]] == ["linear_cls", "knn"]
    assert all(r["metric"] == "top1" and 0 <= r["score"] <= 100 for r in printed["results"])


def _bad_arch(d: Path) -> Path:
    """A bootleg-looking file whose weights are another architecture's (wider, deeper)."""
    enc = ViTEncoder(img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3)
    meta = {"format": "bootleg-encoder/1", "arch": json.dumps({**enc.arch(), "embed_dim": 96, "depth": 2})}
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(d / "encoder.safetensors"), meta)
    return d


def _foreign(d: Path) -> Path:
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, str(d / "encoder.safetensors"))
    return d


def _corrupt(d: Path) -> Path:
    (d / "encoder.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    return d


def _truncated(run_dir: Path, d: Path) -> Path:
    data = (run_dir / "encoder.safetensors").read_bytes()
    (d / "encoder.safetensors").write_bytes(data[: len(data) // 2])
    return d


BAD = {
    "unknown_probe": (lambda run, d: run, ["--probes", "linear_pach"], "linear_pach"),
    "bad_setting": (lambda run, d: run, ["--set", "linear.epochs=0"], "probe.linear.epochs"),
    "other_architecture": (lambda run, d: _bad_arch(d), [], "do not match"),
    "foreign_weights": (lambda run, d: _foreign(d), [], "arch"),
    "corrupt_weights": (lambda run, d: _corrupt(d), [], "safetensors"),
    "truncated_weights": (lambda run, d: _truncated(run, d), [], ""),
    "missing_checkpoint": (lambda run, d: d / "nowhere", [], "no encoder weights"),
    "missing_dataset": (lambda run, d: run, ["--data", "cifar10", "--data-root", "/nonexistent/c10"], "data"),
    "imagefolder_without_root": (lambda run, d: run, ["--data", "imagefolder"], "root"),
    "unknown_dataset": (lambda run, d: run, ["--data", "mnist"], "probe.data"),
    "missing_seg_folder": (lambda run, d: run, ["--probes", "seg_knn", "--set", "seg.root=/nonexistent/ade"], "seg"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2(
    case: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bootleg.cli import main

    make, extra, needle = BAD[case]
    ckpt = make(run_dir, tmp_path)
    rc = main(["probe", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert needle in err


def test_cli_process_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bootleg.cli",
            "probe",
            "--checkpoint",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(run_dir: Path, tmp_path: Path) -> None:
    from bootleg.errors import BootlegError

    with pytest.raises(BootlegError, match="no CUDA device"):
        run_probes(run_dir, tmp_path, small_cfg(), probes=["knn"], device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_on_device(run_dir: Path, tmp_path: Path) -> None:
    from bootleg.export import load_encoder
    from bootleg.probe.features import clean_transform, extract

    enc = load_encoder(run_dir, map_location="cuda")
    imgs = torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    f = extract(enc, imgs, clean_transform(32), {"cls", "tokens"}, store="cuda")
    assert f.cls is not None and f.cls.device.type == "cuda" and f.tokens is not None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert enc.forward_features(clean_transform(32)(imgs[:2]))["tokens"].dtype == torch.bfloat16
    rep = run_probes(run_dir, tmp_path, small_cfg(), probes=["all"], device="cuda")
    assert rep.score("knn") > 15 and rep.score("linear_cls") > 15
    assert rep.score("seg_knn") > 0
