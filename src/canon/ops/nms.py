"""Non-maximum suppression: greedy NMS, per-class (batched) NMS, and soft-NMS.

Papers:
    * Greedy NMS as used by R-CNN / Fast R-CNN, Girshick et al., 2014, arXiv:1311.2524.
    * Soft-NMS -- Improving Object Detection With One Line of Code, Bodla et al., 2017,
      arXiv:1704.04503 (Algorithm 1, linear and Gaussian rescoring).

Follows the paper:
    * Greedy: take the highest-scoring remaining box, keep it, drop every remaining box whose
      IoU with it is strictly greater than ``iou_threshold``; repeat.
    * Soft-NMS: instead of dropping, rescale s_i <- s_i (1 - IoU) when IoU >= N_t (linear)
      or s_i <- s_i exp(-IoU² / σ) (Gaussian); boxes below ``score_threshold`` are dropped.

Deviates, and why:
    * Ties in score keep the lower index first (a stable sort), the order used by OpenCV's
      ``cv2.dnn.NMSBoxes`` and onnxruntime's ``NonMaxSuppression``.
    * A pair with no positive intersection (in particular two zero-area boxes, IoU = 0/0)
      never suppresses, as in onnxruntime; OpenCV instead counts 0/0 as IoU 1.
    * The greedy loop runs in a numba kernel when numba is importable: each kept box is filed
      by its centre in a uniform grid whose cells are as large as the largest side times
      (1 - iou_threshold), so a candidate is tested only against kept boxes in the 3x3
      neighbouring cells (centres further apart cannot reach IoU > threshold). The result is the same set and order as the plain loop. Without numba a
      pure-torch path processes candidates in blocks (tested to give identical results).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

try:  # optional accelerator; the pure-torch path below is always available
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

__all__ = ["nms", "batched_nms", "soft_nms", "HAS_NUMBA"]

HAS_NUMBA = numba is not None


def _check_nms_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    if not isinstance(boxes, Tensor) or not isinstance(scores, Tensor):
        raise TypeError(f"boxes and scores must be tensors, got {type(boxes).__name__} and {type(scores).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape [N] = [{boxes.shape[0]}], got {tuple(scores.shape)}")
    if not math.isfinite(float(iou_threshold)):
        raise ValueError(f"iou_threshold must be a finite number, got {iou_threshold}")


def _score_order(scores: Tensor) -> Tensor:
    """Indices by decreasing score, ties by increasing index."""
    return torch.sort(scores, descending=True, stable=True)[1]


# --------------------------------------------------------------------------- pure torch path


def _suppresses(cand: Tensor, cand_area: Tensor, kept: Tensor, kept_area: Tensor, iou_threshold: float) -> Tensor:
    """[B, K] bool: does kept box k suppress candidate b (intersection > 0 and IoU > threshold)."""
    top_left = torch.max(cand[:, None, :2], kept[None, :, :2])
    bottom_right = torch.min(cand[:, None, 2:], kept[None, :, 2:])
    wh = (bottom_right - top_left).clamp_(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (B, K)
    union = cand_area[:, None] + kept_area[None, :] - inter
    return (inter > 0) & (inter / union > iou_threshold)


def _nms_torch(boxes: Tensor, scores: Tensor, labels: Tensor | None, iou_threshold: float,
               block_size: int = 512) -> Tensor:
    """Greedy NMS in blocks of candidates (in score order).

    Each block is first tested against every box kept so far; inside the block the greedy
    answer is the unique fixed point of keep[j] = not any(keep[i] and S[i, j] for i < j),
    reached by iterating from keep = all-True (after t rounds the first t entries are final).
    """
    order = _score_order(scores)
    sorted_boxes = boxes[order]
    sorted_labels = labels[order] if labels is not None else None
    areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]).clamp(min=0) * (sorted_boxes[:, 3] - sorted_boxes[:, 1]).clamp(min=0)
    kept_positions: list[Tensor] = []
    kept_boxes, kept_areas = sorted_boxes[:0], areas[:0]
    kept_labels = sorted_labels[:0] if sorted_labels is not None else None
    for start in range(0, sorted_boxes.shape[0], block_size):
        cand, cand_area = sorted_boxes[start:start + block_size], areas[start:start + block_size]
        cand_labels = sorted_labels[start:start + block_size] if sorted_labels is not None else None
        alive = torch.arange(cand.shape[0])
        if kept_boxes.shape[0]:
            hits = _suppresses(cand, cand_area, kept_boxes, kept_areas, iou_threshold)
            if cand_labels is not None:
                hits &= cand_labels[:, None] == kept_labels[None, :]
            alive = torch.where(~hits.any(dim=1))[0]
        cand, cand_area = cand[alive], cand_area[alive]
        within = _suppresses(cand, cand_area, cand, cand_area, iou_threshold)
        if cand_labels is not None:
            cand_labels = cand_labels[alive]
            within &= cand_labels[:, None] == cand_labels[None, :]
        within = within.triu(diagonal=1).to(torch.float32)  # S[i, j], i < j
        keep = torch.ones(cand.shape[0])
        while True:
            new_keep = ((keep @ within) == 0).to(torch.float32)
            if torch.equal(new_keep, keep):
                break
            keep = new_keep
        local = alive[keep.bool()]
        kept_positions.append(local + start)
        kept_boxes = torch.cat((kept_boxes, cand[keep.bool()]))
        kept_areas = torch.cat((kept_areas, cand_area[keep.bool()]))
        if cand_labels is not None:
            kept_labels = torch.cat((kept_labels, cand_labels[keep.bool()]))
    if not kept_positions:
        return order[:0]
    return order[torch.cat(kept_positions)]


# --------------------------------------------------------------------------- numba path

def _jit(function):
    """numba.njit with an on-disk cache, or without one where no cache folder is writable."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # pragma: no cover - read-only installs
        return numba.njit(nogil=True)(function)


if HAS_NUMBA:

    @_jit
    def _greedy_nms_grid(boxes, order, labels, num_labels, iou_threshold):  # pragma: no cover - compiled
        """boxes [N, 4] xyxy (float32/64), order [N] by decreasing score, labels [N] in [0, num_labels)."""
        n = order.shape[0]
        # Boxes are filed by centre. A pair with IoU > t >= 0 has |dcx| < max(w_a, w_b) (1 - t)
        # (the intersection width exceeds t max(w_a, w_b)), likewise for y; any intersecting pair
        # has |dcx| < max side. Cells at least that large (plus 1% for rounding) put every
        # suppressor in the 3 x 3 neighbourhood; at most ~4 cells per box, so memory is O(N).
        min_cx, max_cx = np.inf, -np.inf
        min_cy, max_cy = np.inf, -np.inf
        max_side = 0.0
        for i in range(n):
            cx = 0.5 * (boxes[i, 0] + boxes[i, 2])
            cy = 0.5 * (boxes[i, 1] + boxes[i, 3])
            min_cx, max_cx = min(min_cx, cx), max(max_cx, cx)
            min_cy, max_cy = min(min_cy, cy), max(max_cy, cy)
            max_side = max(max_side, boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1])
        reach = max_side * (1.0 - min(max(float(iou_threshold), 0.0), 1.0))
        max_cells_per_axis = max(1.0, np.sqrt(4.0 * n / num_labels))
        cell = max(reach * 1.01, (max_cx - min_cx) / max_cells_per_axis, (max_cy - min_cy) / max_cells_per_axis, 1e-6)
        grid_w = int((max_cx - min_cx) / cell) + 1
        grid_h = int((max_cy - min_cy) / cell) + 1

        head = np.full(num_labels * grid_h * grid_w, -1, np.int64)
        next_node = np.empty(n, np.int64)
        kept = np.empty(n, np.int64)
        num_kept = 0
        for r in range(n):
            i = order[r]
            label = labels[i]
            x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
            area_i = (x2 - x1) * (y2 - y1)  # only used when an intersection is positive, so > 0
            gx_i = min(max(int((0.5 * (x1 + x2) - min_cx) / cell), 0), grid_w - 1)
            gy_i = min(max(int((0.5 * (y1 + y2) - min_cy) / cell), 0), grid_h - 1)
            suppressed = False
            for gy in range(max(gy_i - 1, 0), min(gy_i + 2, grid_h)):
                for gx in range(max(gx_i - 1, 0), min(gx_i + 2, grid_w)):
                    node = head[(label * grid_h + gy) * grid_w + gx]
                    while node != -1:
                        j = kept[node]
                        iw = min(x2, boxes[j, 2]) - max(x1, boxes[j, 0])
                        ih = min(y2, boxes[j, 3]) - max(y1, boxes[j, 1])
                        if iw > 0 and ih > 0:  # never suppress on an empty or undefined overlap
                            inter = iw * ih
                            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
                            if inter / (area_i + area_j - inter) > iou_threshold:
                                suppressed = True
                                break
                        node = next_node[node]
                    if suppressed:
                        break
                if suppressed:
                    break
            if not suppressed:
                kept[num_kept] = i
                cell_id = (label * grid_h + gy_i) * grid_w + gx_i
                next_node[num_kept] = head[cell_id]
                head[cell_id] = num_kept
                num_kept += 1
        return kept[:num_kept]


def _nms_numba(boxes: Tensor, scores: Tensor, labels: Tensor | None, iou_threshold: float) -> Tensor:
    order = _score_order(scores)
    coords = boxes.detach()
    if coords.dtype not in (torch.float32, torch.float64):
        coords = coords.to(torch.float32)
    coords_np = np.ascontiguousarray(coords.numpy())
    if not np.isfinite(coords_np).all():  # numpy: no thread-pool wake-up for a small check
        raise ValueError("boxes contain NaN or infinite coordinates; the grid kernel needs finite boxes")
    if labels is None:
        labels_np, num_labels = np.zeros(boxes.shape[0], np.int64), 1
    else:
        labels_np = labels.detach().to(torch.int64).numpy()
        low, high = int(labels_np.min()), int(labels_np.max())
        if low < 0 or high >= 4 * boxes.shape[0] + 64:  # sparse or negative ids: renumber 0..L-1
            labels_np = np.unique(labels_np, return_inverse=True)[1].astype(np.int64).ravel()
            high = int(labels_np.max())
        num_labels = high + 1
    # the threshold in the boxes' precision, as onnxruntime compares it
    threshold = np.asarray(iou_threshold, dtype=coords_np.dtype)[()]
    kept = _greedy_nms_grid(coords_np, order.numpy(), labels_np, num_labels, threshold)
    return torch.from_numpy(kept)


def _dispatch(boxes, scores, labels, iou_threshold, backend):
    if backend not in ("auto", "numba", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if backend == "numba" and not HAS_NUMBA:
        raise ValueError("backend='numba' requested but numba is not installed (pip install numba)")
    use_numba = backend == "numba" or (backend == "auto" and HAS_NUMBA and boxes.device.type == "cpu")
    if use_numba:
        return _nms_numba(boxes, scores.detach(), labels, iou_threshold).to(boxes.device)
    return _nms_torch(boxes.detach(), scores.detach(), labels, float(iou_threshold))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, backend: str = "auto") -> Tensor:
    """Greedy NMS. boxes [N, 4] xyxy, scores [N] -> int64 indices of kept boxes, by decreasing score.

    A box is suppressed when its IoU with a higher-scoring kept box is strictly greater than
    ``iou_threshold``. ``backend``: 'auto' (numba when available), 'numba' or 'torch'.
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    return _dispatch(boxes, scores, None, iou_threshold, backend)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *,
                backend: str = "auto") -> Tensor:
    """NMS independently per category ``idxs`` [N]; indices of kept boxes by decreasing score.

    Boxes of different categories never suppress each other. Unlike the usual
    coordinate-offset trick, coordinates are not shifted, so IoUs are bit-identical to
    per-class ``nms``.
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    if not isinstance(idxs, Tensor) or idxs.shape != scores.shape:
        raise ValueError(f"idxs must be a tensor of shape {tuple(scores.shape)}, got "
                         f"{tuple(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__}")
    return _dispatch(boxes, scores, idxs, iou_threshold, backend)


# --------------------------------------------------------------------------- soft-NMS


def soft_nms(boxes: Tensor, scores: Tensor, *, method: str = "gaussian", sigma: float = 0.5,
             iou_threshold: float = 0.3, score_threshold: float = 0.001) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Algorithm 1). Returns (kept indices [K] in selection order, their rescored scores [K]).

    method 'linear': s_i <- s_i (1 - IoU) if IoU >= iou_threshold (N_t);
    method 'gaussian': s_i <- s_i exp(-IoU² / sigma). Boxes whose score falls below
    ``score_threshold`` are discarded.
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    if method not in ("linear", "gaussian"):
        raise ValueError(f"method must be 'linear' or 'gaussian', got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be > 0 for the Gaussian method, got {sigma}")
    boxes, current = boxes.detach(), scores.detach().clone()
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    remaining = torch.arange(boxes.shape[0])
    kept, kept_scores = [], []
    while remaining.numel():
        best = int(torch.argmax(current[remaining]))  # first maximum: ties by lower index
        m = remaining[best]
        if current[m] < score_threshold:
            break
        kept.append(int(m))
        kept_scores.append(current[m].clone())
        remaining = torch.cat((remaining[:best], remaining[best + 1:]))
        if not remaining.numel():
            break
        top_left = torch.max(boxes[m, :2], boxes[remaining, :2])
        bottom_right = torch.min(boxes[m, 2:], boxes[remaining, 2:])
        wh = (bottom_right - top_left).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        iou = torch.nan_to_num(inter / (areas[m] + areas[remaining] - inter), nan=0.0)
        if method == "linear":
            decay = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
        else:
            decay = torch.exp(-(iou * iou) / sigma)
        current[remaining] = current[remaining] * decay
        remaining = remaining[current[remaining] >= score_threshold]
    indices = torch.tensor(kept, dtype=torch.int64)
    new_scores = torch.stack(kept_scores) if kept_scores else scores.new_zeros(0)
    return indices, new_scores
