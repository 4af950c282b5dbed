"""Smoke test of benchmarks/bench_metrics.py: it runs, and every row computes the same SSIM."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("skimage")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_metrics.py"


def test_bench_metrics_rows_agree(capsys):
    if not BENCH.is_file():
        pytest.skip(f"{BENCH} not found")
    spec = importlib.util.spec_from_file_location("bench_metrics", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # --threads 0 leaves torch's thread count alone for the rest of the test session
    rows = module.main(["--size", "48", "--repeats", "1", "--min-seconds", "0", "--threads", "0", "--json"])
    assert [r["method"].split()[0] for r in rows] == ["scikit-image", "scikit-image", "canon", "canon", "torch"]
    reference = rows[0]["ssim"]
    for row in rows:
        assert abs(row["ssim"] - reference) < 1e-4, row
        assert row["seconds"] > 0 and row["vs_skimage"] > 0
    assert '"rows"' in capsys.readouterr().out
