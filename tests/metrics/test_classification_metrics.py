"""Classification metrics against scikit-learn (accuracy, top-k, P/R/F1 averages, confusion matrix)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

sk = pytest.importorskip("sklearn.metrics")

from canon.metrics import (ClassificationMetrics, accuracy, confusion_matrix, precision_recall_f1,  # noqa: E402
                           topk_accuracy)

NUM_CLASSES = 7


def _scores_and_target(n: int = 500, num_classes: int = NUM_CLASSES, seed: int = 0, absent: int | None = None):
    """(n, K) float64 scores (no ties) and (n,) targets, imbalanced; class ``absent`` never true."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.linspace(1.0, 3.0, num_classes)
    if absent is not None:
        probs[absent] = 0
    target = torch.multinomial(probs, n, replacement=True, generator=gen)
    scores = torch.randn(n, num_classes, generator=gen, dtype=torch.float64)
    scores[torch.arange(n), target] += 1.0  # better than chance, not perfect
    return scores, target


def test_accuracy_and_topk_equal_sklearn():
    scores, target = _scores_and_target()
    assert accuracy(scores, target) == pytest.approx(sk.accuracy_score(target, scores.argmax(1)), abs=1e-12)
    assert accuracy(scores.argmax(1), target) == pytest.approx(sk.accuracy_score(target, scores.argmax(1)), abs=1e-12)
    for k in (1, 2, 5):
        expected = sk.top_k_accuracy_score(target, scores, k=k, labels=list(range(NUM_CLASSES)))
        assert topk_accuracy(scores, target, k=k) == pytest.approx(expected, abs=1e-12), k
    assert topk_accuracy(scores, target, k=NUM_CLASSES) == 1.0  # every class is in the top K


@pytest.mark.parametrize("absent", [None, 3])
def test_confusion_matrix_equals_sklearn(absent):
    scores, target = _scores_and_target(absent=absent)
    got = confusion_matrix(scores, target, NUM_CLASSES).numpy()
    expected = sk.confusion_matrix(target, scores.argmax(1), labels=list(range(NUM_CLASSES)))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64


@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None])
@pytest.mark.parametrize("absent", [None, 3])
def test_precision_recall_f1_equal_sklearn(average, absent):
    scores, target = _scores_and_target(seed=1, absent=absent)
    preds = scores.argmax(1)
    if absent is not None:
        preds[preds == 5] = 6  # class 5 is never predicted: a 0/0 precision
    got = precision_recall_f1(preds, target, NUM_CLASSES, average=average)
    # sklearn's labels=None: the classes seen in target or preds (what our averages run over)
    labels = None if average is not None else list(range(NUM_CLASSES))
    expected = sk.precision_recall_fscore_support(target, preds, average=average, labels=labels,
                                                  zero_division=0.0)[:3]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g, dtype=np.float64), np.asarray(e, dtype=np.float64), atol=1e-12)


def test_micro_f1_equals_accuracy_for_single_label():
    scores, target = _scores_and_target(seed=2)
    p, r, f = precision_recall_f1(scores, target, NUM_CLASSES, average="micro")
    assert p == pytest.approx(accuracy(scores, target)) and r == pytest.approx(p) and f == pytest.approx(p)


def test_accumulator_over_batches_equals_sklearn_on_everything():
    scores, target = _scores_and_target(n=1003, seed=3)
    metrics = ClassificationMetrics(NUM_CLASSES, topk=(1, 5))
    for start in range(0, 1003, 128):  # uneven last batch
        metrics.update(scores[start:start + 128], target[start:start + 128])
    result = metrics.compute()
    preds = scores.argmax(1)
    assert result["num_samples"] == 1003
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(target, preds), abs=1e-12)
    assert result["top5_accuracy"] == pytest.approx(
        sk.top_k_accuracy_score(target, scores, k=5, labels=list(range(NUM_CLASSES))), abs=1e-12)
    p, r, f, _ = sk.precision_recall_fscore_support(target, preds, labels=list(range(NUM_CLASSES)),
                                                    zero_division=0.0)
    np.testing.assert_allclose(result["precision"], p, atol=1e-12)
    np.testing.assert_allclose(result["recall"], r, atol=1e-12)
    np.testing.assert_allclose(result["f1"], f, atol=1e-12)
    assert result["macro_f1"] == pytest.approx(sk.f1_score(target, preds, average="macro"), abs=1e-12)
    np.testing.assert_array_equal(result["confusion_matrix"], sk.confusion_matrix(target, preds))
    metrics.reset()
    assert metrics.compute()["num_samples"] == 0


def test_empty_inputs():
    scores, target = torch.zeros(0, NUM_CLASSES), torch.zeros(0, dtype=torch.long)
    assert math.isnan(accuracy(scores, target))
    assert math.isnan(topk_accuracy(scores, target, k=5))
    assert confusion_matrix(scores, target, NUM_CLASSES).sum() == 0
    assert all(math.isnan(v) for v in precision_recall_f1(scores, target, NUM_CLASSES, average="macro"))
    metrics = ClassificationMetrics(NUM_CLASSES)
    metrics.update(scores, target)
    result = metrics.compute()
    assert result["num_samples"] == 0 and math.isnan(result["accuracy"]) and math.isnan(result["top5_accuracy"])


@pytest.mark.parametrize("call, error, match", [
    (lambda: accuracy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)), ValueError, "different numbers"),
    (lambda: accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long)), TypeError, "integer class indices"),
    (lambda: accuracy(torch.zeros(3, 4), torch.zeros(3)), TypeError, "integer class indices"),
    (lambda: topk_accuracy(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), k=5), ValueError, r"\[1, 4\]"),
    (lambda: confusion_matrix(torch.tensor([0, 9]), torch.tensor([0, 1]), 3), ValueError, "found 9"),
    (lambda: ClassificationMetrics(3, topk=(1, 5)), ValueError, "topk"),
    (lambda: ClassificationMetrics(3, topk=(1,)).update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)),
     ValueError, "num_classes = 3"),
    (lambda: precision_recall_f1(torch.tensor([0]), torch.tensor([0]), 2, average="binary"), ValueError, "average"),
])
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
