"""Convolutions, written out: im2col + matmul, and its transpose (matmul + col2im).

A convolution is a matrix product once every receptive field has been copied into a column
("im2col"): ``out = W · cols``. The variants of the canon differ only in which columns and
which weight blocks meet:

- 1×1 ("network in network", Lin et al. 2013, arXiv 1312.4400): the columns are the pixels;
  the layer mixes channels and nothing else.
- grouped (Krizhevsky et al. 2012, AlexNet; Xie et al. 2017, ResNeXt, arXiv 1611.05431):
  channels split into ``groups`` blocks; block g of the output sees only block g of the input,
  so the weight is block-diagonal and has ``groups`` times fewer parameters.
- depthwise-separable (Sifre 2014; Chollet 2017, Xception, arXiv 1610.02357; Howard et al.
  2017, MobileNets, arXiv 1704.04861): a grouped convolution with ``groups = in_chans``
  (one k×k filter per channel) followed by a 1×1 convolution.
- dilated / atrous (Yu & Koltun 2016, arXiv 1511.07122; Chen et al. 2015, DeepLab,
  arXiv 1412.7062): the kernel taps are ``dilation`` pixels apart, so a 3×3 kernel sees a
  (2d+1)×(2d+1) field with 9 weights.
- transposed ("deconvolution"; Zeiler et al. 2010; Long et al. 2015, FCN, arXiv 1411.4038):
  the adjoint of a strided convolution: ``cols = Wᵀ · x``, then every column is added back
  into the (larger) output at its receptive field ("col2im").
- resize + convolution (Odena, Dumoulin & Olah 2016, "Deconvolution and Checkerboard
  Artifacts", Distill, doi:10.23915/distill.00003): nearest-neighbour upsampling followed by
  an ordinary convolution. A transposed convolution whose kernel size is not divisible by its
  stride lets some output pixels receive more kernel taps than their neighbours, which paints
  a checkerboard; resizing first gives every output pixel the same number of taps.

Follows the papers:
- weight layout (out_chans, in_chans / groups, kH, kW), and for the transposed convolution
  (in_chans, out_chans / groups, kH, kW), i.e. torch's layouts, so weights move between these
  layers and ``nn.Conv2d`` / ``nn.ConvTranspose2d`` unchanged;
- zero padding; output size ``floor((H + 2p - d(k-1) - 1) / s) + 1`` and, transposed,
  ``(H-1)s - 2p + d(k-1) + output_padding + 1``.

Deviates, and why:
- These are the readable reference versions; models use torch's fused ``nn.Conv2d``, which is
  many times faster. im2col costs ``k²`` times the input in memory.
- Initialisation: uniform in ±1/sqrt(fan_in) for weight and bias, which is what torch's
  default (Kaiming-uniform with a = sqrt(5)) works out to; the papers used Gaussians of
  hand-picked scale.
- The resize + convolution layer uses nearest-neighbour resizing and a "same"-padded odd
  kernel (Odena et al. recommend nearest-neighbour; they do not fix the padding).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "conv_output_size", "conv_transpose_output_size", "conv2d", "conv_transpose2d",
    "Conv2d", "ConvTranspose2d", "conv1x1", "DepthwiseSeparableConv2d", "DepthwiseSeparableConv1d", "ResizeConv2d",
]


def _pair(value: int | tuple[int, int], name: str, *, minimum: int) -> tuple[int, int]:
    """``3 -> (3, 3)``; checks both entries are ints >= minimum."""
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)):
        pair = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis: ``floor((size + 2p - d(k-1) - 1) / s) + 1``."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                               dilation: int = 1, output_padding: int = 0) -> int:
    """Output length of a transposed convolution: ``(size-1)s - 2p + d(k-1) + output_padding + 1``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def _check_conv_args(x: torch.Tensor, weight: torch.Tensor, groups: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got {shape}")
    if weight.dim() != 4:
        raise ValueError(f"{name} expects a 4-D weight, got shape {tuple(weight.shape)}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
           dilation: int | tuple[int, int] = 1, groups: int = 1) -> torch.Tensor:
    """Grouped, strided, dilated 2-D convolution (cross-correlation) as im2col + matmul.

    x: (N, C_in, H, W); weight: (C_out, C_in / groups, kH, kW); bias: (C_out,) or None.
    Returns (N, C_out, H_out, W_out) with ``H_out = conv_output_size(H, kH, s, p, d)``.
    """
    _check_conv_args(x, weight, groups, "conv2d")
    n, c_in, h, w = x.shape
    c_out, c_in_per_group, kh, kw = weight.shape
    if c_in_per_group * groups != c_in:
        raise ValueError(f"conv2d: weight {tuple(weight.shape)} with groups={groups} expects "
                         f"{c_in_per_group * groups} input channels, got {c_in}")
    if c_out % groups:
        raise ValueError(f"conv2d: out channels ({c_out}) must be divisible by groups ({groups})")
    stride, padding = _pair(stride, "stride", minimum=1), _pair(padding, "padding", minimum=0)
    dilation = _pair(dilation, "dilation", minimum=1)
    h_out = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"conv2d: input {h}x{w} is smaller than the dilated kernel "
                         f"{dilation[0] * (kh - 1) + 1}x{dilation[1] * (kw - 1) + 1} after padding {padding}")

    # im2col: one column per output pixel, rows ordered (channel, ki, kj) like the weight.
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (N, C_in*kH*kW, L)
    cols = cols.view(n, groups, c_in_per_group * kh * kw, h_out * w_out)  # (N, G, C_in/G*kH*kW, L)
    w_mat = weight.reshape(groups, c_out // groups, c_in_per_group * kh * kw)  # (G, C_out/G, C_in/G*kH*kW)
    out = torch.matmul(w_mat, cols)  # (N, G, C_out/G, L): block-diagonal weight = grouped conv
    out = out.reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                     stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                     output_padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                     groups: int = 1) -> torch.Tensor:
    """Transposed convolution: the adjoint (gradient) of ``conv2d``, as matmul + col2im.

    x: (N, C_in, H, W); weight: (C_in, C_out / groups, kH, kW); bias: (C_out,) or None.
    Returns (N, C_out, H_out, W_out) with ``H_out = conv_transpose_output_size(H, kH, s, p, d, op)``.
    ``output_padding`` (< stride) picks among the output sizes that a strided convolution maps
    onto the same H. (torch also admits output_padding < dilation; this version does not.)
    """
    _check_conv_args(x, weight, groups, "conv_transpose2d")
    n, c_in, h, w = x.shape
    w_in, c_out_per_group, kh, kw = weight.shape
    if w_in != c_in:
        raise ValueError(f"conv_transpose2d: weight {tuple(weight.shape)} expects {w_in} input channels, got {c_in}")
    if c_in % groups:
        raise ValueError(f"conv_transpose2d: input channels ({c_in}) must be divisible by groups ({groups})")
    stride, padding = _pair(stride, "stride", minimum=1), _pair(padding, "padding", minimum=0)
    dilation = _pair(dilation, "dilation", minimum=1)
    output_padding = _pair(output_padding, "output_padding", minimum=0)
    if output_padding[0] >= stride[0] or output_padding[1] >= stride[1]:
        raise ValueError(f"conv_transpose2d: output_padding {output_padding} must be smaller than stride {stride}")
    h_out = conv_transpose_output_size(h, kh, stride[0], padding[0], dilation[0], output_padding[0])
    w_out = conv_transpose_output_size(w, kw, stride[1], padding[1], dilation[1], output_padding[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"conv_transpose2d: padding {padding} leaves an empty output ({h_out}x{w_out})")
    c_out = c_out_per_group * groups

    x_mat = x.reshape(n, groups, c_in // groups, h * w)  # (N, G, C_in/G, L)
    w_mat = weight.reshape(groups, c_in // groups, c_out_per_group * kh * kw)  # (G, C_in/G, C_out/G*kH*kW)
    cols = torch.matmul(w_mat.transpose(1, 2), x_mat)  # (N, G, C_out/G*kH*kW, L): cols = Wᵀ x
    cols = cols.reshape(n, c_out * kh * kw, h * w)
    # col2im: add each column back onto the receptive field it came from (overlaps sum).
    out = F.fold(cols, (h_out, w_out), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out  # (N, C_out, H_out, W_out)


def _init_uniform_fan_in(weight: nn.Parameter, bias: nn.Parameter | None, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


class Conv2d(nn.Module):
    """2-D convolution layer over ``conv2d``; same parameters and state-dict keys as ``nn.Conv2d``.

    ``groups > 1`` is a grouped convolution, ``groups == in_chans`` a depthwise one, and
    ``dilation > 1`` an atrous one.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int | tuple[int, int], *,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if in_chans % groups or out_chans % groups:
            raise ValueError(f"in_chans ({in_chans}) and out_chans ({out_chans}) must both be divisible "
                             f"by groups ({groups})")
        self.in_chans, self.out_chans = in_chans, out_chans
        self.kernel_size = _pair(kernel_size, "kernel_size", minimum=1)
        self.stride = _pair(stride, "stride", minimum=1)
        self.padding = _pair(padding, "padding", minimum=0)
        self.dilation = _pair(dilation, "dilation", minimum=1)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_chans)) if bias else None
        _init_uniform_fan_in(self.weight, self.bias, in_chans // groups * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                      dilation=self.dilation, groups=self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_chans}, {self.out_chans}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


def conv1x1(in_chans: int, out_chans: int, *, stride: int = 1, groups: int = 1, bias: bool = True) -> Conv2d:
    """1×1 convolution: a per-pixel linear map across channels (Lin et al. 2013)."""
    return Conv2d(in_chans, out_chans, 1, stride=stride, groups=groups, bias=bias)


class DepthwiseSeparableConv2d(nn.Module):
    """Depthwise k×k convolution (one filter per channel) then a pointwise 1×1 convolution.

    Costs ``C_in·k² + C_in·C_out`` weights instead of ``C_in·C_out·k²``, a factor of
    ``1/C_out + 1/k²`` (Howard et al. 2017, eq. 5). Nothing sits between the two convolutions,
    as in Xception (Chollet 2017, section 4.7, found no intermediate non-linearity to train
    best); MobileNet puts batch norm and ReLU there, which a model adds around these parts.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int | tuple[int, int] = 3, *,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 1,
                 dilation: int | tuple[int, int] = 1, bias: bool = True) -> None:
        super().__init__()
        self.depthwise = Conv2d(in_chans, in_chans, kernel_size, stride=stride, padding=padding,
                                dilation=dilation, groups=in_chans, bias=False)
        self.pointwise = conv1x1(in_chans, out_chans, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))  # (N, C_in, H', W') -> (N, C_out, H', W')


class DepthwiseSeparableConv1d(nn.Module):
    """The 1-D form over sequences (QANet's encoder blocks): depthwise k-tap then pointwise.

    x (N, C_in, L) -> (N, C_out, L') with "same" length for an odd kernel and the default
    ``padding = kernel_size // 2``. Weights ``depthwise.weight`` (C_in, 1, k) and
    ``pointwise.weight`` (C_out, C_in, 1) in ``nn.Conv1d``'s layout. Unlike the 2-D reference
    layers above it runs torch's fused ``nn.Conv1d`` (with ``groups = C_in`` for the depthwise
    part), since sequence models call it in every block.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 7, *, padding: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
        padding = kernel_size // 2 if padding is None else padding
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int or None, got {padding!r}")
        self.depthwise = nn.Conv1d(in_chans, in_chans, kernel_size, padding=padding, groups=in_chans, bias=False)
        self.pointwise = nn.Conv1d(in_chans, out_chans, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.depthwise.in_channels:
            raise ValueError(f"DepthwiseSeparableConv1d expects (N, {self.depthwise.in_channels}, L), "
                             f"got {tuple(x.shape)}")
        return self.pointwise(self.depthwise(x))  # (N, C_in, L) -> (N, C_out, L')


class ConvTranspose2d(nn.Module):
    """Transposed convolution layer over ``conv_transpose2d``; state-dict keys as ``nn.ConvTranspose2d``."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int | tuple[int, int], *,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 output_padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        if in_chans % groups or out_chans % groups:
            raise ValueError(f"in_chans ({in_chans}) and out_chans ({out_chans}) must both be divisible "
                             f"by groups ({groups})")
        self.in_chans, self.out_chans = in_chans, out_chans
        self.kernel_size = _pair(kernel_size, "kernel_size", minimum=1)
        self.stride = _pair(stride, "stride", minimum=1)
        self.padding = _pair(padding, "padding", minimum=0)
        self.output_padding = _pair(output_padding, "output_padding", minimum=0)
        self.dilation = _pair(dilation, "dilation", minimum=1)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(in_chans, out_chans // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_chans)) if bias else None
        # torch computes fan_in from weight.size(1) here: out_chans/groups * kH * kW.
        _init_uniform_fan_in(self.weight, self.bias, out_chans // groups * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_transpose2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                output_padding=self.output_padding, dilation=self.dilation, groups=self.groups)


class ResizeConv2d(nn.Module):
    """Checkerboard-free upsampling: nearest-neighbour resize by ``scale_factor``, then a "same" conv.

    Replaces ``ConvTranspose2d(in, out, kernel_size, stride=scale_factor)`` (Odena et al. 2016):
    every output pixel is computed from the same number of kernel taps, so a constant input
    stays constant away from the border.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, *, scale_factor: int = 2,
                 bias: bool = True) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ResizeConv2d needs an odd kernel_size for 'same' padding, got {kernel_size!r}")
        if not isinstance(scale_factor, int) or scale_factor < 1:
            raise ValueError(f"scale_factor must be a positive int, got {scale_factor!r}")
        self.scale_factor = scale_factor
        self.conv = Conv2d(in_chans, out_chans, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="nearest")  # (N, C_in, sH, sW)
        return self.conv(x)  # (N, C_out, sH, sW)
