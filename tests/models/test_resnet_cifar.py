"""The ResNet paper's CIFAR-10 networks against the paper's text and numbers.

References (independent of canon's code):
    - "Deep Residual Learning for Image Recognition" (arXiv:1512.03385), Section 4.2: a 3×3 first
      layer with 16 filters, three stages of 2n 3×3 layers with 16/32/64 filters on 32/16/8 maps,
      stride-2 convolutions for subsampling, global average pooling, a 10-way FC; 6n+2 layers.
      Option A shortcuts (identity, zero entries padded for the new dimensions, stride 2 across map
      sizes, no parameters); option B projections (1×1 convolutions) where dimensions change.
    - Table 6's parameter counts (0.27M, 0.46M, 0.66M, 0.85M, 1.7M) and ResNet-20's exact 269,722,
      against a count written out below layer by layer from that description;
    - logits computed with torch.nn.functional over the model's state_dict, every stride, padding
      and shortcut written out from the paper's description, not read from the model.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.resnet_cifar import CifarResNet, ZeroPadShortcut

DEPTHS = {"20": 3, "32": 5, "44": 7, "56": 9, "110": 18}  # depth: n, with depth = 6n + 2
PAPER_MILLIONS = {"20": 0.27, "32": 0.46, "44": 0.66, "56": 0.85, "110": 1.7}  # Table 6, "# params"
RESNETS = [f"resnet{d}_cifar" for d in DEPTHS]
PLAINS = [f"plain{d}_cifar" for d in DEPTHS]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def closed_form_count(n: int, num_classes: int = 10, in_chans: int = 3, projection: bool = False) -> int:
    """Parameters of the 6n+2-layer net from the paper's description (convolutions have no bias)."""
    def conv(k, c_in, c_out):
        return k * k * c_in * c_out

    def bn(c):
        return 2 * c  # scale and shift

    total = conv(3, in_chans, 16) + bn(16)  # first layer
    c_in = 16
    for width in (16, 32, 64):
        for i in range(n):
            total += conv(3, c_in, width) + bn(width) + conv(3, width, width) + bn(width)
            if projection and c_in != width:  # option B: 1×1 projection (+ BN) where the width grows
                total += conv(1, c_in, width) + bn(width)
            c_in = width
    return total + 64 * num_classes + num_classes  # the fully connected layer


# ----------------------------------------------------------------------------- parameter counts
def test_resnet20_has_the_papers_269722_parameters():
    with torch.device("meta"):
        assert count_params(canon.create_model("resnet20_cifar")) == 269_722
    assert closed_form_count(3) == 269_722


@pytest.mark.parametrize("depth", list(DEPTHS))
def test_parameter_counts_follow_the_closed_form_and_table_6(depth):
    n = DEPTHS[depth]
    assert int(depth) == 6 * n + 2
    with torch.device("meta"):
        resnet = canon.create_model(f"resnet{depth}_cifar")
        plain = canon.create_model(f"plain{depth}_cifar")
        projection = canon.create_model(f"resnet{depth}_cifar", shortcut="projection")
        other = canon.create_model(f"resnet{depth}_cifar", num_classes=100, in_chans=1)
    assert count_params(resnet) == closed_form_count(n)
    # "exactly the same depth, width, and number of parameters as the plain counterparts"
    assert count_params(plain) == count_params(resnet)
    # option B adds exactly the two projections: 16->32 and 32->64 (1×1 conv + BN each)
    assert count_params(projection) == closed_form_count(n, projection=True)
    assert count_params(projection) - count_params(resnet) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count_params(other) == closed_form_count(n, num_classes=100, in_chans=1)
    digits = 1 if depth == "110" else 2  # Table 6 gives 1.7M with one decimal, the others with two
    assert round(count_params(resnet) / 1e6, digits) == PAPER_MILLIONS[depth]


def test_weighted_layer_count_is_6n_plus_2():
    for depth, n in DEPTHS.items():
        with torch.device("meta"):
            for name in (f"resnet{depth}_cifar", f"plain{depth}_cifar"):
                model = canon.create_model(name)
                convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
                linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
                assert all(c.kernel_size == (3, 3) for c in convs)  # option A: no 1×1 layer anywhere
                assert len(convs) + len(linears) == 6 * n + 2 == int(depth)


# ----------------------------------------------------------------------------- layout
def _bn(p, c):
    return [(f"{p}.weight", (c,)), (f"{p}.bias", (c,)), (f"{p}.running_mean", (c,)), (f"{p}.running_var", (c,)),
            (f"{p}.num_batches_tracked", ())]


def expected_layout(n, projection=False, num_classes=10, in_chans=3):
    keys = [("conv1.weight", (16, in_chans, 3, 3))] + _bn("bn1", 16)
    c_in = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            keys += [(f"{p}.conv1.weight", (width, c_in, 3, 3))] + _bn(f"{p}.bn1", width)
            keys += [(f"{p}.conv2.weight", (width, width, 3, 3))] + _bn(f"{p}.bn2", width)
            if projection and c_in != width:
                keys += [(f"{p}.downsample.0.weight", (width, c_in, 1, 1))] + _bn(f"{p}.downsample.1", width)
            c_in = width
    return keys + [("fc.weight", (num_classes, 64)), ("fc.bias", (num_classes,))]


@pytest.mark.parametrize("shortcut", ["identity", "projection", "none"])
def test_state_dict_layout(shortcut):
    with torch.device("meta"):
        model = canon.create_model("resnet20_cifar", shortcut=shortcut)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
        expected_layout(3, projection=shortcut == "projection")
    convs = {name: (m.stride, m.padding) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    # subsampling "performed by convolutions with a stride of 2": the first 3×3 of stages 2 and 3 only
    strided = sorted(name for name, (stride, _) in convs.items() if stride == (2, 2))
    expected = ["layer2.0.conv1", "layer3.0.conv1"]
    if shortcut == "projection":
        expected = ["layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1", "layer3.0.downsample.0"]
    assert strided == expected
    assert all(pad == ((1, 1) if not name.endswith("downsample.0") else (0, 0)) for name, (_, pad) in convs.items())


# ----------------------------------------------------------------------------- option A shortcut
def test_option_a_shortcut_is_subsampling_plus_zero_channels():
    x = torch.randn(2, 16, 32, 32)
    expected = torch.cat([x[:, :, 0::2, 0::2], torch.zeros(2, 16, 16, 16)], dim=1)  # (2, 32, 16, 16)
    assert torch.equal(ZeroPadShortcut(16, 32, stride=2)(x), expected)
    # odd sizes: every second pixel from the first, as a stride-2 3×3 convolution with padding 1 lands
    x = torch.randn(1, 32, 15, 15)
    got = ZeroPadShortcut(32, 64, stride=2)(x)
    assert got.shape == (1, 64, 8, 8) and got.shape[-2:] == F.conv2d(x, torch.zeros(1, 32, 3, 3), stride=2,
                                                                      padding=1).shape[-2:]
    assert torch.equal(got[:, :32], x[:, :, [0, 2, 4, 6, 8, 10, 12, 14]][:, :, :, [0, 2, 4, 6, 8, 10, 12, 14]])
    assert torch.all(got[:, 32:] == 0)
    # inside the model: the two width-changing shortcuts, no parameters anywhere in a shortcut
    model = canon.create_model("resnet20_cifar")
    shortcuts = {name: m for name, m in model.named_modules() if isinstance(m, ZeroPadShortcut)}
    assert list(shortcuts) == ["layer2.0.downsample", "layer3.0.downsample"]
    assert all(count_params(m) == 0 for m in shortcuts.values())
    h = torch.randn(1, 32, 16, 16)
    assert torch.equal(shortcuts["layer3.0.downsample"](h),
                       torch.cat([h[:, :, ::2, ::2], torch.zeros(1, 32, 8, 8)], dim=1))
    with pytest.raises(ValueError, match="only widens"):
        ZeroPadShortcut(32, 16)


# ----------------------------------------------------------------------------- functional reference
def functional_cifar_net(sd, x, n, shortcut="identity", training=False):
    """The 6n+2-layer net of Section 4.2 over a state_dict, with torch.nn.functional."""
    def bn(h, p):
        mean, var = (None, None) if training else (sd[f"{p}.running_mean"], sd[f"{p}.running_var"])
        return F.batch_norm(h, mean, var, sd[f"{p}.weight"], sd[f"{p}.bias"], training=training, eps=1e-5)

    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))  # 3×3, 16 filters
    c_in = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            stride = 2 if (stage > 1 and i == 0) else 1
            h = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            h = bn(F.conv2d(h, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if shortcut == "none":
                x = F.relu(h)
            elif c_in == width:
                x = F.relu(h + x)  # identity
            elif shortcut == "identity":  # option A: subsample, append zero channels
                sub = x[:, :, ::2, ::2]
                x = F.relu(h + torch.cat([sub, torch.zeros_like(sub)[:, : width - c_in]], dim=1))
            else:  # option B: W_s x, a 1×1 stride-2 convolution and BN
                x = F.relu(h + bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=2), f"{p}.downsample.1"))
            c_in = width
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def _randomise(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.2, 0.6)
            m.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
    return model


def _assert_close(ours, ref):
    assert ours.abs().max() > 1e-2
    assert (ours - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("shortcut", ["identity", "projection", "none"])
def test_logits_equal_functional_reference(shortcut):
    model = _randomise(canon.create_model("resnet20_cifar", shortcut=shortcut)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _assert_close(model(x), functional_cifar_net(model.state_dict(), x, 3, shortcut))


def test_training_mode_and_odd_input_size_equal_functional_reference():
    model = _randomise(canon.create_model("plain20_cifar", in_chans=1, num_classes=4)).train()
    x = torch.randn(3, 1, 28, 28)
    _assert_close(model(x), functional_cifar_net(model.state_dict(), x, 3, "none", training=True))
    model = _randomise(canon.create_model("resnet20_cifar", in_chans=1, num_classes=4)).train()
    x = torch.randn(3, 1, 30, 30)  # 30 -> 15 -> 8: the zero-padding shortcut must round up like the conv
    _assert_close(model(x), functional_cifar_net(model.state_dict(), x, 3, "identity", training=True))


def test_plain_net_differs_from_residual_only_by_the_shortcuts():
    resnet = _randomise(canon.create_model("resnet20_cifar")).eval()
    plain = canon.create_model("plain20_cifar").eval()
    plain.load_state_dict(resnet.state_dict(), strict=True)  # same keys and shapes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), resnet(x))
        _assert_close(plain(x), functional_cifar_net(resnet.state_dict(), x, 3, "none"))


# ----------------------------------------------------------------------------- shapes and contract
@pytest.mark.parametrize("name", RESNETS + PLAINS)
def test_output_shape_and_stage_sizes(name):
    with torch.device("meta"):
        model = canon.create_model(name).eval()
        x = torch.randn(4, 3, 32, 32)
        assert model(x).shape == (4, 10)
        feats = model.forward_intermediates(x)
    assert list(feats) == ["layer1", "layer2", "layer3"]
    assert [tuple(v.shape[1:]) for v in feats.values()] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert model.feature_info == [{"name": "layer1", "num_chs": 16, "reduction": 1},
                                  {"name": "layer2", "num_chs": 32, "reduction": 2},
                                  {"name": "layer3", "num_chs": 64, "reduction": 4}]


def test_registry_metadata():
    for name in RESNETS + PLAINS:
        info = canon.model_info(name)
        assert info.task == "classification" and info.input_size == (3, 32, 32) and info.num_classes == 10
        assert "1512.03385" in info.paper and info.compatible_with is None
    assert set(RESNETS + PLAINS) <= set(canon.list_models(pattern="*_cifar"))


def test_forward_features_head_and_reset_classifier():
    model = canon.create_model("resnet20_cifar").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 64, 8, 8)
        assert torch.equal(model.forward_intermediates(x, names=("layer3",))["layer3"], features)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.allclose(pooled, features.mean(dim=(2, 3)))  # global average pooling
        assert torch.allclose(model(x), F.linear(pooled, model.fc.weight, model.fc.bias))
        model.reset_classifier(0)
        assert model(x).shape == (2, 64)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7) and model.num_classes == 7
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)
    assert canon.create_model("resnet20_cifar", num_classes=0)(x).shape == (2, 64)


def test_he_initialisation():
    model = canon.create_model("resnet56_cifar")
    # kaiming_normal_, fan_out, relu: std sqrt(2 / (c_out · 3 · 3)); 9 convs of 64·64·9 weights
    weights = torch.cat([m.conv2.weight.flatten() for m in model.layer3])
    expected = (2 / (64 * 9)) ** 0.5
    assert abs(weights.std().item() - expected) < 0.02 * expected and abs(weights.mean().item()) < 0.02 * expected
    first = model.conv1.weight
    assert abs(first.std().item() - (2 / (16 * 9)) ** 0.5) < 0.15 * (2 / (16 * 9)) ** 0.5  # 432 weights
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_backward_reaches_every_parameter():
    for shortcut in ("identity", "projection", "none"):
        model = canon.create_model("resnet20_cifar", shortcut=shortcut)
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_input_and_bad_arguments():
    model = canon.create_model("resnet20_cifar", in_chans=1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(1, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 3, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])
    with pytest.raises(ValueError, match="too small"):
        model.forward_intermediates(torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="subset"):
        model.forward_intermediates(torch.randn(1, 1, 32, 32), names=("layer4",))
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=18)
    with pytest.raises(ValueError, match="option A"):
        canon.create_model("resnet20_cifar", shortcut="A")
    with pytest.raises(ValueError, match="num_classes"):
        canon.create_model("resnet20_cifar", num_classes=-1)
    with pytest.raises(ValueError, match="in_chans"):
        canon.create_model("resnet20_cifar", in_chans=0)
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model("resnet20_cifar", width=2)
    assert CifarResNet(depth=8).depth == 8  # n = 1, the smallest 6n+2 net
