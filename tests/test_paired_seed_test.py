"""examples/paired_seed_test.py: the statistics behind the README's distillation rows."""
import importlib.util
import re
from pathlib import Path

import pytest

stats = pytest.importorskip("scipy.stats", reason="the paired test's p-values come from scipy (canon's dev extra)")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "paired_seed_test.py"


def _load():
    spec = importlib.util.spec_from_file_location("paired_seed_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(run_dir: Path, accuracy: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "history.csv").write_text("epoch,train_loss,test_accuracy\n1,0.5,0.9\n"
                                         f"2,0.4,{accuracy}\n")


def test_matches_scipy_paired_t_and_wilcoxon(tmp_path, capsys):
    plain = [0.9684, 0.9694, 0.9666, 0.9669, 0.9724, 0.9644, 0.9712]
    treated = [0.9742, 0.9671, 0.9729, 0.9699, 0.9723, 0.9635, 0.9764]
    for seed, (a, b) in enumerate(zip(plain, treated)):
        _write_run(tmp_path / f"base-s{seed}", a)
        _write_run(tmp_path / f"kd-s{seed}", b)
    # Two --pair groups (seeds 0-3 and 4,5-6) pool into one test over seven pairs.
    _load().main(["--pair", str(tmp_path / "base-s{seed}"), str(tmp_path / "kd-s{seed}"), "0-3",
                  "--pair", str(tmp_path / "base-s{seed}"), str(tmp_path / "kd-s{seed}"), "4,5-6", "--alpha", "0.01"])
    out = capsys.readouterr().out
    reference = stats.ttest_rel([100 * b for b in treated], [100 * a for a in plain])
    wilcoxon = stats.wilcoxon([100 * (b - a) for a, b in zip(plain, treated)])
    t, p = map(float, re.search(r"paired t = (\S+), df 6, two-sided p = ([0-9.]+)", out).groups())
    assert t == pytest.approx(reference.statistic, abs=0.005)
    assert p == pytest.approx(reference.pvalue, abs=5e-5)
    assert float(re.search(r"Wilcoxon p = ([0-9.]+)", out).group(1)) == pytest.approx(wilcoxon.pvalue, abs=5e-5)
    assert "pairs 7:" in out and "not significant at alpha 0.01" in out
    mean_difference = 100 * sum(b - a for a, b in zip(plain, treated)) / 7
    assert f"difference {mean_difference:+.2f}" in out
    interval = reference.confidence_interval(0.95)
    assert f"95 % interval {interval.low:+.2f} to {interval.high:+.2f}" in out


def test_missing_run_and_bad_seeds_say_what_was_expected(tmp_path):
    module = _load()
    _write_run(tmp_path / "base-s0", 0.97)
    with pytest.raises(SystemExit, match=r"kd-s0/history.csv: no such file"):
        module.main(["--pair", str(tmp_path / "base-s{seed}"), str(tmp_path / "kd-s{seed}"), "0-1"])
    with pytest.raises(SystemExit, match=r"seeds must look like 0-5 or 6,8,10-11, got '0:5'"):
        module.main(["--pair", "a{seed}", "b{seed}", "0:5"])
    with pytest.raises(SystemExit, match=r"a seed range runs low-high, got '5-3' in '0,5-3'"):
        module.main(["--pair", "a{seed}", "b{seed}", "0,5-3"])
    (tmp_path / "empty-s0").mkdir()
    (tmp_path / "empty-s0" / "history.csv").write_text("epoch,train_loss\n1,0.5\n")
    with pytest.raises(SystemExit, match=r"expected a final 'test_accuracy' value; columns: epoch, train_loss"):
        module.main(["--pair", str(tmp_path / "empty-s{seed}"), str(tmp_path / "base-s{seed}"), "0"])
