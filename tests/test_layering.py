"""The library's shape: no module imports a module above it, no orchestration inside it, small files.

Ranks go up from the shared helpers to the command line; a module may import only modules of
its own rank or below (lazy imports inside functions count too). A package's ``__init__`` has
its own rank, because importing ``bootleg.probe.config`` runs ``bootleg/probe/__init__.py``.
A new module must be given a rank here: that is the point where its place is decided.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "bootleg"

#: exact names (package __init__ files) first, then the longest matching prefix
EXACT = {
    "bootleg": 0,
    "bootleg.models": 1,
    "bootleg.masking": 1,
    "bootleg.probe": 1,
    "bootleg.finetune": 1,
    "bootleg.data": 2,
}
PREFIX = {
    "bootleg.errors": 0,
    "bootleg.io": 0,
    "bootleg.schema": 0,
    "bootleg.registry": 0,
    "bootleg.models": 1,
    "bootleg.masking": 1,
    "bootleg.schedules": 1,
    "bootleg.losses": 1,
    "bootleg.export": 1,
    "bootleg.checkpoint": 1,
    "bootleg.probe.config": 1,
    "bootleg.finetune.config": 1,
    "bootleg.probe.results": 1,
    "bootleg.targets": 2,
    "bootleg.data": 2,
    "bootleg.presets": 2,
    "bootleg.mask_stats": 2,
    "bootleg.config": 3,
    "bootleg.engine": 4,
    "bootleg.monitors": 4,
    "bootleg.train": 5,
    "bootleg.probe": 5,
    "bootleg.finetune": 5,
    "bootleg.cli": 6,
    "bootleg.cli_masks": 6,
    "bootleg.probe.cli": 6,
    "bootleg.data.cli": 6,
}
FORBIDDEN = ("prefect", "dvc", "optuna")
#: the one place allowed to import MLflow (lazily): resolving ``models:/`` URIs for ``bootleg probe``
MLFLOW_OK = {"bootleg.export"}
MAX_LINES = 520


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def rank(name: str) -> int | None:
    if name in EXACT:
        return EXACT[name]
    best = max((p for p in PREFIX if name == p or name.startswith(p + ".")), key=len, default=None)
    return PREFIX[best] if best else None


def imports(path: Path) -> list[str]:
    """Every module ``path`` imports (at top level or inside functions), with implied parent packages."""
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            parts = n.split(".")
            out += [".".join(parts[: i + 1]) for i in range(len(parts))]
    return sorted(set(out))


MODULES = sorted(LIB.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_upward_imports(path: Path) -> None:
    me = module_name(path)
    mine = rank(me)
    assert mine is not None, f"{me}: give the module a rank in tests/test_layering.py"
    for dep in imports(path):
        if dep == me or not dep.startswith("bootleg"):
            continue
        r = rank(dep)
        if r is None:  # an imported name, not a module (from bootleg.x import Name)
            continue
        if (LIB.parent / (dep.replace(".", "/") + ".py")).exists() or (LIB.parent / dep.replace(".", "/")).is_dir():
            assert r <= mine, f"{me} (rank {mine}) imports {dep} (rank {r}), a module above it"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_library_is_free_of_orchestration(path: Path) -> None:
    top = {d.split(".")[0] for d in imports(path)}
    assert not top & set(FORBIDDEN), f"{module_name(path)} imports {sorted(top & set(FORBIDDEN))}"
    if "mlflow" in top:
        assert module_name(path) in MLFLOW_OK, f"{module_name(path)} imports mlflow"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_files_stay_small(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{module_name(path)}: {n} lines; split it by concern"
