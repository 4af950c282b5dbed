"""DenseNet against torchvision's layout and counts, and a functional re-implementation.

References (independent of canon's code):
    - torchvision/models/densenet.py: the ``state_dict`` keys and shapes written out here and the
      parameter counts torchvision documents (densenet121 7,978,856; densenet161 28,681,000;
      densenet169 14,149,480; densenet201 20,013,928);
    - logits from DenseNet-BC written with torch.nn.functional over the same state_dict (eq. 2,
      the B bottleneck and C transitions of arXiv:1608.06993);
    - memory-efficient mode against the default mode: same outputs, gradients and BN statistics.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.densenet import DenseNet

# name: (growth rate, blocks, stem channels, torchvision's parameter count)
CONFIGS = {"densenet121": (32, (6, 12, 24, 16), 64, 7_978_856), "densenet161": (48, (6, 12, 36, 24), 96, 28_681_000),
           "densenet169": (32, (6, 12, 32, 32), 64, 14_149_480), "densenet201": (32, (6, 12, 48, 32), 64, 20_013_928)}
TINY = dict(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bn(p, c):
    return [(f"{p}.weight", (c,)), (f"{p}.bias", (c,)), (f"{p}.running_mean", (c,)), (f"{p}.running_var", (c,)),
            (f"{p}.num_batches_tracked", ())]


def torchvision_densenet_layout(k, blocks, init, num_classes=1000, in_chans=3, bn_size=4):
    keys = [("features.conv0.weight", (init, in_chans, 7, 7))] + _bn("features.norm0", init)
    c = init
    for b, n in enumerate(blocks, start=1):
        for j in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{j}"
            c_in = c + (j - 1) * k
            keys += _bn(f"{p}.norm1", c_in) + [(f"{p}.conv1.weight", (bn_size * k, c_in, 1, 1))]
            keys += _bn(f"{p}.norm2", bn_size * k) + [(f"{p}.conv2.weight", (k, bn_size * k, 3, 3))]
        c += n * k
        if b < len(blocks):
            keys += _bn(f"features.transition{b}.norm", c) + [(f"features.transition{b}.conv.weight", (c // 2, c, 1, 1))]
            c //= 2
    keys += _bn("features.norm5", c)
    return keys + [("classifier.weight", (num_classes, c)), ("classifier.bias", (num_classes,))]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_layout_and_parameter_count_equal_torchvision(name):
    k, blocks, init, expected = CONFIGS[name]
    with torch.device("meta"):
        model = canon.create_model(name)
    assert count_params(model) == expected
    assert [(key, tuple(v.shape)) for key, v in model.state_dict().items()] == torchvision_densenet_layout(k, blocks, init)


def functional_densenet(sd: dict, x: torch.Tensor, blocks, training: bool = False) -> torch.Tensor:
    """DenseNet-BC over the state_dict with torch.nn.functional (eval-mode BN unless ``training``)."""
    def bn_relu(x, p):
        mean, var = (None, None) if training else (sd[f"{p}.running_mean"], sd[f"{p}.running_var"])
        return F.relu(F.batch_norm(x, mean, var, sd[f"{p}.weight"], sd[f"{p}.bias"], training=training, eps=1e-5))

    x = F.conv2d(x, sd["features.conv0.weight"], stride=2, padding=3)
    x = F.max_pool2d(bn_relu(x, "features.norm0"), 3, 2, 1)
    for b, n in enumerate(blocks, start=1):
        for j in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{j}"
            h = F.conv2d(bn_relu(x, f"{p}.norm1"), sd[f"{p}.conv1.weight"])  # x holds [x_0, ..., x_{ℓ-1}]
            h = F.conv2d(bn_relu(h, f"{p}.norm2"), sd[f"{p}.conv2.weight"], padding=1)
            x = torch.cat([x, h], dim=1)  # eq. 2
        if b < len(blocks):
            x = F.avg_pool2d(F.conv2d(bn_relu(x, f"features.transition{b}.norm"), sd[f"features.transition{b}.conv.weight"]), 2)
    x = bn_relu(x, "features.norm5")
    return F.linear(x.mean(dim=(2, 3)), sd["classifier.weight"], sd["classifier.bias"])


def _randomise_bn(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)


@pytest.mark.slow  # DenseNet-121's 58 layers; the tiny config below covers the same code in quick runs
def test_densenet121_logits_equal_functional_reference():
    model = canon.create_model("densenet121", num_classes=10).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, ref = model(x), functional_densenet(model.state_dict(), x, CONFIGS["densenet121"][1])
    assert ours.abs().max() > 1e-2
    assert (ours - ref).abs().max() <= 1e-4


def test_training_mode_logits_equal_functional_reference():
    model = DenseNet(**TINY, num_classes=5).train()
    _randomise_bn(model)
    x = torch.randn(4, 3, 64, 64)
    ref = functional_densenet(model.state_dict(), x, TINY["block_config"], training=True)
    assert (model(x) - ref).abs().max() <= 1e-4


def test_memory_efficient_gives_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = DenseNet(**TINY, num_classes=5).train()
    efficient = DenseNet(**TINY, num_classes=5, memory_efficient=True).train()
    efficient.load_state_dict(plain.state_dict())
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    for model in (plain, efficient):
        F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name
    for (name, a), b in zip(plain.state_dict().items(), efficient.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name  # running stats updated once, not twice


def test_memory_efficient_recomputes_in_backward():
    """The checkpointed bottleneck runs again in the backward pass (up to its last saved tensor); the plain one once."""
    calls = {"plain": 0, "efficient": 0}
    for key, flag in (("plain", False), ("efficient", True)):
        model = DenseNet(**TINY, num_classes=2, memory_efficient=flag).train()
        layer = model.features.denseblock1.denselayer1
        layer.relu1.register_forward_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert calls == {"plain": 1, "efficient": 2}


# ----------------------------------------------------------------------------- shared model contract
@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_shape_small_input(name):
    with torch.device("meta"):  # shapes only; building densenet161/201 for real takes seconds
        model = canon.create_model(name, num_classes=3, in_chans=1).eval()
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_backward_in_chans_and_validation():
    model = canon.create_model("densenet121", num_classes=4, in_chans=1)
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="input channel"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model("densenet121", dropout=0.1)
    with pytest.raises(ValueError, match="compression"):
        DenseNet(compression=0)


def test_reset_classifier():
    model = DenseNet(**TINY).eval()
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)
    model.reset_classifier(6)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 6)
