"""Classification metrics: accuracy, top-k accuracy, precision/recall/F1, the confusion matrix.

Definitions (single-label, multi-class; the standard ones, as in scikit-learn):
- confusion matrix ``cm[i, j]`` = number of samples whose true class is i and predicted class j;
- precision_k = cm[k, k] / sum_i cm[i, k], recall_k = cm[k, k] / sum_j cm[k, j],
  F1_k = 2 precision_k recall_k / (precision_k + recall_k) (van Rijsbergen's F-measure, beta = 1);
- averages: ``"macro"`` the unweighted mean over classes, ``"weighted"`` weighted by support
  (true count), ``"micro"`` from the pooled counts (equals accuracy for single-label data).

Follows scikit-learn:
- a 0/0 ratio (a class never predicted, or never present) takes ``zero_division`` (0.0 by
  default, as sklearn's default does after its warning; pass ``float("nan")`` to keep it undefined);
- macro and weighted averages run over the classes seen in ``target`` or ``preds`` (sklearn's
  ``labels=None``), so a class absent from both does not pull the macro mean down.

Deviates, and why:
- ``preds`` may be class indices (N,) or scores/logits (N, K) (arg-max taken), so a model's
  output goes in directly; sklearn takes indices.
- Empty inputs (N = 0) give NaN for accuracies and averages and an all-zero confusion matrix,
  instead of sklearn's error: the metric of no samples is undefined, and NaN says so.

:class:`ClassificationMetrics` accumulates a confusion matrix and top-k hit counts over batches,
so an evaluation never stores all predictions.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["accuracy", "topk_accuracy", "confusion_matrix", "precision_recall_f1",
           "precision_recall_f1_from_confusion", "ClassificationMetrics"]

_AVERAGES = ("macro", "micro", "weighted", None)


# ----------------------------------------------------------------------------- input checks
def _check_target(target: torch.Tensor, name: str) -> None:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name}: target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dim() != 1:
        raise ValueError(f"{name}: target must be (N,) class indices, got shape {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {target.dtype}")


def _check_range(labels: torch.Tensor, num_classes: int, name: str, what: str) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(f"{name}: {what} must be class indices in [0, {num_classes - 1}], found {bad}")


def _check_num_classes(num_classes, name: str) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")


def _as_labels(preds: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """Predicted class indices (N,) from indices (N,) or scores (N, K); checks against ``target``."""
    _check_target(target, name)
    if not isinstance(preds, torch.Tensor):
        raise TypeError(f"{name}: preds must be a torch.Tensor, got {type(preds).__name__}")
    if preds.dim() == 2:
        labels = preds.argmax(dim=1) if preds.shape[0] else preds.new_zeros(0, dtype=torch.long)
    elif preds.dim() == 1:
        if preds.is_floating_point():
            raise TypeError(f"{name}: 1-D preds must be integer class indices, got dtype {preds.dtype}; "
                            f"pass (N, K) scores to take the arg-max")
        labels = preds
    else:
        raise ValueError(f"{name}: preds must be (N,) class indices or (N, K) scores, got shape "
                         f"{tuple(preds.shape)}")
    if labels.shape[0] != target.shape[0]:
        raise ValueError(f"{name}: preds and target hold different numbers of samples: "
                         f"{labels.shape[0]} and {target.shape[0]}")
    return labels.long()


def _check_scores(scores: torch.Tensor, target: torch.Tensor, k: int, name: str) -> None:
    _check_target(target, name)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{name}: top-k needs (N, K) scores, got {shape}")
    if scores.shape[0] != target.shape[0]:
        raise ValueError(f"{name}: scores and target hold different numbers of samples: "
                         f"{scores.shape[0]} and {target.shape[0]}")
    if not isinstance(k, int) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"{name}: k must be an integer in [1, {scores.shape[1]}] (the number of "
                         f"classes), got {k!r}")
    _check_range(target, scores.shape[1], name, "target")


def _topk_hits(scores: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: is the true class among the k highest scores? Ties are broken by ``torch.topk``."""
    return (scores.topk(k, dim=1).indices == target[:, None]).any(dim=1)


# ----------------------------------------------------------------------------- functional metrics
def accuracy(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of samples whose predicted class equals the target; NaN for no samples.

    ``preds``: (N,) class indices or (N, K) scores; ``target``: (N,) class indices.
    """
    labels = _as_labels(preds, target, "accuracy")
    if labels.numel() == 0:
        return float("nan")
    return (labels == target).double().mean().item()


def topk_accuracy(scores: torch.Tensor, target: torch.Tensor, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest of (N, K) ``scores``.

    Matches ``sklearn.metrics.top_k_accuracy_score`` when scores have no ties; NaN for N = 0.
    """
    _check_scores(scores, target, k, "topk_accuracy")
    if target.numel() == 0:
        return float("nan")
    return _topk_hits(scores, target, k).double().mean().item()


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class.

    ``preds``: (N,) class indices or (N, K) scores; ``target``: (N,) class indices in
    [0, num_classes). Same layout as ``sklearn.metrics.confusion_matrix(target, preds)``.
    """
    _check_num_classes(num_classes, "confusion_matrix")
    labels = _as_labels(preds, target, "confusion_matrix")
    _check_range(target, num_classes, "confusion_matrix", "target")
    _check_range(labels, num_classes, "confusion_matrix", "preds")
    return _bincount_confusion(labels, target.long(), num_classes)


def _bincount_confusion(pred_labels: torch.Tensor, true_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion counts of two (M,) in-range index tensors: one ``bincount`` over true * K + pred."""
    flat = true_labels * num_classes + pred_labels
    return torch.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def precision_recall_f1_from_confusion(cm: torch.Tensor, average: str | None = "macro", *,
                                       zero_division: float = 0.0):
    """Precision, recall and F1 from a (K, K) confusion matrix (rows true, columns predicted).

    ``average``: ``"macro"``, ``"micro"``, ``"weighted"`` (three floats) or ``None`` (three (K,)
    float64 tensors, one value per class). See the module docstring for 0/0 and absent classes.
    """
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square (K, K) confusion matrix, got shape {tuple(cm.shape)}")
    cm = cm.double()
    true_positives = cm.diag()
    predicted = cm.sum(dim=0)  # TP + FP
    support = cm.sum(dim=1)  # TP + FN

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, zero_division))

    if average == "micro":
        tp, pred_total, true_total = true_positives.sum(), predicted.sum(), support.sum()
        precision, recall = ratio(tp, pred_total), ratio(tp, true_total)
        f1 = ratio(2 * tp, pred_total + true_total)
        return precision.item(), recall.item(), f1.item()
    precision = ratio(true_positives, predicted)
    recall = ratio(true_positives, support)
    # F1 = 2 TP / (2 TP + FP + FN), the same as 2PR / (P + R) wherever both are defined.
    f1 = ratio(2 * true_positives, predicted + support)
    if average is None:
        return precision, recall, f1
    seen = (predicted + support) > 0
    if average == "macro":
        if not seen.any():
            return float("nan"), float("nan"), float("nan")
        return tuple(v[seen].mean().item() for v in (precision, recall, f1))
    # weighted
    total = support.sum()
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    return tuple(((v * support).sum() / total).item() for v in (precision, recall, f1))


def precision_recall_f1(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                        average: str | None = "macro", *, zero_division: float = 0.0):
    """Precision, recall and F1 of class predictions (see :func:`precision_recall_f1_from_confusion`).

    ``preds``: (N,) class indices or (N, K) scores; ``target``: (N,) class indices.
    Matches ``sklearn.metrics.precision_recall_fscore_support(target, preds, average=...,
    zero_division=...)``.
    """
    cm = confusion_matrix(preds, target, num_classes)
    return precision_recall_f1_from_confusion(cm, average, zero_division=zero_division)


# ----------------------------------------------------------------------------- accumulator
class ClassificationMetrics:
    """Accuracy, top-k accuracy, per-class precision/recall/F1 and the confusion matrix over batches.

    State: a (K, K) int64 confusion matrix and one hit count per k, so memory does not grow with
    the data. ``update(scores, target)`` takes (N, K) scores or logits and (N,) class indices
    ((N,) predicted indices are accepted when ``topk`` is ``(1,)``). For distributed evaluation,
    ``all_reduce`` the tensors in :meth:`state` with ``SUM`` and call :meth:`compute`.

    ``compute()`` returns plain Python values, ready for JSON:
    ``accuracy`` (top-1), ``top{k}_accuracy`` for each other k, ``precision``/``recall``/``f1``
    (lists, one per class), ``macro_precision``/``macro_recall``/``macro_f1`` and
    ``confusion_matrix`` (list of rows, rows = true class), plus ``num_samples``. Before any
    sample has been seen the accuracies and averages are NaN.
    """

    def __init__(self, num_classes: int, topk: Sequence[int] = (1, 5), *, zero_division: float = 0.0):
        _check_num_classes(num_classes, "ClassificationMetrics")
        topk = tuple(topk)
        if not topk or any(not isinstance(k, int) or not 1 <= k <= num_classes for k in topk):
            raise ValueError(f"ClassificationMetrics: topk must hold integers in [1, {num_classes}] "
                             f"(num_classes), got {topk!r}; with few classes use e.g. topk=(1,)")
        self.num_classes = num_classes
        self.topk = tuple(sorted(set(topk)))
        self.zero_division = zero_division
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self.confmat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        self.topk_hits = torch.zeros(len(self.topk), dtype=torch.long)

    def state(self) -> list[torch.Tensor]:
        """The tensors that hold all accumulated counts (to sum across processes)."""
        return [self.confmat, self.topk_hits]

    @torch.no_grad()
    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``scores`` (N, K) (or (N,) indices when topk is (1,)), ``target`` (N,)."""
        name = "ClassificationMetrics.update"
        labels = _as_labels(scores, target, name)
        if scores.dim() == 2 and scores.shape[1] != self.num_classes:
            raise ValueError(f"{name}: scores have {scores.shape[1]} classes, expected num_classes = "
                             f"{self.num_classes}, shape {tuple(scores.shape)}")
        if scores.dim() == 1 and self.topk != (1,):
            raise ValueError(f"{name}: top-{max(self.topk)} accuracy needs (N, K) scores, got (N,) "
                             f"class indices; pass the logits, or build with topk=(1,)")
        target = target.long().cpu()
        labels = labels.cpu()
        _check_range(target, self.num_classes, name, "target")
        _check_range(labels, self.num_classes, name, "preds")
        self.confmat += _bincount_confusion(labels, target, self.num_classes)
        for i, k in enumerate(self.topk):
            hits = (labels == target) if k == 1 else _topk_hits(scores.detach().cpu(), target, k)
            self.topk_hits[i] += hits.sum()

    def compute(self) -> dict:
        """The metrics of everything seen since the last ``reset`` (see the class docstring)."""
        total = int(self.confmat.sum())
        result: dict = {"num_samples": total}
        for k, hits in zip(self.topk, self.topk_hits.tolist()):
            key = "accuracy" if k == 1 else f"top{k}_accuracy"
            result[key] = hits / total if total else float("nan")
        if "accuracy" not in result:  # top-1 always comes from the confusion matrix
            result["accuracy"] = int(self.confmat.diag().sum()) / total if total else float("nan")
        precision, recall, f1 = precision_recall_f1_from_confusion(
            self.confmat, None, zero_division=self.zero_division)
        result.update(precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist())
        macro = precision_recall_f1_from_confusion(self.confmat, "macro", zero_division=self.zero_division)
        result.update(macro_precision=macro[0], macro_recall=macro[1], macro_f1=macro[2])
        result["confusion_matrix"] = self.confmat.tolist()
        return result
