"""The `canon` command through a real subprocess, as a user runs it."""
import json
import subprocess
import sys

import pytest


def canon(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "canon", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_list_shows_models_with_parameter_counts():
    r = canon("list", "--pattern", "resnet*", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["resnet50"]["params"] == 25_557_032  # torchvision's published count


def test_info_counts_multiply_adds():
    r = canon("info", "lenet5", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["output_shape"] == [1, 10]
    assert info["macs"] > 0 and info["params"] == sum(layer["params"] for layer in info["layers"])


def test_info_alexnet_macs_match_the_known_figure():
    # AlexNet (torchvision layout) at 224x224, by hand from the layer shapes (output pixels x
    # out channels x in channels x kernel area): conv1 70,276,800 + conv2 223,948,800 +
    # conv3 112,140,288 + conv4 149,520,384 + conv5 99,680,256 + fc 37,748,736 + 16,777,216 +
    # 4,096,000 = 714,188,480 (torchvision documents 0.71 GFLOPS).
    r = canon("info", "alexnet", "--json")
    info = json.loads(r.stdout)
    conv_linear = sum(l["macs"] for l in info["layers"] if l["kind"] in ("Conv2d", "Linear"))
    assert conv_linear == 714_188_480


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    r = canon("train", "resnt18", "--data", "digits")
    assert r.returncode == 2 and "resnet18" in r.stderr and "Traceback" not in r.stderr
    r = canon("train", "lenet5", "--data", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1")
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr
    r = canon("eval", str(tmp_path / "missing-run"), "--data", "digits")
    assert r.returncode == 2 and "missing-run" in r.stderr and "Traceback" not in r.stderr
    r = canon("info", "resnet18", "--model-arg", "num_clases=3")
    assert r.returncode == 2 and "num_classes" in r.stderr
    r = canon("train", "deit_tiny_distilled_patch4_28", "--data", "digits", "--distillation", "soft")
    assert r.returncode == 2 and "need --teacher RUN_DIR" in r.stderr and "Traceback" not in r.stderr
    r = canon("train", "lenet5", "--data", "digits", "--train-subset", "99999", "--out", str(tmp_path / "big"))
    assert r.returncode == 2 and "in 1..1437" in r.stderr and "99999" in r.stderr and "Traceback" not in r.stderr
    r = canon("train", "lenet5", "--data", "digits", "--mixup", "-1", "--out", str(tmp_path / "mix"))
    assert r.returncode == 2 and "--mixup must be a number >= 0" in r.stderr and "Traceback" not in r.stderr
    r = canon("train", "lenet5", "--data", "digits", "--eval-every", "0", "--out", str(tmp_path / "zero"))
    assert r.returncode == 2 and "--eval-every" in r.stderr and "Traceback" not in r.stderr


def test_train_subset_eval_every_and_amp_reach_the_run(tmp_path):
    import csv

    run = tmp_path / "run"
    r = canon("train", "lenet5", "--data", "digits", "--train-subset", "300", "--epochs", "3", "--eval-every", "2",
              "--batch-size", "100", "--amp", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [bool(row["test_accuracy"]) for row in rows] == [False, True, True]
    config = (run / "config.yaml").read_text()
    assert "train_subset: 300" in config and "eval_every: 2" in config and "amp: true" in config


def test_train_eval_predict_round_trip(tmp_path):
    run = tmp_path / "run"
    r = canon("train", "lenet5", "--data", "digits", "--epochs", "2", "--lr", "0.05", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["test_accuracy"] > 0.6
    r = canon("eval", str(run), "--data", "digits", "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["accuracy"] == pytest.approx(metrics["best_test_accuracy"], abs=1e-9)
    assert (run / "eval.json").is_file() and (run / "confusion_matrix.png").is_file()
    # Predict on a real digit written out as a PNG.
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    img = (digits.images[-1] / 16 * 255).astype(np.uint8)
    Image.fromarray(img).resize((32, 32)).save(tmp_path / "digit.png")
    r = canon("predict", str(run / "best.safetensors"), str(tmp_path / "digit.png"), "--topk", "3", "--json")
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)[0]["top"]
    assert len(top) == 3 and abs(sum(t["probability"] for t in top)) <= 1.0 + 1e-6


@pytest.mark.slow
def test_demo_reaches_its_bar(tmp_path):
    r = canon("demo", "--out", str(tmp_path / "demo"), "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    acc = float(r.stdout.split("test accuracy ")[1].split()[0])
    seconds = float(r.stdout.split(" epochs in ")[1].split()[0])
    assert acc >= 0.97 and seconds < 60, r.stdout
