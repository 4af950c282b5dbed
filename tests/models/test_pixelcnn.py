"""PixelCNN against van den Oord et al.: the masks written out, causality checked on the full
Jacobian over every position of a small image (R -> G -> B within a pixel), the likelihood summing
to one over every possible image, and sampling that reproduces the model's own probabilities."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import canon
from canon.models.generative.pixelcnn import MaskedConv2d, causal_mask, channel_groups


def test_masks_written_out():
    one_group = torch.zeros(1)
    a = causal_mask((5, 5), one_group, one_group, "A")[0, 0]
    b = causal_mask((5, 5), one_group, one_group, "B")[0, 0]
    expected_a = torch.tensor([[1, 1, 1, 1, 1],
                               [1, 1, 1, 1, 1],
                               [1, 1, 0, 0, 0],
                               [0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(a, expected_a)
    expected_b = expected_a.clone()
    expected_b[2, 2] = 1
    assert torch.equal(b, expected_b)
    # colour groups at the centre: 3 RGB inputs -> 6 features (R R G G B B)
    rgb, features = channel_groups(3, 3), channel_groups(6, 3)
    assert features.tolist() == [0, 0, 1, 1, 2, 2] and channel_groups(256, 3).bincount().tolist() == [86, 85, 85]
    centre_a = causal_mask((3, 3), rgb, features, "A")[:, :, 1, 1]
    centre_b = causal_mask((3, 3), features, features, "B")[:, :, 1, 1]
    assert centre_a.tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]]  # R sees nothing
    assert centre_b.tolist() == [[1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0]] * 2 + [[1] * 6] * 2


def test_masked_conv_equals_conv_with_masked_kernel():
    torch.manual_seed(0)
    conv = MaskedConv2d(3, 6, 3, "B", num_groups=3)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=1))


def _order(c, i, j, channels, width):
    """A sub-pixel's place in the generation order: raster over pixels, then R, G, B within a pixel."""
    return (i * width + j) * channels + c


def check_causality(model, channels, size, levels=None):
    """The full Jacobian of (a random projection of) every output w.r.t. every input sub-pixel:
    zero where the input comes at or after the output in the generation order, nonzero somewhere
    before it (for every output but the first)."""
    model = model.double().eval()
    torch.manual_seed(1)
    x = torch.rand(1, channels, size, size, dtype=torch.float64)
    projection = torch.randn(levels or 1, dtype=torch.float64)

    def outputs(inp):
        out = model(inp)
        out = out if levels is None else (out * projection.view(1, -1, 1, 1, 1)).sum(1)
        return out.reshape(-1)                                   # (C·H·W,) in (c, i, j) order

    jacobian = torch.autograd.functional.jacobian(outputs, x, vectorize=True).reshape(channels * size * size, -1)
    places = torch.tensor([_order(c, i, j, channels, size)
                           for c, i, j in itertools.product(range(channels), range(size), range(size))])
    allowed = places[None, :] < places[:, None]                  # [output, input]: input strictly earlier
    assert torch.count_nonzero(jacobian[~allowed]) == 0, "an output depends on a present or future sub-pixel"
    depends = (jacobian != 0) & allowed
    first = places == 0
    assert depends[~first].any(dim=1).all(), "some output depends on no earlier sub-pixel"
    return depends, places


def test_pixelcnn_rgb_is_causal_over_every_position():
    # wide enough that no colour group's ReLUs are all dead at a position (narrower nets leave some at 0)
    torch.manual_seed(0)
    model = canon.create_model("pixelcnn", image_size=7, hidden_channels=24, num_blocks=2, out_hidden_channels=48,
                               num_levels=4)
    depends, places = check_causality(model, 3, 7, levels=4)
    # within one pixel, G depends on R and B on both (the R -> G -> B ordering is used, not just allowed)
    centre = (3 * 7 + 3)
    r, g, b = (places == centre * 3 + c for c in range(3))
    assert depends[g.nonzero()[0, 0], r.nonzero()[0, 0]]
    assert depends[b.nonzero()[0, 0], g.nonzero()[0, 0]] and depends[b.nonzero()[0, 0], r.nonzero()[0, 0]]


def test_pixelcnn_bernoulli_is_causal_over_every_position():
    torch.manual_seed(0)
    model = canon.create_model("pixelcnn_mnist", image_size=8, hidden_channels=4, num_blocks=2, out_hidden_channels=8)
    check_causality(model, 1, 8)


@pytest.mark.parametrize("channels", [1, 3])
def test_gated_pixelcnn_is_causal_over_every_position(channels):
    torch.manual_seed(0)
    model = canon.create_model("gated_pixelcnn", image_size=7, in_chans=channels, hidden_channels=12, num_layers=3,
                               out_hidden_channels=24, num_levels=4)
    check_causality(model, channels, 7, levels=4)


def test_gated_pixelcnn_has_no_blind_spot_where_pixelcnn_has_one():
    """arXiv:1606.05328 Figure 1: stacked masked 3×3 convolutions never see the pixels up and to the
    right beyond the first layer's reach; the two-stack design sees the whole context."""
    size = 7
    torch.manual_seed(0)
    gated = canon.create_model("gated_pixelcnn", image_size=size, in_chans=1, hidden_channels=8, num_layers=4,
                               out_hidden_channels=16, distribution="bernoulli")
    depends, places = check_causality(gated, 1, size)
    assert torch.equal(depends, places[None, :] < places[:, None])   # 7×7 then 3×3 layers: the whole image
    torch.manual_seed(0)
    plain = canon.create_model("pixelcnn_mnist", image_size=size, hidden_channels=8, num_blocks=6,
                               out_hidden_channels=16)
    plain_depends, _ = check_causality(plain, 1, size)
    output, blind = 2 * size + 0, 1 * size + 4       # pixel (2, 0) never sees pixel (1, 4)
    assert not plain_depends[output, blind] and depends[output, blind]


def _all_images(channels, size):
    """Every binary image of the given shape, (2^(C·H·W), C, H, W)."""
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=channels * size * size)), dtype=torch.float64)
    return bits.view(-1, channels, size, size)


@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn"])
@pytest.mark.parametrize("channels, distribution", [(1, "bernoulli"), (2, "categorical")])
def test_likelihood_sums_to_one_over_every_image(name, channels, distribution):
    torch.manual_seed(0)
    depth = {"num_blocks": 1} if name == "pixelcnn" else {"num_layers": 2}
    model = canon.create_model(name, image_size=3 if channels == 1 else 2, in_chans=channels, hidden_channels=4,
                               out_hidden_channels=8, distribution=distribution, num_levels=2, **depth)
    model = model.double().eval()
    images = _all_images(channels, model.image_size)
    with torch.no_grad():
        total = torch.logsumexp(model.log_likelihood(images), 0).exp()
    assert total.item() == pytest.approx(1.0, abs=1e-9)


def test_nll_is_the_sum_of_the_conditionals():
    torch.manual_seed(0)
    model = canon.create_model("pixelcnn", image_size=4, hidden_channels=4, num_blocks=1, out_hidden_channels=8).eval()
    x = torch.randint(0, 256, (2, 3, 4, 4)) / 255.0
    log_probs = torch.log_softmax(model(x), dim=1)                           # (N, 256, C, H, W)
    levels = torch.round(x * 255).long()
    expected = -log_probs.gather(1, levels[:, None]).squeeze(1).sum((1, 2, 3))
    torch.testing.assert_close(model.nll(x), expected)
    assert model(x).shape == (2, 256, 3, 4, 4)


def test_samples_follow_the_models_probabilities():
    torch.manual_seed(0)
    model = canon.create_model("pixelcnn_mnist", image_size=2, hidden_channels=4, num_blocks=1,
                               out_hidden_channels=8).double()
    with torch.no_grad():
        for p in model.parameters():               # make the distribution far from uniform
            p.mul_(3)
    images = _all_images(1, 2)                                               # the 16 binary 2×2 images
    with torch.no_grad():
        probabilities = model.log_likelihood(images).exp()
    samples = model.sample(6000, torch.Generator().manual_seed(0))
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    index = (samples.view(-1, 4) * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=samples.dtype)).sum(1).long()
    empirical = torch.bincount(index, minlength=16).double() / 6000
    assert 0.5 * (empirical - probabilities).abs().sum() < 0.03             # total variation
    assert model.training                                                    # sample() restores the mode


def test_categorical_samples_follow_the_models_probabilities_channel_by_channel():
    torch.manual_seed(0)
    model = canon.create_model("pixelcnn", image_size=1, in_chans=2, hidden_channels=4, num_blocks=1,
                               out_hidden_channels=8, num_levels=4).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    images = torch.tensor([[a, b] for a in range(4) for b in range(4)], dtype=torch.float64).view(16, 2, 1, 1) / 3
    with torch.no_grad():
        probabilities = model.log_likelihood(images).exp()                  # p(x_1) p(x_2 | x_1)
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-9)
    samples = model.sample(8000, torch.Generator().manual_seed(1)).view(-1, 2) * 3
    index = (samples[:, 0] * 4 + samples[:, 1]).round().long()
    empirical = torch.bincount(index, minlength=16).double() / 8000
    assert 0.5 * (empirical - probabilities).abs().sum() < 0.03


def test_categorical_samples_lie_on_the_levels():
    model = canon.create_model("pixelcnn", image_size=3, hidden_channels=3, num_blocks=1, out_hidden_channels=6,
                               num_levels=4)
    samples = model.sample(5, torch.Generator().manual_seed(0))
    assert samples.shape == (5, 3, 3, 3) and set((samples * 3).round().unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    model.nll(samples)                                                       # samples are valid inputs


def test_bad_input():
    model = canon.create_model("pixelcnn_mnist", hidden_channels=4, num_blocks=1, out_hidden_channels=8)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="binarised"):
        model.nll(torch.full((1, 1, 28, 28), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.nll(torch.full((1, 1, 28, 28), 255.0))
    with pytest.raises(TypeError, match="float images"):
        model.nll(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    rgb = canon.create_model("pixelcnn", image_size=4, hidden_channels=4, num_blocks=1, out_hidden_channels=8)
    with pytest.raises(ValueError, match="quantised to 256 levels"):
        rgb.nll(torch.full((1, 3, 4, 4), 0.5))
    with pytest.raises(ValueError, match="colour groups"):
        canon.create_model("pixelcnn", hidden_channels=1)        # 2 features cannot hold R, G and B
    with pytest.raises(ValueError, match="distribution must be one of"):
        canon.create_model("pixelcnn", distribution="gaussian")
    with pytest.raises(ValueError, match="Bernoulli output models 2 levels"):
        canon.create_model("pixelcnn_mnist", num_levels=256)
    with pytest.raises(ValueError, match="mask_type"):
        MaskedConv2d(1, 1, 3, "C")
