"""Semantic-segmentation metrics from a pixel confusion matrix: pixel accuracy, IoU, Dice.

Paper (the metric set): Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015, arXiv:1411.4038, section 5 ("pixel accuracy, mean accuracy, mean region
intersection over union, frequency weighted IU"); Dice: Dice, "Measures of the Amount of Ecologic
Association Between Species", Ecology 1945 (no arXiv id).

With n_ij the number of pixels of true class i predicted as class j, t_i = sum_j n_ij and
p_j = sum_i n_ij:

- pixel accuracy = sum_i n_ii / sum_i t_i
- class accuracy_i = n_ii / t_i (recall), mean accuracy = its mean
- IoU_i = n_ii / (t_i + p_i - n_ii), mean IoU = its mean
- frequency-weighted IoU = sum_i t_i IoU_i / sum_i t_i
- Dice_i = 2 n_ii / (t_i + p_i) (= the per-class F1 score), mean Dice = its mean

Follows the paper:
- all counts are pooled over the whole dataset before dividing (FCN's definitions, and what
  Pascal VOC and Cityscapes report), not averaged image by image.

Deviates, and why:
- a class with no true and no predicted pixel has an undefined IoU/Dice: it is NaN in the
  per-class lists and left out of the means (the FCN paper leaves this case unsaid; mmseg and
  torchvision's reference scripts do the same). A class that is predicted but never present gets
  IoU 0, since those are real false positives.
- pixels whose target equals ``ignore_index`` (255, Pascal VOC's boundary label) count nowhere.
- before any pixel is seen every metric is NaN.
"""
from __future__ import annotations

import torch

__all__ = ["segmentation_confusion_matrix", "iou_from_confusion", "dice_from_confusion",
           "SegmentationMetrics"]


def _check_num_classes(num_classes, name: str) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")


def segmentation_confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                                  ignore_index: int | None = 255) -> torch.Tensor:
    """(K, K) int64 pixel counts, rows = true class, columns = predicted class.

    ``preds``: (N, H, W) class indices or (N, K, H, W) scores/logits (arg-max over K);
    ``target``: (N, H, W) class indices in [0, K), or ``ignore_index`` (those pixels are dropped).
    Any other shapes work too as long as ``preds`` (indices) and ``target`` have the same shape.
    """
    name = "segmentation_confusion_matrix"
    _check_num_classes(num_classes, name)
    for arg, value in (("preds", preds), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(value).__name__}")
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {target.dtype}")
    if preds.is_floating_point():
        if preds.dim() != target.dim() + 1 or preds.shape[0] != target.shape[0] or preds.shape[2:] != target.shape[1:]:
            raise ValueError(f"{name}: float preds are taken as scores (N, K, H, W) for target (N, H, W); "
                             f"got preds {tuple(preds.shape)} and target {tuple(target.shape)}")
        if preds.shape[1] != num_classes:
            raise ValueError(f"{name}: score preds have {preds.shape[1]} classes, expected num_classes = "
                             f"{num_classes}, shape {tuple(preds.shape)}")
        preds = preds.argmax(dim=1)  # (N, H, W)
    elif preds.shape != target.shape:
        raise ValueError(f"{name}: index preds and target must have the same shape, got "
                         f"{tuple(preds.shape)} and {tuple(target.shape)}")
    preds, target = preds.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        preds, target = preds[keep], target[keep]
    for what, labels in (("target", target), ("preds", preds)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
            raise ValueError(f"{name}: {what} holds {bad}, outside [0, {num_classes - 1}]"
                             + (f" and not ignore_index={ignore_index}" if what == "target" else ""))
    flat = target * num_classes + preds
    return torch.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class intersection over union, (K,) float64; NaN where a class is neither true nor predicted."""
    cm = cm.double()
    intersection = cm.diag()
    union = cm.sum(dim=0) + cm.sum(dim=1) - intersection  # t_i + p_i - n_ii
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, float("nan")))


def dice_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class Dice coefficient 2 n_ii / (t_i + p_i), (K,) float64; NaN where t_i + p_i = 0."""
    cm = cm.double()
    denominator = cm.sum(dim=0) + cm.sum(dim=1)
    return torch.where(denominator > 0, 2 * cm.diag() / denominator.clamp(min=1),
                       torch.full_like(denominator, float("nan")))


def _nanmean(values: torch.Tensor) -> float:
    return values.nanmean().item() if (~values.isnan()).any() else float("nan")


class SegmentationMetrics:
    """Pixel accuracy, per-class and mean IoU and Dice, accumulated over batches.

    The only state is the (K, K) int64 pixel confusion matrix, so memory does not grow with the
    data. ``update(preds, target)`` takes (N, H, W) class indices or (N, K, H, W) logits and the
    (N, H, W) target; pixels labelled ``ignore_index`` are skipped (``None`` keeps every pixel).

    ``compute()`` returns plain Python values, ready for JSON: ``pixel_accuracy``, ``iou`` and
    ``dice`` (lists, one per class, NaN for a class never seen nor predicted), ``miou``,
    ``mean_dice``, ``class_accuracy`` (list), ``mean_accuracy``, ``fwiou`` (frequency-weighted
    IoU), ``confusion_matrix`` (list of rows, rows = true class) and ``num_pixels``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        _check_num_classes(num_classes, "SegmentationMetrics")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"SegmentationMetrics: ignore_index={ignore_index} is a real class index "
                             f"(num_classes={num_classes}); use a value outside [0, {num_classes - 1}] or None")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self.confmat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``preds`` (N, H, W) indices or (N, K, H, W) scores, ``target`` (N, H, W)."""
        self.confmat += segmentation_confusion_matrix(
            preds.detach().cpu(), target.detach().cpu(), self.num_classes, self.ignore_index)

    def compute(self) -> dict:
        """The metrics of every pixel seen since the last ``reset`` (see the class docstring)."""
        cm = self.confmat.double()
        total = cm.sum()
        support = cm.sum(dim=1)  # t_i
        iou, dice = iou_from_confusion(self.confmat), dice_from_confusion(self.confmat)
        class_accuracy = torch.where(support > 0, cm.diag() / support.clamp(min=1),
                                     torch.full_like(support, float("nan")))
        nan = float("nan")
        return {
            "num_pixels": int(total),
            "pixel_accuracy": (cm.diag().sum() / total).item() if total > 0 else nan,
            "iou": iou.tolist(),
            "miou": _nanmean(iou),
            "dice": dice.tolist(),
            "mean_dice": _nanmean(dice),
            "class_accuracy": class_accuracy.tolist(),
            "mean_accuracy": _nanmean(class_accuracy),
            # Classes with no true pixel have weight 0; nansum drops their (possibly NaN) IoU.
            "fwiou": (support * iou).nansum().div(total).item() if total > 0 else nan,
            "confusion_matrix": self.confmat.tolist(),
        }
