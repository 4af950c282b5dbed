"""VGG against torchvision's layout and counts, and a functional re-implementation.

References (independent of canon's code):
    - Table 1 of arXiv:1409.1556, written out again here (configurations A, B, D, E);
    - torchvision/models/vgg.py: ``features.<i>`` numbered conv[, bn], relu, ..., pool and
      ``classifier.{0,3,6}``, and the parameter counts torchvision documents for all eight names;
    - logits computed with torch.nn.functional over the same state_dict (eval-mode BN).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.vgg import VGG

# Table 1: (convolutions per stage) for the five stages of 64, 128, 256, 512, 512 channels
TABLE_1 = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
TORCHVISION_COUNTS = {"vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
                      "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def torchvision_vgg_layout(name: str, num_classes: int = 1000, in_chans: int = 3):
    """(key, shape) in torchvision's order; also the conv/bn indices for the functional reference."""
    depths, bn = TABLE_1[name.removesuffix("_bn")], name.endswith("_bn")
    keys, i, c = [], 0, in_chans
    for depth, width in zip(depths, WIDTHS):
        for _ in range(depth):
            keys += [(f"features.{i}.weight", (width, c, 3, 3)), (f"features.{i}.bias", (width,))]
            i += 1
            if bn:
                keys += [(f"features.{i}.{p}", (width,)) for p in ("weight", "bias", "running_mean", "running_var")]
                keys += [(f"features.{i}.num_batches_tracked", ())]
                i += 1
            i += 1  # ReLU
            c = width
        i += 1  # max-pool
    for j, (c_out, c_in) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (num_classes, 4096))):
        keys += [(f"classifier.{j}.weight", (c_out, c_in)), (f"classifier.{j}.bias", (c_out,))]
    return keys


@pytest.mark.parametrize("name", list(TORCHVISION_COUNTS))
def test_layout_and_parameter_count_equal_torchvision(name):
    with torch.device("meta"):  # shapes only: 133-144 M parameters each
        model = canon.create_model(name)
    assert count_params(model) == TORCHVISION_COUNTS[name]
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == torchvision_vgg_layout(name)


def test_layout_with_in_chans_and_num_classes():
    with torch.device("meta"):
        model = canon.create_model("vgg13_bn", num_classes=10, in_chans=1)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == torchvision_vgg_layout("vgg13_bn", 10, 1)


def functional_vgg(sd: dict, x: torch.Tensor, name: str) -> torch.Tensor:
    depths, bn = TABLE_1[name.removesuffix("_bn")], name.endswith("_bn")
    i = 0
    for depth in depths:
        for _ in range(depth):
            x = F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)
            i += 1
            if bn:
                p = f"features.{i}"
                x = (x - sd[f"{p}.running_mean"][:, None, None]) / torch.sqrt(sd[f"{p}.running_var"][:, None, None] + 1e-5)
                x = x * sd[f"{p}.weight"][:, None, None] + sd[f"{p}.bias"][:, None, None]
                i += 1
            x = F.relu(x)
            i += 1
        x = F.max_pool2d(x, 2)
        i += 1
    x = torch.flatten(F.adaptive_avg_pool2d(x, 7), 1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    x = F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


@pytest.fixture(scope="module")
def vgg11_bn_eval():
    torch.manual_seed(0)
    model = canon.create_model("vgg11_bn", num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics so eval-mode BN is really exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_vgg11_bn_logits_equal_functional_reference(vgg11_bn_eval):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, ref = vgg11_bn_eval(x), functional_vgg(vgg11_bn_eval.state_dict(), x, "vgg11_bn")
    assert ours.abs().max() > 1e-3
    assert (ours - ref).abs().max() <= 1e-4


def test_vgg16_logits_equal_functional_reference():
    """Configuration D without BN: FCN's backbone."""
    torch.manual_seed(1)
    model = canon.create_model("vgg16", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours, ref = model(x), functional_vgg(model.state_dict(), x, "vgg16")
    assert ours.abs().max() > 1e-4
    assert (ours - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_feature_map_and_pre_logits_shapes(vgg11_bn_eval):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = vgg11_bn_eval.forward_features(x)
        assert feats.shape == (1, 512, 2, 2)  # five 2×2/2 pools
        assert vgg11_bn_eval.forward_head(feats, pre_logits=True).shape == (1, 4096)


def test_torchvision_initialisation():
    model = VGG(config=[8, "M", 16, "M", 16, "M", 16, "M", 512, "M"], num_classes=3)  # small convs, same head
    conv = model.features[0]
    fan_out = conv.weight.shape[0] * 9
    assert abs(conv.weight.std().item() - (2.0 / fan_out) ** 0.5) < 0.3 * (2.0 / fan_out) ** 0.5
    assert torch.all(conv.bias == 0) and torch.all(model.classifier[0].bias == 0)
    assert abs(model.classifier[0].weight.std().item() - 0.01) < 1e-3


# ----------------------------------------------------------------------------- shared model contract
@pytest.mark.parametrize("name", list(TORCHVISION_COUNTS))
def test_output_shape_small_input(name):
    with torch.device("meta"):
        model = canon.create_model(name, num_classes=3, in_chans=1).eval()
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_backward_in_chans_and_validation():
    # narrow convolutions, the real head: the code path of every name at a fraction of the memory
    model = VGG(config=[8, "M", 16, "M", 16, 16, "M", 32, "M", 512, "M"], batch_norm=True, num_classes=4, in_chans=1).train()
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 31, 32))
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model("vgg16", drop_rate=0.1)
    with pytest.raises(ValueError, match="config"):
        VGG(config="C")


def test_reset_classifier():
    with torch.device("meta"):
        model = canon.create_model("vgg16").eval()
        model.reset_classifier(0)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4096)
        model.reset_classifier(6)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 6)
