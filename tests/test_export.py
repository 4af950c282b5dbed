"""ONNX export of every classification and segmentation model, checked in onnxruntime.

Reference: onnxruntime (an independent implementation of every operator) run on the exported
file, against PyTorch on the same image-like inputs: max abs difference <= 1e-4 and, for
segmentation, per-pixel argmax agreement. Where float32 PyTorch is itself more than 1e-4 from a
float64 evaluation (deep ResNets amplify rounding), onnxruntime must be as close to float64
as float32 PyTorch is (within 2x). Untrained heads that torchvision initialises to zero
(ViT) are randomised first, and every check asserts that the outputs vary, so a comparison of
constants cannot pass. Small models run at reduced sizes in the default suite; the large ones
(VGG, ResNet-34+, DenseNet, ViT-B/L, DeiT at 224 px, the 512-px segmentation models, run at
256 px, ...) are marked slow.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import canon
from canon.bench import stand_in_weights
from canon.export import ExportCheckError, check_onnx, example_input, export_onnx, onnx_session

# name -> reduced input shape for the default (non-slow) suite; None: the registered size
FAST = {
    "lenet5": None, "lenet5_paper": None, "vit_tiny_patch4_28": None, "deit_tiny_patch4_28": None,
    "deit_tiny_distilled_patch4_28": None, "resnet18": (1, 3, 64, 64), "mobilenet_v2": (1, 3, 64, 64),
    "mobilenet_v1": (1, 3, 64, 64), "googlenet": (1, 3, 64, 64),
    "deeplabv3_resnet18": (1, 3, 64, 64), "resnet20_cifar": None, "plain20_cifar": None,
}


def _check_shape(name: str) -> tuple[int, ...] | None:
    """The input shape a model is checked at: FAST's, else the registered size, except that the
    512/513-px segmentation models run at 256 px (same graph, a quarter of the arithmetic)."""
    if name in FAST:
        return FAST[name]
    info = canon.model_info(name)
    c, h, w = info.input_size
    if info.task == "segmentation" and min(h, w) >= 512 and name != "unet_paper":  # U-Net needs its valid size
        return (1, c, 256, 256)
    return None


def _image_models(task: str) -> list[str]:
    return [n for n in canon.list_models(task=task) if len(canon.model_info(n).input_size) == 3]


def _params(task: str):
    return [pytest.param(n, id=n, marks=() if n in FAST else pytest.mark.slow) for n in _image_models(task)]


def _model(name: str) -> torch.nn.Module:
    """A freshly initialised model made to behave like a trained one: randomised zero heads, and
    BatchNorm statistics calibrated on image-like inputs (an uncalibrated random ResNet-152's
    logits reach 1e7, where float32 rounding alone exceeds the 1e-4 bound)."""
    torch.manual_seed(0)
    model = canon.create_model(name)
    c, h, w = canon.model_info(name).input_size
    shape = _check_shape(name) or (1, c, h, w)
    side = min(shape[2], 128) if name != "unet_paper" else shape[2]  # U-Net (valid convs) needs its size
    return stand_in_weights(model, example_input((2, c, side, side), seed=3))


def _export_and_check(name, tmp_path):
    model = _model(name)
    result = export_onnx(model, tmp_path / f"{name}.onnx", input_shape=_check_shape(name),
                         dynamic_batch=name in FAST)
    # the outputs compared are not constants: PyTorch's output varies across samples and classes
    with torch.no_grad():
        out = model(example_input(result.input_shape, model))
    assert float(out.std()) > 1e-3 * max(1.0, float(out.abs().max())), f"{name}: outputs nearly constant"
    if result.float64_check is None:
        assert result.max_abs_diff <= 1e-4
    else:  # float32 PyTorch itself is > 1e-4 from exact here; onnxruntime must be as close to exact
        f64 = result.float64_check
        assert f64["onnxruntime_error"] <= 2 * f64["pytorch_float32_error"] + 1e-4, f64
    return result, out


@pytest.mark.parametrize("name", _params("classification"))
def test_classification_model_exports_and_matches_onnxruntime(name, tmp_path):
    result, out = _export_and_check(name, tmp_path)
    assert out.dim() == 2 and result.argmax_agreement == 1.0
    assert result.checked_batches == ([1, 2] if name in FAST else [1])


@pytest.mark.parametrize("name", _params("segmentation"))
def test_segmentation_model_exports_and_matches_onnxruntime(name, tmp_path):
    result, out = _export_and_check(name, tmp_path)
    assert out.dim() == 4 and result.argmax_agreement >= 0.999


def test_default_input_shape_comes_from_the_registry(tmp_path):
    result = export_onnx(_model("lenet5"), tmp_path / "lenet5.onnx")
    assert result.input_shape == (1, 1, 32, 32) and result.output_names == ["output"]
    session = onnx_session(result.path)
    assert session.get_inputs()[0].shape == [1, 1, 32, 32]  # fixed batch unless dynamic_batch


def test_dict_outputs_become_named_onnx_outputs(tmp_path):
    torch.manual_seed(0)
    model = canon.create_model("deeplabv3_resnet18", aux_loss=True).eval()
    result = export_onnx(model, tmp_path / "seg.onnx", input_shape=(1, 3, 64, 64))
    assert result.output_names == ["out", "aux"] and result.max_abs_diff <= 1e-4
    assert [o.name for o in onnx_session(result.path).get_outputs()] == ["out", "aux"]


def test_check_catches_a_model_that_differs_from_the_file(tmp_path):
    model = _model("lenet5")
    export_onnx(model, tmp_path / "lenet5.onnx", check=False)
    assert check_onnx(model, tmp_path / "lenet5.onnx").max_abs_diff <= 1e-4
    with torch.no_grad():
        list(model.parameters())[-1].add_(1e-3)  # the output layer's bias: every logit moves by 1e-3
    with pytest.raises(ExportCheckError, match="max abs difference"):
        check_onnx(model, tmp_path / "lenet5.onnx")


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="input_shape is required"):
        export_onnx(torch.nn.Conv2d(3, 4, 3), tmp_path / "conv.onnx")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        export_onnx(_model("lenet5"), tmp_path / "x.onnx", input_shape=(1, 32, 32))
    with pytest.raises(TypeError, match="nn.Module"):
        export_onnx("lenet5", tmp_path / "x.onnx")


def test_example_input_is_normalised_like_an_image():
    x = example_input((4, 3, 32, 32))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = x * std + mean
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 1 and abs(float(pixels.mean()) - 0.5) < 0.02


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="the dynamo exporter needs onnxscript")
def test_dynamo_exporter(tmp_path):
    result = export_onnx(_model("resnet18"), tmp_path / "r18.onnx", input_shape=(1, 3, 64, 64), dynamo=True,
                         dynamic_batch=True)
    assert result.exporter == "dynamo" and result.max_abs_diff <= 1e-4 and result.checked_batches == [1, 2]
    x = np.zeros((3, 3, 64, 64), dtype=np.float32)
    assert onnx_session(result.path).run(None, {"input": x})[0].shape == (3, 1000)
