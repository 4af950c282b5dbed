"""MobileNet v1/v2 against the papers' tables and torchvision's layout.

References (independent of canon's code):
    - v1: parameter count transcribed from Table 1 layer by layer; multiply-adds counted with
      forward hooks and compared with Tables 6-7 of arXiv:1704.04861 (569M, 325M, 149M, 41M; 418M,
      290M, 186M).
    - v2: the torchvision ``state_dict`` layout written out from torchvision/models/mobilenetv2.py
      (keys and shapes), its parameter count 3,504,872, and logits from a functional
      re-implementation (F.conv2d / F.batch_norm over the same state_dict).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.mobilenet import MobileNetV1, MobileNetV2

NAMES = ["mobilenet_v1", "mobilenet_v2"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def multiply_adds(model: nn.Module, size: int) -> int:
    """Convolution and fully connected multiply-adds for one image, counted with forward hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


# ----------------------------------------------------------------------------- v1 against the paper
def v1_params_from_table1(alpha: float, num_classes: int = 1000) -> int:
    """Table 1 transcribed: conv weights, BN scale+shift after each conv, FC weights and biases."""
    chans = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    chans = [int(c * alpha) for c in chans]
    total = 3 * 3 * 3 * chans[0] + 2 * chans[0]
    for c_in, c_out in zip(chans[:-1], chans[1:]):
        total += 3 * 3 * c_in + 2 * c_in  # depthwise + BN
        total += c_in * c_out + 2 * c_out  # pointwise + BN
    return total + chans[-1] * num_classes + num_classes


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
def test_v1_parameter_count_follows_table1(alpha):
    assert count_params(MobileNetV1(width_mult=alpha)) == v1_params_from_table1(alpha)


def test_v1_parameters_about_4_2_million():
    bn = sum(m.weight.numel() * 2 for m in MobileNetV1().modules() if isinstance(m, nn.BatchNorm2d))
    assert round((count_params(MobileNetV1()) - bn) / 1e6, 1) == 4.2  # Table 8: 4.2M


@pytest.mark.parametrize("alpha, resolution, paper_millions", [
    (1.0, 224, 569), (0.75, 224, 325), (0.5, 224, 149), (0.25, 224, 41),  # Table 6
    (1.0, 192, 418), (1.0, 160, 290), (1.0, 128, 186),  # Table 7
])
def test_v1_multiply_adds_match_paper(alpha, resolution, paper_millions):
    model = MobileNetV1(width_mult=alpha, resolution_mult=resolution / 224)
    assert model.default_input_size == (3, resolution, resolution)
    assert round(multiply_adds(model, resolution) / 1e6) == pytest.approx(paper_millions, abs=1)


# ----------------------------------------------------------------------------- v2 against torchvision
V2_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _bn(prefix, c):
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def torchvision_mobilenet_v2_layout(num_classes=1000):
    """(key, shape) in torchvision's order: features.0 stem, features.1-17 InvertedResidual, features.18, classifier.1."""
    keys = [("features.0.0.weight", (32, 3, 3, 3))] + _bn("features.0.1", 32)
    index, c_in = 1, 32
    for t, c, n, _ in V2_TABLE:
        for _ in range(n):
            p, hidden, j = f"features.{index}.conv", c_in * t, 0
            if t != 1:
                keys += [(f"{p}.0.0.weight", (hidden, c_in, 1, 1))] + _bn(f"{p}.0.1", hidden)
                j = 1
            keys += [(f"{p}.{j}.0.weight", (hidden, 1, 3, 3))] + _bn(f"{p}.{j}.1", hidden)
            keys += [(f"{p}.{j + 1}.weight", (c, hidden, 1, 1))] + _bn(f"{p}.{j + 2}", c)
            index, c_in = index + 1, c
    keys += [("features.18.0.weight", (1280, 320, 1, 1))] + _bn("features.18.1", 1280)
    return keys + [("classifier.1.weight", (num_classes, 1280)), ("classifier.1.bias", (num_classes,))]


def test_v2_state_dict_layout_equals_torchvision():
    got = [(k, tuple(v.shape)) for k, v in MobileNetV2().state_dict().items()]
    assert got == torchvision_mobilenet_v2_layout()


def test_v2_parameter_count():
    assert count_params(canon.create_model("mobilenet_v2")) == 3_504_872


def functional_mobilenet_v2(sd: dict, x: torch.Tensor, strides: list[int]) -> torch.Tensor:
    """MobileNetV2 written directly with torch.nn.functional over a torchvision-layout state_dict (eval BN)."""
    def bn(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            training=False, eps=1e-5)

    def conv(x, key, stride=1, groups=1):
        w = sd[key]
        return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)

    x = F.relu6(bn(conv(x, "features.0.0.weight", strides[0]), "features.0.1"))
    index, c_in, s_iter = 1, 32, iter(strides[1:])
    for t, c, n, _ in V2_TABLE:
        for _ in range(n):
            p, inp, j = f"features.{index}.conv", x, 0
            stride = next(s_iter)
            if t != 1:
                x = F.relu6(bn(conv(x, f"{p}.0.0.weight"), f"{p}.0.1"))
                j = 1
            x = F.relu6(bn(conv(x, f"{p}.{j}.0.weight", stride, groups=x.shape[1]), f"{p}.{j}.1"))
            x = bn(conv(x, f"{p}.{j + 1}.weight"), f"{p}.{j + 2}")
            if stride == 1 and c_in == c:
                x = x + inp
            index, c_in = index + 1, c
    x = F.relu6(bn(conv(x, "features.18.0.weight"), "features.18.1"))
    return F.linear(x.mean(dim=(2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])


def _randomise_bn(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _block_strides(first_strides):
    out = []
    for (_, _, n, s), s0 in zip(V2_TABLE, first_strides):
        out += [s0] + [1] * (n - 1)
    return out


def test_v2_logits_equal_functional_reimplementation():
    model = MobileNetV2(num_classes=7).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(x)
        ref = functional_mobilenet_v2(model.state_dict(), x, [2] + _block_strides([s for *_, s in V2_TABLE]))
    assert (ours - ref).abs().max() <= 1e-4


def test_v2_small_input_strides_and_logits():
    model = canon.create_model("mobilenet_v2", small_input=True, in_chans=1, num_classes=10).eval()
    _randomise_bn(model)
    assert model.output_stride == 8
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        feats = model.forward_features(x)
        ref = functional_mobilenet_v2(model.state_dict(), x, [1] + _block_strides([1, 1, 2, 2, 1, 2, 1]))
        assert feats.shape == (2, 1280, 4, 4)
        assert (model(x) - ref).abs().max() <= 1e-4
    # Same state_dict layout as the ImageNet form, apart from the 1-channel stem and 10 classes.
    assert [k for k in model.state_dict()] == [k for k, _ in torchvision_mobilenet_v2_layout()]


# ----------------------------------------------------------------------------- shared model contract
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_backward(name):
    model = canon.create_model(name, num_classes=5, in_chans=1)
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_input_validation(name):
    model = canon.create_model(name).eval()
    with pytest.raises(ValueError, match="input channel"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model(name, num_class=10)


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier(name):
    model = canon.create_model(name).eval()
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_invalid_options_fail_at_construction():
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV2(width_mult=0)
    with pytest.raises(ValueError, match="resolution_mult"):
        MobileNetV1(resolution_mult=1.5)
