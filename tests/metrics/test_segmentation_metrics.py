"""Segmentation metrics against scikit-learn and a direct numpy transcription of the FCN definitions.

The accumulator must give, over batches and with an ignore index, the numbers that pooling every
kept pixel into sklearn's ``confusion_matrix``/``jaccard_score``/``f1_score`` gives.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

sk = pytest.importorskip("sklearn.metrics")

from canon.metrics import (SegmentationMetrics, dice_from_confusion, iou_from_confusion,  # noqa: E402
                           segmentation_confusion_matrix)

NUM_CLASSES = 5
IGNORE = 255


def _label_maps(n: int = 6, h: int = 24, w: int = 32, seed: int = 0, ignore_fraction: float = 0.1,
                absent: int | None = None):
    """(n, K, h, w) float32 logits and (n, h, w) int64 targets with some ``IGNORE`` pixels."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (n, h, w), generator=gen)
    if absent is not None:
        target[target == absent] = (absent + 1) % NUM_CLASSES
    logits = torch.randn(n, NUM_CLASSES, h, w, generator=gen)
    logits.scatter_add_(1, target[:, None], torch.full((n, 1, h, w), 1.2))  # better than chance
    if absent is not None:
        logits[:, absent] -= 10  # never predicted either: IoU undefined
    target[torch.rand(n, h, w, generator=gen) < ignore_fraction] = IGNORE
    return logits, target


def _direct(preds: np.ndarray, target: np.ndarray) -> dict:
    """FCN section 5 formulas written out with numpy loops over classes (kept pixels only)."""
    keep = target != IGNORE
    p, t = preds[keep], target[keep]
    iou, dice = [], []
    for k in range(NUM_CLASSES):
        inter = np.sum((p == k) & (t == k))
        union = np.sum((p == k) | (t == k))
        size = np.sum(p == k) + np.sum(t == k)
        iou.append(inter / union if union else math.nan)
        dice.append(2 * inter / size if size else math.nan)
    return {"pixel_accuracy": np.mean(p == t), "iou": iou, "miou": np.nanmean(iou), "dice": dice,
            "mean_dice": np.nanmean(dice)}


@pytest.mark.parametrize("absent", [None, 2])
def test_accumulated_metrics_equal_direct_formulas_and_sklearn(absent):
    logits, target = _label_maps(absent=absent)
    metrics = SegmentationMetrics(NUM_CLASSES, ignore_index=IGNORE)
    for start in range(0, logits.shape[0], 4):  # batches of 4 and 2
        metrics.update(logits[start:start + 4], target[start:start + 4])
    result = metrics.compute()

    preds = logits.argmax(1).numpy()
    expected = _direct(preds, target.numpy())
    assert result["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    np.testing.assert_allclose(result["iou"], expected["iou"], atol=1e-12)  # NaN == NaN here
    np.testing.assert_allclose(result["dice"], expected["dice"], atol=1e-12)
    assert result["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert result["mean_dice"] == pytest.approx(expected["mean_dice"], abs=1e-12)

    keep = target.numpy() != IGNORE
    p, t = preds[keep], target.numpy()[keep]
    labels = list(range(NUM_CLASSES))
    assert result["num_pixels"] == keep.sum()
    np.testing.assert_array_equal(result["confusion_matrix"], sk.confusion_matrix(t, p, labels=labels))
    present = [k for k in labels if k != absent]
    np.testing.assert_allclose(np.asarray(result["iou"])[present],
                               sk.jaccard_score(t, p, labels=present, average=None), atol=1e-12)
    np.testing.assert_allclose(np.asarray(result["dice"])[present],
                               sk.f1_score(t, p, labels=present, average=None), atol=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(sk.accuracy_score(t, p), abs=1e-12)
    np.testing.assert_allclose(np.asarray(result["class_accuracy"])[present],
                               sk.recall_score(t, p, labels=present, average=None), atol=1e-12)
    support = np.bincount(t, minlength=NUM_CLASSES)  # FCN's frequency-weighted IU: sum_i t_i IU_i / sum_i t_i
    assert result["fwiou"] == pytest.approx(np.nansum(support * np.asarray(expected["iou"])) / support.sum(), abs=1e-12)
    if absent is not None:
        assert math.isnan(result["iou"][absent]) and math.isnan(result["dice"][absent])


def test_index_preds_equal_logit_preds_and_batching_does_not_matter():
    logits, target = _label_maps(n=5, seed=1)
    whole = SegmentationMetrics(NUM_CLASSES)
    whole.update(logits.argmax(1), target)
    one_by_one = SegmentationMetrics(NUM_CLASSES)
    for i in range(5):
        one_by_one.update(logits[i:i + 1], target[i:i + 1])
    assert whole.compute()["confusion_matrix"] == one_by_one.compute()["confusion_matrix"]
    cm = segmentation_confusion_matrix(logits, target, NUM_CLASSES, IGNORE)
    assert cm.tolist() == whole.compute()["confusion_matrix"]


def test_ignore_index_drops_pixels_whatever_their_prediction():
    target = torch.tensor([[[0, 1], [IGNORE, IGNORE]]])
    preds_a = torch.tensor([[[0, 1], [0, 0]]])
    preds_b = torch.tensor([[[0, 1], [1, 3]]])
    cm_a = segmentation_confusion_matrix(preds_a, target, NUM_CLASSES, IGNORE)
    cm_b = segmentation_confusion_matrix(preds_b, target, NUM_CLASSES, IGNORE)
    assert torch.equal(cm_a, cm_b) and cm_a.sum() == 2
    # ignore_index=None keeps every pixel, so 255 is then an error
    with pytest.raises(ValueError, match="outside"):
        segmentation_confusion_matrix(preds_a, target, NUM_CLASSES, None)


def test_iou_and_dice_of_a_hand_counted_matrix():
    # class 0: TP 3, FP 1, FN 2 -> IoU 3/6, Dice 6/9; class 1: TP 4, FP 2, FN 1 -> IoU 4/7, Dice 8/11
    cm = torch.tensor([[3, 2], [1, 4]])
    np.testing.assert_allclose(iou_from_confusion(cm).numpy(), [3 / 6, 4 / 7])
    np.testing.assert_allclose(dice_from_confusion(cm).numpy(), [6 / 9, 8 / 11])


def test_empty_and_all_ignored_inputs_give_nan():
    metrics = SegmentationMetrics(NUM_CLASSES)
    result = metrics.compute()
    assert result["num_pixels"] == 0 and math.isnan(result["pixel_accuracy"]) and math.isnan(result["miou"])
    metrics.update(torch.zeros(0, 8, 8, dtype=torch.long), torch.zeros(0, 8, 8, dtype=torch.long))
    metrics.update(torch.zeros(1, 8, 8, dtype=torch.long), torch.full((1, 8, 8), IGNORE))
    result = metrics.compute()
    assert result["num_pixels"] == 0 and math.isnan(result["mean_dice"])
    assert all(math.isnan(v) for v in result["iou"])


@pytest.mark.parametrize("call, error, match", [
    (lambda: SegmentationMetrics(5, ignore_index=3), ValueError, "real class index"),
    (lambda: SegmentationMetrics(0), ValueError, "positive integer"),
    (lambda: segmentation_confusion_matrix(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), 3),
     ValueError, "same shape"),
    (lambda: segmentation_confusion_matrix(torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), 3),
     ValueError, "num_classes = 3"),
    (lambda: segmentation_confusion_matrix(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4), 3),
     TypeError, "integer"),
    (lambda: segmentation_confusion_matrix(torch.full((1, 2, 2), 7), torch.zeros(1, 2, 2, dtype=torch.long), 3),
     ValueError, "preds holds 7"),
])
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.fixture(scope="module")
def isbi_pairs(shared_data):
    """Ten ISBI-2012 membrane images (1, 512, 512) uint8 and their masks (0 membrane, 1 cell)."""
    Image = pytest.importorskip("PIL.Image")
    root = shared_data / "isbi-membrane" / "train"
    if not (root / "image" / "0.png").is_file():
        pytest.skip(f"ISBI membrane data not found in {root}")
    images, masks = [], []
    for i in range(10):
        images.append(np.asarray(Image.open(root / "image" / f"{i}.png").convert("L")))
        masks.append((np.asarray(Image.open(root / "label" / f"{i}.png").convert("L")) > 127).astype(np.int64))
    return np.stack(images), np.stack(masks)


@pytest.mark.data
def test_real_membrane_masks_with_a_threshold_segmenter_equal_sklearn(isbi_pairs):
    images, masks = isbi_pairs
    preds = (images > images.mean()).astype(np.int64)  # bright = cell interior: a crude real segmenter
    target = masks.copy()
    target[:, :16], target[:, -16:], target[:, :, :16], target[:, :, -16:] = IGNORE, IGNORE, IGNORE, IGNORE
    metrics = SegmentationMetrics(2, ignore_index=IGNORE)
    for start in range(0, 10, 4):
        metrics.update(torch.from_numpy(preds[start:start + 4]), torch.from_numpy(target[start:start + 4]))
    result = metrics.compute()
    keep = target != IGNORE
    t, p = target[keep], preds[keep]
    assert result["num_pixels"] == 10 * 480 * 480
    np.testing.assert_allclose(result["iou"], sk.jaccard_score(t, p, average=None), atol=1e-12)
    np.testing.assert_allclose(result["dice"], sk.f1_score(t, p, average=None), atol=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(sk.accuracy_score(t, p), abs=1e-12)
    assert result["miou"] == pytest.approx(sk.jaccard_score(t, p, average="macro"), abs=1e-12)
    assert 0.3 < result["miou"] < 0.95  # imperfect, not degenerate
