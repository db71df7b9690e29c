"""The DVC pipeline in a temporary git repository, as on a fresh clone: ``dvc repro`` runs
shard -> pretrain -> probe -> report, a second ``dvc repro`` does nothing, and
``dvc exp run -S``, ``dvc exp show``, ``dvc metrics diff`` and ``dvc push`` work."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cmd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_PARAMS = {
    "method": "bootleg",
    "model": {"size": "micro", "img_size": 32, "patch_size": 4},
    "targets": {"blocks": [1, 4, 8]},
    "optim": {"epochs": 100, "warmup_epochs": 1, "batch_size": 16, "lr_ref_batch": None},
    "data": {"name": "embedded", "limit": 160},
    "run": {"seed": 0, "steps": 4, "checkpoint_every": 100, "log_every": 2, "monitor_every": 2},
    "probe": {"probes": ["knn"], "limit": 160, "test_limit": 80, "knn": {"ks": [5, 10]}},
}


def make_repo(dst: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("bootleg", "flows"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, dst / name)
    (dst / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(ROOT / ".dvc" / name, dst / ".dvc" / name)
    (dst / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))
    return dst


@pytest.mark.slow
def test_dvc_repro_exp_and_metrics(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "clone")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
        "DVC_NO_ANALYTICS": "1",
        "BOOTLEG_CACHE": str(tmp_path / "cache"),
    }

    def sh(*cmd: str, timeout: float = 600):
        r = run_cmd(list(cmd), cwd=repo, env=env, timeout=timeout)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    dvc = str(BIN / "dvc")
    sh("git", "init", "-q", "-b", "main")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "fresh clone")

    first = sh(dvc, "repro")
    for stage in ("shard", "pretrain", "probe", "report"):
        assert f"Running stage '{stage}'" in first.stdout, first.stdout
    assert (repo / "dvc.lock").is_file()
    manifest = json.loads((repo / "data/shards/manifest.json").read_text())
    assert len(list((repo / "data/shards/train").glob("*.tar"))) >= 1  # shards, not one file per image
    assert manifest["counts"]["train"] == 160
    assert len(manifest["source_sha256"]) == 64
    metrics = json.loads((repo / "reports/dvc/metrics.json").read_text())
    assert metrics["pretrain"]["steps"] == 4
    assert 0.0 <= metrics["probe"]["knn"] <= 100.0
    ckpt = repo / "runs/dvc/pretrain/checkpoint.pt"
    mtime = ckpt.stat().st_mtime_ns

    second = sh(dvc, "repro")
    assert "Running stage" not in second.stdout, second.stdout
    assert "up to date" in second.stdout.lower()
    assert ckpt.stat().st_mtime_ns == mtime

    sh(dvc, "push")
    assert any((repo / ".dvcstore").rglob("*")), "local remote is empty after dvc push"

    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "baseline results")
    sh(dvc, "exp", "run", "-S", "run.steps=6", "-n", "steps6")
    shown = json.loads(sh(dvc, "exp", "show", "--json").stdout)
    assert "steps6" in json.dumps(shown)
    diff = json.loads(sh(dvc, "metrics", "diff", "--json").stdout)
    steps = diff["reports/dvc/metrics.json"]["pretrain.steps"]
    assert (steps["old"], steps["new"]) == (4, 6)
    plots = sh(dvc, "plots", "show", "--json")
    assert "loss.csv" in plots.stdout
