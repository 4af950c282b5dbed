"""Thin ``nn.Module`` wrappers over :mod:`canon.losses.functional`.

Each class stores its options (class weights as buffers, so they follow ``.to(device)`` and
land in ``state_dict``) and calls the matching function; the maths and the papers live there.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from canon.losses import functional as LF

__all__ = [
    "MSELoss", "RMSELoss", "MAELoss", "SmoothL1Loss",
    "CrossEntropyLoss", "SoftTargetCrossEntropyLoss", "BCEWithLogitsLoss",
    "SigmoidFocalLoss", "FocalLoss", "SoftmaxFocalLoss", "ClassBalancedFocalLoss",
    "DiceLoss", "IoULoss", "JaccardLoss", "DiceCELoss", "BCEDiceLoss",
    "FastRCNNLoss", "AdaptiveThresholdingLoss", "ATLOPLoss",
    "KLDivergence", "JSDivergence",
]


def _checked_reduction(reduction: str) -> str:
    if reduction not in LF.REDUCTIONS:
        raise ValueError(f"reduction must be one of {LF.REDUCTIONS}, got {reduction!r}")
    return reduction


def _optional_buffer(module: nn.Module, name: str, value) -> None:
    module.register_buffer(name, None if value is None else torch.as_tensor(value, dtype=torch.float32))


class _Reduced(nn.Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _checked_reduction(reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


# --------------------------------------------------------------------------- regression
class MSELoss(_Reduced):
    """Mean squared error; see :func:`canon.losses.functional.mse_loss`."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.mse_loss(input, target, self.reduction)


class RMSELoss(_Reduced):
    """Root mean squared error; see :func:`canon.losses.functional.rmse_loss`."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.rmse_loss(input, target, self.reduction)


class MAELoss(_Reduced):
    """Mean absolute error; see :func:`canon.losses.functional.mae_loss`."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.mae_loss(input, target, self.reduction)


class SmoothL1Loss(_Reduced):
    """Smooth L1 with transition ``beta``; see :func:`canon.losses.functional.smooth_l1_loss`."""

    def __init__(self, *, beta: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        if beta < 0:
            raise ValueError(f"SmoothL1Loss: beta must be >= 0, got {beta}")
        self.beta = beta

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.smooth_l1_loss(input, target, self.beta, self.reduction)


# --------------------------------------------------------------------------- classification
class CrossEntropyLoss(_Reduced):
    """Cross-entropy with class ``weight``, ``ignore_index`` and ``label_smoothing``;
    see :func:`canon.losses.functional.cross_entropy`."""

    def __init__(self, *, weight: Sequence[float] | torch.Tensor | None = None, ignore_index: int = -100,
                 label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__(reduction)
        _optional_buffer(self, "weight", weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index,
                                label_smoothing=self.label_smoothing, reduction=self.reduction)


class SoftTargetCrossEntropyLoss(_Reduced):
    """Cross-entropy against target distributions; see
    :func:`canon.losses.functional.soft_target_cross_entropy`."""

    def forward(self, logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
        return LF.soft_target_cross_entropy(logits, target_probs, self.reduction)


class BCEWithLogitsLoss(_Reduced):
    """Binary cross-entropy on logits with ``pos_weight``; see
    :func:`canon.losses.functional.binary_cross_entropy_with_logits`."""

    def __init__(self, *, pos_weight: Sequence[float] | torch.Tensor | None = None, reduction: str = "mean"):
        super().__init__(reduction)
        _optional_buffer(self, "pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        return LF.binary_cross_entropy_with_logits(logits, target, weight=weight, pos_weight=self.pos_weight,
                                                   reduction=self.reduction)


class SigmoidFocalLoss(_Reduced):
    """RetinaNet's sigmoid focal loss (alpha = 0.25, gamma = 2); see
    :func:`canon.losses.functional.sigmoid_focal_loss`."""

    def __init__(self, *, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean"):
        super().__init__(reduction)
        if gamma < 0:
            raise ValueError(f"SigmoidFocalLoss: gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.sigmoid_focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, reduction=self.reduction)


FocalLoss = SigmoidFocalLoss


class SoftmaxFocalLoss(_Reduced):
    """Multi-class softmax focal loss with optional per-class ``weight``; see
    :func:`canon.losses.functional.softmax_focal_loss`."""

    def __init__(self, *, gamma: float = 2.0, weight: Sequence[float] | torch.Tensor | None = None,
                 ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(reduction)
        if gamma < 0:
            raise ValueError(f"SoftmaxFocalLoss: gamma must be >= 0, got {gamma}")
        self.gamma, self.ignore_index = gamma, ignore_index
        _optional_buffer(self, "weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.softmax_focal_loss(logits, target, gamma=self.gamma, weight=self.weight,
                                     ignore_index=self.ignore_index, reduction=self.reduction)


class ClassBalancedFocalLoss(_Reduced):
    """Class-balanced sigmoid focal loss of Cui et al. 2019; the effective-number weights are
    computed once from ``samples_per_class`` and kept as a buffer. See
    :func:`canon.losses.functional.class_balanced_focal_loss`."""

    def __init__(self, *, samples_per_class: Sequence[int] | torch.Tensor, beta: float = 0.9999,
                 gamma: float = 2.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.register_buffer("samples_per_class", torch.as_tensor(samples_per_class, dtype=torch.float64))
        self.register_buffer("class_weights", LF.class_balanced_weights(samples_per_class, beta))
        self.beta, self.gamma = beta, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.class_balanced_focal_loss(logits, target, self.samples_per_class, beta=self.beta,
                                            gamma=self.gamma, reduction=self.reduction)


# --------------------------------------------------------------------------- segmentation
class DiceLoss(_Reduced):
    """Soft Dice loss, multi-class (softmax, integer target) or binary (sigmoid); see
    :func:`canon.losses.functional.dice_loss`."""

    def __init__(self, *, ignore_index: int | None = None, smooth: float = 1.0, per_image: bool = False,
                 reduction: str = "mean"):
        super().__init__(reduction)
        self.ignore_index, self.smooth, self.per_image = ignore_index, smooth, per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.dice_loss(logits, target, ignore_index=self.ignore_index, smooth=self.smooth,
                            per_image=self.per_image, reduction=self.reduction)


class IoULoss(_Reduced):
    """Soft IoU (Jaccard) loss; see :func:`canon.losses.functional.iou_loss`."""

    def __init__(self, *, ignore_index: int | None = None, smooth: float = 1.0, per_image: bool = False,
                 reduction: str = "mean"):
        super().__init__(reduction)
        self.ignore_index, self.smooth, self.per_image = ignore_index, smooth, per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.iou_loss(logits, target, ignore_index=self.ignore_index, smooth=self.smooth,
                           per_image=self.per_image, reduction=self.reduction)


JaccardLoss = IoULoss


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` for multi-class masks; see
    :func:`canon.losses.functional.dice_ce_loss`."""

    def __init__(self, *, weight: Sequence[float] | torch.Tensor | None = None, ignore_index: int = -100,
                 smooth: float = 1.0, ce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        _optional_buffer(self, "weight", weight)
        self.ignore_index, self.smooth = ignore_index, smooth
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.dice_ce_loss(logits, target, weight=self.weight, ignore_index=self.ignore_index,
                               smooth=self.smooth, dice_weight=self.dice_weight, ce_weight=self.ce_weight)


class BCEDiceLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * Dice`` for binary masks; see
    :func:`canon.losses.functional.bce_dice_loss`."""

    def __init__(self, *, pos_weight: float | torch.Tensor | None = None, smooth: float = 1.0,
                 bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        _optional_buffer(self, "pos_weight", pos_weight)
        self.smooth, self.bce_weight, self.dice_weight = smooth, bce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.bce_dice_loss(logits, target, pos_weight=self.pos_weight, smooth=self.smooth,
                                dice_weight=self.dice_weight, bce_weight=self.bce_weight)


# --------------------------------------------------------------------------- detection
class FastRCNNLoss(_Reduced):
    """Fast R-CNN multi-task loss ``L_cls + lambda [u >= 1] L_loc``; see
    :func:`canon.losses.functional.fast_rcnn_loss`."""

    def __init__(self, *, lambda_: float = 1.0, beta: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.lambda_, self.beta = lambda_, beta

    def forward(self, class_logits: torch.Tensor, box_regression: torch.Tensor, labels: torch.Tensor,
                regression_targets: torch.Tensor) -> torch.Tensor:
        return LF.fast_rcnn_loss(class_logits, box_regression, labels, regression_targets, lambda_=self.lambda_,
                                 beta=self.beta, reduction=self.reduction)


# --------------------------------------------------------------------------- relation extraction
class AdaptiveThresholdingLoss(_Reduced):
    """ATLOP's adaptive-thresholding loss (class 0 = the learned threshold TH), with its
    decision rule as :meth:`predict`; see
    :func:`canon.losses.functional.adaptive_thresholding_loss`."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return LF.adaptive_thresholding_loss(logits, labels, self.reduction)

    @staticmethod
    def predict(logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
        return LF.adaptive_thresholding_predict(logits, top_k)


ATLOPLoss = AdaptiveThresholdingLoss


# --------------------------------------------------------------------------- distributions
class KLDivergence(_Reduced):
    """``KL(p || q)`` along ``dim``; probabilities, or logits with ``from_logits`` (then
    ``temperature`` applies). See :func:`canon.losses.functional.kl_divergence`."""

    def __init__(self, *, dim: int = -1, from_logits: bool = False, temperature: float = 1.0,
                 reduction: str = "mean"):
        super().__init__(reduction)
        self.dim, self.from_logits, self.temperature = dim, from_logits, temperature

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            return LF.kl_divergence_with_logits(p, q, dim=self.dim, temperature=self.temperature,
                                                reduction=self.reduction)
        return LF.kl_divergence(p, q, dim=self.dim, reduction=self.reduction)


class JSDivergence(_Reduced):
    """Jensen-Shannon divergence along ``dim`` in nats; probabilities, or logits with
    ``from_logits``. See :func:`canon.losses.functional.js_divergence`."""

    def __init__(self, *, dim: int = -1, from_logits: bool = False, reduction: str = "mean"):
        super().__init__(reduction)
        self.dim, self.from_logits = dim, from_logits

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            return LF.js_divergence_with_logits(p, q, dim=self.dim, reduction=self.reduction)
        return LF.js_divergence(p, q, dim=self.dim, reduction=self.reduction)
