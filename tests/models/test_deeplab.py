"""DeepLab v1/v2/v3 against the papers' hyper-parameters, F.conv2d, and torchvision's layout."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.segmentation.deeplab import aspp_rates

# torchvision's DeepLabV3_ResNet{50,101}_Weights "num_params" (with the auxiliary FCN head).
TORCHVISION_NUM_PARAMS_WITH_AUX = {"deeplabv3_resnet50": 42_004_074, "deeplabv3_resnet101": 60_996_202}
AUX_HEAD_21 = 9 * 1024 * 256 + 2 * 256 + 256 * 21 + 21


def _bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _deeplab_head_keys(in_chs=2048, num_classes=21, c=256):
    """torchvision DeepLabHead: Sequential(ASPP, conv3x3, BN, ReLU, conv1x1); ASPP.convs = [1x1 block,
    3 ASPPConv, ASPPPooling(pool, conv, BN, ReLU)], ASPP.project = (conv1x1 5c->c, BN, ReLU, Dropout)."""
    keys = {"classifier.0.convs.0.0.weight": (c, in_chs, 1, 1), **_bn("classifier.0.convs.0.1", c)}
    for i in (1, 2, 3):
        keys.update({f"classifier.0.convs.{i}.0.weight": (c, in_chs, 3, 3), **_bn(f"classifier.0.convs.{i}.1", c)})
    keys.update({"classifier.0.convs.4.1.weight": (c, in_chs, 1, 1), **_bn("classifier.0.convs.4.2", c)})
    keys.update({"classifier.0.project.0.weight": (c, 5 * c, 1, 1), **_bn("classifier.0.project.1", c)})
    keys.update({"classifier.1.weight": (c, c, 3, 3), **_bn("classifier.2", c),
                 "classifier.4.weight": (num_classes, c, 1, 1), "classifier.4.bias": (num_classes,)})
    return keys


@pytest.mark.parametrize("name,depth", [("deeplabv3_resnet50", 50), ("deeplabv3_resnet101", 101)])
def test_torchvision_layout_keys_shapes_and_parameter_counts(name, depth):
    model = canon.create_model(name)
    backbone = canon.create_model(f"resnet{depth}").state_dict()
    expected = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.items() if not k.startswith("fc.")}
    expected.update(_deeplab_head_keys())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    params = sum(p.numel() for p in model.parameters())
    assert params == TORCHVISION_NUM_PARAMS_WITH_AUX[name] - AUX_HEAD_21
    if name == "deeplabv3_resnet50":
        assert params == 39_638_869  # the number
    with_aux = canon.create_model(name, aux_loss=True)
    assert sum(p.numel() for p in with_aux.parameters()) == TORCHVISION_NUM_PARAMS_WITH_AUX[name]


def test_v3_aspp_rates_follow_the_output_stride():
    assert aspp_rates(16) == (6, 12, 18) and aspp_rates(8) == (12, 24, 36)
    for os_, rates in ((8, (12, 24, 36)), (16, (6, 12, 18))):
        model = canon.create_model("deeplabv3_resnet18", output_stride=os_, num_classes=3).eval()
        aspp = model.classifier[0]
        assert tuple(aspp.convs[i][0].dilation[0] for i in (1, 2, 3)) == rates
        assert isinstance(aspp.convs[4][0], nn.AdaptiveAvgPool2d)  # image-level features
        assert aspp.project[0].in_channels == 5 * 128
        with torch.no_grad():
            feats = model.backbone.forward_intermediates(torch.randn(1, 3, 64, 64), ("layer4",))["layer4"]
            assert feats.shape[-1] == 64 // os_
            assert model(torch.randn(1, 3, 63, 70)).shape == (1, 3, 63, 70)
    with pytest.raises(ValueError, match="8 or 16"):
        canon.create_model("deeplabv3_resnet18", output_stride=32)


def test_v2_aspp_sums_four_atrous_branches():
    model = canon.create_model("deeplabv2_resnet101", num_classes=5).eval()
    head = model.classifier
    assert [b.dilation[0] for b in head.branches] == [6, 12, 18, 24]
    x = torch.randn(1, 2048, 9, 9)
    expected = sum(F.conv2d(x, b.weight, b.bias, padding=r, dilation=r) for b, r in zip(head.branches, (6, 12, 18, 24)))
    assert torch.allclose(head(x), expected, atol=1e-5)
    assert model.backbone.output_stride == 8


def test_v1_largefov_layout():
    model = canon.create_model("deeplabv1_largefov", num_classes=21).eval()
    assert model.fc6.kernel_size == (3, 3) and model.fc6.dilation == (12, 12) and model.fc6.out_channels == 1024
    assert model.fc7.out_channels == 1024 and model.fc7.kernel_size == (1, 1)
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 1, 1]  # output stride 8
    conv5 = [m for m in model.features if isinstance(m, nn.Conv2d)][-3:]
    assert all(c.dilation == (2, 2) for c in conv5)
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        assert model.features(x).shape[-2:] == (6, 5)
        assert model(x).shape == (1, 21, 48, 40)


def test_aux_output_trains_through_the_engine_loss():
    from canon.tasks.segmentation import SegmentationTask

    model = canon.create_model("deeplabv3_resnet18", num_classes=3, aux_loss=True)
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    task = SegmentationTask(aux_weight=0.4)
    loss = task.compute_loss(model, (images, masks))
    torch.manual_seed(0)  # the same dropout masks for both forward passes
    out = model(images)
    torch.manual_seed(0)
    again = task.compute_loss(model, (images, masks))
    expected = F.cross_entropy(out["out"], masks) + 0.4 * F.cross_entropy(out["aux"], masks)
    assert torch.allclose(again, expected, atol=1e-5) and loss.requires_grad
