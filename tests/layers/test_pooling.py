"""Pooling from canon.layers.pooling against torch's pools and naive formula transcriptions."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from canon.layers import (AvgPool2d, GlobalAvgPool2d, MaxPool2d, SoftPool2d, SpatialPyramidPool, StochasticPool2d,
                          adaptive_bins, avg_pool2d, global_avg_pool2d, max_pool2d, overlapping_max_pool2d,
                          soft_pool2d, spatial_pyramid_pool, spp_paper_bins, stochastic_pool2d)


def naive_windows(x, k, s):
    """Yield (i, j, window (N, C, k·k)) for a valid (unpadded) k×k/s pooling."""
    h_out, w_out = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    for i, j in itertools.product(range(h_out), range(w_out)):
        yield i, j, x[:, :, i * s:i * s + k, j * s:j * s + k].reshape(x.shape[0], x.shape[1], -1)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 0)), (3, 3, 0)])
def test_max_and_avg_match_torch(k, s, p):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 12, dtype=torch.float64, requires_grad=True)
    for ours_fn, ref_fn in ((max_pool2d, F.max_pool2d), (avg_pool2d, F.avg_pool2d)):
        ours, ref = ours_fn(x, k, s, p), ref_fn(x, k, s, p)
        torch.testing.assert_close(ours, ref)
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_modules_default_stride_is_kernel():
    x = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(MaxPool2d(2)(x), F.max_pool2d(x, 2))
    torch.testing.assert_close(AvgPool2d(4)(x), F.avg_pool2d(x, 4))


def test_overlapping_pooling_is_alexnets_3x3_stride_2():
    x = torch.randn(1, 4, 55, 55)
    out = overlapping_max_pool2d(x)
    assert out.shape[-2:] == (27, 27)  # AlexNet: 55 -> 27
    torch.testing.assert_close(out, F.max_pool2d(x, 3, 2))
    # windows overlap: a single large value shows up in the 2x2 outputs whose windows share it
    spike = torch.zeros(1, 1, 7, 7)
    spike[0, 0, 2, 2] = 1.0
    assert overlapping_max_pool2d(spike).sum() == 4  # pixel (2,2) lies in windows 0 and 1 on both axes
    with pytest.raises(ValueError, match="stride < kernel_size"):
        overlapping_max_pool2d(x, 2, 2)


def test_stochastic_pool_eval_is_probability_weighted_average():
    torch.manual_seed(1)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    x[0, 0, :2, :2] = 0.0  # an all-zero window pools to zero
    ours = stochastic_pool2d(x, 2, training=False)
    ref = torch.zeros_like(ours)
    for i, j, win in naive_windows(x, 2, 2):
        total = win.sum(-1)
        ref[:, :, i, j] = torch.where(total > 0, (win / total.unsqueeze(-1) * win).sum(-1), torch.zeros_like(total))
    torch.testing.assert_close(ours, ref)
    assert ours[0, 0, 0, 0] == 0


def test_stochastic_pool_training_samples_with_probability_proportional_to_activation():
    window = torch.tensor([[0.1, 0.0], [0.3, 0.6]])  # p = (0.1, 0, 0.3, 0.6)
    x = window.view(1, 1, 2, 2).repeat(1, 4000, 1, 1)  # (1, 4000, 2, 2): 4000 independent draws
    gen = torch.Generator().manual_seed(2)
    out = stochastic_pool2d(x, 2, training=True, generator=gen).flatten()
    freq = torch.stack([(out == v).float().mean() for v in (0.1, 0.0, 0.3, 0.6)])
    expected = torch.tensor([0.1, 0.0, 0.3, 0.6])
    # binomial standard error for n=4000 is at most 0.008; allow 4 sigma
    torch.testing.assert_close(freq, expected, atol=0.032, rtol=0)
    assert freq[1] == 0  # a zero activation is never chosen


def test_stochastic_pool_training_picks_a_window_member_and_routes_gradient_to_it():
    torch.manual_seed(3)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = stochastic_pool2d(x, 2, training=True, generator=torch.Generator().manual_seed(4))
    for i, j, win in naive_windows(x.detach(), 2, 2):
        assert ((win - out[:, :, i, j].detach().unsqueeze(-1)).abs() < 1e-12).any(-1).all()
    out.sum().backward()
    # exactly one input per window gets gradient 1
    torch.testing.assert_close(F.avg_pool2d(x.grad, 2) * 4, torch.ones(2, 3, 4, 4, dtype=torch.float64))
    layer = StochasticPool2d(2)
    layer.eval()
    torch.testing.assert_close(layer(x), stochastic_pool2d(x, 2, training=False))
    with pytest.raises(ValueError, match="non-negative"):
        stochastic_pool2d(torch.randn(1, 1, 4, 4) - 5, 2, training=False)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 1)])
def test_soft_pool_matches_exp_weighted_formula(k, s):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    ours = soft_pool2d(x, k, s)
    ref = torch.zeros_like(ours)
    for i, j, win in naive_windows(x, k, s):
        e = torch.exp(win)  # paper eq. 1-2: Σ e^{a_i} a_i / Σ e^{a_j}
        ref[:, :, i, j] = (e * win).sum(-1) / e.sum(-1)
    torch.testing.assert_close(ours, ref)
    # the paper's own implementation form: avg_pool(x·e^x) / avg_pool(e^x)
    torch.testing.assert_close(ours, F.avg_pool2d(x * x.exp(), k, s) / F.avg_pool2d(x.exp(), k, s))
    assert torch.autograd.gradcheck(lambda t: soft_pool2d(t, k, s), (x[:1, :1].detach().requires_grad_(),))


def test_soft_pool_lies_between_mean_and_max_and_survives_large_values():
    torch.manual_seed(6)
    x = torch.randn(2, 3, 8, 8) * 3
    out = SoftPool2d(2)(x)
    assert (out <= F.max_pool2d(x, 2) + 1e-6).all() and (out >= F.avg_pool2d(x, 2) - 1e-6).all()
    big = torch.full((1, 1, 2, 2), 1000.0)  # e^1000 overflows float32; the windowed softmax does not
    assert soft_pool2d(big, 2).item() == pytest.approx(1000.0)


def naive_spp(x, levels):
    """Per level n, bin (i, j) max over rows [floor(i·H/n), ceil((i+1)·H/n)) and the same for columns."""
    feats = []
    for n in levels:
        grid = torch.empty(x.shape[0], x.shape[1], n, n, dtype=x.dtype)
        for i, j in itertools.product(range(n), range(n)):
            r0, r1 = math.floor(i * x.shape[2] / n), math.ceil((i + 1) * x.shape[2] / n)
            c0, c1 = math.floor(j * x.shape[3] / n), math.ceil((j + 1) * x.shape[3] / n)
            grid[:, :, i, j] = x[:, :, r0:r1, c0:c1].amax(dim=(2, 3))
        feats.append(grid.flatten(1))
    return torch.cat(feats, 1)


@pytest.mark.parametrize("levels", [(1, 2, 4), (1, 2, 3, 6), (3,)])
@pytest.mark.parametrize("size", [(13, 10), (16, 12)])  # uneven bins, and bins that tile the map exactly
def test_spp_matches_naive_bins_and_adaptive_max_pool(levels, size):
    torch.manual_seed(7)
    x = torch.randn(2, 5, *size)
    out = spatial_pyramid_pool(x, levels)
    torch.testing.assert_close(out, naive_spp(x, levels))
    xr = x.clone().requires_grad_()
    x.requires_grad_()
    out = spatial_pyramid_pool(x, levels)
    ref = torch.cat([F.adaptive_max_pool2d(xr, n).flatten(1) for n in levels], 1)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, xr, g)[0])
    x = x.detach()
    ref_avg = torch.cat([F.adaptive_avg_pool2d(x, n).flatten(1) for n in levels], 1)
    torch.testing.assert_close(spatial_pyramid_pool(x, levels, mode="avg"), ref_avg)


def test_spp_output_length_is_fixed_for_every_input_size():
    layer = SpatialPyramidPool((1, 2, 4))
    expected = layer.output_features(3)
    assert expected == 3 * 21
    for h, w in itertools.product((1, 2, 3, 4, 5, 7, 8, 13, 31, 64), (1, 4, 6, 9, 17, 50)):
        assert layer(torch.randn(1, 3, h, w)).shape == (1, expected), (h, w)
    for a in range(1, 40):
        assert [len(adaptive_bins(a, n)) for n in (1, 2, 4)] == [1, 2, 4]


def test_paper_bin_rule_is_not_fixed_length_which_is_why_bins_are_adaptive():
    """He et al.: window ceil(a/n), stride floor(a/n). For a=13, n=3 (their example) that gives 3 bins;
    for a=7, n=4 it gives 6, so the paper's rule alone is not fixed-length."""
    def count(a, n):
        win, stride = spp_paper_bins(a, n)
        return (a - win) // stride + 1
    assert spp_paper_bins(13, 3) == (5, 4) and count(13, 3) == 3
    assert count(7, 4) == 6
    # where n divides a both rules give the same bins
    for a, n in ((8, 4), (12, 3), (6, 6)):
        win, stride = spp_paper_bins(a, n)
        assert adaptive_bins(a, n) == [(i * stride, i * stride + win) for i in range(n)]


def test_global_average_pooling():
    x = torch.randn(2, 7, 5, 9)
    torch.testing.assert_close(global_avg_pool2d(x), F.adaptive_avg_pool2d(x, 1).flatten(1))
    assert GlobalAvgPool2d(keepdim=True)(x).shape == (2, 7, 1, 1)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="4-D input"):
        max_pool2d(torch.zeros(3, 4, 4), 2)
    with pytest.raises(ValueError, match="smaller than the window"):
        avg_pool2d(torch.zeros(1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="at most half"):
        max_pool2d(torch.zeros(1, 1, 8, 8), 2, 2, 2)
    with pytest.raises(ValueError, match="levels"):
        SpatialPyramidPool((1, 0))
    with pytest.raises(ValueError, match="mode"):
        spatial_pyramid_pool(torch.zeros(1, 1, 4, 4), (1,), mode="median")
