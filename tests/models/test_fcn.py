"""FCN against the paper's geometry (Caffe coordinate maps give the crop offsets), bilinear
upsampling against F.interpolate, and torchvision's layout (keys, shapes, published parameter counts)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.segmentation import fcn as FCN_MODULE

# torchvision's weight metadata (FCN_ResNet50_Weights / FCN_ResNet101_Weights ... "num_params"), which
# count the auxiliary head; FCNHead(1024, 21) = 3*3*1024*256 + 2*256 + 256*21 + 21 parameters.
TORCHVISION_NUM_PARAMS_WITH_AUX = {"fcn_resnet50": 35_322_218, "fcn_resnet101": 54_314_346}
AUX_HEAD_21 = 9 * 1024 * 256 + 2 * 256 + 256 * 21 + 21


def _coordinate_map(layers):
    """Caffe's coord_map arithmetic: input coordinate = a * x + b for a unit of the last layer.
    conv/pool (k, s, p): x_in = s * x + (k - 1) / 2 - p; transposed conv: x_in = (x - (k - 1) / 2 + p) / s."""
    a, b = 1.0, 0.0
    for layer in layers:
        k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
        s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
        p = layer.padding if isinstance(layer.padding, int) else layer.padding[0]
        if isinstance(layer, nn.ConvTranspose2d):
            a, b = a / s, b + a * (-(k - 1) / 2 + p) / s
        else:
            a, b = a * s, b + a * ((k - 1) / 2 - p)
    return a, b


def _spatial(modules):
    return [m for m in modules if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d))]


def test_crop_offsets_are_the_caffe_coordinate_maps():
    model = canon.create_model("fcn8s_vgg16", num_classes=2)
    feats = list(model.features)
    trunk = _spatial(feats) + [model.fc6, model.fc7, model.score_fr]
    pool4 = _spatial(feats[:FCN_MODULE.POOL4 + 1])
    pool3 = _spatial(feats[:FCN_MODULE.POOL3 + 1])
    # 32s: upscore (64/32) straight from score_fr
    a, b = _coordinate_map(trunk + [FCN_MODULE._upsampler(2, 32)])
    assert (a, -b) == (1.0, FCN_MODULE.CROPS[32][0]) == (1.0, 19)
    # 16s / 8s: upscore2 output versus pool4, then the final upsamplers
    a_up, b_up = _coordinate_map(trunk + [model.upscore2])
    a_p4, b_p4 = _coordinate_map(pool4)
    assert a_up == a_p4 and (b_up - b_p4) / a_p4 == FCN_MODULE.CROPS[16][0] == FCN_MODULE.CROPS[8][0]
    assert -_coordinate_map(trunk + [model.upscore2, FCN_MODULE._upsampler(2, 16)])[1] == FCN_MODULE.CROPS[16][1]
    a_up, b_up = _coordinate_map(trunk + [model.upscore2, model.upscore_pool4])
    a_p3, b_p3 = _coordinate_map(pool3)
    assert a_up == a_p3 and (b_up - b_p3) / a_p3 == FCN_MODULE.CROPS[8][1]
    assert _coordinate_map(trunk + [model.upscore2, model.upscore_pool4, model.upscore8]) == (1.0, -FCN_MODULE.CROPS[8][2])


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_transposed_conv_initialised_to_bilinear_equals_interpolate(factor):
    x = torch.randn(1, 3, 6, 7)
    up = FCN_MODULE._upsampler(3, factor)
    ours = up(x)[..., factor // 2:factor // 2 + 6 * factor, factor // 2:factor // 2 + 7 * factor]
    expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))  # borders clamp differently
    assert torch.allclose(ours[inner], expected[inner], atol=1e-5)


@pytest.mark.parametrize("name", ["fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16"])
def test_vgg_fcns_output_the_input_size_and_keep_vgg16_feature_keys(name):
    model = canon.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 50)).shape == (1, 3, 37, 50)
    conv_keys = [k for k in model.state_dict() if k.startswith("features.")]
    # torchvision vgg16: 13 convolutions at these indices of features
    assert conv_keys == [f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
                         for p in ("weight", "bias")]
    assert model.fc6.weight.shape == (4096, 512, 7, 7) and model.fc7.weight.shape == (4096, 4096, 1, 1)


def _fcn_head_keys(prefix, in_chs, num_classes):
    """torchvision FCNHead: Sequential(conv3x3 no bias, BN, ReLU, Dropout, conv1x1)."""
    inter = in_chs // 4
    return {f"{prefix}.0.weight": (inter, in_chs, 3, 3), f"{prefix}.1.weight": (inter,), f"{prefix}.1.bias": (inter,),
            f"{prefix}.1.running_mean": (inter,), f"{prefix}.1.running_var": (inter,),
            f"{prefix}.1.num_batches_tracked": (), f"{prefix}.4.weight": (num_classes, inter, 1, 1),
            f"{prefix}.4.bias": (num_classes,)}


@pytest.mark.parametrize("name,depth", [("fcn_resnet50", 50), ("fcn_resnet101", 101)])
def test_torchvision_layout_keys_shapes_and_parameter_counts(name, depth):
    model = canon.create_model(name, aux_loss=True)
    backbone = canon.create_model(f"resnet{depth}").state_dict()  # torchvision's ResNet layout
    expected = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.items() if not k.startswith("fc.")}
    expected.update(_fcn_head_keys("classifier", 2048, 21))
    expected.update(_fcn_head_keys("aux_classifier", 1024, 21))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_NUM_PARAMS_WITH_AUX[name]
    plain = canon.create_model(name)
    assert sum(p.numel() for p in plain.parameters()) == TORCHVISION_NUM_PARAMS_WITH_AUX[name] - AUX_HEAD_21
    if name == "fcn_resnet50":
        assert sum(p.numel() for p in plain.parameters()) == 32_957_013  # the number


def test_aux_output_and_output_stride():
    model = canon.create_model("fcn_resnet50", num_classes=4, aux_loss=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 70))
    assert set(out) == {"out", "aux"} and out["out"].shape == out["aux"].shape == (1, 4, 65, 70)
    assert model.backbone.output_stride == 8
    with pytest.raises(ValueError, match="3 input channel"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="stride must be"):
        canon.create_model("fcn8s_vgg16", stride=4)
