"""Axis-aligned boxes: formats, areas, overlap measures, and the R-CNN box-regression code.

Papers:
    * Rich feature hierarchies for accurate object detection and semantic segmentation
      (R-CNN), Girshick et al., 2014, arXiv:1311.2524 — Appendix C, the box regression
      targets t_x, t_y, t_w, t_h.
    * Generalized Intersection over Union (GIoU), Rezatofighi et al., 2019, arXiv:1902.09630.
    * Distance-IoU Loss (DIoU, CIoU), Zheng et al., 2020, arXiv:1911.08287.

Follows the paper:
    * ``BoxCoder.encode``: t_x = (G_x - P_x) / P_w, t_y = (G_y - P_y) / P_h,
      t_w = ln(G_w / P_w), t_h = ln(G_h / P_h), with (x, y) the box centre.
    * GIoU = IoU - |C \\ (A ∪ B)| / |C| with C the smallest enclosing box;
      DIoU = IoU - ρ²(centres) / c² (c the enclosing box diagonal);
      CIoU = DIoU - α v, v = 4/π² (atan(w_g/h_g) - atan(w/h))², α = v / (1 - IoU + v).

Deviates, and why:
    * Boxes are continuous (x1, y1, x2, y2) with width x2 - x1 (no "+1" pixel convention),
      as in torchvision and detectron2; the R-CNN paper's code used the +1 convention.
    * ``BoxCoder`` multiplies targets by per-coordinate weights (Faster R-CNN's (10, 10, 5, 5)
      for the second stage) and clamps the decoded log-size at ln(1000/16), as detectron2 and
      torchvision do, so an untrained head cannot overflow ``exp``.
    * IoU of two zero-area boxes is 0/0 = NaN here; comparisons with NaN are False, which is
      exactly the "never suppress on an undefined IoU" rule of onnxruntime used by ``nms``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "box_convert", "box_area", "box_iou", "generalized_box_iou", "distance_box_iou",
    "complete_box_iou", "clip_boxes_to_image", "remove_small_boxes", "BoxCoder",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N, 4], got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {tuple(boxes.shape)}")


# --------------------------------------------------------------------------- formats


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes [..., 4] between 'xyxy' (corners), 'xywh' (top-left, size), 'cxcywh' (centre, size)."""
    for fmt, arg in ((in_fmt, "in_fmt"), (out_fmt, "out_fmt")):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"{arg} must be one of {BOX_FORMATS}, got {fmt!r}")
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 coordinates in the last dimension, got shape {tuple(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    # now (a, b, c, d) = (x1, y1, x2, y2)
    if out_fmt == "xywh":
        return torch.stack((a, b, c - a, d - b), dim=-1)
    if out_fmt == "cxcywh":
        return torch.stack(((a + c) * 0.5, (b + d) * 0.5, c - a, d - b), dim=-1)
    return torch.stack((a, b, c, d), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes [N, 4] -> [N]; (x2 - x1) * (y2 - y1), negative sizes clamp to 0."""
    _check_boxes(boxes)
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


# --------------------------------------------------------------------------- overlaps


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    return inter, area1[:, None] + area2[None, :] - inter


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes [N, 4] and [M, 4] -> [N, M]; NaN where both boxes have zero area."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    return inter / union


def _enclosing(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Width and height [N, M] of the smallest box enclosing each pair."""
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    return wh[..., 0], wh[..., 1]


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise GIoU [N, M] = IoU - (|C| - |A ∪ B|) / |C|; in [-1, 1]."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    cw, ch = _enclosing(boxes1, boxes2)
    enclosing_area = cw * ch
    return iou - (enclosing_area - union) / (enclosing_area + eps)


def _diou_terms(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    cw, ch = _enclosing(boxes1, boxes2)
    diagonal_sq = cw**2 + ch**2 + eps  # c²
    centre1 = (boxes1[:, :2] + boxes1[:, 2:]) / 2
    centre2 = (boxes2[:, :2] + boxes2[:, 2:]) / 2
    centre_dist_sq = ((centre1[:, None, :] - centre2[None, :, :]) ** 2).sum(-1)  # ρ²
    return iou, centre_dist_sq / diagonal_sq


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise DIoU [N, M] = IoU - ρ²(b, b_gt) / c²."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    iou, penalty = _diou_terms(boxes1, boxes2, eps)
    return iou - penalty


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise CIoU [N, M] = DIoU - α v with v the aspect-ratio consistency term."""
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    iou, penalty = _diou_terms(boxes1, boxes2, eps)
    w1, h1 = boxes1[:, 2] - boxes1[:, 0], boxes1[:, 3] - boxes1[:, 1]
    w2, h2 = boxes2[:, 2] - boxes2[:, 0], boxes2[:, 3] - boxes2[:, 1]
    # v = 4/π² (atan(w_gt/h_gt) - atan(w/h))²
    v = (4 / math.pi**2) * (torch.atan(w1 / h1)[:, None] - torch.atan(w2 / h2)[None, :]) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - penalty - alpha * v


# --------------------------------------------------------------------------- cleaning


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes [..., 4] to an image of size (height, width)."""
    if len(size) != 2:
        raise ValueError(f"size must be (height, width), got {size}")
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (int64) of xyxy boxes whose width and height are both >= min_size."""
    _check_boxes(boxes)
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


# --------------------------------------------------------------------------- R-CNN box regression

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """R-CNN's box-regression code: proposals P and targets G (xyxy) <-> deltas (t_x, t_y, t_w, t_h).

    ``weights`` (w_x, w_y, w_w, w_h) multiply the targets when encoding and divide the deltas
    when decoding; ``scale_clamp`` bounds t_w, t_h before ``exp`` in decoding.
    """

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 entries (w_x, w_y, w_w, w_h), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Deltas [N, 4] that take ``proposals`` [N, 4] (P) to ``reference_boxes`` [N, 4] (G)."""
        _check_boxes(reference_boxes, "reference_boxes")
        _check_boxes(proposals, "proposals")
        if reference_boxes.shape != proposals.shape:
            raise ValueError(f"reference_boxes and proposals must have the same shape, "
                             f"got {tuple(reference_boxes.shape)} and {tuple(proposals.shape)}")
        wx, wy, ww, wh = self.weights
        p = box_convert(proposals, "xyxy", "cxcywh")
        g = box_convert(reference_boxes, "xyxy", "cxcywh")
        t_x = wx * (g[:, 0] - p[:, 0]) / p[:, 2]  # t_x = (G_x - P_x) / P_w
        t_y = wy * (g[:, 1] - p[:, 1]) / p[:, 3]  # t_y = (G_y - P_y) / P_h
        t_w = ww * torch.log(g[:, 2] / p[:, 2])  # t_w = ln(G_w / P_w)
        t_h = wh * torch.log(g[:, 3] / p[:, 3])  # t_h = ln(G_h / P_h)
        return torch.stack((t_x, t_y, t_w, t_h), dim=1)

    def decode(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """Boxes [N, 4] xyxy from ``deltas`` [N, 4] applied to ``proposals`` [N, 4]."""
        _check_boxes(deltas, "deltas")
        _check_boxes(proposals, "proposals")
        if deltas.shape != proposals.shape:
            raise ValueError(f"deltas and proposals must have the same shape, "
                             f"got {tuple(deltas.shape)} and {tuple(proposals.shape)}")
        wx, wy, ww, wh = self.weights
        p = box_convert(proposals.to(deltas.dtype), "xyxy", "cxcywh")
        t_x, t_y = deltas[:, 0] / wx, deltas[:, 1] / wy
        t_w = (deltas[:, 2] / ww).clamp(max=self.scale_clamp)
        t_h = (deltas[:, 3] / wh).clamp(max=self.scale_clamp)
        centre_x = t_x * p[:, 2] + p[:, 0]
        centre_y = t_y * p[:, 3] + p[:, 1]
        width = torch.exp(t_w) * p[:, 2]
        height = torch.exp(t_h) * p[:, 3]
        return box_convert(torch.stack((centre_x, centre_y, width, height), dim=1), "cxcywh", "xyxy")
