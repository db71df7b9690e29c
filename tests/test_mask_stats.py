"""``mask_stats``, ``plot_masks`` and the ``bootleg masks`` command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bootleg.cli_masks import add_masks_parser, run_masks
from bootleg.errors import BootlegError
from bootleg.mask_stats import mask_stats, plot_masks
from bootleg.masking import SAMPLERS, build_sampler

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"block_hw_rates", "seen_rate", "target_rate", "visible_frequency", "target_frequency"}


@pytest.fixture(autouse=True)
def _one_thread():
    """Samplers work on tiny tensors: intra-op threads only add overhead (and stall badly
    on a busy machine), so these tests run on one thread like data-loader workers do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bootleg")
    add_masks_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_stats_keys_and_shapes(name: str) -> None:
    grid = (8, 10)
    st = mask_stats(build_sampler({"sampler": name}, grid), batch_size=16, batches=3, seed=0)
    assert set(st) == KEYS
    for key in ("visible_frequency", "target_frequency"):
        fmap = st[key]
        assert len(fmap) == 8 and all(len(row) == 10 for row in fmap)
        assert all(0.0 <= v <= 1.0 for row in fmap for v in row)
    for key in ("seen_rate", "target_rate"):
        assert set(st[key]) == {"mean", "std"} and 0.0 < st[key]["mean"] < 1.0
    if name in ("bootleg", "ijepa"):
        assert st["block_hw_rates"] and abs(sum(st["block_hw_rates"].values()) - 1.0) < 1e-9
    else:
        assert st["block_hw_rates"] == {}
    # mean of the visible map is the seen rate
    mean_vis = sum(map(sum, st["visible_frequency"])) / 80
    assert abs(mean_vis - st["seen_rate"]["mean"]) < 1e-6


def test_stats_deterministic_by_seed() -> None:
    s = build_sampler({"sampler": "bootleg"}, (14, 14))
    assert mask_stats(s, 8, 3, seed=5) == mask_stats(s, 8, 3, seed=5)
    assert mask_stats(s, 8, 3, seed=5) != mask_stats(s, 8, 3, seed=6)


def test_cli_stats_json_prints_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        ["masks", "stats", "--sampler", "ijepa", "--grid", "14", "14", "--batch-size", "32"]
        + ["--batches", "4", "--seed", "3", "--json", "--set", "masking.min_keep=4"]
    )
    assert args.func is run_masks
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    st = json.loads(out)
    assert set(st) == KEYS and len(st["visible_frequency"]) == 14


def test_cli_stats_readable_summary(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["masks", "stats", "--sampler", "bootleg", "--batches", "2", "--batch-size", "16"])
    assert run_masks(args) == 0
    out = capsys.readouterr().out
    assert "seen rate" in out and "target rate" in out and "block (h, w) rates" in out


def test_cli_module_entry_point_json() -> None:
    cmd = [sys.executable, "-m", "bootleg.cli_masks", "stats", "--sampler", "cyclic", "--batches", "2", "--json"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == KEYS


def test_cli_show_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "figs" / "masks.png"
    args = _parse(["masks", "show", "--sampler", "ijepa", "--out", str(out), "--batches", "2", "--examples", "4"])
    assert run_masks(args) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["masks.png"]  # no temp file left


def test_plot_masks_direct(tmp_path: Path) -> None:
    s = build_sampler({"sampler": "bootleg"}, (14, 14))
    out = plot_masks(s, tmp_path / "b.png", seed=0, n_examples=3, batches=2, batch_size=32)
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv",
    [
        ["masks", "stats", "--sampler", "nope"],
        ["masks", "stats", "--set", "masking.block_scale=[0.3,0.2]"],
        ["masks", "stats", "--set", "bogus=1"],
        ["masks", "stats", "--batches", "0"],
        ["masks", "show", "--out", "x.txt"],
    ],
)
def test_cli_bad_input_raises_bootleg_error(argv: list[str]) -> None:
    with pytest.raises(BootlegError):
        run_masks(_parse(argv))


def test_cli_bad_sampler_exit_code_2() -> None:
    cmd = [sys.executable, "-m", "bootleg.cli_masks", "stats", "--sampler", "nope"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: masking.sampler:") and len(r.stderr.strip().splitlines()) == 1
