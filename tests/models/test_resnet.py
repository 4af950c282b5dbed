"""ResNet / ResNeXt / wide ResNet against torchvision's layout and counts, and functional references.

References (independent of canon's code):
    - torchvision/models/resnet.py: the ``state_dict`` keys and shapes written out below (stem
      ``conv1``/``bn1``, ``layer<k>.<i>.conv<j>``/``bn<j>``, ``downsample.0``/``.1``, ``fc``),
      the V1.5 stride on the bottleneck's 3×3, the ResNeXt width ``int(planes·w/64)·groups``,
      ``replace_stride_with_dilation`` semantics (a dilated stage's first block keeps the previous
      dilation) and the parameter counts torchvision documents for the seven names;
    - logits computed with torch.nn.functional over the same state_dict, the strides and dilations
      of every convolution written out from those rules, not read from the model.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.resnet import BasicBlock, Bottleneck, ResNet

# name: (bottleneck?, blocks per stage, groups, width_per_group, torchvision's parameter count)
CONFIGS = {"resnet18": (False, (2, 2, 2, 2), 1, 64, 11_689_512), "resnet34": (False, (3, 4, 6, 3), 1, 64, 21_797_672),
           "resnet50": (True, (3, 4, 6, 3), 1, 64, 25_557_032), "resnet101": (True, (3, 4, 23, 3), 1, 64, 44_549_160),
           "resnet152": (True, (3, 8, 36, 3), 1, 64, 60_192_808),
           "resnext50_32x4d": (True, (3, 4, 6, 3), 32, 4, 25_028_904),
           "wide_resnet50_2": (True, (3, 4, 6, 3), 1, 128, 68_883_240)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bn(p, c):
    return [(f"{p}.weight", (c,)), (f"{p}.bias", (c,)), (f"{p}.running_mean", (c,)), (f"{p}.running_var", (c,)),
            (f"{p}.num_batches_tracked", ())]


def torchvision_resnet_layout(name, num_classes=1000, in_chans=3, stem_kernel=7):
    bottleneck, blocks, groups, wpg, _ = CONFIGS[name]
    expansion = 4 if bottleneck else 1
    keys = [("conv1.weight", (64, in_chans, stem_kernel, stem_kernel))] + _bn("bn1", 64)
    c_in = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        c_out = planes * expansion
        for i in range(n):
            p = f"layer{stage}.{i}"
            if bottleneck:
                width = int(planes * wpg / 64) * groups
                keys += [(f"{p}.conv1.weight", (width, c_in, 1, 1))] + _bn(f"{p}.bn1", width)
                keys += [(f"{p}.conv2.weight", (width, width // groups, 3, 3))] + _bn(f"{p}.bn2", width)
                keys += [(f"{p}.conv3.weight", (c_out, width, 1, 1))] + _bn(f"{p}.bn3", c_out)
            else:
                keys += [(f"{p}.conv1.weight", (planes, c_in, 3, 3))] + _bn(f"{p}.bn1", planes)
                keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + _bn(f"{p}.bn2", planes)
            if i == 0 and (stage > 1 or c_in != c_out):
                keys += [(f"{p}.downsample.0.weight", (c_out, c_in, 1, 1))] + _bn(f"{p}.downsample.1", c_out)
            c_in = c_out
    return keys + [("fc.weight", (num_classes, c_in)), ("fc.bias", (num_classes,))]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_layout_and_parameter_count_equal_torchvision(name):
    with torch.device("meta"):  # shapes only
        model = canon.create_model(name)
    assert count_params(model) == CONFIGS[name][-1]
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == torchvision_resnet_layout(name)


def test_small_input_stem_layout_in_chans_num_classes():
    with torch.device("meta"):
        model = canon.create_model("resnet18", small_input=True, in_chans=1, num_classes=10)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
        torchvision_resnet_layout("resnet18", num_classes=10, in_chans=1, stem_kernel=3)
    assert (model.conv1.stride, model.conv1.padding) == ((1, 1), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.output_stride == 8


# ----------------------------------------------------------------------------- functional reference
def functional_resnet(sd, x, name, *, small_input=False, dilate=(False, False, False), training=False):
    """torchvision's ResNet (V1.5) over a state_dict with torch.nn.functional."""
    bottleneck, blocks, groups, _, _ = CONFIGS[name]

    def bn(x, p):
        mean, var = (None, None) if training else (sd[f"{p}.running_mean"], sd[f"{p}.running_var"])
        return F.batch_norm(x, mean, var, sd[f"{p}.weight"], sd[f"{p}.bias"], training=training, eps=1e-5)

    if small_input:
        x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=1, padding=1), "bn1"))
    else:
        x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    dilation = 1
    for stage, n in enumerate(blocks, start=1):
        stride, first_dilation = (1 if stage == 1 else 2), dilation
        if stage > 1 and dilate[stage - 2]:
            dilation, stride = dilation * 2, 1  # first block keeps the previous dilation
        for i in range(n):
            p = f"layer{stage}.{i}"
            s, d = (stride, first_dilation) if i == 0 else (1, dilation)
            if bottleneck:
                h = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), f"{p}.bn1"))
                h = F.relu(bn(F.conv2d(h, sd[f"{p}.conv2.weight"], stride=s, padding=d, dilation=d, groups=groups), f"{p}.bn2"))
                h = bn(F.conv2d(h, sd[f"{p}.conv3.weight"]), f"{p}.bn3")
            else:
                h = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=s, padding=d, dilation=d), f"{p}.bn1"))
                h = bn(F.conv2d(h, sd[f"{p}.conv2.weight"], padding=d, dilation=d), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), f"{p}.downsample.1")
            x = F.relu(h + x)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def _randomise(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.2, 0.6)  # keeps activations bounded through 16 residual additions
            m.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
    return model


def _assert_close(ours, ref):
    assert ours.abs().max() > 1e-2
    assert (ours - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_resnet18_small_input_logits_equal_functional_reference():
    model = _randomise(canon.create_model("resnet18", small_input=True, in_chans=1, num_classes=10)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        _assert_close(model(x), functional_resnet(model.state_dict(), x, "resnet18", small_input=True))


def test_resnet18_training_mode_equals_functional_reference():
    model = _randomise(canon.create_model("resnet18", num_classes=5)).train()
    x = torch.randn(4, 3, 64, 64)
    ref = functional_resnet(model.state_dict(), x, "resnet18", training=True)
    _assert_close(model(x), ref)


def test_resnet50_dilated_logits_equal_functional_reference():
    model = _randomise(canon.create_model("resnet50", num_classes=10, replace_stride_with_dilation=[False, True, True])).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model(x)
        feats = model.forward_intermediates(x, names=("layer3", "layer4"))
    _assert_close(ours, functional_resnet(model.state_dict(), x, "resnet50", dilate=(False, True, True)))
    assert feats["layer3"].shape == (1, 1024, 8, 8) and feats["layer4"].shape == (1, 2048, 8, 8)


def test_resnext50_logits_equal_functional_reference():
    model = _randomise(canon.create_model("resnext50_32x4d", num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _assert_close(model(x), functional_resnet(model.state_dict(), x, "resnext50_32x4d"))


def test_dilated_basic_block_logits_equal_functional_reference():
    """Beyond torchvision (whose BasicBlock refuses dilation): both 3×3s of a dilated block dilate."""
    model = _randomise(canon.create_model("resnet18", num_classes=3, output_stride=8)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _assert_close(model(x), functional_resnet(model.state_dict(), x, "resnet18", dilate=(False, True, True)))


# ----------------------------------------------------------------------------- options
def test_dilation_follows_torchvision_semantics():
    with torch.device("meta"):
        model = canon.create_model("resnet50", replace_stride_with_dilation=[False, True, True])
    got = {name: (m.stride[0], m.dilation[0], m.padding[0]) for name, m in model.named_modules()
           if name.endswith("conv2") and name.split(".")[1] in ("0", "1")}
    assert got == {"layer1.0.conv2": (1, 1, 1), "layer1.1.conv2": (1, 1, 1),
                   "layer2.0.conv2": (2, 1, 1), "layer2.1.conv2": (1, 1, 1),
                   "layer3.0.conv2": (1, 1, 1), "layer3.1.conv2": (1, 2, 2),
                   "layer4.0.conv2": (1, 2, 2), "layer4.1.conv2": (1, 4, 4)}
    assert model.layer3[0].downsample[0].stride == (1, 1)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 8, 8] and model.output_stride == 8


@pytest.mark.parametrize("output_stride, dilate", [(32, (False, False, False)), (16, (False, False, True)),
                                                   (8, (False, True, True))])
def test_output_stride_equals_replace_stride_with_dilation(output_stride, dilate):
    with torch.device("meta"):
        a = canon.create_model("resnet50", output_stride=output_stride)
        b = canon.create_model("resnet50", replace_stride_with_dilation=list(dilate))
    assert [(n, m.stride, m.dilation) for n, m in a.named_modules() if isinstance(m, nn.Conv2d)] == \
           [(n, m.stride, m.dilation) for n, m in b.named_modules() if isinstance(m, nn.Conv2d)]
    with pytest.raises(ValueError, match="output_stride must be one of"):
        canon.create_model("resnet50", output_stride=12)
    with pytest.raises(ValueError, match="not both"):
        canon.create_model("resnet50", output_stride=8, replace_stride_with_dilation=[False, True, True])


def test_intermediate_features_and_feature_info():
    with torch.device("meta"):
        model = canon.create_model("resnet50").eval()
        feats = model.forward_intermediates(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["layer1", "layer2", "layer3", "layer4"]
    assert [tuple(v.shape[1:]) for v in feats.values()] == [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
    assert model.feature_info == [{"name": "layer1", "num_chs": 256, "reduction": 4},
                                  {"name": "layer2", "num_chs": 512, "reduction": 8},
                                  {"name": "layer3", "num_chs": 1024, "reduction": 16},
                                  {"name": "layer4", "num_chs": 2048, "reduction": 32}]
    with pytest.raises(ValueError, match="subset"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), names=("layer5",))


def test_intermediates_match_forward_features():
    model = canon.create_model("resnet18", small_input=True, num_classes=2).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_intermediates(x)["layer4"], model.forward_features(x))
        assert model.forward_features(x).shape == (1, 512, 4, 4)


def test_zero_init_residual_makes_each_block_start_as_identity():
    model = canon.create_model("resnet50", num_classes=2, zero_init_residual=True).eval()
    assert all(torch.all(m.bn3.weight == 0) for m in model.modules() if isinstance(m, Bottleneck))
    block = model.layer1[1]  # no downsample: output = ReLU(x)
    x = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), F.relu(x))
    basic = canon.create_model("resnet18", zero_init_residual=True)
    assert all(torch.all(m.bn2.weight == 0) for m in basic.modules() if isinstance(m, BasicBlock))


def test_torchvision_initialisation():
    model = canon.create_model("resnet18", num_classes=2)
    w = model.layer4[0].conv1.weight  # kaiming_normal_, fan_out, relu: std sqrt(2 / (512·9))
    assert abs(w.std().item() - (2 / (512 * 9)) ** 0.5) < 0.05 * (2 / (512 * 9)) ** 0.5
    assert torch.all(model.layer4[0].bn1.weight == 1) and torch.all(model.layer4[0].bn1.bias == 0)


# ----------------------------------------------------------------------------- shared model contract
@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_shape_small_input(name):
    with torch.device("meta"):
        model = canon.create_model(name, num_classes=3, in_chans=1).eval()
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
        small = canon.create_model(name, num_classes=3, in_chans=1, small_input=True).eval()
        assert small(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_backward_and_validation():
    model = canon.create_model("resnet18", num_classes=4, in_chans=1, small_input=True)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 4, 4))
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model("resnet18", drop_rate=0.1)
    with pytest.raises(ValueError, match="BasicBlock supports only"):
        canon.create_model("resnet18", groups=32)
    with pytest.raises(ValueError, match="layers"):
        ResNet(block=BasicBlock, layers=(2, 2, 2))


def test_reset_classifier_and_pre_logits():
    with torch.device("meta"):
        model = canon.create_model("resnet50").eval()
        x = torch.randn(1, 3, 64, 64)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 2048)
        model.reset_classifier(0)
        assert model(x).shape == (1, 2048)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7)
