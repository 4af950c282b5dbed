"""The degradation problem of "Deep Residual Learning for Image Recognition" (He et al. 2015,
arXiv:1512.03385, Fig. 6), from the run folders of ``canon train``.

Each ``--run LABEL=RUN_DIR`` names a run folder and its legend label; the script reads the folder's
``history.csv``, plots the training error (1 - train_accuracy, in %) of every run by epoch in one
PNG, and prints a Markdown table of the final training errors. Labels starting with "plain" are
drawn dashed, the others solid, so plain and residual nets of the same depth share a colour.

    python examples/plot_degradation.py \\
        --run plain20=runs/degradation-plain20 --run plain56=runs/degradation-plain56 \\
        --run resnet20=runs/degradation-resnet20 --run resnet56=runs/degradation-resnet56 \\
        --out docs/figures/resnet-cifar-degradation.png

``train_accuracy`` is what the classification task logs during each epoch: the accuracy of the
training batches as they were trained on (augmented, batch-norm in training mode, weights changing
through the epoch), not a separate pass over the un-augmented training set afterwards. The paper's
dashed training-error curves are of the same kind. The runs must share their schedule (epochs,
batch size, lr, scheduler, optimizer, data); the script checks their ``config.yaml`` files.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import yaml

SCHEDULE_KEYS = ("data", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                 "scheduler", "warmup_epochs", "milestones", "gamma", "label_smoothing", "augment",
                 "train_subset", "max_steps_per_epoch", "seed")


def parse_run(text: str) -> tuple[str, Path]:
    """``"plain20=runs/p20"`` -> ("plain20", Path("runs/p20"))."""
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise SystemExit(f"--run takes LABEL=RUN_DIR, e.g. plain20=runs/degradation-plain20, got {text!r}")
    return label, Path(folder)


def training_errors(run_dir: Path) -> list[tuple[int, float]]:
    """``[(epoch, 100 * (1 - train_accuracy)), ...]`` from ``run_dir/history.csv``."""
    path = run_dir / "history.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no history.csv there; is {run_dir} a canon train run folder?")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"{path}: no epochs recorded yet")
    if "train_accuracy" not in rows[0] or "epoch" not in rows[0]:
        raise SystemExit(f"{path}: expected the columns epoch and train_accuracy, found {', '.join(rows[0])}")
    points = []
    for line, row in enumerate(rows, start=2):
        try:
            points.append((int(row["epoch"]), 100.0 * (1.0 - float(row["train_accuracy"]))))
        except ValueError:
            raise SystemExit(f"{path}, line {line}: epoch and train_accuracy must be numbers, "
                             f"found {row['epoch']!r} and {row['train_accuracy']!r}") from None
    return points


def schedule(run_dir: Path) -> dict:
    """The schedule keys of ``run_dir/config.yaml`` (missing keys as None)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{path}: no config.yaml there; is {run_dir} a canon train run folder?")
    config = yaml.safe_load(path.read_text()) or {}
    return {key: config.get(key) for key in SCHEDULE_KEYS}


def check_same_schedule(runs: list[tuple[str, Path]]) -> None:
    """Exit with the differing keys when the runs were not trained on the same schedule."""
    first_label, first_dir = runs[0]
    reference = schedule(first_dir)
    for label, run_dir in runs[1:]:
        other = schedule(run_dir)
        differ = [f"{key}: {reference[key]!r} ({first_label}) vs {other[key]!r} ({label})"
                  for key in SCHEDULE_KEYS if other[key] != reference[key]]
        if differ:
            raise SystemExit("the runs differ in their schedule, so their curves do not compare:\n  "
                             + "\n  ".join(differ))


def plot(curves: dict[str, list[tuple[int, float]]], out: Path, title: str) -> None:
    """One axes: training error (%) by epoch, plain nets dashed, residual nets solid."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    colours = {}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, points in curves.items():
        depth = label.removeprefix("plain").removeprefix("resnet")
        colour = colours.setdefault(depth, f"C{len(colours)}")
        style = "--" if label.startswith("plain") else "-"
        ax.plot(*zip(*points), style, color=colour, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training error (%), augmented batches during the epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR",
                        help="a run folder and its label; repeat for every run")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="CIFAR-10, 45k/5k split: plain (dashed) vs residual (solid)",
                        help="the figure's title")
    args = parser.parse_args(argv)
    runs = [parse_run(text) for text in args.run]
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"every --run needs its own label, got {', '.join(labels)}")
    check_same_schedule(runs)
    curves = {label: training_errors(run_dir) for label, run_dir in runs}
    plot(curves, args.out, args.title)
    print("| model | epochs | final training error (%) |")
    print("|---|---|---|")
    for label, points in curves.items():
        epoch, error = points[-1]
        print(f"| {label} | {epoch} | {error:.2f} |")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
