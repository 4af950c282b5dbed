"""The original GAN's minimax generator loss against the non-saturating one, from two run folders.

    python examples/plot_gan_generator_losses.py RUN_MINIMAX RUN_NON_SATURATING --out docs/figures/gan_minimax_vs_non_saturating.png

Each run is a ``canon train gan_mlp`` run folder (``--model-arg generator_loss=minimax`` for the
first). The figure has three panels, by epoch: the generator's loss (the minimax one is
``E[log(1 - D(G(z)))]``, the non-saturating one ``-E[log D(G(z))]``), the norm of the generator's
gradient before its step (``train_generator_grad_norm``, log scale) and, when the runs were
evaluated with ``--fid-classifier``, the classifier-feature Fréchet distance of their samples.
Goodfellow et al. 2014 (Section 3): early in training D rejects the samples with confidence,
``log(1 - D(G(z)))`` saturates and its gradient vanishes, while ``-log D(G(z))`` keeps a strong one.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_history(run: Path) -> list[dict]:
    path = Path(run) / "history.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no history.csv (is {run} a canon run folder?)")
    with path.open() as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return ([p[0] for p in points], [p[1] for p in points]) if points else ([], [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("minimax", type=Path, help="run folder trained with generator_loss=minimax")
    parser.add_argument("non_saturating", type=Path, help="run folder trained with the non-saturating loss")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/gan_minimax_vs_non_saturating.png"))
    parser.add_argument("--xlabel", default="epoch", help="the x axis' label (e.g. what an epoch was)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    runs = {"minimax  E[log(1 - D(G(z)))]": read_history(args.minimax),
            "non-saturating  -E[log D(G(z))]": read_history(args.non_saturating)}
    with_fid = all(any(r.get("test_fid") for r in rows) for rows in runs.values())
    panels = 3 if with_fid else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6))
    for label, rows in runs.items():
        axes[0].plot(*column(rows, "train_generator_loss"), marker=".", label=label)
        axes[1].plot(*column(rows, "train_generator_grad_norm"), marker=".", label=label)
        if with_fid:
            axes[2].plot(*column(rows, "test_fid"), marker=".", label=label)
    axes[0].set_ylabel("generator loss (epoch mean)")
    axes[1].set_ylabel("|grad of the generator's loss| (epoch mean)")
    axes[1].set_yscale("log")
    if with_fid:
        axes[2].set_ylabel("Fréchet distance, LeNet-5 features")
        axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel(args.xlabel)
    axes[0].legend(fontsize=7)
    fig.suptitle("gan_mlp on MNIST: the minimax generator loss against the non-saturating one", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
