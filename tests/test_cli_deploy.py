"""`canon export` and `canon bench` through a real subprocess, as a user runs them."""
import json
import subprocess
import sys

import numpy as np
import pytest


def canon(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "canon", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("deploy") / "run"
    r = canon("train", "lenet5", "--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "5", "--out", str(run),
              "--quiet", "--threads", "1")
    assert r.returncode == 0, r.stderr
    return run


def test_export_a_run_checks_it_in_onnxruntime(trained_run):
    r = canon("export", str(trained_run), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["path"].endswith("lenet5.onnx") and report["input_shape"] == [1, 1, 32, 32]
    assert report["max_abs_diff"] <= 1e-4
    # the file is a real ONNX model that onnxruntime runs on its own, with the trained weights
    import onnxruntime

    from canon.engine.checkpoint import load_model

    model, _ = load_model(trained_run)
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_export_a_registered_model_at_another_size_and_bad_format(tmp_path):
    out = tmp_path / "m.onnx"
    r = canon("export", "mobilenet_v2", "--input-size", "64", "--dynamic-batch", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "onnxruntime vs PyTorch: max |difference|" in r.stdout and out.is_file()
    r = canon("export", "resnt18")
    assert r.returncode == 2 and "resnet18" in r.stderr and "Traceback" not in r.stderr


def test_bench_prints_throughput_beside_the_matmul_rate_and_onnxruntime():
    r = canon("bench", "lenet5", "--batch-size", "1", "--repeats", "1", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    rows = {row["mode"]: row for row in result["rows"]}
    canon_row, onnx_row = rows["eager"], rows["onnxruntime"]
    assert canon_row["model"] == "lenet5" and canon_row["batch"] == 1 and canon_row["images_per_s"] > 0
    assert canon_row["vs_onnxruntime"] == pytest.approx(canon_row["images_per_s"] / onnx_row["images_per_s"], rel=1e-6)
    # GFLOP/s = 2 x multiply-adds x images/s; LeNet-5's 422,824 multiply-adds (canon info)
    assert canon_row["gflops"] == pytest.approx(2 * 422_824 * canon_row["images_per_s"] / 1e9, rel=1e-6)
    assert result["runs"][0]["matmul_gflops"] > 0 and onnx_row["max_abs_diff"] < 1e-5
