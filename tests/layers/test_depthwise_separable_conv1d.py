"""DepthwiseSeparableConv1d against a direct sum written in the test and torch's conv layers.

References: out[n, o, t] = b[o] + Σ_c P[o, c] Σ_k D[c, k] x[n, c, t + k - p] written as loops;
``torch.nn.Conv1d(groups=C)`` followed by a 1×1 ``torch.nn.Conv1d``; canon's 2-D layer on a
height-1 image.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from canon.layers import DepthwiseSeparableConv1d, DepthwiseSeparableConv2d


def direct(x, depthwise, pointwise, bias, padding):
    n, c, length = x.shape
    k = depthwise.shape[-1]
    padded = torch.nn.functional.pad(x, (padding, padding))
    out_length = length + 2 * padding - k + 1
    spatial = torch.zeros(n, c, out_length, dtype=torch.float64)
    for t in range(out_length):
        for j in range(k):
            spatial[:, :, t] += depthwise[:, 0, j] * padded[:, :, t + j]
    return torch.einsum("oc,nct->not", pointwise[:, :, 0], spatial) + bias[None, :, None]


@pytest.mark.parametrize("kernel_size, padding", [(7, None), (5, None), (3, 0), (4, 2)])
def test_equals_the_direct_sum_and_torch(kernel_size, padding):
    torch.manual_seed(kernel_size)
    layer = DepthwiseSeparableConv1d(6, 5, kernel_size, padding=padding).double()
    x = torch.randn(2, 6, 11, dtype=torch.float64)
    p = kernel_size // 2 if padding is None else padding
    out = layer(x)
    assert out.shape == (2, 5, 11 + 2 * p - kernel_size + 1)
    expected = direct(x, layer.depthwise.weight, layer.pointwise.weight, layer.pointwise.bias, p)
    assert torch.allclose(out, expected, atol=1e-10)

    depthwise = nn.Conv1d(6, 6, kernel_size, padding=p, groups=6, bias=False).double()
    pointwise = nn.Conv1d(6, 5, 1).double()
    depthwise.load_state_dict({"weight": layer.depthwise.weight})
    pointwise.load_state_dict(layer.pointwise.state_dict())
    assert torch.allclose(out, pointwise(depthwise(x)), atol=1e-12)


def test_same_as_the_2d_layer_on_a_height_one_image():
    torch.manual_seed(0)
    layer = DepthwiseSeparableConv1d(4, 3, 5).double()
    layer_2d = DepthwiseSeparableConv2d(4, 3, (1, 5), padding=(0, 2)).double()
    layer_2d.depthwise.weight.data.copy_(layer.depthwise.weight[:, :, None, :])
    layer_2d.pointwise.weight.data.copy_(layer.pointwise.weight[:, :, :, None])
    layer_2d.pointwise.bias.data.copy_(layer.pointwise.bias)
    x = torch.randn(2, 4, 9, dtype=torch.float64)
    assert torch.allclose(layer(x), layer_2d(x[:, :, None, :])[:, :, 0, :], atol=1e-12)


def test_parameter_count_and_bad_inputs():
    layer = DepthwiseSeparableConv1d(128, 128, 7)
    assert sum(p.numel() for p in layer.parameters()) == 128 * 7 + 128 * 128 + 128  # C·k + C·C' + C'
    with pytest.raises(ValueError, match=r"\(N, 128, L\)"):
        layer(torch.zeros(2, 64, 10))
    with pytest.raises(ValueError, match="kernel_size"):
        DepthwiseSeparableConv1d(4, 4, 0)
