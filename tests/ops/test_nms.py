"""nms / batched_nms against onnxruntime NonMaxSuppression and cv2.dnn.NMSBoxes; soft-NMS against a
transcription of Algorithm 1 of the Soft-NMS paper. Both backends (numba grid kernel, pure torch)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from canon.ops import HAS_NUMBA, batched_nms, nms, soft_nms
from ops_references import cv2_nms, ort_nms

BACKENDS = ["torch"] + (["numba"] if HAS_NUMBA else [])


def random_boxes(n, seed, size=1000.0, max_wh=120.0, quantise=None):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * max_wh + 2
    if quantise:  # coarse grids make identical boxes and exact ties
        centre, wh = (centre / quantise).round() * quantise, (wh / quantise).round() * quantise + quantise
    scores = torch.rand(n, generator=g)
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=1), scores


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,seed,threshold", [(1, 0, 0.5), (50, 1, 0.5), (400, 2, 0.3), (2000, 3, 0.7), (3000, 4, 0.5)])
def test_nms_equals_onnxruntime_and_opencv(backend, n, seed, threshold):
    boxes, scores = random_boxes(n, seed)
    kept = nms(boxes, scores, threshold, backend=backend)
    assert kept.dtype == torch.int64
    want = ort_nms(boxes.numpy(), scores.numpy(), threshold)
    np.testing.assert_array_equal(kept.numpy(), want)
    np.testing.assert_array_equal(kept.numpy(), cv2_nms(boxes.numpy(), scores.numpy(), threshold))
    assert (scores[kept].diff() <= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_ties_identical_boxes_and_quantised_scores(backend):
    boxes, _ = random_boxes(600, 5, size=60, max_wh=20, quantise=4.0)
    boxes = torch.cat([boxes, boxes[:100]])  # exact duplicates
    # many exact ties; all > 0 because cv2.dnn.NMSBoxes drops scores <= its score_threshold (>= 0)
    scores = ((torch.rand(700, generator=torch.Generator().manual_seed(6)) * 5).floor() + 1) / 5
    for threshold in (0.0, 0.25, 0.5, 0.9999):
        kept = nms(boxes, scores, threshold, backend=backend)
        np.testing.assert_array_equal(kept.numpy(), ort_nms(boxes.numpy(), scores.numpy(), threshold))
        np.testing.assert_array_equal(kept.numpy(), cv2_nms(boxes.numpy(), scores.numpy(), threshold))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_threshold_is_strict(backend):
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # IoU = 1 / 2
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5, backend=backend).tolist() == [0, 1]
    assert nms(boxes, scores, 0.4999, backend=backend).tolist() == [0]
    assert ort_nms(boxes.numpy(), scores.numpy(), 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_area_boxes_follow_onnxruntime(backend):
    boxes = torch.tensor([[5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0], [4.0, 4.0, 6.0, 6.0], [5.0, 5.0, 5.0, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    kept = nms(boxes, scores, 0.5, backend=backend)
    want = ort_nms(boxes.numpy(), scores.numpy(), 0.5)
    np.testing.assert_array_equal(kept.numpy(), want)
    assert kept.tolist() == [0, 1, 2, 3]
    # OpenCV counts 0/0 as IoU 1, so the second point and the zero-width box 3 fall to box 0 there
    assert cv2_nms(boxes.numpy(), scores.numpy(), 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_validation(backend):
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5, backend=backend).shape == (0,)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5,
                       backend=backend).dtype == torch.int64
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"\[3\]"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_nms_equals_per_class_onnxruntime(backend):
    boxes, scores = random_boxes(1500, 7, size=300)
    labels = torch.randint(0, 13, (1500,), generator=torch.Generator().manual_seed(8)) * 7 - 20  # sparse, negative ids
    kept = batched_nms(boxes, scores, labels, 0.5, backend=backend)
    want = []
    for label in labels.unique().tolist():
        members = torch.where(labels == label)[0]
        want.append(members[torch.from_numpy(ort_nms(boxes[members].numpy(), scores[members].numpy(), 0.5))])
    want = torch.cat(want)
    want = want[torch.sort(scores[want], descending=True, stable=True)[1]]
    assert set(kept.tolist()) == set(want.tolist())
    assert (scores[kept].diff() <= 0).all()
    torch.testing.assert_close(scores[kept], scores[want])


def soft_nms_transcription(boxes, scores, method, sigma, nt, threshold):
    """Algorithm 1 of Bodla et al. (2017), written with Python lists."""
    B = [list(map(float, b)) for b in boxes.tolist()]
    S = list(map(float, scores.tolist()))
    alive = list(range(len(B)))
    D, final = [], []

    def iou(a, b):
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    while alive:
        m = max(alive, key=lambda i: (S[i], -i))
        if S[m] < threshold:
            break
        D.append(m)
        final.append(S[m])
        alive.remove(m)
        for i in alive:
            o = iou(B[m], B[i])
            if method == "linear":
                S[i] = S[i] * (1 - o) if o >= nt else S[i]
            else:
                S[i] = S[i] * math.exp(-o * o / sigma)
        alive = [i for i in alive if S[i] >= threshold]
    return D, final


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_algorithm_1(method):
    boxes, scores = random_boxes(120, 9, size=200, max_wh=60)
    boxes, scores = boxes.double(), scores.double()
    kept, new_scores = soft_nms(boxes, scores, method=method, sigma=0.5, iou_threshold=0.3, score_threshold=0.05)
    want_idx, want_scores = soft_nms_transcription(boxes, scores, method, 0.5, 0.3, 0.05)
    assert kept.tolist() == want_idx
    np.testing.assert_allclose(new_scores.numpy(), want_scores, rtol=1e-12)
    assert len(want_idx) > len(nms(boxes.float(), scores.float(), 0.3))  # soft-NMS keeps more than hard NMS


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_numba_kernel_rejects_non_finite_boxes():
    boxes = torch.tensor([[0.0, 0.0, 1.0, float("nan")], [0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="finite"):
        nms(boxes, torch.tensor([0.5, 0.4]), 0.5, backend="numba")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.95, 1.0])  # onnxruntime accepts [0, 1]
def test_extreme_thresholds_equal_onnxruntime(backend, threshold):
    boxes, scores = random_boxes(800, 11, size=300, max_wh=80)
    kept = nms(boxes, scores, threshold, backend=backend)
    np.testing.assert_array_equal(kept.numpy(), ort_nms(boxes.numpy(), scores.numpy(), threshold))
