"""Normalization layers written from their formulas: batch, layer, instance, group, local response.

All four "statistics" norms compute ``y = (x - mean) / sqrt(var + eps) · gamma + beta`` with the
biased variance; they differ only in which axes the mean and variance are taken over, for an
input (N, C, *spatial):

- batch norm (Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training
  by Reducing Internal Covariate Shift", arXiv 1502.03167): over N and the spatial axes, per
  channel; running estimates for inference (Algorithm 2);
- layer norm (Ba, Kiros & Hinton 2016, "Layer Normalization", arXiv 1607.06450): over the
  trailing ``normalized_shape`` axes of each sample;
- instance norm (Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization: The Missing
  Ingredient for Fast Stylization", arXiv 1607.08022): over the spatial axes, per sample and
  channel;
- group norm (Wu & He 2018, "Group Normalization", arXiv 1803.08494): over the spatial axes
  and the channels of one of ``num_groups`` groups, per sample.

Local response normalization (Krizhevsky et al. 2012, AlexNet, section 3.3; used again in
GoogLeNet, Szegedy et al. 2014, arXiv 1409.4842) divides each activation by a power of the
sum of squares of its ``size`` neighbouring channels.

These are the readable reference versions, documented as such: models use torch's fused
layers (``nn.BatchNorm2d`` and friends), which are faster and use less memory. The modules
here carry torch's parameter and buffer names, so state dicts move between the two.

Follows the papers:
- batch norm normalises with the biased batch variance in training (Algorithm 1) and keeps an
  unbiased running variance for inference (Algorithm 2 uses ``m/(m-1)·Var``);
- group norm's default of 32 groups is the paper's, left to the caller.

Deviates, and why:
- Batch norm's running statistics are an exponential moving average
  ``r ← (1 - momentum)·r + momentum·batch_stat`` (torch's convention, momentum 0.1) rather than
  the paper's average over many training batches; ``momentum=None`` gives the cumulative
  average ``1/num_batches_tracked``, closer to the paper.
- Instance norm keeps no running statistics (torch's default, ``track_running_stats=False``).
- LRN: torch (and Caffe, which GoogLeNet used) divides ``alpha`` by ``size``; the AlexNet paper
  does not. ``local_response_norm`` takes torch's convention; ``LocalResponseNorm.alexnet()``
  converts the paper's constants (k=2, n=5, α=1e-4, β=0.75) so the maths is the paper's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "normalize", "batch_norm", "layer_norm", "instance_norm", "group_norm", "local_response_norm",
    "BatchNorm2d", "LayerNorm", "InstanceNorm2d", "GroupNorm", "LocalResponseNorm",
]


def normalize(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x - mean) / sqrt(var + eps)`` with mean and biased var over ``dims`` (kept as size-1 axes).

    Returns (normalized x, mean, biased var).
    """
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).square().mean(dim=dims, keepdim=True)  # biased: divides by the count
    return (x - mean) / torch.sqrt(var + eps), mean, var


def _affine(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, shape: tuple[int, ...]):
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


def _check_input(x, min_dim: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < min_dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects an input with at least {min_dim} dims, got {shape}")


def batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, *, training: bool,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """Batch norm over (N, C, *): statistics per channel over N and the remaining axes.

    Training: normalise with the batch mean and biased variance, and (when running buffers
    are given) update them in place: ``r ← (1-momentum)·r + momentum·stat`` with the unbiased
    variance ``var · m/(m-1)``, m the number of values per channel. Eval: normalise with the
    running buffers.
    """
    _check_input(x, 2, "batch_norm")
    c = x.shape[1]
    dims = (0,) + tuple(range(2, x.dim()))
    shape = (1, c) + (1,) * (x.dim() - 2)
    if training:
        count = x.numel() // c
        if count < 2:
            raise ValueError(f"batch_norm needs more than one value per channel in training, got input {tuple(x.shape)}")
        y, mean, var = normalize(x, dims, eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.flatten())
                running_var.mul_(1 - momentum).add_(momentum * var.flatten() * count / (count - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in eval mode needs running_mean and running_var")
        y = (x - running_mean.view(shape)) / torch.sqrt(running_var.view(shape) + eps)
    return _affine(y, weight, bias, shape)


def layer_norm(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Layer norm over the trailing axes ``normalized_shape`` of x (..., *normalized_shape)."""
    normalized_shape = tuple(normalized_shape)
    if tuple(x.shape[x.dim() - len(normalized_shape):]) != normalized_shape:
        raise ValueError(f"layer_norm: input {tuple(x.shape)} does not end in normalized_shape {normalized_shape}")
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    y, _, _ = normalize(x, dims, eps)
    return _affine(y, weight, bias, normalized_shape)


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  eps: float = 1e-5) -> torch.Tensor:
    """Instance norm over (N, C, *spatial): statistics per sample and channel over the spatial axes."""
    _check_input(x, 3, "instance_norm")
    y, _, _ = normalize(x, tuple(range(2, x.dim())), eps)
    return _affine(y, weight, bias, (1, x.shape[1]) + (1,) * (x.dim() - 2))


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Group norm over (N, C, *): statistics per sample over each group of C/G channels and the spatial axes."""
    _check_input(x, 2, "group_norm")
    n, c = x.shape[:2]
    if not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(f"group_norm: num_groups must be a positive int dividing {c} channels, got {num_groups!r}")
    grouped = x.reshape(n, num_groups, -1)  # (N, G, C/G · spatial)
    y, _, _ = normalize(grouped, (2,), eps)
    return _affine(y.view(x.shape), weight, bias, (1, c) + (1,) * (x.dim() - 2))


def local_response_norm(x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> torch.Tensor:
    """``b_c = a_c / (k + alpha/size · Σ_{c'} a_{c'}²)^beta``, c' from c - size//2 to c + (size-1)//2.

    x: (N, C, *). Channels beyond the edges count as zero. This is torch's (and Caffe's)
    convention; the AlexNet paper's alpha is this alpha divided by ``size``.
    """
    _check_input(x, 3, "local_response_norm")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"local_response_norm: size must be a positive int, got {size!r}")
    n, c = x.shape[:2]
    squares = x.square().reshape(n, 1, c, -1)  # (N, 1, C, L)
    squares = F.pad(squares, (0, 0, size // 2, (size - 1) // 2))  # zero channels beyond the edges
    window_sum = F.unfold(squares, (size, 1)).view(n, size, c, -1).sum(dim=1)  # (N, C, L): Σ over the window
    scale = (k + alpha / size * window_sum).pow(beta)
    return x / scale.view(x.shape)


class BatchNorm2d(nn.Module):
    """Batch norm for (N, C, H, W) (any (N, C, *) works), with torch's parameters and buffers."""

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) got input {tuple(x.shape)}; "
                             f"expected (N, {self.num_features}, ...)")
        use_batch_stats = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        # the buffers are None when not tracking; in training they are updated, in eval they normalise
        return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=use_batch_stats, momentum=momentum, eps=self.eps)


class LayerNorm(nn.Module):
    """Layer norm over the trailing ``normalized_shape`` axes, torch's parameter names."""

    def __init__(self, normalized_shape: int | tuple[int, ...], *, eps: float = 1e-5,
                 elementwise_affine: bool = True) -> None:
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.normalized_shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class InstanceNorm2d(nn.Module):
    """Instance norm (no running statistics; ``affine=False`` by default, like torch)."""

    def __init__(self, num_features: int, *, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm(x, self.weight, self.bias, self.eps)


class GroupNorm(nn.Module):
    """Group norm with ``num_groups`` groups of ``num_channels / num_groups`` channels."""

    def __init__(self, num_groups: int, num_channels: int, *, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if not isinstance(num_groups, int) or num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"num_groups must be a positive int dividing num_channels={num_channels}, got {num_groups!r}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LocalResponseNorm(nn.Module):
    """Local response normalization across channels (torch's convention: alpha divided by size)."""

    def __init__(self, size: int, *, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    @classmethod
    def alexnet(cls, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> "LocalResponseNorm":
        """AlexNet section 3.3: ``b = a / (k + α Σ a²)^β`` with the paper's α (not divided by n)."""
        return cls(size, alpha=alpha * size, beta=beta, k=k)

    @classmethod
    def googlenet(cls) -> "LocalResponseNorm":
        """GoogLeNet's Caffe LRN: size 5, α 1e-4 (divided by size), β 0.75, k 1."""
        return cls(5, alpha=1e-4, beta=0.75, k=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
