"""YOLOv2 dimension clusters: origin-centred IoU against its definition and canon.ops.box_iou,
k-means against known clusters, a brute-force search over partitions, and its own guarantees."""
from __future__ import annotations

import itertools

import pytest
import torch

from canon.ops import box_iou
from canon.ops.anchor_priors import (YOLOV2_VOC_PRIORS, YOLOV3_COCO_ANCHORS, kmeans_anchors, mean_best_iou,
                                      origin_iou)


def _iou_by_definition(w1, h1, w2, h2) -> float:
    """Two boxes centred at the origin: they overlap in min(w) x min(h)."""
    inter = min(w1, w2) * min(h1, h2)
    return inter / (w1 * h1 + w2 * h2 - inter)


def _centred_xyxy(wh: torch.Tensor) -> torch.Tensor:
    return torch.cat([-wh / 2, wh / 2], dim=1)


def test_origin_iou_matches_the_definition_and_box_iou_of_centred_boxes():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.rand(13, 2, generator=gen, dtype=torch.float64) * 5 + 0.1
    priors = torch.rand(4, 2, generator=gen, dtype=torch.float64) * 5 + 0.1
    got = origin_iou(boxes, priors)
    by_hand = torch.tensor([[_iou_by_definition(*b.tolist(), *p.tolist()) for p in priors] for b in boxes],
                           dtype=torch.float64)
    torch.testing.assert_close(got, by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, box_iou(_centred_xyxy(boxes), _centred_xyxy(priors)), rtol=1e-12, atol=1e-12)
    assert origin_iou(torch.tensor([[2.0, 3.0]]), torch.tensor([[2.0, 3.0]])).item() == pytest.approx(1.0)
    # a 1x4 and a 4x1 box share a 1x1 square: 1 / (4 + 4 - 1)
    assert origin_iou(torch.tensor([[1.0, 4.0]]), torch.tensor([[4.0, 1.0]])).item() == pytest.approx(1 / 7)


def test_mean_best_iou_of_the_paper_priors_is_the_loop_over_boxes():
    gen = torch.Generator().manual_seed(1)
    boxes = torch.rand(50, 2, generator=gen, dtype=torch.float64) * 12 + 0.2  # in 13x13-grid cells
    expected = sum(max(_iou_by_definition(*b.tolist(), *p) for p in YOLOV2_VOC_PRIORS) for b in boxes) / len(boxes)
    priors = torch.tensor(YOLOV2_VOC_PRIORS, dtype=torch.float64)
    assert mean_best_iou(boxes, priors) == pytest.approx(expected, rel=1e-12)
    assert mean_best_iou(torch.tensor(YOLOV3_COCO_ANCHORS, dtype=torch.float64),
                         torch.tensor(YOLOV3_COCO_ANCHORS)) == pytest.approx(1.0)


def _clusters(centres, per_cluster=40, spread=0.03, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor(centres, dtype=torch.float64)
    noise = 1 + spread * (2 * torch.rand(len(centres), per_cluster, 2, generator=gen, dtype=torch.float64) - 1)
    boxes = (centres[:, None, :] * noise).reshape(-1, 2)
    truth = torch.arange(len(centres)).repeat_interleave(per_cluster)
    return boxes, truth


def test_well_separated_clusters_are_found():
    centres = [(10.0, 12.0), (30.0, 80.0), (120.0, 40.0), (200.0, 210.0)]  # sorted by area
    boxes, truth = _clusters(centres)
    result = kmeans_anchors(boxes, 4, seed=3)
    assert torch.equal(result.assignment, truth)
    means = torch.stack([boxes[truth == j].mean(0) for j in range(4)])
    torch.testing.assert_close(result.priors, means, rtol=0.03, atol=0)  # within the clusters' 3% spread
    by_hand = sum(_iou_by_definition(*boxes[i].tolist(), *result.priors[truth[i]].tolist())
                  for i in range(len(boxes))) / len(boxes)
    with_means = sum(_iou_by_definition(*boxes[i].tolist(), *means[truth[i]].tolist())
                     for i in range(len(boxes))) / len(boxes)
    assert result.mean_iou == pytest.approx(by_hand, rel=1e-12)
    assert result.mean_iou >= with_means - 1e-12 and result.mean_iou > 0.95  # the IoU centroid beats the mean


def _brute_force_best(boxes: list[tuple[float, float]], k: int, grid: int = 300) -> float:
    """The best mean best-IoU of any k priors, searched exhaustively: max over every partition of
    the boxes into k groups of the sum, over groups, of the group's best summed IoU with one prior
    from a fine log-spaced (w, h) grid (priors fixed -> boxes pick their best; a partition fixed ->
    each group's prior is independent, so the two maxima are the same)."""
    wh = torch.tensor(boxes, dtype=torch.float64)
    ws = torch.logspace(wh[:, 0].min().log10() - 0.05, wh[:, 0].max().log10() + 0.05, grid, dtype=torch.float64)
    hs = torch.logspace(wh[:, 1].min().log10() - 0.05, wh[:, 1].max().log10() + 0.05, grid, dtype=torch.float64)
    candidates = torch.cartesian_prod(ws, hs)  # (G, 2)
    inter = torch.min(wh[:, None, 0], candidates[None, :, 0]) * torch.min(wh[:, None, 1], candidates[None, :, 1])
    iou = inter / (wh.prod(1)[:, None] + candidates.prod(1)[None, :] - inter)  # (N, G), the definition
    partitions = torch.tensor([p for p in itertools.product(range(k), repeat=len(boxes)) if p[0] == 0
                               and len(set(p)) == k])  # (P, N), first box in group 0 (symmetry)
    total = sum((((partitions == j).double() @ iou).max(1).values) for j in range(k))  # (P,)
    return float(total.max()) / len(boxes)


def test_matches_a_brute_force_search_over_all_partitions_and_priors():
    boxes = [(1.0, 1.2), (1.3, 1.0), (1.1, 1.1), (4.0, 1.0), (5.0, 1.5), (4.5, 1.2), (2.0, 6.0), (2.5, 7.0),
             (3.0, 2.5), (1.6, 2.0)]
    best = _brute_force_best(boxes, 2)
    result = kmeans_anchors(torch.tensor(boxes, dtype=torch.float64), 2, seed=0, n_init=5)
    # the grid's optimum is a lower bound of the true one, within its resolution (~0.3% per side)
    assert result.mean_iou >= best - 1e-9 and result.mean_iou == pytest.approx(best, abs=2e-3)


def test_objective_never_decreases_and_ends_at_a_fixed_point():
    gen = torch.Generator().manual_seed(5)
    boxes = torch.rand(400, 2, generator=gen, dtype=torch.float64) ** 2 * 300 + 2  # skewed sizes
    result = kmeans_anchors(boxes, 6, seed=11, n_init=1)
    history = torch.tensor(result.history, dtype=torch.float64)
    assert len(history) >= 2 and (history[1:] >= history[:-1] - 1e-12).all()
    assert result.mean_iou == pytest.approx(history[-1].item(), abs=1e-12)
    assert result.mean_iou == pytest.approx(mean_best_iou(boxes, result.priors), abs=1e-12)
    # fixed point: each box's prior is its best one, and each prior is a local maximum of its
    # cluster's summed IoU (no 1% step in width or height, nor the members' mean, does better)
    iou = origin_iou(boxes, result.priors)
    assert torch.equal(result.assignment, iou.argmax(1))
    for j in range(6):
        members = boxes[result.assignment == j]
        assert len(members) > 0
        here = origin_iou(members, result.priors[j:j + 1]).sum()
        steps = torch.tensor([[1.01, 1], [0.99, 1], [1, 1.01], [1, 0.99]], dtype=torch.float64)
        assert (origin_iou(members, result.priors[j] * steps).sum(0) <= here + 1e-9).all()
        assert origin_iou(members, members.mean(0, keepdim=True)).sum() <= here + 1e-9
    areas = result.priors.prod(1)
    assert (areas[1:] >= areas[:-1]).all()


def test_deterministic_given_the_seed():
    boxes, _ = _clusters([(5.0, 5.0), (20.0, 10.0), (10.0, 40.0)], spread=0.5, seed=2)
    a, b = kmeans_anchors(boxes, 5, seed=7), kmeans_anchors(boxes, 5, seed=7)
    assert torch.equal(a.priors, b.priors) and a.history == b.history
    assert a.priors.dtype == boxes.dtype
    assert kmeans_anchors(boxes.float(), 5, seed=7).priors.dtype == torch.float32


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        kmeans_anchors(torch.ones(5, 4), 2)
    with pytest.raises(ValueError, match="> 0"):
        kmeans_anchors(torch.tensor([[1.0, 0.0], [2.0, 2.0]]), 1)
    with pytest.raises(ValueError, match="at least k = 3"):
        kmeans_anchors(torch.ones(2, 2), 3)
    with pytest.raises(ValueError, match="positive int"):
        kmeans_anchors(torch.ones(4, 2), 0)
    with pytest.raises(ValueError, match="at least one box"):
        mean_best_iou(torch.zeros(0, 2), torch.ones(1, 2))
