"""Convolutions from canon.layers.conv against torch's built-ins and naive loop transcriptions."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers import (Conv2d, ConvTranspose2d, DepthwiseSeparableConv2d, ResizeConv2d, conv1x1, conv2d,
                          conv_output_size, conv_transpose2d, conv_transpose_output_size)


def naive_conv2d(x, weight, bias, stride, padding, dilation, groups):
    """y[n, o, i, j] = b[o] + Σ_{c in group(o), a, b} w[o, c, a, b] · x_pad[n, c, i·s + a·d, j·s + b·d]."""
    n, c_in, h, w = x.shape
    c_out, c_g, kh, kw = weight.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    h_out = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(n, c_out, h_out, w_out, dtype=x.dtype)
    out_per_group = c_out // groups
    for o, i, j in itertools.product(range(c_out), range(h_out), range(w_out)):
        g = o // out_per_group
        acc = torch.zeros(n, dtype=x.dtype)
        for c, a, b in itertools.product(range(c_g), range(kh), range(kw)):
            acc += weight[o, c, a, b] * xp[:, g * c_g + c, i * stride + a * dilation, j * stride + b * dilation]
        out[:, o, i, j] = acc + (bias[o] if bias is not None else 0)
    return out


def naive_conv_transpose2d(x, weight, bias, stride, padding, groups):
    """Scatter form: every input pixel adds w[c, o, a, b]·x into output (i·s + a - p, j·s + b - p)."""
    n, c_in, h, w = x.shape
    _, c_out_g, kh, kw = weight.shape
    c_out = c_out_g * groups
    h_full, w_full = (h - 1) * stride + kh, (w - 1) * stride + kw
    full = torch.zeros(n, c_out, h_full, w_full, dtype=x.dtype)
    in_per_group = c_in // groups
    for c, i, j, a, b in itertools.product(range(c_in), range(h), range(w), range(kh), range(kw)):
        g = c // in_per_group
        for oc in range(c_out_g):
            full[:, g * c_out_g + oc, i * stride + a, j * stride + b] += weight[c, oc, a, b] * x[:, c, i, j]
    out = full[:, :, padding:h_full - padding, padding:w_full - padding]
    return out + (bias.view(1, -1, 1, 1) if bias is not None else 0)


CONFIGS = [  # (in, out, k, stride, padding, dilation, groups): 1x1, plain, strided, grouped, depthwise, dilated
    (4, 6, 1, 1, 0, 1, 1),
    (3, 5, 3, 1, 1, 1, 1),
    (4, 6, 3, 2, 1, 1, 1),
    (4, 6, 3, 1, 1, 1, 2),
    (4, 4, 3, 1, 1, 1, 4),
    (3, 4, 3, 1, 2, 2, 1),
    (4, 8, (3, 5), (2, 1), (0, 2), (1, 2), 2),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_conv2d_matches_torch(cfg):
    c_in, c_out, k, s, p, d, g = cfg
    torch.manual_seed(0)
    ks = (k, k) if isinstance(k, int) else k
    x = torch.randn(2, c_in, 9, 11)
    weight, bias = torch.randn(c_out, c_in // g, *ks), torch.randn(c_out)
    ours = conv2d(x, weight, bias, stride=s, padding=p, dilation=d, groups=g)
    ref = F.conv2d(x, weight, bias, stride=s, padding=p, dilation=d, groups=g)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [(4, 6, 3, 2, 1, 1, 2), (3, 4, 3, 1, 2, 2, 1), (4, 4, 3, 1, 1, 1, 4)])
def test_conv2d_matches_naive_loop(cfg):
    c_in, c_out, k, s, p, d, g = cfg
    torch.manual_seed(1)
    x = torch.randn(2, c_in, 6, 7, dtype=torch.float64)
    weight, bias = torch.randn(c_out, c_in // g, k, k, dtype=torch.float64), torch.randn(c_out, dtype=torch.float64)
    ours = conv2d(x, weight, bias, stride=s, padding=p, dilation=d, groups=g)
    torch.testing.assert_close(ours, naive_conv2d(x, weight, bias, s, p, d, g))


@pytest.mark.parametrize("cfg", [(4, 6, 3, 2, 1, 1, 2), (3, 4, 3, 1, 2, 2, 1), (4, 4, 1, 1, 0, 1, 4)])
def test_conv2d_gradcheck_float64(cfg):
    c_in, c_out, k, s, p, d, g = cfg
    torch.manual_seed(2)
    x = torch.randn(1, c_in, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c_out, c_in // g, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)  # noqa: E731
    # fast mode (random projections of the Jacobian) keeps this quick; the exact comparison follows
    assert torch.autograd.gradcheck(fn, (x, weight, bias), fast_mode=True)
    # and the gradients are torch's
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    grad_out = torch.randn_like(fn(x, weight, bias))
    ours = torch.autograd.grad(fn(x, weight, bias), (x, weight, bias), grad_out)
    ref = torch.autograd.grad(F.conv2d(x2, w2, b2, stride=s, padding=p, dilation=d, groups=g), (x2, w2, b2), grad_out)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


TRANSPOSED = [  # (in, out, k, stride, padding, output_padding, dilation, groups)
    (3, 4, 3, 2, 1, 1, 1, 1),
    (4, 6, 4, 2, 1, 0, 1, 2),
    (2, 3, 3, 1, 0, 0, 2, 1),
    (4, 4, 3, 3, 1, 2, 1, 4),
]


@pytest.mark.parametrize("cfg", TRANSPOSED)
def test_conv_transpose2d_matches_torch(cfg):
    c_in, c_out, k, s, p, op, d, g = cfg
    torch.manual_seed(3)
    x = torch.randn(2, c_in, 5, 7)
    weight, bias = torch.randn(c_in, c_out // g, k, k), torch.randn(c_out)
    ours = conv_transpose2d(x, weight, bias, stride=s, padding=p, output_padding=op, dilation=d, groups=g)
    ref = F.conv_transpose2d(x, weight, bias, stride=s, padding=p, output_padding=op, dilation=d, groups=g)
    assert ours.shape[-2:] == (conv_transpose_output_size(5, k, s, p, d, op), conv_transpose_output_size(7, k, s, p, d, op))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [(2, 3, 3, 2, 1, 1), (4, 4, 4, 2, 1, 2)])
def test_conv_transpose2d_matches_naive_scatter_and_gradcheck(cfg):
    c_in, c_out, k, s, p, g = cfg
    torch.manual_seed(4)
    x = torch.randn(1, c_in, 2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c_in, c_out // g, k, k, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    ours = conv_transpose2d(x, weight, bias, stride=s, padding=p, groups=g)
    torch.testing.assert_close(ours, naive_conv_transpose2d(x, weight, bias, s, p, g))
    fn = lambda x, w, b: conv_transpose2d(x, w, b, stride=s, padding=p, groups=g)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_transposed_is_adjoint_of_conv():
    """<conv(x), y> = <x, convᵀ(y)>: the transposed convolution is the adjoint of the strided one."""
    torch.manual_seed(5)
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    y = torch.randn(2, 5, 5, 5, dtype=torch.float64)
    lhs = (conv2d(x, weight, stride=2, padding=1) * y).sum()
    rhs = (x * conv_transpose2d(y, weight, stride=2, padding=1)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_modules_load_torch_state_dicts_and_agree():
    torch.manual_seed(6)
    x = torch.randn(2, 4, 8, 8)
    ref = nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2)
    ours = Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    ref_t = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2)
    ours_t = ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2)
    ours_t.load_state_dict(ref_t.state_dict())
    torch.testing.assert_close(ours_t(x), ref_t(x), rtol=1e-5, atol=1e-5)
    assert conv1x1(4, 8).weight.shape == nn.Conv2d(4, 8, 1).weight.shape


def test_default_init_has_torch_bound():
    """torch's default init is uniform in ±1/sqrt(fan_in); ours should fill the same range."""
    torch.manual_seed(7)
    conv = Conv2d(16, 64, 3)
    bound = 1 / (16 * 9) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
    assert abs(conv.weight.std().item() - bound / 3 ** 0.5) < 0.05 * bound


def test_depthwise_separable_equals_depthwise_then_pointwise_and_counts_weights():
    torch.manual_seed(8)
    layer = DepthwiseSeparableConv2d(6, 10, 3, bias=False)
    x = torch.randn(2, 6, 7, 7)
    ref = F.conv2d(F.conv2d(x, layer.depthwise.weight, padding=1, groups=6), layer.pointwise.weight)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    c_in, c_out, k = 6, 10, 3  # Howard et al. 2017 eq. 5: C_in·k² + C_in·C_out weights
    assert sum(p.numel() for p in layer.parameters()) == c_in * k * k + c_in * c_out


def test_dilated_conv_reads_taps_dilation_apart():
    """A 3x3 kernel with dilation 2 whose only non-zero tap is the corner reads x shifted by 2 pixels."""
    x = torch.randn(1, 1, 9, 9)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 2, 2] = 1.0
    out = conv2d(x, weight, dilation=2)  # (1, 1, 5, 5)
    torch.testing.assert_close(out[0, 0], x[0, 0, 4:, 4:])


def test_resize_conv_has_no_checkerboard_but_transposed_conv_does():
    """Odena et al. 2016: k=3, stride 2 transposed conv paints a checkerboard on a constant input."""
    x = torch.ones(1, 1, 6, 6)
    deconv = ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, bias=False)
    nn.init.ones_(deconv.weight)
    interior = deconv(x)[0, 0, 2:-2, 2:-2]
    assert interior.unique().numel() > 1  # uneven overlap: 1, 2 and 4 taps
    assert set(interior.unique().tolist()) == {1.0, 2.0, 4.0}
    resize = ResizeConv2d(1, 1, 3, scale_factor=2, bias=False)
    nn.init.ones_(resize.conv.weight)
    out = resize(x)
    assert out.shape == (1, 1, 12, 12)
    torch.testing.assert_close(out[0, 0, 1:-1, 1:-1], torch.full((10, 10), 9.0))


def test_output_size_formula_matches_torch():
    for size, k, s, p, d in itertools.product((7, 8, 13), (1, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2)):
        expected = conv_output_size(size, k, s, p, d)
        if expected < 1:
            continue
        got = F.conv2d(torch.zeros(1, 1, size, size), torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d)
        assert got.shape[-1] == expected


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="4-D input"):
        conv2d(torch.zeros(3, 8, 8), torch.zeros(1, 3, 3, 3))
    with pytest.raises(ValueError, match="input channels"):
        conv2d(torch.zeros(1, 4, 8, 8), torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="divisible by groups"):
        Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        conv2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), dilation=2)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), stride=2, output_padding=2)
    with pytest.raises(TypeError, match="kernel_size"):
        Conv2d(1, 1, 2.5)
    with pytest.raises(ValueError, match="odd kernel_size"):
        ResizeConv2d(1, 1, 4)
