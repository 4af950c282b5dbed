"""The canon's losses as small pure functions (the functional core of :mod:`canon.losses`).

Every function takes tensors and returns a tensor, holds no state, and is numerically stable:
it works in log space (``log_softmax``, ``logsigmoid``, ``softplus``) so that logits of ±100
give finite values and finite gradients.

Conventions shared by every loss here:

* ``reduction`` is one of ``"none"`` (one loss per element, sample or class, as each function
  says), ``"mean"`` or ``"sum"``.
* Empty inputs behave as torch does: ``"sum"`` of nothing is ``0``, ``"mean"`` of nothing is
  ``nan`` (0/0, exactly what ``torch.tensor([]).mean()`` and ``F.cross_entropy`` on an empty
  batch return), ``"none"`` returns an empty tensor. The set-level scores (Dice, IoU) are the
  exception and say so.
* Integer class targets may carry ``ignore_index``; ignored entries contribute nothing to the
  loss or to the normaliser of a mean (again as torch's ``cross_entropy``).
* Errors are raised where the bad value enters, naming the expected and actual value.

Papers, one per family, are cited in each function's docstring.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "REDUCTIONS",
    "reduce_loss",
    # regression
    "mse_loss", "rmse_loss", "mae_loss", "smooth_l1_loss",
    # classification
    "cross_entropy", "smooth_one_hot", "soft_target_cross_entropy", "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss", "softmax_focal_loss", "class_balanced_weights", "class_balanced_focal_loss",
    # segmentation
    "dice_score", "dice_loss", "iou_score", "iou_loss", "jaccard_loss", "dice_ce_loss", "bce_dice_loss",
    # detection
    "fast_rcnn_loss_terms", "fast_rcnn_loss",
    # relation extraction
    "adaptive_thresholding_loss", "atlop_loss", "adaptive_thresholding_predict",
    # distributions
    "kl_divergence", "kl_divergence_with_logits", "js_divergence", "js_divergence_with_logits",
]

REDUCTIONS = ("none", "mean", "sum")


# --------------------------------------------------------------------------- shared helpers
def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce an element-wise loss: ``"none"`` -> as is, ``"mean"`` -> mean (nan when empty),
    ``"sum"`` -> sum (0 when empty)."""
    _check_reduction(reduction)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / loss.numel() if loss.numel() else loss.sum() * float("nan")


def _check_same_shape(input: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if input.shape != target.shape:
        raise ValueError(f"{name}: input and target must have the same shape, "
                         f"got input {tuple(input.shape)} and target {tuple(target.shape)}")


def _check_float(x: torch.Tensor, what: str) -> None:
    if not torch.is_floating_point(x):
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")


def _check_class_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, name: str) -> None:
    """logits (N, C, *d), target (N, *d) integer in [0, C) or ignore_index."""
    _check_float(logits, f"{name}: logits")
    if logits.dim() < 2:
        raise ValueError(f"{name}: logits must be (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}")
    if torch.is_floating_point(target) or target.dtype == torch.bool:
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {target.dtype}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"{name}: target shape must be {expected} for logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    valid = target if ignore_index is None else target[target != ignore_index]
    num_classes = logits.shape[1]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        raise ValueError(f"{name}: class indices must lie in [0, {num_classes}) (or equal ignore_index="
                         f"{ignore_index}), got values in [{int(valid.min())}, {int(valid.max())}]")


def _check_class_weight(weight: torch.Tensor | None, num_classes: int, name: str) -> None:
    if weight is not None and tuple(weight.shape) != (num_classes,):
        raise ValueError(f"{name}: weight must have one entry per class, shape ({num_classes},), "
                         f"got {tuple(weight.shape)}")


def _class_dim_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, d1, ...) -> (N * d1 * ..., C)."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


# =========================================================================== regression
def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error, element-wise ``(x - y)^2``. input, target: same shape (any)."""
    _check_same_shape(input, target, "mse_loss")
    return reduce_loss((input - target) ** 2, reduction)


def rmse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Root mean squared error: the square root of the reduced squared error.

    ``"mean"`` gives the usual RMSE ``sqrt(mean((x - y)^2))``; ``"sum"`` gives ``sqrt(sum((x-y)^2))``
    (the L2 norm of the error); ``"none"`` gives the element-wise root squared error ``|x - y|``.
    The root is taken of ``max(mse, tiny)`` so that the gradient at zero error is 0, not nan
    (d sqrt(u)/du is infinite at 0); the value differs from the exact root by at most ``sqrt(tiny)``
    (~1e-19 in float32).
    """
    squared = mse_loss(input, target, reduction)
    return squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt()


def mae_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error (L1), element-wise ``|x - y|``. input, target: same shape (any)."""
    _check_same_shape(input, target, "mae_loss")
    return reduce_loss((input - target).abs(), reduction)


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, beta: float = 1.0,
                   reduction: str = "mean") -> torch.Tensor:
    """Smooth L1 of Fast R-CNN (Girshick, "Fast R-CNN", 2015, arXiv:1504.08083), eq. 3, with
    the transition point ``beta`` of Detectron:

        smooth_L1(x) = 0.5 x^2 / beta   if |x| < beta
                       |x| - 0.5 beta   otherwise          (x = input - target)

    Follows the paper: beta = 1 is eq. 3 exactly. Deviates, and why: ``beta`` is a parameter
    (torchvision's Faster R-CNN uses 1/9); ``beta = 0`` is plain L1 (no division by zero).
    """
    _check_same_shape(input, target, "smooth_l1_loss")
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    diff = (input - target).abs()
    if beta == 0:
        return reduce_loss(diff, reduction)
    loss = torch.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta)
    return reduce_loss(loss, reduction)


# =========================================================================== classification
def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy from logits, with class weights, ignore_index and label smoothing.

    logits (N, C) or (N, C, d1, ...); target (N,) or (N, d1, ...) integer class indices.
    Per element ``l_i = -w_{y_i} log softmax(z_i)_{y_i}``; ``"mean"`` divides the sum by
    ``sum_i w_{y_i}`` over non-ignored elements (the weighted mean torch and sklearn's
    ``log_loss(sample_weight=...)`` use), so with all weights equal it is the plain mean.

    Label smoothing (Szegedy et al., "Rethinking the Inception Architecture", 2015,
    arXiv:1512.00567, section 7) replaces the one-hot target by ``(1 - eps) one_hot + eps / C``;
    the loss becomes ``(1 - eps) l_i + eps / C * sum_c -w_c log p_ic``, normalised as above —
    torch's definition, which this matches with and without weights.

    Follows the paper: the uniform prior u(k) = 1/C mixed in with weight eps.
    Deviates, and why: with class weights the uniform part is weighted per class and the mean
    divides by ``sum w_y`` — torch's convention, kept so results equal ``F.cross_entropy``.
    """
    name = "cross_entropy"
    _check_reduction(reduction)
    _check_class_target(logits, target, ignore_index, name)
    num_classes = logits.shape[1]
    _check_class_weight(weight, num_classes, name)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")

    log_probs = _class_dim_last(F.log_softmax(logits, dim=1))      # (M, C)
    flat_target = target.reshape(-1).long()                         # (M,)
    keep = flat_target != ignore_index
    safe_target = torch.where(keep, flat_target, torch.zeros_like(flat_target))
    class_weight = weight.to(log_probs) if weight is not None else log_probs.new_ones(num_classes)
    sample_weight = class_weight[safe_target] * keep               # w_{y_i}, 0 where ignored
    nll = -log_probs.gather(1, safe_target[:, None]).squeeze(1) * sample_weight
    loss = nll
    if label_smoothing > 0:
        smooth = -(log_probs * class_weight).sum(1) * keep         # sum_c -w_c log p_c
        loss = (1 - label_smoothing) * nll + label_smoothing / num_classes * smooth
    if reduction == "none":
        return loss.reshape(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / sample_weight.sum()                         # nan when nothing counts, as torch


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Integer targets (*) -> smoothed one-hot distributions (*, num_classes):
    ``(1 - smoothing) * one_hot + smoothing / num_classes`` (Szegedy et al. 2015, section 7)."""
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smooth_one_hot: smoothing must be in [0, 1], got {smoothing}")
    one_hot = F.one_hot(target.long(), num_classes).float()
    return one_hot * (1 - smoothing) + smoothing / num_classes


def soft_target_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor,
                              reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against a target distribution: ``-sum_c q_c log softmax(z)_c``.

    logits (N, C); target_probs (N, C), rows summing to 1 (smoothed labels, mixup, a teacher).
    ``"none"`` gives one loss per row (N,)."""
    _check_same_shape(logits, target_probs, "soft_target_cross_entropy")
    _check_float(logits, "soft_target_cross_entropy: logits")
    loss = -(target_probs * F.log_softmax(logits, dim=1)).sum(1)
    return reduce_loss(loss, reduction)


def binary_cross_entropy_with_logits(logits: torch.Tensor, target: torch.Tensor,
                                     weight: torch.Tensor | None = None,
                                     pos_weight: torch.Tensor | None = None,
                                     reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy on logits: ``-w [p_w y log s(x) + (1 - y) log(1 - s(x))]``.

    logits, target: same shape (any), target in [0, 1] (soft labels allowed); ``weight``
    broadcasts to the element shape; ``pos_weight`` (broadcasting over the last dimension, one
    per class) up-weights positives. Stable form: ``log s(x) = -softplus(-x)`` and
    ``log(1 - s(x)) = -softplus(x)``, so no probability is ever formed.
    """
    _check_same_shape(logits, target, "binary_cross_entropy_with_logits")
    _check_float(logits, "binary_cross_entropy_with_logits: logits")
    target = target.to(logits.dtype)
    positive_term = F.softplus(-logits)                     # -log sigmoid(x)
    if pos_weight is not None:
        positive_term = positive_term * pos_weight
    loss = target * positive_term + (1 - target) * F.softplus(logits)
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction)


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25,
                       gamma: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Focal loss, sigmoid form, of RetinaNet (Lin et al., "Focal Loss for Dense Object
    Detection", 2017, arXiv:1708.02002), eq. 5:

        FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t),
        p_t = p if y = 1 else 1 - p,   alpha_t = alpha if y = 1 else 1 - alpha.

    logits, target: same shape (any), target in {0, 1} (soft labels use the same algebra,
    ``1 - p_t = y (1 - p) + (1 - y) p``, as torchvision's ``sigmoid_focal_loss``).

    Follows the paper: alpha = 0.25, gamma = 2 defaults; gamma = 0 and alpha = None give BCE.
    Deviates, and why: the default reduction is ``"mean"`` over elements, like every loss here;
    RetinaNet divides the sum by the number of foreground anchors — use ``reduction="sum"`` and
    divide. ``alpha=None`` (or negative, torchvision's convention) turns off the alpha weighting.
    """
    if gamma < 0:
        raise ValueError(f"sigmoid_focal_loss: gamma must be >= 0, got {gamma}")
    ce = binary_cross_entropy_with_logits(logits, target, reduction="none")    # -log p_t
    target = target.to(logits.dtype)
    one_minus_p_t = target * torch.sigmoid(-logits) + (1 - target) * torch.sigmoid(logits)
    # clamp: (1 - p_t)^gamma has an infinite slope at 0 for gamma < 1
    loss = ce * one_minus_p_t.clamp_min(torch.finfo(logits.dtype).tiny) ** gamma
    if alpha is not None and alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return reduce_loss(loss, reduction)


def softmax_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                       weight: torch.Tensor | None = None, ignore_index: int = -100,
                       reduction: str = "mean") -> torch.Tensor:
    """Focal loss, softmax multi-class form: ``-w_y (1 - p_y)^gamma log p_y``
    (Lin et al. 2017, arXiv:1708.02002, the multi-class extension noted in its appendix).

    logits (N, C) or (N, C, d1, ...); target (N,) or (N, d1, ...) integer, ``ignore_index``
    skipped. ``weight`` (C,) plays the role of alpha_t per class. ``"mean"`` normalises like
    :func:`cross_entropy` (by the sum of ``w_y``), so gamma = 0 equals weighted cross-entropy.
    ``(1 - p_y)^gamma`` is computed as ``-expm1(log p_y)`` so it stays accurate for easy examples.
    """
    name = "softmax_focal_loss"
    _check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"{name}: gamma must be >= 0, got {gamma}")
    _check_class_target(logits, target, ignore_index, name)
    _check_class_weight(weight, logits.shape[1], name)
    log_probs = _class_dim_last(F.log_softmax(logits, dim=1))      # (M, C)
    flat_target = target.reshape(-1).long()
    keep = flat_target != ignore_index
    safe_target = torch.where(keep, flat_target, torch.zeros_like(flat_target))
    log_p_y = log_probs.gather(1, safe_target[:, None]).squeeze(1)  # (M,)
    one_minus_p = (-torch.expm1(log_p_y)).clamp_min(torch.finfo(log_p_y.dtype).tiny)
    sample_weight = keep.to(log_p_y.dtype)
    if weight is not None:
        sample_weight = sample_weight * weight.to(log_p_y)[safe_target]
    loss = -one_minus_p ** gamma * log_p_y * sample_weight
    if reduction == "none":
        return loss.reshape(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / sample_weight.sum()


def class_balanced_weights(samples_per_class: Sequence[int] | torch.Tensor, beta: float = 0.9999,
                           normalize: bool = True) -> torch.Tensor:
    """Class-balanced weights from the effective number of samples (Cui et al.,
    "Class-Balanced Loss Based on Effective Number of Samples", 2019, arXiv:1901.05555), eq. 6:

        w_c = (1 - beta) / (1 - beta^{n_c})         (= 1 / E_{n_c})

    samples_per_class: (C,) positive counts. beta in [0, 1): beta = 0 gives equal weights,
    beta -> 1 tends to inverse frequency 1/n_c. With ``normalize`` (the paper's choice) the
    weights are rescaled to sum to C. Returns float32 (C,).
    """
    counts = torch.as_tensor(samples_per_class, dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"class_balanced_weights: samples_per_class must be a non-empty 1-D sequence, "
                         f"got shape {tuple(counts.shape)}")
    if bool((counts <= 0).any()):
        raise ValueError(f"class_balanced_weights: every class needs at least one sample (the effective "
                         f"number of 0 samples is 0), got counts {counts.tolist()}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class_balanced_weights: beta must be in [0, 1), got {beta}")
    # 1 - beta^n computed as -expm1(n log beta): exact for beta near 1 (beta = 0 -> all 1)
    effective_fraction = -torch.expm1(counts * math.log(beta)) if beta > 0 else torch.ones_like(counts)
    weights = (1 - beta) / effective_fraction
    if normalize:
        weights = weights / weights.sum() * counts.numel()
    return weights.float()


def class_balanced_focal_loss(logits: torch.Tensor, target: torch.Tensor,
                              samples_per_class: Sequence[int] | torch.Tensor, beta: float = 0.9999,
                              gamma: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Class-balanced sigmoid focal loss (Cui et al. 2019, arXiv:1901.05555, eq. 8):

        CB_focal(z, y) = -w_y sum_{c=1}^{C} (1 - p_c^t)^gamma log p_c^t,   p_c = sigmoid(z_c),

    with ``w_y`` from :func:`class_balanced_weights` (normalised to sum to C) for the true
    class y, and one-vs-all binary targets. logits (N, C); target (N,) integer.
    ``"none"`` returns one loss per sample (N,); ``"mean"`` averages them (the authors' code
    divides the sum by the number of positive labels, which is N for single-label data).

    Follows the paper: sigmoid form, no alpha (the class weight replaces it).
    """
    name = "class_balanced_focal_loss"
    _check_class_target(logits, target, None, name)
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be (N, C), got {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    weights = class_balanced_weights(samples_per_class, beta).to(logits)
    if weights.numel() != num_classes:
        raise ValueError(f"{name}: samples_per_class has {weights.numel()} entries, logits have "
                         f"{num_classes} classes")
    one_hot = F.one_hot(target.long(), num_classes).to(logits.dtype)
    per_class = sigmoid_focal_loss(logits, one_hot, alpha=None, gamma=gamma, reduction="none")
    loss = weights[target.long()] * per_class.sum(1)                      # (N,)
    return reduce_loss(loss, reduction)


# =========================================================================== segmentation
def _region_terms(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, per_image: bool,
                  name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft intersection, prediction mass and target mass per class (C,) or (N, C).

    Multi-class: logits (N, C, *d) with C >= 2 and integer target (N, *d) -> softmax.
    Binary: logits (N, *d) or (N, 1, *d) with a same-shaped {0, 1} target, or (N, 1, *d) logits
    with an (N, *d) target -> sigmoid, one foreground class.
    """
    _check_float(logits, f"{name}: logits")
    if logits.dim() < 2:
        raise ValueError(f"{name}: logits must be at least (N, C), got {tuple(logits.shape)}")
    binary = logits.shape == target.shape or (logits.dim() == target.dim() + 1 and logits.shape[1] == 1)
    if binary:
        # one foreground class: flatten everything after the batch dimension
        per_sample = math.prod(logits.shape[1:])
        logits, target = logits.reshape(logits.shape[0], 1, per_sample), target.reshape(target.shape[0], 1, per_sample)
        probs = torch.sigmoid(logits)                                    # (N, 1, M)
        if ignore_index is not None:
            valid = (target != ignore_index).to(probs.dtype)
            target = torch.where(target == ignore_index, torch.zeros_like(target), target)
        else:
            valid = torch.ones_like(probs)
        if bool(((target != 0) & (target != 1)).any()):
            raise ValueError(f"{name}: binary targets must be 0 or 1 (or ignore_index={ignore_index})")
        target_1h = target.to(probs.dtype)
    else:
        if logits.dim() != target.dim() + 1:
            raise ValueError(f"{name}: expected logits (N, C, *d) with integer target (N, *d), or same-shaped "
                             f"binary logits and target; got logits {tuple(logits.shape)}, target "
                             f"{tuple(target.shape)}")
        _check_class_target(logits, target, ignore_index, name)
        probs = torch.softmax(logits, dim=1)                             # (N, C, *d)
        keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        safe = torch.where(keep, target, torch.zeros_like(target))
        target_1h = F.one_hot(safe.long(), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        valid = keep.unsqueeze(1).to(probs.dtype)
    probs, target_1h = probs * valid, target_1h * valid
    dims = tuple(range(2, probs.dim())) if per_image else (0,) + tuple(range(2, probs.dim()))
    intersection = (probs * target_1h).sum(dims)
    return intersection, probs.sum(dims), target_1h.sum(dims)


def dice_score(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None,
               smooth: float = 1.0, per_image: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Soft Dice per class, ``(2 |P ∩ G| + smooth) / (|P| + |G| + smooth)`` on probabilities.

    Shapes as :func:`dice_loss`. Returns (C,) (summed over the batch) or (N, C) with ``per_image``.
    """
    inter, pred, true = _region_terms(logits, target, ignore_index, per_image, "dice_score")
    return (2 * inter + smooth) / (pred + true + smooth).clamp_min(eps)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None,
              smooth: float = 1.0, per_image: bool = False, reduction: str = "mean",
              eps: float = 1e-7) -> torch.Tensor:
    """Soft Dice loss ``1 - Dice`` (Milletari et al., "V-Net: Fully Convolutional Neural Networks
    for Volumetric Medical Image Segmentation", 2016, arXiv:1606.04797), averaged over classes.

    Multi-class: logits (N, C, *d), C >= 2, integer target (N, *d) -> softmax probabilities,
    one score per class (background included). Binary: logits and {0, 1} target of the same
    shape, or logits (N, 1, *d) and target (N, *d) -> sigmoid, one foreground score.
    Pixels equal to ``ignore_index`` are removed from both P and G.

    Follows the paper: Dice of soft probabilities against the one-hot target, so it is
    differentiable and insensitive to the foreground/background ratio.
    Deviates, and why: plain sums ``|P| + |G|`` in the denominator rather than V-Net's sums of
    squares (the common form, e.g. segmentation_models_pytorch, equal to the hard Dice/F1 at
    one-hot probabilities); a ``smooth`` term; several classes averaged.

    Scores pool the whole batch (P, G summed over N and pixels), as segmentation_models_pytorch
    does; ``per_image=True`` scores each image separately. ``"none"`` returns the per-class loss
    (C,) or (N, C); ``"mean"``/``"sum"`` reduce over all of them. ``smooth`` (Laplace smoothing)
    makes a class absent from both prediction and target score 1 (loss 0) — so an empty batch
    gives loss 0, not nan; with ``smooth=0`` the denominator is clamped by ``eps``.
    """
    _check_reduction(reduction)
    loss = 1 - dice_score(logits, target, ignore_index, smooth, per_image, eps)
    return reduce_loss(loss, reduction)


def iou_score(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None,
              smooth: float = 1.0, per_image: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Soft IoU (Jaccard) per class, ``(|P ∩ G| + smooth) / (|P| + |G| - |P ∩ G| + smooth)``."""
    inter, pred, true = _region_terms(logits, target, ignore_index, per_image, "iou_score")
    return (inter + smooth) / (pred + true - inter + smooth).clamp_min(eps)


def iou_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None,
             smooth: float = 1.0, per_image: bool = False, reduction: str = "mean",
             eps: float = 1e-7) -> torch.Tensor:
    """Soft IoU (Jaccard) loss ``1 - IoU`` (Rahman & Wang, "Optimizing Intersection-Over-Union in
    Deep Neural Networks for Image Segmentation", 2016). Shapes, pooling and reductions as
    :func:`dice_loss`."""
    _check_reduction(reduction)
    loss = 1 - iou_score(logits, target, ignore_index, smooth, per_image, eps)
    return reduce_loss(loss, reduction)


jaccard_loss = iou_loss


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                 ignore_index: int = -100, smooth: float = 1.0, dice_weight: float = 1.0,
                 ce_weight: float = 1.0) -> torch.Tensor:
    """``ce_weight * cross_entropy + dice_weight * dice_loss`` (both means), the usual
    multi-class segmentation combination. logits (N, C, *d); target (N, *d) integer."""
    ce = cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)
    dice = dice_loss(logits, target, ignore_index=ignore_index, smooth=smooth)
    return ce_weight * ce + dice_weight * dice


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None,
                  smooth: float = 1.0, dice_weight: float = 1.0, bce_weight: float = 1.0) -> torch.Tensor:
    """``bce_weight * BCE-with-logits + dice_weight * binary dice_loss`` (both means), for
    binary masks. logits and target (N, 1, *d) or (N, *d), same shape, target in {0, 1}."""
    bce = binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pos_weight)
    dice = dice_loss(logits, target, smooth=smooth)
    return bce_weight * bce + dice_weight * dice


# =========================================================================== detection
def fast_rcnn_loss_terms(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: torch.Tensor,
                         regression_targets: torch.Tensor,
                         beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-RoI classification and localisation terms of the Fast R-CNN loss (N,), (N,).

    class_logits (N, K+1), class 0 background; labels (N,) in [0, K]; regression_targets (N, 4)
    encoded (t_x, t_y, t_w, t_h); box_regression (N, 4) class-agnostic, (N, (K+1)*4) per class
    (torchvision's layout, indexed by label) or (N, K*4) per foreground class (indexed by
    label - 1). The localisation term is ``[u >= 1] sum_i smooth_L1(t^u_i - v_i)``: background
    RoIs get 0.
    """
    name = "fast_rcnn_loss"
    _check_class_target(class_logits, labels, None, name)
    if class_logits.dim() != 2:
        raise ValueError(f"{name}: class_logits must be (N, K+1), got {tuple(class_logits.shape)}")
    n, num_classes = class_logits.shape
    if tuple(regression_targets.shape) != (n, 4):
        raise ValueError(f"{name}: regression_targets must be ({n}, 4), got {tuple(regression_targets.shape)}")
    width = box_regression.shape[1] if box_regression.dim() == 2 else -1
    if box_regression.dim() != 2 or box_regression.shape[0] != n or width not in (4, 4 * num_classes,
                                                                                     4 * (num_classes - 1)):
        raise ValueError(f"{name}: box_regression must be ({n}, 4), ({n}, {4 * num_classes}) or "
                         f"({n}, {4 * (num_classes - 1)}) for {num_classes} classes including background, "
                         f"got {tuple(box_regression.shape)}")
    cls_term = cross_entropy(class_logits, labels, reduction="none")            # (N,)
    if width == 4:
        boxes = box_regression                                                   # (N, 4)
    else:
        index = labels if width == 4 * num_classes else (labels - 1).clamp_min(0)
        rows = torch.arange(n, device=box_regression.device)
        boxes = box_regression.reshape(n, width // 4, 4)[rows, index.long()]  # (N, 4)
    foreground = (labels > 0).to(box_regression.dtype)
    loc_term = smooth_l1_loss(boxes, regression_targets, beta=beta, reduction="none").sum(1) * foreground
    return cls_term, loc_term


def fast_rcnn_loss(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: torch.Tensor,
                   regression_targets: torch.Tensor, lambda_: float = 1.0, beta: float = 1.0,
                   reduction: str = "mean") -> torch.Tensor:
    """Fast R-CNN multi-task loss (Girshick, "Fast R-CNN", 2015, arXiv:1504.08083), eq. 1:

        L(p, u, t^u, v) = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)

    Shapes as :func:`fast_rcnn_loss_terms`. ``"none"`` gives the per-RoI loss (N,); ``"mean"``
    divides the sum by N, all RoIs — as the paper's Caffe implementation and torchvision's
    ``fastrcnn_loss`` normalise the box term — so the mean is ``mean CE + lambda * sum L_loc / N``.

    Follows the paper: lambda = 1, beta = 1 defaults, foreground-only localisation.
    Deviates, and why: ``beta`` is exposed (torchvision uses 1/9) and three box layouts accepted.
    """
    _check_reduction(reduction)
    cls_term, loc_term = fast_rcnn_loss_terms(class_logits, box_regression, labels, regression_targets, beta)
    return reduce_loss(cls_term + lambda_ * loc_term, reduction)


# =========================================================================== relation extraction
def adaptive_thresholding_loss(logits: torch.Tensor, labels: torch.Tensor,
                               reduction: str = "mean") -> torch.Tensor:
    """Adaptive-thresholding loss of ATLOP (Zhou et al., "Document-Level Relation Extraction with
    Adaptive Thresholding and Localized Context Pooling", 2021, arXiv:2010.11304), section 2.3:

        L1 = -sum_{r in P} log( exp(z_r) / sum_{r' in P ∪ {TH}} exp(z_r') )
        L2 = -log( exp(z_TH) / sum_{r' in N ∪ {TH}} exp(z_r') )

    logits (N, C) with class 0 the learned threshold class TH; labels (N, C) multi-hot over the
    relation classes (column 0 is ignored: TH is never a label). A row with no positive label
    (no relation) gives L1 = 0 and only pushes TH above every class. ``"none"`` returns L1 + L2
    per row (N,). Excluded classes are masked with -inf and selected with ``where`` (not
    multiplied), so logits of ±100 and masks give finite gradients.

    Follows the paper exactly (the authors' code masks with -1e30 instead of -inf).
    """
    name = "adaptive_thresholding_loss"
    _check_float(logits, f"{name}: logits")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"{name}: logits must be (N, C) with C >= 2 (class 0 = TH), got {tuple(logits.shape)}")
    _check_same_shape(logits, labels, name)
    positive = labels.bool().clone()
    positive[:, 0] = False
    threshold = torch.zeros_like(positive)
    threshold[:, 0] = True
    negative = ~positive & ~threshold
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    # L1: each positive class against the other positives and TH
    log_p1 = F.log_softmax(torch.where(positive | threshold, logits, neg_inf), dim=1)
    loss1 = -torch.where(positive, log_p1, torch.zeros_like(log_p1)).sum(1)
    # L2: TH against the negatives
    log_p2 = F.log_softmax(torch.where(negative | threshold, logits, neg_inf), dim=1)
    loss2 = -log_p2[:, 0]
    return reduce_loss(loss1 + loss2, reduction)


atlop_loss = adaptive_thresholding_loss


def adaptive_thresholding_predict(logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """ATLOP's decision rule: class r is predicted when ``z_r > z_TH``; a row with no such class
    predicts TH (column 0, "no relation"). ``top_k`` keeps at most the k highest-scoring
    positives per row. logits (N, C) -> multi-hot predictions (N, C) float."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"adaptive_thresholding_predict: logits must be (N, C) with C >= 2, got "
                         f"{tuple(logits.shape)}")
    above = logits > logits[:, :1]
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"adaptive_thresholding_predict: top_k must be >= 1, got {top_k}")
        k = min(top_k, logits.shape[1])
        kth = logits.topk(k, dim=1).values[:, -1:]
        above = above & (logits >= kth)
    above[:, 0] = False
    prediction = above.to(logits.dtype)
    prediction[:, 0] = (~above.any(1)).to(logits.dtype)
    return prediction


# =========================================================================== distributions
def _check_distribution_pair(p: torch.Tensor, q: torch.Tensor, name: str) -> None:
    _check_same_shape(p, q, name)
    _check_float(p, f"{name}: p")
    _check_float(q, f"{name}: q")


def _xlogy_ratio(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """p (log p - log q) with the convention 0 log 0 = 0."""
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


def kl_divergence(p: torch.Tensor, q: torch.Tensor, dim: int = -1, reduction: str = "mean") -> torch.Tensor:
    """Kullback-Leibler divergence ``KL(p || q) = sum p log(p / q)`` in nats, along ``dim``.

    p, q: probability distributions along ``dim`` (same shape). ``0 log 0 = 0``; where
    ``p > 0`` and ``q = 0`` the divergence is +inf, its true value. ``"none"`` returns one value
    per distribution (the shape without ``dim``); ``"mean"`` averages over distributions — torch's
    ``F.kl_div(..., reduction="batchmean")`` for 2-D input, not its element-wise ``"mean"``.
    """
    _check_distribution_pair(p, q, "kl_divergence")
    log_p = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
    log_q = torch.log(torch.where(p > 0, q, torch.ones_like(q)))   # log q only where it counts
    return reduce_loss(_xlogy_ratio(p, log_p, log_q).sum(dim), reduction)


def kl_divergence_with_logits(p_logits: torch.Tensor, q_logits: torch.Tensor, dim: int = -1,
                              temperature: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """``KL(softmax(p_logits / T) || softmax(q_logits / T))`` computed from log-softmaxes (stable
    for any logits). Multiply by ``T^2`` yourself for Hinton et al.'s distillation scaling."""
    _check_distribution_pair(p_logits, q_logits, "kl_divergence_with_logits")
    if temperature <= 0:
        raise ValueError(f"kl_divergence_with_logits: temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(p_logits / temperature, dim=dim)
    log_q = F.log_softmax(q_logits / temperature, dim=dim)
    return reduce_loss((log_p.exp() * (log_p - log_q)).sum(dim), reduction)


def js_divergence(p: torch.Tensor, q: torch.Tensor, dim: int = -1, reduction: str = "mean") -> torch.Tensor:
    """Jensen-Shannon divergence ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2``, ``m = (p + q) / 2``,
    in nats (so 0 <= JS <= log 2), along ``dim``. Symmetric and always finite. Its square root is
    scipy's ``jensenshannon`` distance. Reductions as :func:`kl_divergence`."""
    _check_distribution_pair(p, q, "js_divergence")
    tiny = torch.finfo(p.dtype).tiny
    m = (p + q) / 2
    log_p, log_q, log_m = (torch.log(x.clamp_min(tiny)) for x in (p, q, m))
    js = 0.5 * (_xlogy_ratio(p, log_p, log_m) + _xlogy_ratio(q, log_q, log_m)).sum(dim)
    return reduce_loss(js, reduction)


def js_divergence_with_logits(p_logits: torch.Tensor, q_logits: torch.Tensor, dim: int = -1,
                              reduction: str = "mean") -> torch.Tensor:
    """JS divergence of ``softmax(p_logits)`` and ``softmax(q_logits)``, with
    ``log m = logaddexp(log p, log q) - log 2`` so no probability underflows into a log."""
    _check_distribution_pair(p_logits, q_logits, "js_divergence_with_logits")
    log_p = F.log_softmax(p_logits, dim=dim)
    log_q = F.log_softmax(q_logits, dim=dim)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m)).sum(dim)
    return reduce_loss(js, reduction)
