"""Where a run's numbers go: stderr (a progress bar and one line per epoch), ``history.csv`` and
``curves.png`` (always), and TensorBoard event files (``--tensorboard``, when the optional
``tensorboard`` package is installed: ``pip install canon[tensorboard]``)."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import torch

from canon.engine.checkpoint import atomic_write_text

__all__ = ["RunLogger", "write_history"]


def write_history(history: list[dict], run_dir: Path, log=None) -> None:
    """``history.csv`` (one row per epoch, the union of every row's columns) and ``curves.png``."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())
    try:
        from canon.engine.plots import plot_curves

        plot_curves(history, run_dir / "curves.png")
    except Exception as e:  # a plotting problem must never lose a training run
        if log is not None:
            log(f"warning: could not draw curves.png: {e}")


class RunLogger:
    """Console lines, and TensorBoard scalars and images when asked for. Only the main process of a
    distributed run is given an active logger; the others get ``RunLogger(None)``, which is silent."""

    def __init__(self, run_dir: Path | None, *, console: bool = True, tensorboard: bool = False):
        self.run_dir = run_dir
        self.console = console and run_dir is not None
        self.writer = None
        if tensorboard and run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("--tensorboard needs the tensorboard package (pip install tensorboard, or "
                                 f"pip install 'canon[tensorboard]'): {e}") from None
            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def info(self, message: str) -> None:
        if self.console:
            print(message, file=sys.stderr, flush=True)

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(prefix + key, value, global_step=step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """An image (C, H, W) in [0, 1] (e.g. a sample grid)."""
        if self.writer is not None:
            self.writer.add_image(tag, image.detach().float().clamp(0, 1).cpu(), global_step=step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
