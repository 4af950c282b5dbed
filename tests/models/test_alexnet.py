"""AlexNet against torchvision's layout and counts, and against functional re-implementations.

References (independent of canon's code):
    - torchvision/models/alexnet.py: the ``state_dict`` keys and shapes written out below and the
      parameter count torchvision documents (61,100,840);
    - the 2012 paper's layer sizes (Section 3.5, Fig. 2): 96 11×11×3, 256 5×5×48, 384 3×3×256,
      384 3×3×192, 256 3×3×192 kernels and 4096-4096-1000 fully connected layers, which sum to
      60,965,224 parameters;
    - logits computed with torch.nn.functional over the same state_dict; for the paper form the two
      GPU towers are run as two separate convolutions on the split channels, and the response
      normalisation is a loop transcribing Section 3.3's sum.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.classification.alexnet import AlexNet, AlexNetPaper


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv(p, c_out, c_in, k):
    return [(f"{p}.weight", (c_out, c_in, k, k)), (f"{p}.bias", (c_out,))]


def _fc(p, c_out, c_in):
    return [(f"{p}.weight", (c_out, c_in)), (f"{p}.bias", (c_out,))]


# torchvision/models/alexnet.py: features.{0,3,6,8,10}, classifier.{1,4,6}
TORCHVISION_ALEXNET = (_conv("features.0", 64, 3, 11) + _conv("features.3", 192, 64, 5) + _conv("features.6", 384, 192, 3)
                       + _conv("features.8", 256, 384, 3) + _conv("features.10", 256, 256, 3)
                       + _fc("classifier.1", 4096, 9216) + _fc("classifier.4", 4096, 4096) + _fc("classifier.6", 1000, 4096))


@pytest.fixture(scope="module")
def alexnet_eval():
    torch.manual_seed(0)
    return canon.create_model("alexnet").eval()


@pytest.fixture(scope="module")
def alexnet_paper_eval():
    torch.manual_seed(0)
    return canon.create_model("alexnet_paper").eval()


def test_alexnet_layout_and_count_equal_torchvision(alexnet_eval):
    assert count_params(alexnet_eval) == 61_100_840
    assert [(k, tuple(v.shape)) for k, v in alexnet_eval.state_dict().items()] == TORCHVISION_ALEXNET


def test_alexnet_loads_torchvision_layout_strictly(alexnet_eval):
    """A state_dict built from the key list alone (as a torchvision checkpoint would be) loads strict."""
    fresh = AlexNet()
    state = {k: torch.randn(shape) for k, shape in TORCHVISION_ALEXNET}
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.classifier[6].weight, state["classifier.6.weight"])


def test_alexnet_paper_counts_follow_the_paper(alexnet_paper_eval):
    per_layer = {name: count_params(m) for name, m in alexnet_paper_eval.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert per_layer == {
        "features.0": 96 * 11 * 11 * 3 + 96, "features.4": 256 * 5 * 5 * 48 + 256, "features.8": 384 * 3 * 3 * 256 + 384,
        "features.10": 384 * 3 * 3 * 192 + 384, "features.12": 256 * 3 * 3 * 192 + 256,
        "classifier.0": 4096 * 9216 + 4096, "classifier.3": 4096 * 4096 + 4096, "classifier.6": 1000 * 4096 + 1000}
    assert count_params(alexnet_paper_eval) == 60_965_224  # the paper's "60 million parameters"


def test_alexnet_paper_feature_map_sizes(alexnet_paper_eval):
    """Fig. 2 / Section 3.5: 55×55×96 after conv1, 27×27×256 after conv2, 13×13×384/256, 6×6×256 to fc6."""
    sizes = {}
    hooks = [alexnet_paper_eval.features[i].register_forward_hook(lambda m, a, out, i=i: sizes.__setitem__(i, tuple(out.shape[1:])))
             for i in (0, 4, 8, 10, 12, 14)]
    with torch.no_grad():
        alexnet_paper_eval(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert sizes == {0: (96, 55, 55), 4: (256, 27, 27), 8: (384, 13, 13), 10: (384, 13, 13), 12: (256, 13, 13), 14: (256, 6, 6)}


def test_alexnet_paper_initialisation_follows_section_5(alexnet_paper_eval):
    sd = alexnet_paper_eval.state_dict()
    ones = {"features.4.bias", "features.10.bias", "features.12.bias", "classifier.0.bias", "classifier.3.bias"}
    for key, value in sd.items():
        if key.endswith(".bias"):
            assert torch.all(value == (1.0 if key in ones else 0.0)), key
    assert abs(sd["classifier.0.weight"].std().item() - 0.01) < 2e-4


# ----------------------------------------------------------------------------- functional references
def functional_alexnet(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's AlexNet with torch.nn.functional (eval: no dropout)."""
    x = F.max_pool2d(F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], stride=4, padding=2)), 3, 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, sd["features.3.weight"], sd["features.3.bias"], padding=2)), 3, 2)
    for i in (6, 8, 10):
        x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
    x = torch.flatten(F.adaptive_avg_pool2d(F.max_pool2d(x, 3, 2), 6), 1)
    x = F.relu(F.linear(x, sd["classifier.1.weight"], sd["classifier.1.bias"]))
    x = F.relu(F.linear(x, sd["classifier.4.weight"], sd["classifier.4.bias"]))
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def paper_lrn(a: torch.Tensor, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75) -> torch.Tensor:
    """Section 3.3: b_i = a_i / (k + α Σ_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j²)^β, channel by channel."""
    num = a.shape[1]
    out = torch.empty_like(a)
    for i in range(num):
        lo, hi = max(0, i - n // 2), min(num - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * (a[:, lo:hi + 1] ** 2).sum(dim=1)) ** beta
    return out


def two_tower_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """Fig. 2: each GPU convolves its own half of the maps with its own half of the kernels."""
    half_in, half_out = x.shape[1] // 2, w.shape[0] // 2
    top = F.conv2d(x[:, :half_in], w[:half_out], b[:half_out], padding=padding)
    bottom = F.conv2d(x[:, half_in:], w[half_out:], b[half_out:], padding=padding)
    return torch.cat([top, bottom], dim=1)


def functional_alexnet_paper(sd: dict, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], stride=4, padding=2))
    x = F.max_pool2d(paper_lrn(x), 3, 2)
    x = F.max_pool2d(paper_lrn(F.relu(two_tower_conv(x, sd["features.4.weight"], sd["features.4.bias"], 2))), 3, 2)
    x = F.relu(F.conv2d(x, sd["features.8.weight"], sd["features.8.bias"], padding=1))  # conv3 sees both towers
    x = F.relu(two_tower_conv(x, sd["features.10.weight"], sd["features.10.bias"], 1))
    x = F.relu(two_tower_conv(x, sd["features.12.weight"], sd["features.12.bias"], 1))
    x = torch.flatten(F.adaptive_avg_pool2d(F.max_pool2d(x, 3, 2), 6), 1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    x = F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def test_alexnet_logits_equal_functional_reference(alexnet_eval):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, ref = alexnet_eval(x), functional_alexnet(alexnet_eval.state_dict(), x)
    assert ours.abs().max() > 1e-3
    assert (ours - ref).abs().max() <= 1e-4


def test_alexnet_paper_logits_equal_functional_reference():
    torch.manual_seed(2)
    model = AlexNetPaper(num_classes=7).eval()
    for m in model.modules():  # larger weights than Section 5's so LRN's denominator is far from k^β
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=(2.0 / m.weight[0].numel()) ** 0.5)
    x = 10 * torch.randn(2, 3, 99, 99)  # also exercises the adaptive pool off 224 px
    with torch.no_grad():
        ours, ref = model(x), functional_alexnet_paper(model.state_dict(), x)
    assert ours.abs().max() > 1e-3
    assert (ours - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


# ----------------------------------------------------------------------------- shared model contract
@pytest.mark.parametrize("name", ["alexnet", "alexnet_paper"])
def test_small_input_in_chans_num_classes_backward(name):
    model = canon.create_model(name, num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 63, 63)  # the smallest size both forms take
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["alexnet", "alexnet_paper"])
def test_input_validation(name):
    with torch.device("meta"):
        model = canon.create_model(name, num_classes=3)
        with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
            model(torch.randn(1, 1, 224, 224))
        with pytest.raises(ValueError, match="too small"):
            model(torch.randn(1, 3, 62, 62))
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model(name, drop_rate=0.1)  # this family names it ``dropout``, like torchvision
    with pytest.raises(ValueError, match="num_classes"):
        canon.create_model(name, num_classes=-1)


def test_reset_classifier_and_pre_logits():
    with torch.device("meta"):
        model = AlexNet(num_classes=5).eval()
        x = torch.randn(1, 3, 64, 64)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 4096)
        model.reset_classifier(0)
        assert model(x).shape == (1, 4096)
        model.reset_classifier(8)
        assert model(x).shape == (1, 8)
