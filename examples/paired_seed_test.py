"""Paired comparison of two training recipes over seeds, from the runs' ``history.csv``.

Each ``--pair PLAIN TREATED SEEDS`` names two run directories as templates with ``{seed}`` and the
seeds they were run for (``0-5`` or ``6,7,9``). For every seed the two runs started from the same
weights and saw the same batches (``canon train --seed``), so the per-seed difference of their final
test accuracies isolates the change between them. Prints each pair, the mean difference with its sd
and 95 % interval, the two-sided paired t-test and the Wilcoxon signed-rank test, and compares p
with ``--alpha``.

    python examples/paired_seed_test.py \\
        --pair 'runs/e3-base-s{seed}' 'runs/e3-kd1head-s{seed}' 0-5 \\
        --pair 'runs/e3amp-base-s{seed}' 'runs/e3amp-kd-s{seed}' 6-31 --alpha 0.0167

This is the analysis behind the README's distillation rows (for seeds 16-31 the test was committed
before those runs finished). It needs scipy (in canon's ``dev`` extra) for the t and Wilcoxon p-values.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """``"0-5"`` -> [0, 1, 2, 3, 4, 5]; ``"6,8,10-11"`` -> [6, 8, 10, 11]."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise SystemExit(f"seeds must look like 0-5 or 6,8,10-11, got {text!r}") from None
        if last < first:
            raise SystemExit(f"a seed range runs low-high, got {part!r} in {text!r}")
        seeds.extend(range(first, last + 1))
    return seeds


def final_metric(run_dir: Path, metric: str) -> float:
    """The ``metric`` column of the last row of ``run_dir/history.csv``."""
    path = run_dir / "history.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (has the run finished?)")
    rows = list(csv.DictReader(path.open()))
    if not rows or not rows[-1].get(metric):
        columns = ", ".join(rows[0]) if rows else "none"
        raise SystemExit(f"{path}: expected a final {metric!r} value; columns: {columns}")
    return float(rows[-1][metric])


def paired_t(differences: list[float]) -> tuple[float, float, tuple[float, float]]:
    """The paired t statistic of ``differences``, its two-sided p-value (df = n - 1) and the 95 %
    confidence interval of the mean difference."""
    from scipy import stats

    n = len(differences)
    mean, standard_error = statistics.mean(differences), statistics.stdev(differences) / math.sqrt(n)
    t = mean / standard_error
    half_width = float(stats.t.ppf(0.975, n - 1)) * standard_error
    return t, float(2 * stats.t.sf(abs(t), n - 1)), (mean - half_width, mean + half_width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", nargs=3, action="append", required=True, metavar=("PLAIN", "TREATED", "SEEDS"),
                        help="run-directory templates with {seed}, and the seeds (e.g. 0-5)")
    parser.add_argument("--metric", default="test_accuracy", help="history.csv column (default test_accuracy)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance threshold for the t-test")
    parser.add_argument("--scale", type=float, default=100.0, help="multiply values (default 100: per cent)")
    args = parser.parse_args(argv)

    plain, treated = [], []
    print(f"{'seed':>4}  {'plain':>8}  {'treated':>8}  {'diff':>7}")
    for plain_template, treated_template, seeds in args.pair:
        for seed in parse_seeds(seeds):
            a = args.scale * final_metric(Path(plain_template.format(seed=seed)), args.metric)
            b = args.scale * final_metric(Path(treated_template.format(seed=seed)), args.metric)
            plain.append(a)
            treated.append(b)
            print(f"{seed:>4}  {a:8.2f}  {b:8.2f}  {b - a:+7.2f}")
    if len(plain) < 2:
        raise SystemExit(f"a paired test needs at least 2 seed pairs, got {len(plain)}")
    differences = [b - a for a, b in zip(plain, treated)]
    t, p, (low, high) = paired_t(differences)
    from scipy import stats

    wilcoxon_p = float(stats.wilcoxon(differences).pvalue)
    print(f"pairs {len(differences)}: plain {statistics.mean(plain):.2f}, treated {statistics.mean(treated):.2f}, "
          f"difference {statistics.mean(differences):+.2f} (sd {statistics.stdev(differences):.2f}; "
          f"95 % interval {low:+.2f} to {high:+.2f}); "
          f"better in {sum(d > 0 for d in differences)}, worse in {sum(d < 0 for d in differences)}")
    verdict = "significant" if p < args.alpha else "not significant"
    print(f"paired t = {t:.2f}, df {len(differences) - 1}, two-sided p = {p:.4f}: {verdict} at alpha {args.alpha}; "
          f"Wilcoxon p = {wilcoxon_p:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
