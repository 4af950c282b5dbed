"""Figures a run leaves behind: learning curves and a confusion matrix (matplotlib, no display)."""
from __future__ import annotations

import io
from pathlib import Path

from canon.engine.checkpoint import atomic_write_bytes


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Loss (left) and every other per-epoch metric that is a fraction (right), by epoch."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    plotted = False
    for key in ("train_loss", "test_loss"):
        points = [(e, row[key]) for e, row in zip(epochs, history) if key in row]
        if points:
            ax_loss.plot(*zip(*points), marker="o", label=key)
            plotted = True
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    if plotted:  # a task without a single loss (generation: one per player) plots its own curves
        ax_loss.legend()
    metric_keys = [k for k in history[-1] if k.endswith(("accuracy", "miou", "dice")) and not k.endswith("_per_s")]
    for key in metric_keys:
        points = [(e, row[key]) for e, row in zip(epochs, history) if key in row]
        if points:
            ax_metric.plot(*zip(*points), marker="o", label=key)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("metric")
    if metric_keys:
        ax_metric.legend()
    fig.suptitle("canon training curves")
    atomic_write_bytes(path, _figure_bytes(fig))


def plot_confusion_matrix(matrix, class_names: list[str], path: str | Path) -> None:
    plt = _pyplot()
    import numpy as np

    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(4, 0.5 * n + 2)))
    ax.imshow(matrix, cmap="Blues")
    names = class_names if len(class_names) == n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title("confusion matrix")
    atomic_write_bytes(path, _figure_bytes(fig))
