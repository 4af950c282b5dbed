"""Pooling, written out: max, average, overlapping, stochastic, SoftPool, spatial pyramid, global average.

Every window pool here is "unfold the k×k windows into a column, reduce the column":
``F.unfold`` gives (N, C·k², L) and the pools differ only in the reduction.

- max and average pooling: the reduction is ``max`` or ``mean``;
- overlapping pooling (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with
  Deep Convolutional Neural Networks", section 3.4): max pooling with stride < kernel, 3×3/2,
  which the paper found to cut top-1 error by 0.4 % and to overfit slightly less;
- stochastic pooling (Zeiler & Fergus 2013, "Stochastic Pooling for Regularization of Deep
  Convolutional Neural Networks", arXiv 1301.3557): ``p_i = a_i / Σ_j a_j`` over the window;
  in training pick one activation with probability ``p_i`` (eq. 3-4); at test time use the
  probability-weighted average ``Σ_i p_i a_i`` (eq. 5);
- SoftPool (Stergiou, Poppe & Kalliatakis 2021, "Refining activation downsampling with
  SoftPool", arXiv 2101.00440): ``Σ_i softmax(a)_i · a_i`` over the window (eq. 1-2);
- spatial pyramid pooling (He, Zhang, Ren & Sun 2014, "Spatial Pyramid Pooling in Deep
  Convolutional Networks for Visual Recognition", arXiv 1406.4729): max-pool the map into an
  n×n grid of bins for each pyramid level n, flatten and concatenate, giving ``C·Σ n²``
  features for any input size;
- global average pooling (Lin, Chen & Yan 2013, "Network In Network", arXiv 1312.4400): the
  mean of each channel.

Follows the papers:
- stochastic pooling expects non-negative inputs (they follow a ReLU); a window of zeros
  pools to zero;
- SPP pools with max by default, levels configurable (the paper's (1, 2, 3, 6) or the common
  (1, 2, 4)); features are flattened level by level, channel-major within a level.

Deviates, and why:
- SPP bins: the paper's window ``ceil(a/n)`` and stride ``floor(a/n)`` do not give n bins for
  every input size a (a = 7, n = 4 gives window 2, stride 1 and six bins), so the output would
  not be fixed-length. Bins here are adaptive: bin i covers ``[floor(i·a/n), ceil((i+1)·a/n))``,
  torch's ``adaptive_max_pool2d`` rule, which gives exactly n bins for every a >= 1 and equals
  the paper's layout whenever n divides a. ``spp_paper_bins`` computes the paper's window and
  stride for comparison.
- Padding: max pooling pads with -inf and average pooling counts padded zeros in the mean
  (``count_include_pad=True``), torch's defaults. No ``ceil_mode``.
- These are the readable reference versions; models use torch's fused pooling.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers.conv import _pair, conv_output_size

__all__ = [
    "max_pool2d", "avg_pool2d", "overlapping_max_pool2d", "stochastic_pool2d", "soft_pool2d",
    "spp_paper_bins", "adaptive_bins", "spatial_pyramid_pool", "global_avg_pool2d",
    "MaxPool2d", "AvgPool2d", "StochasticPool2d", "SoftPool2d", "SpatialPyramidPool", "GlobalAvgPool2d",
]


def _windows(x: torch.Tensor, kernel_size, stride, padding, pad_value: float, name: str):
    """Unfold the pooling windows: returns ((N, C, k², L) columns, H_out, W_out)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got {shape}")
    kernel_size = _pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel_size if stride is None else _pair(stride, "stride", minimum=1)
    padding = _pair(padding, "padding", minimum=0)
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel {kernel_size}")
    n, c, h, w = x.shape
    h_out = conv_output_size(h, kernel_size[0], stride[0], padding[0])
    w_out = conv_output_size(w, kernel_size[1], stride[1], padding[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"{name}: input {h}x{w} is smaller than the window {kernel_size}")
    if padding != (0, 0):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=pad_value)
    cols = F.unfold(x, kernel_size, stride=stride)  # (N, C·k², L)
    return cols.view(n, c, kernel_size[0] * kernel_size[1], h_out * w_out), h_out, w_out


def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Max over each window. x: (N, C, H, W) -> (N, C, H_out, W_out); stride defaults to kernel_size."""
    cols, h_out, w_out = _windows(x, kernel_size, stride, padding, float("-inf"), "max_pool2d")
    return cols.amax(dim=2).view(x.shape[0], x.shape[1], h_out, w_out)


def avg_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """Mean over each window, padded zeros counted. x: (N, C, H, W) -> (N, C, H_out, W_out)."""
    cols, h_out, w_out = _windows(x, kernel_size, stride, padding, 0.0, "avg_pool2d")
    return cols.mean(dim=2).view(x.shape[0], x.shape[1], h_out, w_out)


def overlapping_max_pool2d(x: torch.Tensor, kernel_size: int = 3, stride: int = 2) -> torch.Tensor:
    """AlexNet's overlapping pooling: max over 3×3 windows every 2 pixels (55×55 -> 27×27)."""
    k, s = _pair(kernel_size, "kernel_size", minimum=1), _pair(stride, "stride", minimum=1)
    if s[0] >= k[0] or s[1] >= k[1]:
        raise ValueError(f"overlapping pooling needs stride < kernel_size, got stride {stride}, kernel {kernel_size}")
    return max_pool2d(x, k, s)


def stochastic_pool2d(x: torch.Tensor, kernel_size, stride=None, *, training: bool,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic pooling (Zeiler & Fergus 2013). x: (N, C, H, W), non-negative.

    ``p_i = a_i / Σ_j a_j`` in each window. Training: returns the activation at an index drawn
    with probabilities p (inverse-CDF sampling with one uniform per window; gradient flows to
    the chosen activation). Eval: returns ``Σ_i p_i a_i``. All-zero windows give 0.
    """
    if isinstance(x, torch.Tensor) and (x < 0).any():
        raise ValueError(f"stochastic_pool2d expects non-negative activations (apply it after a ReLU); "
                         f"got a minimum of {x.min().item():.4g}")
    cols, h_out, w_out = _windows(x, kernel_size, stride, 0, 0.0, "stochastic_pool2d")  # (N, C, K, L)
    total = cols.sum(dim=2, keepdim=True)  # (N, C, 1, L)
    if training:
        u = torch.rand(total.shape, generator=generator, dtype=x.dtype, device=x.device)
        # index i is chosen when cum_{i-1} <= u·Σa < cum_i, which has probability a_i / Σa
        below = (cols.cumsum(dim=2) <= u * total).sum(dim=2, keepdim=True)
        index = below.clamp(max=cols.shape[2] - 1)  # (N, C, 1, L); clamp guards u·Σa rounding up to Σa
        out = cols.gather(2, index).squeeze(2)
    else:
        # Σ p_i a_i = Σ a_i² / Σ a_i; an all-zero window has numerator 0 too
        out = cols.square().sum(dim=2) / total.squeeze(2).clamp(min=torch.finfo(x.dtype).tiny)
    return out.view(x.shape[0], x.shape[1], h_out, w_out)


def soft_pool2d(x: torch.Tensor, kernel_size, stride=None) -> torch.Tensor:
    """SoftPool (Stergiou et al. 2021): ``Σ_i softmax(a)_i · a_i`` per window. x: (N, C, H, W).

    The softmax is taken within each window (max-subtracted, so large activations do not overflow).
    """
    cols, h_out, w_out = _windows(x, kernel_size, stride, 0, 0.0, "soft_pool2d")  # (N, C, K, L)
    weights = torch.softmax(cols, dim=2)  # w_i = e^{a_i} / Σ_j e^{a_j}  (eq. 1)
    return (weights * cols).sum(dim=2).view(x.shape[0], x.shape[1], h_out, w_out)  # eq. 2


def spp_paper_bins(size: int, level: int) -> tuple[int, int]:
    """The paper's pooling window and stride for an a×a map and an n×n level: (ceil(a/n), floor(a/n))."""
    return math.ceil(size / level), size // level


def adaptive_bins(size: int, level: int) -> list[tuple[int, int]]:
    """Bin i of ``level`` bins over ``size`` pixels covers [floor(i·a/n), ceil((i+1)·a/n))."""
    return [((i * size) // level, -((-(i + 1) * size) // level)) for i in range(level)]


def spatial_pyramid_pool(x: torch.Tensor, levels: tuple[int, ...] = (1, 2, 4), mode: str = "max") -> torch.Tensor:
    """Spatial pyramid pooling (He et al. 2014). x: (N, C, H, W) -> (N, C·Σ n²) for any H, W >= 1.

    For each level n the map is cut into n×n adaptive bins (see ``adaptive_bins``), each bin
    reduced by ``mode`` ("max" as in the paper, or "avg"); each level is flattened channel-major,
    (N, C, n, n) -> (N, C·n²), and the levels are concatenated in order.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"spatial_pyramid_pool expects a 4-D input (N, C, H, W), got {shape}")
    if mode not in ("max", "avg"):
        raise ValueError(f"spatial_pyramid_pool: mode must be 'max' or 'avg', got {mode!r}")
    _check_levels(levels)
    n, c, h, w = x.shape
    reduce = (lambda t: t.amax(dim=(2, 3))) if mode == "max" else (lambda t: t.mean(dim=(2, 3)))
    features = []
    for level in levels:
        if h % level == 0 and w % level == 0:  # equal, disjoint bins: one reshape, no slicing
            blocks = x.reshape(n, c, level, h // level, level, w // level)  # (N, C, n, H/n, n, W/n)
            grid = blocks.amax(dim=(3, 5)) if mode == "max" else blocks.mean(dim=(3, 5))  # (N, C, n, n)
            features.append(grid.reshape(n, c * level * level))
            continue
        rows, cols = adaptive_bins(h, level), adaptive_bins(w, level)
        grid = torch.stack([torch.stack([reduce(x[:, :, r0:r1, c0:c1]) for c0, c1 in cols], dim=-1)
                            for r0, r1 in rows], dim=-2)  # (N, C, n, n)
        features.append(grid.reshape(n, c * level * level))
    return torch.cat(features, dim=1)  # (N, C·Σ n²)


def _check_levels(levels) -> None:
    if (not isinstance(levels, (tuple, list)) or not levels
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in levels)):
        raise ValueError(f"levels must be a non-empty sequence of positive ints such as (1, 2, 4), got {levels!r}")


def global_avg_pool2d(x: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Mean over the spatial axes: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with ``keepdim``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"global_avg_pool2d expects a 4-D input (N, C, H, W), got {shape}")
    return x.mean(dim=(2, 3), keepdim=keepdim)


class _WindowPool(nn.Module):
    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", minimum=1)
        self.padding = _pair(padding, "padding", minimum=0)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_WindowPool):
    """Max pooling; ``MaxPool2d(3, 2)`` is AlexNet's overlapping pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_WindowPool):
    """Average pooling (padded zeros counted)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class StochasticPool2d(_WindowPool):
    """Stochastic pooling: samples in ``train()`` mode, probability-weighted average in ``eval()``."""

    def __init__(self, kernel_size=2, stride=None) -> None:
        super().__init__(kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_pool2d(x, self.kernel_size, self.stride, training=self.training)


class SoftPool2d(_WindowPool):
    """SoftPool: softmax-weighted sum over each window."""

    def __init__(self, kernel_size=2, stride=None) -> None:
        super().__init__(kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_pool2d(x, self.kernel_size, self.stride)


class SpatialPyramidPool(nn.Module):
    """SPP layer: (N, C, H, W) of any size -> (N, C·Σ n²). ``output_features(C)`` gives the length."""

    def __init__(self, levels: tuple[int, ...] = (1, 2, 4), mode: str = "max") -> None:
        super().__init__()
        _check_levels(levels)
        if mode not in ("max", "avg"):
            raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
        self.levels, self.mode = tuple(levels), mode

    def output_features(self, in_chans: int) -> int:
        return in_chans * sum(level * level for level in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_pyramid_pool(x, self.levels, self.mode)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, mode={self.mode!r}"


class GlobalAvgPool2d(nn.Module):
    """Global average pooling: (N, C, H, W) -> (N, C) (or (N, C, 1, 1) with ``keepdim=True``)."""

    def __init__(self, keepdim: bool = False) -> None:
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool2d(x, self.keepdim)
