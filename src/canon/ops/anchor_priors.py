"""Anchor priors by k-means on box sizes with the distance 1 - IoU (YOLOv2's "dimension clusters").

Paper: YOLO9000: Better, Faster, Stronger, Redmon & Farhadi, 2016, arXiv:1612.08242, Sec. 2
("Dimension Clusters"): "we run k-means clustering on the training set bounding boxes ...
we use d(box, centroid) = 1 - IoU(box, centroid)"; with k = 5 the priors reach an average IoU
of 61.0 on VOC 2007 (Table 1). YOLOv3 (arXiv:1804.02767) uses 9 such clusters on COCO.

Follows the paper:
    * only the widths and heights are clustered: the IoU of two boxes is taken with both
      centred at the origin, IoU = min(w1, w2) min(h1, h2) / (w1 h1 + w2 h2 - min(w1, w2) min(h1, h2));
    * each box belongs to the prior it overlaps most (its nearest under 1 - IoU), and the
      quality of a set of priors is the mean over boxes of that best IoU (``mean_best_iou``).

Deviates, and why:
    * the paper gives no initialisation or update rule. Seeding is k-means++ under 1 - IoU from a
      seeded generator (deterministic given ``seed``). The update step moves each prior to its
      cluster's centroid *for this distance*: the (w, h) that minimises the members' summed
      1 - IoU, found by a compass search in log-size started from the better of the members' mean
      and the current prior. darknet's anchor tool uses the plain mean, which is the centroid of
      squared Euclidean distance, not of 1 - IoU; with the true centroid both steps of the loop
      can only raise the mean best IoU, so it rises monotonically and the loop stops once the
      partition repeats;
    * a prior left with no boxes moves to the box it fits worst, which can only raise the score;
    * ``n_init`` restarts from different seedings keep the best, as scikit-learn's KMeans does.

Units are the caller's: pixels, or fractions of the image (``DetectionDataset.box_sizes(relative=True)``),
which is how the constants below are given once divided by their input size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["origin_iou", "mean_best_iou", "kmeans_anchors", "KMeansAnchors", "YOLOV2_VOC_PRIORS",
           "YOLOV2_COCO_PRIORS", "YOLOV3_COCO_ANCHORS"]

# darknet's yolo-voc.cfg / yolov2.cfg priors, in cells of the 13 x 13 output grid of a 416 input
# (divide by 13 for fractions of the image).
YOLOV2_VOC_PRIORS = ((1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053),
                     (11.2364, 10.0071))
YOLOV2_COCO_PRIORS = ((0.57273, 0.677385), (1.87446, 2.06253), (3.33843, 5.47434), (7.88282, 3.52778),
                      (9.77052, 9.16828))
# YOLOv3's 9 COCO anchors, in pixels of a 416 x 416 input (divide by 416 for fractions).
YOLOV3_COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198),
                       (373, 326))


def _check_sizes(sizes: Tensor, name: str) -> Tensor:
    if not isinstance(sizes, Tensor):
        sizes = torch.as_tensor(sizes, dtype=torch.float64)
    if sizes.dim() != 2 or sizes.shape[1] != 2:
        raise ValueError(f"{name} must have shape [N, 2] of (width, height), got {tuple(sizes.shape)}")
    if not sizes.is_floating_point():
        sizes = sizes.double()
    if not torch.isfinite(sizes).all() or (sizes <= 0).any():  # (only non-empty tensors get here)
        raise ValueError(f"{name} must hold finite widths and heights > 0, got values from "
                         f"{float(sizes.min())} to {float(sizes.max())}")
    return sizes


def origin_iou(boxes_wh: Tensor, priors_wh: Tensor) -> Tensor:
    """IoU [N, K] of boxes [N, 2] and priors [K, 2], each a (width, height) centred at the origin."""
    boxes_wh, priors_wh = _check_sizes(boxes_wh, "boxes_wh"), _check_sizes(priors_wh, "priors_wh")
    inter = torch.min(boxes_wh[:, None, 0], priors_wh[None, :, 0]) * torch.min(boxes_wh[:, None, 1],
                                                                                priors_wh[None, :, 1])  # (N, K)
    union = (boxes_wh[:, 0] * boxes_wh[:, 1])[:, None] + (priors_wh[:, 0] * priors_wh[:, 1])[None, :] - inter
    return inter / union


def mean_best_iou(boxes_wh: Tensor, priors_wh: Tensor) -> float:
    """Mean over boxes of the IoU with their best prior (the paper's "Avg IoU")."""
    boxes_wh = _check_sizes(boxes_wh, "boxes_wh")
    if not len(boxes_wh):
        raise ValueError("mean_best_iou needs at least one box")
    return float(origin_iou(boxes_wh, priors_wh).max(1).values.mean())


@dataclass(frozen=True)
class KMeansAnchors:
    """The result of :func:`kmeans_anchors`.

    ``priors`` [k, 2] (width, height), sorted by area; ``mean_iou`` their mean best IoU over the
    boxes; ``assignment`` [N] the index (into ``priors``) of each box's best prior; ``history``
    the mean best IoU after each assignment step of the winning run (non-decreasing);
    ``iterations`` its length.
    """

    priors: Tensor
    mean_iou: float
    assignment: Tensor
    history: tuple[float, ...]

    @property
    def iterations(self) -> int:
        return len(self.history)


def _seed_plus_plus(boxes: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ under 1 - IoU: each next prior is a box drawn with probability ∝ (1 - best IoU)²."""
    first = int(torch.randint(len(boxes), (1,), generator=generator))
    priors = [boxes[first]]
    for _ in range(1, k):
        distance = 1 - origin_iou(boxes, torch.stack(priors)).max(1).values
        weights = distance.clamp(min=0) ** 2
        if float(weights.sum()) <= 0:  # every box already equals a prior: pick any
            index = int(torch.randint(len(boxes), (1,), generator=generator))
        else:
            index = int(torch.multinomial(weights, 1, generator=generator))
        priors.append(boxes[index])
    return torch.stack(priors)


def _iou(boxes: Tensor, priors: Tensor) -> Tensor:
    """origin_iou without the input checks, for the inner loops."""
    inter = torch.min(boxes[:, None, 0], priors[None, :, 0]) * torch.min(boxes[:, None, 1], priors[None, :, 1])
    return inter / ((boxes[:, 0] * boxes[:, 1])[:, None] + (priors[:, 0] * priors[:, 1])[None, :] - inter)


_COMPASS = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [-1, -1], [1, -1], [-1, 1]], dtype=torch.float64)


def _centroid(members: Tensor, current: Tensor) -> Tensor:
    """The (w, h) maximising the members' summed IoU (minimising their summed 1 - IoU): a compass
    search in log-size, from the better of the members' mean and ``current``. Never worse than ``current``."""
    starts = torch.stack((members.mean(0), current))
    totals = _iou(members, starts).sum(0)
    point = starts[int(totals.argmax())].log()
    best = float(totals.max())
    step = 0.25
    while step > 1e-7:
        candidates = point + step * _COMPASS  # (8, 2) in log (w, h)
        totals = _iou(members, candidates.exp()).sum(0)
        j = int(totals.argmax())
        if float(totals[j]) > best:
            point, best = candidates[j], float(totals[j])
        else:
            step /= 2
    return point.exp()


def _lloyd(boxes: Tensor, priors: Tensor, max_iter: int) -> tuple[Tensor, tuple[float, ...]]:
    priors = priors.clone()
    history: list[float] = []
    previous = None
    for _ in range(max_iter):
        best, assignment = _iou(boxes, priors).max(1)  # assignment step: each box to its nearest prior
        history.append(float(best.mean()))
        if previous is not None and torch.equal(assignment, previous):
            break  # the priors already are the centroids of this partition
        previous = assignment
        for j in range(len(priors)):  # update step: each prior to its cluster's centroid
            members = boxes[assignment == j]
            if len(members):
                priors[j] = _centroid(members, priors[j])
            else:  # an unused prior moves to the worst-fitted box: best IoU can only rise
                worst = int(best.argmin())
                priors[j] = boxes[worst]
                best = torch.maximum(best, _iou(boxes, priors[j:j + 1])[:, 0])
                previous = None
    else:
        final = float(_iou(boxes, priors).max(1).values.mean())
        if final != history[-1]:  # stopped by max_iter after an update: score the last priors too
            history.append(final)
    return priors, tuple(history)


def kmeans_anchors(boxes_wh: Tensor, k: int, *, seed: int = 0, n_init: int = 3, max_iter: int = 300) -> KMeansAnchors:
    """k priors (width, height) for the boxes [N, 2] by k-means with distance 1 - IoU (module docstring).

    Deterministic given ``seed``; ``n_init`` seedings are run and the one with the highest mean
    best IoU is kept. Computed in float64; ``priors`` come back in the boxes' dtype.
    """
    sizes = _check_sizes(boxes_wh, "boxes_wh")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if len(sizes) < k:
        raise ValueError(f"k-means needs at least k = {k} boxes, got {len(sizes)}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init} and {max_iter}")
    boxes = sizes.double()
    generator = torch.Generator().manual_seed(seed)
    best_run = None
    for _ in range(n_init):
        priors, history = _lloyd(boxes, _seed_plus_plus(boxes, k, generator), max_iter)
        score = mean_best_iou(boxes, priors)
        if best_run is None or score > best_run[0] + 1e-12:
            best_run = (score, priors, history)
    score, priors, history = best_run
    priors = priors[torch.argsort(priors[:, 0] * priors[:, 1], stable=True)]
    assignment = origin_iou(boxes, priors).argmax(1)
    return KMeansAnchors(priors=priors.to(sizes.dtype), mean_iou=score, assignment=assignment, history=history)
