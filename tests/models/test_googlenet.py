"""GoogLeNet against torchvision's layout and counts, a functional re-implementation, and Table 1.

References (independent of canon's code):
    - torchvision/models/googlenet.py: ``state_dict`` keys and shapes written out here, parameter
      counts 13,004,888 (with the auxiliary heads) and 6,624,904 (without);
    - logits from the network written with torch.nn.functional (conv2d, batch_norm, max_pool2d,
      local_response_norm) over the same state_dict, for both ``googlenet`` and ``googlenet_paper``;
    - Table 1 of arXiv:1409.4842: the "params" column (in units of 1024 weights, biases excluded).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.googlenet import GoogLeNet, GoogLeNetPaper

# Table 1: (name, in, #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj)
TABLE1 = [("inception3a", 192, 64, 96, 128, 16, 32, 32), ("inception3b", 256, 128, 128, 192, 32, 96, 64),
          ("inception4a", 480, 192, 96, 208, 16, 48, 64), ("inception4b", 512, 160, 112, 224, 24, 64, 64),
          ("inception4c", 512, 128, 128, 256, 24, 64, 64), ("inception4d", 512, 112, 144, 288, 32, 64, 64),
          ("inception4e", 528, 256, 160, 320, 32, 128, 128), ("inception5a", 832, 256, 160, 320, 32, 128, 128),
          ("inception5b", 832, 384, 192, 384, 48, 128, 128)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv(prefix, c_out, c_in, k, bn=True):
    if not bn:  # the paper's unit: conv with bias
        return [(f"{prefix}.conv.weight", (c_out, c_in, k, k)), (f"{prefix}.conv.bias", (c_out,))]
    return [(f"{prefix}.conv.weight", (c_out, c_in, k, k)), (f"{prefix}.bn.weight", (c_out,)),
            (f"{prefix}.bn.bias", (c_out,)), (f"{prefix}.bn.running_mean", (c_out,)),
            (f"{prefix}.bn.running_var", (c_out,)), (f"{prefix}.bn.num_batches_tracked", ())]


def googlenet_layout(num_classes=1000, aux=True, bn=True, k5=3, in_chans=3):
    """torchvision's GoogLeNet state_dict (bn=True, k5=3); the paper's form has biases and k5=5."""
    keys = _conv("conv1", 64, in_chans, 7, bn) + _conv("conv2", 64, 64, 1, bn) + _conv("conv3", 192, 64, 3, bn)
    for name, c_in, c1, c3r, c3, c5r, c5, pp in TABLE1:
        keys += _conv(f"{name}.branch1", c1, c_in, 1, bn)
        keys += _conv(f"{name}.branch2.0", c3r, c_in, 1, bn) + _conv(f"{name}.branch2.1", c3, c3r, 3, bn)
        keys += _conv(f"{name}.branch3.0", c5r, c_in, 1, bn) + _conv(f"{name}.branch3.1", c5, c5r, k5, bn)
        keys += _conv(f"{name}.branch4.1", pp, c_in, 1, bn)
    if aux:
        for name, c_in in (("aux1", 512), ("aux2", 528)):
            keys += _conv(f"{name}.conv", 128, c_in, 1, bn)
            keys += [(f"{name}.fc1.weight", (1024, 2048)), (f"{name}.fc1.bias", (1024,)),
                     (f"{name}.fc2.weight", (num_classes, 1024)), (f"{name}.fc2.bias", (num_classes,))]
    return keys + [("fc.weight", (num_classes, 1024)), ("fc.bias", (num_classes,))]


def test_layout_and_counts_equal_torchvision():
    model = canon.create_model("googlenet")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == googlenet_layout()
    assert count_params(model) == 13_004_888
    no_aux = canon.create_model("googlenet", aux_logits=False)
    assert [(k, tuple(v.shape)) for k, v in no_aux.state_dict().items()] == googlenet_layout(aux=False)
    assert count_params(no_aux) == 6_624_904


def test_paper_layout_has_true_5x5_and_biases():
    model = canon.create_model("googlenet_paper", num_classes=10)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == googlenet_layout(10, bn=False, k5=5)


def test_paper_weights_follow_table1_params_column():
    """Table 1's "params" column (K = 1024 weights, no biases) sums to 6,797.7K; ours is within 1%."""
    model = GoogLeNetPaper(aux_logits=False)
    weights = {n: sum(p.numel() for k, p in getattr(model, n).named_parameters() if k.endswith("weight"))
               for n in ["conv1", "conv2", "conv3", "fc"] + [row[0] for row in TABLE1]}
    assert (weights["conv2"] + weights["conv3"]) / 1024 == 112  # Table 1: 112K
    assert weights["inception3a"] // 1024 == 159  # Table 1: 159K
    assert weights["fc"] / 1024 == 1000  # Table 1: 1000K
    paper_total = 2.7 + 112 + 159 + 380 + 364 + 437 + 463 + 580 + 840 + 1072 + 1388 + 1000
    assert abs(sum(weights.values()) / 1024 - paper_total) / paper_total < 0.01


# ----------------------------------------------------------------------------- functional reference
def functional_googlenet(sd: dict, x: torch.Tensor, paper: bool) -> torch.Tensor:
    """Inception v1 (eval mode) written with torch.nn.functional over the state_dict."""
    def unit(x, p, stride=1):
        w = sd[f"{p}.conv.weight"]
        if paper:
            return F.relu(F.conv2d(x, w, sd[f"{p}.conv.bias"], stride=stride, padding=w.shape[-1] // 2))
        x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)
        x = F.batch_norm(x, sd[f"{p}.bn.running_mean"], sd[f"{p}.bn.running_var"], sd[f"{p}.bn.weight"],
                         sd[f"{p}.bn.bias"], training=False, eps=1e-3)
        return F.relu(x)

    def lrn(x):
        return F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0) if paper else x

    def pool(x, k=3, s=2, pad=0):
        return F.max_pool2d(x, k, s, pad, ceil_mode=True)

    x = lrn(pool(unit(x, "conv1", 2)))
    x = pool(lrn(unit(unit(x, "conv2"), "conv3")))
    for name, *_ in TABLE1:
        if name == "inception4a":
            x = pool(x)
        if name == "inception5a":
            x = pool(x, 3 if paper else 2)
        b1 = unit(x, f"{name}.branch1")
        b2 = unit(unit(x, f"{name}.branch2.0"), f"{name}.branch2.1")
        b3 = unit(unit(x, f"{name}.branch3.0"), f"{name}.branch3.1")
        b4 = unit(pool(x, 3, 1, 1), f"{name}.branch4.1")
        x = torch.cat([b1, b2, b3, b4], 1)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def _randomise(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)  # signal that survives the depth, so differences would show


@pytest.mark.parametrize("name, size", [("googlenet", 96),
                                        pytest.param("googlenet_paper", 224, marks=pytest.mark.slow)])
def test_eval_logits_equal_functional_reference(name, size):
    model = canon.create_model(name, num_classes=10).eval()
    _randomise(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = model(x)
        ref = functional_googlenet(model.state_dict(), x, paper=name == "googlenet_paper")
    assert ours.abs().max() > 1e-3
    assert (ours - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


# ----------------------------------------------------------------------------- auxiliary heads
def test_training_returns_aux_logits_and_eval_drops_them():
    model = canon.create_model("googlenet", num_classes=10)
    assert model.aux_loss_weight == 0.3
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert set(out) == {"logits", "aux_logits"}
    assert out["logits"].shape == (2, 10) and [a.shape for a in out["aux_logits"]] == [(2, 10), (2, 10)]
    loss = F.cross_entropy(out["logits"], torch.tensor([0, 1]))
    loss = loss + model.aux_loss_weight * sum(F.cross_entropy(a, torch.tensor([0, 1])) for a in out["aux_logits"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model.eval()(x), torch.Tensor)
    assert isinstance(canon.create_model("googlenet", aux_logits=False).train()(x), torch.Tensor)


def test_aux_head_equals_functional_formula():
    """Aux head: adaptive 4×4 average pool, 1×1 conv+BN+ReLU, fc1+ReLU, (dropout), fc2."""
    model = canon.create_model("googlenet", num_classes=10).eval()
    _randomise(model)
    feats = torch.randn(2, 512, 14, 14)
    sd = {k[5:]: v for k, v in model.state_dict().items() if k.startswith("aux1.")}
    x = F.adaptive_avg_pool2d(feats, 4)
    x = F.conv2d(x, sd["conv.conv.weight"])
    x = F.relu(F.batch_norm(x, sd["conv.bn.running_mean"], sd["conv.bn.running_var"], sd["conv.bn.weight"],
                            sd["conv.bn.bias"], eps=1e-3))
    x = F.relu(F.linear(x.flatten(1), sd["fc1.weight"], sd["fc1.bias"]))
    with torch.no_grad():
        assert torch.allclose(model.aux1(feats), F.linear(x, sd["fc2.weight"], sd["fc2.bias"]), atol=1e-4)


def test_paper_aux_needs_224_in_training():
    model = canon.create_model("googlenet_paper", num_classes=5).train()
    with pytest.raises(ValueError, match="4×4"):
        model(torch.randn(1, 3, 64, 64))
    out = model(torch.randn(1, 3, 224, 224))
    assert [a.shape for a in out["aux_logits"]] == [(1, 5), (1, 5)]


# ----------------------------------------------------------------------------- shared model contract
@pytest.mark.parametrize("name", ["googlenet", "googlenet_paper"])
def test_shape_in_chans_and_validation(name):
    model = canon.create_model(name, num_classes=7, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="input channel"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model(name, drop_rate=0.1)


def test_reset_classifier():
    model = canon.create_model("googlenet").eval()
    model.reset_classifier(4)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert model.aux1.fc2.out_features == 4 and model.aux2.fc2.out_features == 4
