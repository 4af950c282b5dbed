"""Deformable convolution v1: every kernel tap samples the input at a learned, fractional offset.

Paper: Dai, Qi, Xiong, Li, Zhang, Hu, Wei, "Deformable Convolutional Networks", ICCV 2017,
arXiv 1703.06211.

A k×k convolution reads the input at the grid ``p0 + pn`` (``pn`` running over the kernel
taps). The deformable one reads it at ``p0 + pn + Δpn`` (paper eq. 2)::

    y(p0) = Σ_n w(pn) · x(p0 + pn + Δpn)

where ``Δpn`` is fractional, so ``x`` is read by bilinear interpolation (eq. 3-4), and the
offsets are predicted from the same input by an ordinary convolution with the same kernel
size, stride, padding and dilation, whose 2k² output channels hold one (Δy, Δx) per tap.

Computed here without loops: for every tap and output pixel compute the sampling point, gather
the four neighbouring pixels of every channel, blend them with the bilinear weights into an
im2col matrix (N, C·k², H_out·W_out), and multiply by the weight matrix. Autograd gives the
gradients for input, weight and offsets (the offsets' through the bilinear weights).

Follows the paper:
- bilinear sampling, with pixels outside the image read as zero;
- the offset branch is a convolution of the layer's own kernel size, stride, padding and
  dilation, initialised to zero (section 2.1 and 4: "initialized with zero"), so a new layer
  starts as the plain convolution it replaces and learns to deform;
- ``offset_groups`` (the paper's "deformable groups" of its released code): channels split
  into groups that share one offset field each.

Deviates, and why:
- Offset channel layout is torchvision's (``torchvision.ops.deform_conv2d``): channel
  ``2·(g·k² + t)`` is Δy and ``2·(g·k² + t) + 1`` is Δx for offset group g and tap
  ``t = i·kW + j``, so offsets and weights transfer. The paper does not fix a layout.
- The paper's learning-rate multiplier for the offset branch is left to the optimiser's
  parameter groups (the branch is the ``offset_conv`` submodule).
- Memory: the gathered im2col matrix holds ``k²`` copies of the input (and four corners during
  the gather), like any im2col convolution; a fused CUDA kernel avoids that.
- Deformable RoI pooling (section 2.2) is not here.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from canon.layers.conv import _pair, conv_output_size

__all__ = ["deform_sampling_points", "bilinear_gather", "deform_conv2d", "DeformConv2d"]


def deform_sampling_points(offset: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int],
                           padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each tap reads the input: ``p0 + pn + Δpn`` in input pixel coordinates.

    offset: (N, 2·G·kH·kW, H_out, W_out), (Δy, Δx) interleaved per tap (see module docstring).
    Returns ``(y, x)``, each (N, G, kH·kW, H_out, W_out), floating point; pixel (0, 0) is the
    first input pixel (padding shifts the grid by ``-padding``).
    """
    n, _, h_out, w_out = offset.shape
    kh, kw = kernel_size
    offset = offset.reshape(n, -1, kh * kw, 2, h_out, w_out)  # (N, G, K, 2, H_out, W_out)
    dtype, device = offset.dtype, offset.device
    # p0 + pn: the regular grid of a dilated, strided, padded convolution
    tap_y = (torch.arange(kh, dtype=dtype, device=device) * dilation[0]).repeat_interleave(kw)  # (K,)
    tap_x = (torch.arange(kw, dtype=dtype, device=device) * dilation[1]).repeat(kh)  # (K,)
    out_y = torch.arange(h_out, dtype=dtype, device=device) * stride[0] - padding[0]  # (H_out,)
    out_x = torch.arange(w_out, dtype=dtype, device=device) * stride[1] - padding[1]  # (W_out,)
    grid_y = tap_y.view(-1, 1, 1) + out_y.view(1, -1, 1)  # (K, H_out, 1)
    grid_x = tap_x.view(-1, 1, 1) + out_x.view(1, 1, -1)  # (K, 1, W_out)
    return grid_y + offset[:, :, :, 0], grid_x + offset[:, :, :, 1]  # each (N, G, K, H_out, W_out)


def bilinear_gather(x: torch.Tensor, y: torch.Tensor, x_pos: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample every channel of ``x`` at fractional points; outside the image reads 0.

    x: (N, G, C_g, H, W) — channels split into G groups; y, x_pos: (N, G, P) sampling points
    per group (row, column in pixels). Returns (N, G, C_g, P).
    """
    n, g, c_g, h, w = x.shape
    flat = x.reshape(n, g, c_g, h * w)
    y0, x0 = torch.floor(y), torch.floor(x_pos)
    ly, lx = y - y0, x_pos - x0  # fractional parts: the bilinear weights (eq. 4)
    y0, x0 = y0.long(), x0.long()
    out = None
    for dy, dx, weight in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx),
                           (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yc, xc = y0 + dy, x0 + dx
        inside = (yc >= 0) & (yc < h) & (xc >= 0) & (xc < w)
        index = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).unsqueeze(2)  # (N, G, 1, P)
        corner = flat.gather(3, index.expand(n, g, c_g, index.shape[-1]))  # (N, G, C_g, P)
        term = corner * (weight * inside).unsqueeze(2)
        out = term if out is None else out + term
    return out


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                  dilation: int | tuple[int, int] = 1, groups: int = 1) -> torch.Tensor:
    """Deformable convolution v1 (Dai et al. 2017, eq. 2).

    x: (N, C_in, H, W); offset: (N, 2·G_off·kH·kW, H_out, W_out) with G_off offset groups
    dividing C_in; weight: (C_out, C_in / groups, kH, kW); bias: (C_out,) or None.
    Returns (N, C_out, H_out, W_out), ``H_out = floor((H + 2p - d(kH-1) - 1) / s) + 1``.
    With all offsets zero this is exactly ``F.conv2d`` with the same arguments.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"deform_conv2d expects a 4-D input (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if weight.dim() != 4:
        raise ValueError(f"deform_conv2d expects a 4-D weight (C_out, C_in/groups, kH, kW), got {tuple(weight.shape)}")
    n, c_in, h, w = x.shape
    c_out, c_in_per_group, kh, kw = weight.shape
    if not isinstance(groups, int) or groups < 1 or c_in_per_group * groups != c_in or c_out % groups:
        raise ValueError(f"deform_conv2d: weight {tuple(weight.shape)} with groups={groups} does not fit "
                         f"{c_in} input channels (need C_in = weight.shape[1]·groups and C_out divisible by groups)")
    stride, padding = _pair(stride, "stride", minimum=1), _pair(padding, "padding", minimum=0)
    dilation = _pair(dilation, "dilation", minimum=1)
    h_out = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    taps = kh * kw
    if offset.dim() != 4 or offset.shape[0] != n or offset.shape[2:] != (h_out, w_out) or offset.shape[1] % (2 * taps):
        raise ValueError(f"deform_conv2d: offset must be (N={n}, 2·offset_groups·{taps}, {h_out}, {w_out}) for this "
                         f"input and kernel, got {tuple(offset.shape)}")
    offset_groups = offset.shape[1] // (2 * taps)
    if c_in % offset_groups:
        raise ValueError(f"deform_conv2d: {offset_groups} offset groups do not divide {c_in} input channels")

    ys, xs = deform_sampling_points(offset, (kh, kw), stride, padding, dilation)  # (N, G_off, K, H_out, W_out)
    sampled = bilinear_gather(x.view(n, offset_groups, c_in // offset_groups, h, w),
                              ys.flatten(2), xs.flatten(2))  # (N, G_off, C_in/G_off, K·H_out·W_out)
    # im2col matrix with rows (channel, tap) as in the weight, columns the output pixels
    cols = sampled.reshape(n, groups, c_in_per_group * taps, h_out * w_out)  # (N, groups, C_in/groups·K, L)
    w_mat = weight.reshape(groups, c_out // groups, c_in_per_group * taps)  # (groups, C_out/groups, C_in/groups·K)
    out = torch.matmul(w_mat, cols).reshape(n, c_out, h_out, w_out)  # (N, C_out, H_out, W_out)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out


class DeformConv2d(nn.Module):
    """Deformable convolution layer with its own zero-initialised offset branch.

    ``offset_conv`` is a plain ``nn.Conv2d(in_chans, 2·offset_groups·kH·kW)`` with this layer's
    kernel size, stride, padding and dilation; at construction its weight and bias are zero, so
    the layer equals an ordinary convolution until the offsets learn.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int | tuple[int, int] = 3, *,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 1,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, offset_groups: int = 1,
                 bias: bool = True) -> None:
        super().__init__()
        for name, value in (("groups", groups), ("offset_groups", offset_groups)):
            if not isinstance(value, int) or value < 1 or in_chans % value:
                raise ValueError(f"{name} must be a positive int dividing in_chans={in_chans}, got {value!r}")
        if out_chans % groups:
            raise ValueError(f"out_chans ({out_chans}) must be divisible by groups ({groups})")
        self.in_chans, self.out_chans, self.groups = in_chans, out_chans, groups
        self.kernel_size = _pair(kernel_size, "kernel_size", minimum=1)
        self.stride = _pair(stride, "stride", minimum=1)
        self.padding = _pair(padding, "padding", minimum=0)
        self.dilation = _pair(dilation, "dilation", minimum=1)
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_chans)) if bias else None
        bound = 1.0 / math.sqrt(in_chans // groups * kh * kw)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self.offset_conv = nn.Conv2d(in_chans, 2 * offset_groups * kh * kw, self.kernel_size, stride=self.stride,
                                     padding=self.padding, dilation=self.dilation, bias=True)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(x)  # (N, 2·G_off·kH·kW, H_out, W_out)
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, groups=self.groups)
