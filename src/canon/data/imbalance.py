"""Class imbalance: per-class loss weights and a sampler that draws the classes equally often.

Effective-number weights: Y. Cui, M. Jia, T.-Y. Lin, Y. Song, S. Belongie, "Class-Balanced Loss
Based on Effective Number of Samples", CVPR 2019, arXiv:1901.05555.

Follows the paper:
  - the effective number of samples of a class with ``n`` samples is
    ``E_n = (1 - beta^n) / (1 - beta)`` (eq. 3), its weight ``1 / E_n = (1 - beta) / (1 - beta^n)``;
  - the weights are rescaled to sum to the number of classes (section 4, "normalized so that
    sum_i alpha_i = C"); ``beta = 0`` gives equal weights, ``beta -> 1`` inverse frequency.

Deviates, and why:
  - a class with no samples gets weight 0 and is left out of the normalisation: it never appears
    as a target, so its weight cannot matter, and an infinite weight would poison the sum.

``method="inverse"`` is ``N / (K * n_c)`` (scikit-learn's ``class_weight="balanced"``), with ``K``
the number of classes that occur, so that the weighted sample count stays ``N``.
"""
from __future__ import annotations

import torch
from torch.utils.data import WeightedRandomSampler

__all__ = ["class_counts", "class_weights", "balanced_sampler", "WEIGHT_METHODS"]

WEIGHT_METHODS = ("inverse", "effective")


def _check_targets(targets, num_classes: int | None = None) -> torch.Tensor:
    targets = torch.as_tensor(targets)
    if targets.dim() != 1 or targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be a 1-D integer tensor of class indices, got dtype {targets.dtype} "
                         f"and shape {tuple(targets.shape)}")
    if len(targets) == 0:
        raise ValueError("targets is empty: no labels to count")
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ValueError(f"targets must lie in {limit}, got values from {low} to {high}")
    return targets.long()


def class_counts(targets, num_classes: int) -> torch.Tensor:
    """How many samples each class has: ``long (num_classes,)``."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return torch.bincount(_check_targets(targets, num_classes), minlength=num_classes)


def class_weights(targets, num_classes: int, method: str = "inverse", beta: float = 0.999) -> torch.Tensor:
    """Per-class loss weights ``float32 (num_classes,)``, e.g. for ``nn.CrossEntropyLoss(weight=...)``.

    ``method="inverse"``: ``N / (K * n_c)``; ``method="effective"``: ``(1 - beta) / (1 - beta^n_c)``
    rescaled to sum to ``K`` (Cui et al. 2019). ``K`` counts the classes present; absent classes
    get 0. ``beta`` must lie in ``[0, 1)`` and is used only by ``"effective"``.
    """
    if method not in WEIGHT_METHODS:
        raise ValueError(f"method must be one of {WEIGHT_METHODS}, got {method!r}")
    counts = class_counts(targets, num_classes).double()
    present = counts > 0
    k = int(present.sum())
    weights = torch.zeros(num_classes, dtype=torch.float64)
    if method == "inverse":
        weights[present] = counts.sum() / (k * counts[present])
    else:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        n = counts[present]
        effective = -torch.expm1(n * torch.log(torch.tensor(beta, dtype=torch.float64)))  # 1 - beta^n
        raw = (1.0 - beta) / effective
        weights[present] = raw / raw.sum() * k
    return weights.float()


def balanced_sampler(targets, num_samples: int | None = None,
                     generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """A sampler that draws every class equally often in expectation.

    Each sample is drawn with probability proportional to ``1 / n_c`` of its class, with
    replacement, ``num_samples`` times per epoch (default ``len(targets)``): rare classes are
    over-sampled and common ones under-sampled. Pass it as ``DataLoader(..., sampler=...)``
    (and no ``shuffle``).
    """
    targets = _check_targets(targets)
    if num_samples is None:
        num_samples = len(targets)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    counts = torch.bincount(targets).double()
    per_sample = 1.0 / counts[targets]  # (N,)
    return WeightedRandomSampler(per_sample, num_samples=num_samples, replacement=True, generator=generator)
