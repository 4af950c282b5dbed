"""Deformable convolution v1 (Dai et al. 2017) against F.conv2d, a naive loop of eq. 2-4, and F.grid_sample."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from canon.layers import DeformConv2d, deform_conv2d


def naive_deform_conv2d(x, offset, weight, bias, stride, padding, dilation):
    """Transcription of the paper: y(p0) = Σ_n w(pn) Σ_q G(q, p) x(q), G(q, p) = g(qy, py)·g(qx, px),
    g(a, b) = max(0, 1 - |a - b|), p = p0 + pn + Δpn; one offset group; offsets in torchvision's layout."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    h_out = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(n, c_out, h_out, w_out, dtype=x.dtype)
    qy = torch.arange(h, dtype=x.dtype).view(h, 1)
    qx = torch.arange(w, dtype=x.dtype).view(1, w)
    for b, i, j in itertools.product(range(n), range(h_out), range(w_out)):
        acc = torch.zeros(c_out, dtype=x.dtype)
        for a, c in itertools.product(range(kh), range(kw)):
            t = a * kw + c
            py = i * stride - padding + a * dilation + offset[b, 2 * t, i, j]
            px = j * stride - padding + c * dilation + offset[b, 2 * t + 1, i, j]
            kernel = (1 - (qy - py).abs()).clamp(min=0) * (1 - (qx - px).abs()).clamp(min=0)  # G(q, p): (H, W)
            value = (x[b] * kernel).sum(dim=(1, 2))  # (C_in,)
            acc = acc + weight[:, :, a, c] @ value
        out[b, :, i, j] = acc + (bias if bias is not None else 0)
    return out


def grid_sample_deform_conv2d(x, offset, weight, stride, padding, dilation):
    """Independent formulation: one F.grid_sample per tap (align_corners=True, zero padding), then Σ_taps w·x."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    _, _, h_out, w_out = offset.shape
    base_y = torch.arange(h_out, dtype=x.dtype).view(-1, 1) * stride - padding
    base_x = torch.arange(w_out, dtype=x.dtype).view(1, -1) * stride - padding
    out = 0
    for a, c in itertools.product(range(kh), range(kw)):
        t = a * kw + c
        py = base_y + a * dilation + offset[:, 2 * t]  # (N, H_out, W_out)
        px = base_x + c * dilation + offset[:, 2 * t + 1]
        grid = torch.stack((2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1), dim=-1)  # (N, H_out, W_out, 2): (x, y)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out = out + torch.einsum("oc,nchw->nohw", weight[:, :, a, c], sampled)
    return out


def test_zero_offsets_equal_conv2d():
    torch.manual_seed(0)
    for stride, padding, dilation, groups in ((1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1), (2, 0, 1, 4)):
        x = torch.randn(2, 4, 9, 10)
        weight, bias = torch.randn(6 if groups != 4 else 8, 4 // groups, 3, 3), None
        h_out = (9 + 2 * padding - dilation * 2 - 1) // stride + 1
        w_out = (10 + 2 * padding - dilation * 2 - 1) // stride + 1
        offset = torch.zeros(2, 18, h_out, w_out)
        ours = deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
        ref = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [(1, 0), (0, -2), (-1, 1), (3, 3)])
def test_integer_offsets_equal_shifted_conv(shift):
    """Every tap offset by the same integer (dy, dx) reads x(p + dy, q + dx): a conv of x shifted with zero fill."""
    dy, dx = shift
    torch.manual_seed(1)
    x = torch.randn(1, 3, 8, 8)
    weight = torch.randn(5, 3, 3, 3)
    offset = torch.zeros(1, 18, 8, 8)
    offset[:, 0::2], offset[:, 1::2] = float(dy), float(dx)
    big = F.pad(x, (5, 5, 5, 5))  # zero fill for the shift and for the conv's own padding of 1
    # window[i, j] = x[i - 1 + dy, j - 1 + dx]: the padded input, shifted (big index = x index + 5)
    window = big[:, :, 4 + dy:4 + dy + 10, 4 + dx:4 + dx + 10]
    torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=1), F.conv2d(window, weight),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_fractional_offsets_match_naive_loop_and_grid_sample(stride, padding, dilation):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    weight, bias = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    h_out = (6 + 2 * padding - dilation * 2 - 1) // stride + 1
    w_out = (7 + 2 * padding - dilation * 2 - 1) // stride + 1
    offset = 2.5 * torch.randn(2, 18, h_out, w_out, dtype=torch.float64)  # many taps land outside the image
    ours = deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation)
    torch.testing.assert_close(ours, naive_deform_conv2d(x, offset, weight, bias, stride, padding, dilation))
    torch.testing.assert_close(ours - bias.view(1, -1, 1, 1),
                               grid_sample_deform_conv2d(x, offset, weight, stride, padding, dilation))


def test_offset_groups_use_their_own_offsets():
    """Two offset groups equal two single-group deformable convs on the channel halves, summed."""
    torch.manual_seed(3)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    offset = torch.randn(1, 36, 6, 6, dtype=torch.float64)
    ours = deform_conv2d(x, offset, weight, padding=1)
    ref = (deform_conv2d(x[:, :2], offset[:, :18], weight[:, :2], padding=1)
           + deform_conv2d(x[:, 2:], offset[:, 18:], weight[:, 2:], padding=1))
    torch.testing.assert_close(ours, ref)


def test_gradcheck_float64_input_offset_weight_bias():
    torch.manual_seed(4)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    # keep sampling points away from integer grid lines, where bilinear interpolation has kinks
    offset = (torch.randint(-2, 3, (1, 18, 2, 3)).double() + 0.2 + 0.6 * torch.rand(1, 18, 2, 3, dtype=torch.float64))
    offset.requires_grad_()
    fn = lambda x, o, w, b: deform_conv2d(x, o, w, b, stride=2, padding=1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, offset, weight, bias))


def test_gradients_match_grid_sample_formulation():
    torch.manual_seed(5)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    offset = (0.2 + 0.6 * torch.rand(1, 18, 6, 6, dtype=torch.float64) + torch.randint(-1, 2, (1, 18, 6, 6))).requires_grad_()
    grad_out = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    ours = torch.autograd.grad(deform_conv2d(x, offset, weight, padding=1), (x, offset, weight), grad_out)
    ref = torch.autograd.grad(grid_sample_deform_conv2d(x, offset, weight, 1, 1, 1), (x, offset, weight), grad_out)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_layer_starts_as_plain_conv_and_offsets_learn():
    torch.manual_seed(6)
    layer = DeformConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    assert layer.offset_conv.weight.abs().sum() == 0 and layer.offset_conv.bias.abs().sum() == 0
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias, padding=1), rtol=1e-5, atol=1e-5)
    layer(x).square().sum().backward()
    # at zero offsets the sampling point sits on a pixel; the gradient reaching the offset branch is non-zero
    assert layer.offset_conv.weight.grad.abs().sum() > 0


def test_bad_arguments_raise_clear_errors():
    x, weight = torch.zeros(1, 4, 8, 8), torch.zeros(2, 4, 3, 3)
    with pytest.raises(ValueError, match="offset must be"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), weight, padding=1)
    with pytest.raises(ValueError, match="offset groups"):
        deform_conv2d(x, torch.zeros(1, 54, 8, 8), weight, padding=1)
    with pytest.raises(ValueError, match="groups"):
        deform_conv2d(x, torch.zeros(1, 18, 8, 8), torch.zeros(2, 3, 3, 3), padding=1)
    with pytest.raises(ValueError, match="offset_groups"):
        DeformConv2d(4, 4, offset_groups=3)


def test_gradients_match_naive_loop():
    """Backward as well: autograd through the naive transcription gives the same input, offset and weight grads."""
    torch.manual_seed(7)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    offset = (0.2 + 0.6 * torch.rand(1, 18, 3, 3, dtype=torch.float64) + torch.randint(-2, 2, (1, 18, 3, 3))).requires_grad_()
    grad_out = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    ours = torch.autograd.grad(deform_conv2d(x, offset, weight, stride=2, padding=1), (x, offset, weight), grad_out)
    ref = torch.autograd.grad(naive_deform_conv2d(x, offset, weight, None, 2, 1, 1), (x, offset, weight), grad_out)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
