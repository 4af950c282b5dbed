"""Activations and dropout, written from their formulas.

- sigmoid ``σ(x) = 1 / (1 + e^{-x})``, with ``σ'(x) = σ(x)(1 - σ(x))``; saturates, so deep
  stacks of it vanish gradients (at most 1/4 per layer);
- tanh ``(e^x - e^{-x}) / (e^x + e^{-x}) = 2σ(2x) - 1``: a zero-centred, rescaled sigmoid;
- ReLU ``max(0, x)`` (Nair & Hinton 2010, "Rectified Linear Units Improve Restricted Boltzmann
  Machines"; Krizhevsky et al. 2012 found it trains several times faster than tanh);
- leaky ReLU ``x if x > 0 else a·x`` (Maas, Hannun & Ng 2013, "Rectifier Nonlinearities Improve
  Neural Network Acoustic Models", a = 0.01);
- ReLU6 ``min(max(0, x), 6)`` (Krizhevsky 2010, "Convolutional Deep Belief Networks on
  CIFAR-10"; MobileNets, arXiv 1704.04861, for low-precision robustness);
- dropout (Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov 2014, "Dropout: A Simple
  Way to Prevent Neural Networks from Overfitting", JMLR 15): in training each unit is zeroed
  with probability p.

Follows the papers: the formulas above, with the derivative at a kink the one torch uses
(0 for ReLU at 0, ``a`` for leaky ReLU at 0, 0 for ReLU6 at 0 and 6).

Deviates, and why:
- Dropout is "inverted": kept units are scaled by ``1/(1-p)`` during training and the layer is
  the identity at test time, which keeps the expectation ``E[dropout(x)] = x``. The paper
  instead keeps units unscaled and multiplies the weights by the keep probability at test
  time; the two give the same expected activations, and inverted dropout needs no change to
  the network at inference. (Note the paper's p is the *keep* probability; here, as in torch,
  p is the *drop* probability.)
- sigmoid and tanh are evaluated in a form that never exponentiates a large positive number
  (``e^{-|x|}``), so they and their gradients are finite for every finite input; the maths is
  the same.
- These are readable reference versions; models use torch's built-ins.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "relu6", "dropout",
           "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "ReLU6", "Dropout"]


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """σ(x) = 1 / (1 + e^{-x}); for x < 0 written as e^{x} / (1 + e^{x}). Elementwise."""
    pos, neg = x.clamp(min=0), x.clamp(max=0)  # each branch only sees arguments that cannot overflow
    return torch.where(x >= 0, 1 / (1 + torch.exp(-pos)), torch.exp(neg) / (1 + torch.exp(neg)))


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) = (e^x - e^{-x}) / (e^x + e^{-x}) = (1 - e^{-2x}) / (1 + e^{-2x}) for x >= 0; odd. Elementwise."""
    pos, neg = x.clamp(min=0), x.clamp(max=0)
    return torch.where(x >= 0, (1 - torch.exp(-2 * pos)) / (1 + torch.exp(-2 * pos)),
                       (torch.exp(2 * neg) - 1) / (torch.exp(2 * neg) + 1))


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(0, x). Elementwise."""
    return torch.where(x > 0, x, torch.zeros_like(x))


def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """x for x > 0, ``negative_slope · x`` otherwise. Elementwise."""
    return torch.where(x > 0, x, negative_slope * x)


def relu6(x: torch.Tensor) -> torch.Tensor:
    """min(max(0, x), 6). Elementwise."""
    return torch.where(x <= 0, torch.zeros_like(x), torch.where(x >= 6, torch.full_like(x, 6.0), x))


def dropout(x: torch.Tensor, p: float = 0.5, *, training: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout: in training zero each element with probability p and scale the rest by 1/(1-p).

    Identity in eval. p = 1 zeroes everything. ``generator`` makes the mask reproducible.
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p!r}")
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0
    keep = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) >= p  # P(keep) = 1 - p
    return x * keep / (1 - p)  # E[out] = (1-p) · x / (1-p) = x


class Sigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sigmoid(x)


class Tanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh(x)


class ReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu(x)


class LeakyReLU(nn.Module):
    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class ReLU6(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu6(x)


class Dropout(nn.Module):
    """Inverted dropout: active in ``train()``, identity in ``eval()``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p!r}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
