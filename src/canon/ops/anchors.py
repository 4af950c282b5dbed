"""Anchors, anchor-to-ground-truth matching, and balanced minibatch sampling for region proposals.

Paper: Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks,
Ren et al., 2015, arXiv:1506.01497 (Section 3.1.1 anchors, 3.1.2 labels and minibatches).
Multi-level anchors as in Feature Pyramid Networks, Lin et al., 2017, arXiv:1612.03144.

Follows the paper:
    * k = |sizes| x |ratios| anchors per feature-map location (3 scales x 3 ratios = 9), each
      of area size² and height/width = ratio, centred on the location's image position.
    * An anchor is positive when its IoU with some ground truth is >= 0.7 (``high_threshold``),
      negative when its best IoU is < 0.3 (``low_threshold``), ignored in between; and
      "the anchor/anchors with the highest IoU overlap with a ground-truth box" are positive
      too (``allow_low_quality_matches``), so every ground truth gets an anchor.
    * A minibatch of 256 anchors per image with up to half positives, padded with negatives.

Deviates, and why:
    * Anchors are continuous xyxy boxes centred at (x * stride, y * stride), with corners
      rounded to integers (torchvision's layout), not the +1-pixel boxes of the released Caffe
      code; ordering is location-major, then ratio, then size, as in torchvision, so
      per-anchor head outputs line up with torchvision-style detectors.
    * A low-quality match gives the anchor its own best ground truth (which may differ from
      the ground truth it was best for when two overlap it equally), as torchvision does.
    * A ground truth that overlaps no anchor at all (best IoU 0) makes no low-quality match;
      torchvision's rule would then match every anchor, since all tie at 0.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from canon.ops.boxes import box_iou

__all__ = ["AnchorGenerator", "Matcher", "BalancedPositiveNegativeSampler"]


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], dtype=torch.float32) -> Tensor:
    """[len(ratios) * len(sizes), 4] anchors centred at 0: width = size / sqrt(r), height = size * sqrt(r)."""
    scales = torch.as_tensor(sizes, dtype=dtype)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype)
    if (scales <= 0).any() or (ratios <= 0).any():
        raise ValueError(f"sizes and aspect_ratios must be positive, got {list(sizes)} and {list(aspect_ratios)}")
    h_ratios = torch.sqrt(ratios)
    widths = (scales[None, :] / h_ratios[:, None]).reshape(-1)  # (R*S,) ratio-major
    heights = (scales[None, :] * h_ratios[:, None]).reshape(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors for each feature level: ``sizes[l]`` x ``aspect_ratios[l]`` at every location.

    forward(image_size, feature_sizes) -> list of [H_l * W_l * A_l, 4] xyxy anchors, one per
    level, where the level's stride is image_size // feature_size.
    """

    def __init__(self, sizes: Sequence[Sequence[float]] = ((128, 256, 512),),
                 aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),)):
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"sizes and aspect_ratios need one entry per feature level, got {len(sizes)} and "
                             f"{len(aspect_ratios)}")
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
        self.base_anchors = [cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def forward(self, image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        if len(feature_sizes) != len(self.base_anchors):
            raise ValueError(f"expected {len(self.base_anchors)} feature levels, got {len(feature_sizes)}")
        anchors = []
        for base, (feat_h, feat_w) in zip(self.base_anchors, feature_sizes):
            stride_h, stride_w = image_size[0] // feat_h, image_size[1] // feat_w
            shift_y = torch.arange(feat_h, dtype=base.dtype) * stride_h
            shift_x = torch.arange(feat_w, dtype=base.dtype) * stride_w
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
            anchors.append((shifts + base[None]).reshape(-1, 4))  # (H*W*A, 4)
        return anchors


class Matcher:
    """Assign each anchor (column) its best ground truth (row) of an IoU matrix [G, A].

    Returns [A] int64: the matched ground-truth index, ``BELOW_LOW_THRESHOLD`` (-1, negative)
    or ``BETWEEN_THRESHOLDS`` (-2, ignored).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float = 0.7, low_threshold: float = 0.3, allow_low_quality_matches: bool = True):
        if not low_threshold <= high_threshold:
            raise ValueError(f"low_threshold must be <= high_threshold, got {low_threshold} > {high_threshold}")
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        if match_quality_matrix.ndim != 2:
            raise ValueError(f"match_quality_matrix must be [num_gt, num_anchors], got {tuple(match_quality_matrix.shape)}")
        num_gt, num_anchors = match_quality_matrix.shape
        if num_gt == 0:  # no objects: every anchor is background
            return torch.full((num_anchors,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64)
        best_quality, matches = match_quality_matrix.max(dim=0)  # (A,)
        original = matches.clone()
        matches[best_quality < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (best_quality >= self.low_threshold) & (best_quality < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_for_gt = match_quality_matrix.max(dim=1, keepdim=True).values  # (G, 1)
            _, anchors = torch.where((match_quality_matrix == best_for_gt) & (best_for_gt > 0))
            matches[anchors] = original[anchors]
        return matches

    def match_boxes(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Matches [A] from xyxy ground truths [G, 4] and anchors [A, 4] by IoU."""
        return self(box_iou(gt_boxes, anchors).nan_to_num(0.0))


class BalancedPositiveNegativeSampler:
    """Sample up to ``batch_size_per_image`` anchors, at most ``positive_fraction`` of them positive.

    __call__(labels [A]: 1 positive, 0 negative, -1 ignored) -> (positive mask [A], negative mask [A]).
    """

    def __init__(self, batch_size_per_image: int = 256, positive_fraction: float = 0.5):
        if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"need batch_size_per_image >= 1 and positive_fraction in [0, 1], got "
                             f"{batch_size_per_image} and {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        positive = torch.where(labels >= 1)[0]
        negative = torch.where(labels == 0)[0]
        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
        num_neg = min(self.batch_size_per_image - num_pos, negative.numel())
        chosen_pos = positive[torch.randperm(positive.numel(), generator=generator)[:num_pos]]
        chosen_neg = negative[torch.randperm(negative.numel(), generator=generator)[:num_neg]]
        pos_mask = torch.zeros(labels.shape, dtype=torch.bool)
        neg_mask = torch.zeros(labels.shape, dtype=torch.bool)
        pos_mask[chosen_pos] = True
        neg_mask[chosen_neg] = True
        return pos_mask, neg_mask
