"""U-Net against the 2015 paper's numbers (572 -> 388, Fig. 1 layout) and torch built-ins."""
from __future__ import annotations

import pytest
import torch

import canon
from canon.models.segmentation.unet import valid_unet_output_size


def _paper_parameter_count(in_chans=1, num_classes=2, widths=(64, 128, 256, 512, 1024)) -> int:
    """Transcribed from Fig. 1 of arXiv:1505.04597: 3x3 convs (weights + bias), 2x2 up-convs, 1x1 head."""
    conv3 = lambda cin, cout: 9 * cin * cout + cout  # noqa: E731
    total, cin = 0, in_chans
    for w in widths:  # contracting path and the bottom
        total += conv3(cin, w) + conv3(w, w)
        cin = w
    for w_hi, w in zip(widths[::-1], widths[-2::-1]):  # expanding path
        total += 4 * w_hi * w + w  # 2x2 up-convolution halving the channels
        total += conv3(2 * w, w) + conv3(w, w)
    return total + widths[0] * num_classes + num_classes


def test_paper_tile_sizes_follow_figure_1():
    assert valid_unet_output_size(572, 4) == 388
    assert valid_unet_output_size(570, 4) is None  # 566 / 2 = 283, then 279 is odd at the next pooling


def test_unet_paper_parameter_count_matches_the_papers_layout():
    model = canon.create_model("unet_paper")
    assert sum(p.numel() for p in model.parameters()) == _paper_parameter_count() == 31_030_658
    assert (model.tile_size, model.tile_output_size) == (572, 388)


def test_unet_paper_maps_572_to_388_fast_with_narrow_channels():
    model = canon.create_model("unet_paper", base_channels=2).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.slow
def test_unet_paper_full_width_572_to_388():
    model = canon.create_model("unet_paper").eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_padded_unet_keeps_the_input_size_and_trains(upsampling):
    model = canon.create_model("unet", in_chans=3, num_classes=5, base_channels=4, depth=3, upsampling=upsampling)
    x = torch.randn(2, 3, 40, 48)
    out = model(x)
    assert out.shape == (2, 5, 40, 48)
    torch.nn.functional.cross_entropy(out, torch.randint(0, 5, (2, 40, 48))).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_he_initialisation_std():
    model = canon.create_model("unet", base_channels=64, depth=1, batch_norm=False)
    conv = model.encoder[0][2]  # second 3x3 conv of the first block: 64 -> 64, N = 9 * 64 incoming
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.02)


def test_bad_inputs_name_the_expected_shape():
    model = canon.create_model("unet", in_chans=1, base_channels=2, depth=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.zeros(1, 1, 40, 40))
    with pytest.raises(ValueError, match="1 input channel"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="not valid"):
        canon.create_model("unet_paper", base_channels=2)(torch.zeros(1, 1, 570, 570))
    with pytest.raises(ValueError, match="tile_size 570"):
        canon.create_model("unet_paper", tile_size=570)
    with pytest.raises(ValueError, match="upsampling"):
        canon.create_model("unet", upsampling="nearest")
