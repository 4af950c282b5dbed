"""Detection backbones: FrozenBatchNorm2d, the ResNet body, FPN (+ extra levels), resnet_fpn_backbone.

References (independent of canon's code):
    - FrozenBatchNorm2d: torchvision/ops/misc.py's formula, scale = w * (var + eps).rsqrt(),
      shift = b - mean * scale; eps 1e-5 by default; buffers only; num_batches_tracked dropped on load;
    - FPN: torchvision/ops/feature_pyramid_network.py written out with torch.nn.functional (lateral
      1x1, nearest upsampling to the lateral's size, 3x3 output convs, max_pool2d(1, 2) for "pool",
      RetinaNet's P6/P7 with the in == out rule) and its version-2 ``_load_from_state_dict`` remap;
    - resnet_fpn_backbone: torchvision's ``_resnet_fpn_extractor`` rules for trainable_layers
      (layer4, layer3, layer2, layer1, conv1; bn1 only at 5) and in_channels (64·e·2^(k-1)).
"""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models.detection.backbones import (FeaturePyramidNetwork, FrozenBatchNorm2d, LastLevelMaxPool,
                                              LastLevelP6P7, resnet_fpn_backbone, set_frozen_batch_norm_eps)
from rcnn_references import ref_fpn


def test_frozen_batch_norm_is_the_affine_formula_with_eps_in_the_root():
    g = torch.Generator().manual_seed(0)
    bn = FrozenBatchNorm2d(5)
    values = {name: torch.rand(5, generator=g) + 0.1 for name in ("weight", "bias", "running_mean", "running_var")}
    bn.load_state_dict(values)
    x = torch.randn(2, 5, 3, 4, generator=g)
    for eps in (1e-5, 0.0):
        if eps == 0.0:
            set_frozen_batch_norm_eps(nn.Sequential(bn), 0.0)
        scale = values["weight"] / torch.sqrt(values["running_var"] + eps)
        want = (x - values["running_mean"][:, None, None]) * scale[:, None, None] + values["bias"][:, None, None]
        torch.testing.assert_close(bn(x), want, rtol=1e-6, atol=1e-6)
    assert FrozenBatchNorm2d(3).eps == 1e-5  # torchvision's default
    assert list(bn.parameters()) == [] and [k for k, _ in bn.named_buffers()] == list(values)


def test_frozen_batch_norm_loads_a_batch_norm_state_dict():
    trained = nn.BatchNorm2d(4)
    trained.running_mean.fill_(0.5)
    state = trained.state_dict()
    assert "num_batches_tracked" in state
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict(state, strict=True)  # num_batches_tracked is dropped, not an error
    torch.testing.assert_close(frozen.running_mean, torch.full((4,), 0.5))


def _random_fpn_state(fpn, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in fpn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return fpn.state_dict()


def test_fpn_against_the_functional_reference():
    g = torch.Generator().manual_seed(1)
    channels = [8, 16, 32, 64]
    fpn = FeaturePyramidNetwork(channels, 12, extra_blocks=LastLevelMaxPool())
    state = {f"backbone.fpn.{k}": v for k, v in _random_fpn_state(fpn, 2).items()}
    # odd sizes: the top-down path upsamples to each lateral's size, not by exactly 2
    sizes = [(25, 33), (13, 17), (7, 9), (4, 5)]
    inputs = [torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(channels, sizes)]
    got = fpn(OrderedDict((str(i), x) for i, x in enumerate(inputs)))
    want = ref_fpn(inputs, state)
    assert list(got) == ["0", "1", "2", "3", "pool"]
    for a, b in zip(got.values(), want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert got["pool"].shape[-2:] == (2, 3)


@pytest.mark.parametrize("in_channels", [12, 64])
def test_last_level_p6_p7_from_p5_or_c5(in_channels):
    g = torch.Generator().manual_seed(3)
    channels = [16, 32, 64]
    fpn = FeaturePyramidNetwork(channels, 12, extra_blocks=LastLevelP6P7(in_channels, 12))
    state = _random_fpn_state(fpn, 4)
    inputs = [torch.randn(1, c, s, s, generator=g) for c, s in zip(channels, (16, 8, 4))]
    got = fpn(OrderedDict((str(i), x) for i, x in enumerate(inputs)))
    assert list(got) == ["0", "1", "2", "p6", "p7"]
    pyramid = ref_fpn(inputs, {f"backbone.fpn.{k}": v for k, v in state.items()}, extra=None)
    source = pyramid[-1] if in_channels == 12 else inputs[-1]  # P5 when in == out, else C5 (torchvision)
    p6 = F.conv2d(source, state["extra_blocks.p6.weight"], state["extra_blocks.p6.bias"], stride=2, padding=1)
    p7 = F.conv2d(F.relu(p6), state["extra_blocks.p7.weight"], state["extra_blocks.p7.bias"], stride=2, padding=1)
    torch.testing.assert_close(got["p6"], p6)
    torch.testing.assert_close(got["p7"], p7)


def test_fpn_loads_version_1_key_names():
    """torchvision < 0.13 FPNs had bare convolutions: inner_blocks.{i}.weight; they load (remapped) and agree."""
    fpn = FeaturePyramidNetwork([4, 8], 6)
    state = _random_fpn_state(fpn, 5)
    old = {k.replace(".0.weight", ".weight").replace(".0.bias", ".bias"): v.clone() for k, v in state.items()}
    assert "inner_blocks.0.weight" in old and "layer_blocks.1.bias" in old
    fresh = FeaturePyramidNetwork([4, 8], 6)
    fresh.load_state_dict(old, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k
    # a current state_dict (version 2 in its metadata) loads unchanged
    fresh.load_state_dict(fpn.state_dict(), strict=True)


def test_fpn_rejects_the_wrong_number_of_maps():
    fpn = FeaturePyramidNetwork([4, 8], 6)
    with pytest.raises(ValueError, match="expects 2 feature maps"):
        fpn(OrderedDict([("0", torch.zeros(1, 4, 8, 8))]))


# torchvision's _resnet_fpn_extractor: which parameter prefixes train for each trainable_layers.
TRAINABLE = {0: (), 1: ("layer4",), 3: ("layer4", "layer3", "layer2"),
             5: ("layer4", "layer3", "layer2", "layer1", "conv1", "bn1")}


@pytest.mark.parametrize("trainable_layers", sorted(TRAINABLE))
def test_trainable_layers_freeze_as_torchvision(trainable_layers):
    backbone = resnet_fpn_backbone("resnet18", norm_layer="batch_norm", trainable_layers=trainable_layers)
    for name, p in backbone.body.named_parameters():
        assert p.requires_grad == name.startswith(TRAINABLE[trainable_layers]), name
    assert all(p.requires_grad for p in backbone.fpn.parameters())


@pytest.mark.parametrize("name, expansion", [("resnet18", 1), ("resnet50", 4)])
def test_body_returns_named_stages_with_torchvision_channels_and_strides(name, expansion):
    backbone = resnet_fpn_backbone(name, returned_layers=(2, 3, 4), extra_blocks=LastLevelP6P7(256, 256))
    assert backbone.body.out_channels == [128 * expansion, 256 * expansion, 512 * expansion]
    assert [m.in_channels for m in (b[0] for b in backbone.fpn.inner_blocks)] == backbone.body.out_channels
    assert not hasattr(backbone.body, "fc") and not hasattr(backbone.body, "avgpool")
    with torch.no_grad():
        features = backbone.body(torch.zeros(1, 3, 64, 96))
        pyramid = backbone(torch.zeros(1, 3, 64, 96))
    assert list(features) == ["0", "1", "2"]
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(8, 12), (4, 6), (2, 3)]
    assert list(pyramid) == ["0", "1", "2", "p6", "p7"] and backbone.out_channels == 256
    assert all(isinstance(m, FrozenBatchNorm2d) for n, m in backbone.body.named_modules() if "bn" in n.split(".")[-1])


def test_backbone_arguments_are_checked():
    with pytest.raises(ValueError, match="resnet18"):
        resnet_fpn_backbone("resnet19")
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        resnet_fpn_backbone("resnet18", trainable_layers=6)
    with pytest.raises(ValueError, match="returned_layers"):
        resnet_fpn_backbone("resnet18", returned_layers=(0, 1))
    with pytest.raises(ValueError, match="frozen_batch_norm"):
        resnet_fpn_backbone("resnet18", norm_layer="layer_norm")
