"""Figures saved beside ``probe.json``: each sweep's validation score over the LR x WD grid,
and confusion matrices of the chosen classification heads on test."""

from __future__ import annotations

from pathlib import Path

import torch

from bootleg.io import atomic_write


def _save(fig: object, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]


def plot_sweep(
    values: torch.Tensor,
    lrs: list[float],
    wds: list[float],
    best: tuple[int, int],
    title: str,
    path: Path,
    metric: str = "val top-1 (%)",
) -> None:
    """Heat map of ``values`` (len(lrs), len(wds)) with the chosen cell outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    v = values.float().numpy()
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(wds), 1.0 + 0.6 * len(lrs)))
    im = ax.imshow(v, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
    ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_xlabel("weight decay")
    ax.set_ylabel("learning rate")
    finite = v[v == v]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            ax.text(
                j,
                i,
                f"{v[i, j]:.1f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if v[i, j] > mid else "white",
            )
    ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=metric)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(conf: torch.Tensor, classes: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix (rows = true class) of test predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = conf.double()
    norm = (c / c.sum(1, keepdim=True).clamp(min=1)).numpy()
    n = len(classes)
    side = min(14.0, 2.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
