"""Detection metrics: COCO box, mask and keypoint evaluation, and PASCAL VOC average precision.

Papers:
- COCO: Lin et al., "Microsoft COCO: Common Objects in Context", 2014, arXiv:1405.0312. The
  evaluation protocol (AP over IoU 0.50:0.05:0.95, 101-point interpolated precision, area ranges,
  crowd regions) is defined by the reference code, pycocotools' ``COCOeval``.
- OKS: the COCO keypoint challenge; the per-keypoint sigmas and their meaning are in Ruggero
  Ronchi & Perona, "Benchmarking and Error Diagnosis in Multi-Instance Pose Estimation", 2017,
  arXiv:1707.05388.
- VOC: Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010 (no arXiv
  id): the 11-point interpolated AP of VOC2007 and the all-point AP (area under the monotone
  precision envelope) used from VOC2010 on.

``coco_evaluate`` reproduces ``COCOeval.evaluate(); accumulate(); summarize()`` and returns its
``stats``. It is written with numpy over whole arrays instead of Python loops over images,
categories, area ranges, thresholds and detections:

1. every detection and ground-truth object becomes a row of flat arrays, sorted into
   (category, image) groups; within a group detections are in descending score order (stable,
   so ties keep their input order) and cut to the largest ``maxDets``;
2. the IoU (or OKS) of every detection-object pair inside a group is computed in one batch;
3. greedy matching walks the detection rank r = 0, 1, ... once, for all groups, area ranges and
   IoU thresholds at the same time;
4. precision and recall are accumulated per (category, maxDets) for all area ranges and
   thresholds at once.

Follows COCOeval:
- IoU thresholds ``linspace(.5, .95, 10)``, recall thresholds ``linspace(0, 1, 101)``, maxDets
  (1, 10, 100) and areas all/small/medium/large for boxes and masks; maxDets 20 and areas
  all/medium/large for keypoints. An area range includes both of its ends.
- A crowd object (``iscrowd=1``) is ignored: it can absorb any number of detections, which then
  count neither as true nor as false positives, and its IoU is intersection / detection area.
  For keypoints an object with ``num_keypoints == 0`` is ignored too.
- Matching, per image, category, area range and threshold: detections in score order take the
  free object with the highest IoU >= threshold, preferring objects that are not ignored; among
  equal IoUs the later object in input order wins (COCOeval's ``>=`` update). An unmatched
  detection whose area lies outside the area range is ignored.
- Precision at recall r is the precision envelope (maximum precision at any recall >= r) at the
  first detection whose recall reaches r, 0 where recall never reaches r; detections of all
  images are ranked by a stable (mergesort) sort on score, images in ascending id order. A
  category with no unignored object in an area range gets -1 there and is left out of the means.
- The area of a detection (which decides whether it is ignored in an area range) is chosen as
  pycocotools' ``loadRes`` does, from the first detection's fields: its box area w*h if it has a
  box, else its mask area if it has a segmentation, else the area of its keypoints' extent.
- Box IoU is computed with the same floating-point operations as pycocotools' C code, so the
  numbers are bit-identical; mask IoU uses ``pycocotools.mask.iou`` on RLEs.

Deviates, and why:
- An empty detection list is allowed (every AP and AR is 0, or -1 where there is nothing to
  find); pycocotools' ``loadRes`` fails on it.
- ``iscrowd`` missing from a ground-truth object is read as 0 (pycocotools raises KeyError);
  duplicate ground-truth ids raise ``ValueError`` (pycocotools silently evaluates one object
  twice, because it looks objects up by id).
- Matches are kept as booleans, not as ground-truth ids, so an object with id 0 counts like any
  other; pycocotools stores the matched id and so treats a match to id 0 as no match.
- The input is never modified (pycocotools' ``loadRes`` writes ``area``, ``id`` and ``iscrowd``
  into the caller's result dicts).

``voc_ap`` follows the devkit's formula; its 11 recall points are ``np.arange(0, 1.1, 0.1)`` as in
the devkit's Python ports (py-faster-rcnn, detectron2), so the point written 0.3 is
0.30000000000000004 and a recall of exactly 3/10 does not reach it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "coco_evaluate",
    "coco_box_iou",
    "coco_keypoint_oks",
    "voc_ap",
    "voc_precision_recall",
    "COCO_KEYPOINT_SIGMAS",
    "COCO_DETECTION_STAT_NAMES",
    "COCO_KEYPOINT_STAT_NAMES",
]

# Per-keypoint standard deviations of human annotators, in COCO's keypoint order (nose, eyes,
# ears, shoulders, elbows, wrists, hips, knees, ankles), as used by COCOeval.
COCO_KEYPOINT_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                                 1.07, 1.07, .87, .87, .89, .89]) / 10.0

# The order of COCOeval.stats.
COCO_DETECTION_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                             "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
COCO_KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl",
                            "AR", "AR50", "AR75", "ARm", "ARl")

IOU_TYPES = ("bbox", "segm", "keypoints")

# COCOeval.Params: linspace, not arange, so 0.75 is exactly 0.75.
_IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
_RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
_AREA_RANGES = {"all": (0.0 ** 2, 1e5 ** 2), "small": (0.0 ** 2, 32.0 ** 2),
                "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e5 ** 2)}
_SETTINGS = {  # iou_type -> (area range labels, max_dets)
    "bbox": (("all", "small", "medium", "large"), (1, 10, 100)),
    "segm": (("all", "small", "medium", "large"), (1, 10, 100)),
    "keypoints": (("all", "medium", "large"), (20,)),
}
# (AP or AR, IoU threshold or None for the mean over all, area label, maxDets) per stat.
_DETECTION_SUMMARY = (
    ("AP", None, "all", 100), ("AP", .5, "all", 100), ("AP", .75, "all", 100),
    ("AP", None, "small", 100), ("AP", None, "medium", 100), ("AP", None, "large", 100),
    ("AR", None, "all", 1), ("AR", None, "all", 10), ("AR", None, "all", 100),
    ("AR", None, "small", 100), ("AR", None, "medium", 100), ("AR", None, "large", 100),
)
_KEYPOINT_SUMMARY = (
    ("AP", None, "all", 20), ("AP", .5, "all", 20), ("AP", .75, "all", 20),
    ("AP", None, "medium", 20), ("AP", None, "large", 20),
    ("AR", None, "all", 20), ("AR", .5, "all", 20), ("AR", .75, "all", 20),
    ("AR", None, "medium", 20), ("AR", None, "large", 20),
)


# ============================================================================ pair similarities
def _box_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_iscrowd: np.ndarray) -> np.ndarray:
    """Elementwise COCO IoU of broadcastable (..., 4) xywh boxes; crowd: inter / det area.

    The operations and their order are those of pycocotools' ``bbIou`` (C, double precision).
    """
    dx, dy, dw, dh = np.moveaxis(det_boxes, -1, 0)
    gx, gy, gw, gh = np.moveaxis(gt_boxes, -1, 0)
    det_area = dw * dh
    gt_area = gw * gh
    inter_w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    inter_h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    overlap = (inter_w > 0) & (inter_h > 0)
    inter = inter_w * inter_h
    union = np.where(gt_iscrowd, det_area, det_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / union, 0.0)


def coco_box_iou(det_boxes, gt_boxes, gt_iscrowd=None) -> np.ndarray:
    """COCO box IoU matrix, as ``pycocotools.mask.iou`` computes it for boxes.

    Args:
        det_boxes: (D, 4) detection boxes (x, y, width, height).
        gt_boxes: (G, 4) ground-truth boxes (x, y, width, height).
        gt_iscrowd: (G,) crowd flags; for a crowd box the IoU is intersection / detection area.
    Returns:
        (D, G) float64 IoU.
    """
    det = _as_boxes(det_boxes, "det_boxes")
    gt = _as_boxes(gt_boxes, "gt_boxes")
    crowd = np.zeros(len(gt), bool) if gt_iscrowd is None else np.asarray(gt_iscrowd, bool)
    if crowd.shape != (len(gt),):
        raise ValueError(f"coco_box_iou: gt_iscrowd must have shape ({len(gt)},) to match "
                         f"gt_boxes, got {crowd.shape}")
    return _box_iou(det[:, None, :], gt[None, :, :], crowd[None, :])  # (D, G)


def _oks(det_kpts: np.ndarray, gt_kpts: np.ndarray, gt_area: np.ndarray, gt_box: np.ndarray,
         sigmas: np.ndarray) -> np.ndarray:
    """Elementwise object keypoint similarity of broadcastable (..., K, 3) keypoint sets.

    OKS = mean over the object's labelled keypoints of exp(-d^2 / (2 s^2 k^2)), with d the
    distance from the detected to the labelled point, s^2 the object area and k = 2 sigma.
    An object without labelled keypoints is compared with every detected point's distance to
    its box grown by one box size on each side (zero inside).
    """
    variances = (sigmas * 2) ** 2                                        # (K,)
    xd, yd = det_kpts[..., 0], det_kpts[..., 1]                          # (..., K)
    xg, yg, vg = gt_kpts[..., 0], gt_kpts[..., 1], gt_kpts[..., 2]
    labelled = vg > 0
    num_labelled = labelled.sum(-1)                                      # (...)
    bx, by, bw, bh = (gt_box[..., i, None] for i in range(4))            # (..., 1)
    x0, x1 = bx - bw, bx + bw * 2
    y0, y1 = by - bh, by + bh * 2
    has_labels = (num_labelled > 0)[..., None]
    dx = np.where(has_labels, xd - xg, np.maximum(0, x0 - xd) + np.maximum(0, xd - x1))
    dy = np.where(has_labels, yd - yg, np.maximum(0, y0 - yd) + np.maximum(0, yd - y1))
    # e = d^2 / k^2 / (s^2 + eps) / 2, in COCOeval's order of operations.
    e = (dx ** 2 + dy ** 2) / variances / (gt_area[..., None] + np.spacing(1)) / 2
    similarity = np.exp(-e)
    counted = np.where(has_labels, labelled, True)
    return np.where(counted, similarity, 0.0).sum(-1) / counted.sum(-1)


def coco_keypoint_oks(det_keypoints, gt_keypoints, gt_areas, gt_boxes,
                      sigmas=COCO_KEYPOINT_SIGMAS) -> np.ndarray:
    """Object keypoint similarity matrix, as COCOeval's ``computeOks``.

    Args:
        det_keypoints: (D, K, 3) or (D, 3K) detected keypoints (x, y, v); v is not used.
        gt_keypoints: (G, K, 3) or (G, 3K) labelled keypoints; v > 0 marks a labelled point.
        gt_areas: (G,) object areas (the s^2 of the OKS formula; COCO uses the mask area).
        gt_boxes: (G, 4) object boxes (x, y, width, height), used for objects without labels.
        sigmas: (K,) per-keypoint sigmas; COCO's 17 by default.
    Returns:
        (D, G) float64 OKS in [0, 1].
    """
    sigmas = np.asarray(sigmas, np.float64)
    num_kpts = sigmas.shape[0]
    det = _as_keypoints(det_keypoints, num_kpts, "det_keypoints")
    gt = _as_keypoints(gt_keypoints, num_kpts, "gt_keypoints")
    areas = np.asarray(gt_areas, np.float64)
    boxes = _as_boxes(gt_boxes, "gt_boxes")
    if areas.shape != (len(gt),) or len(boxes) != len(gt):
        raise ValueError(f"coco_keypoint_oks: gt_areas and gt_boxes must have {len(gt)} rows "
                         f"like gt_keypoints, got shapes {areas.shape} and {boxes.shape}")
    return _oks(det[:, None], gt[None], areas[None], boxes[None], sigmas)  # (D, G)


def _as_boxes(boxes, name: str) -> np.ndarray:
    """(N, 4) float64 array from a box list, or ValueError."""
    arr = np.asarray(boxes, np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as (x, y, width, height), "
                         f"got {arr.shape}")
    return arr


def _as_keypoints(keypoints, num_kpts: int, name: str) -> np.ndarray:
    """(N, K, 3) float64 array from (N, 3K) or (N, K, 3) keypoints, or ValueError."""
    arr = np.asarray(keypoints, np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, num_kpts, 3)
    if arr.ndim == 2 and arr.shape[1] == 3 * num_kpts:
        arr = arr.reshape(len(arr), num_kpts, 3)
    if arr.ndim != 3 or arr.shape[1:] != (num_kpts, 3):
        raise ValueError(f"{name} must have shape (N, {num_kpts}, 3) or (N, {3 * num_kpts}) "
                         f"as (x, y, visibility) triples, got {arr.shape}")
    return arr


# ============================================================================ reading the input
def _mask_api():
    """pycocotools.mask, imported only where masks are needed."""
    try:
        from pycocotools import mask
    except ImportError as err:  # pragma: no cover - pycocotools is a dependency
        raise ImportError("COCO mask evaluation needs pycocotools (for RLE masks): "
                          "pip install pycocotools") from err
    return mask


def _column(records: list, key: str, what: str) -> list:
    """[r[key] for r in records], or ValueError naming the first record without ``key``."""
    try:
        return [r[key] for r in records]
    except (KeyError, TypeError, IndexError):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise TypeError(f"{what}[{i}] must be a dict, got {type(r).__name__}") from None
            if key not in r:
                raise ValueError(f"{what}[{i}] has no {key!r} field (it has "
                                 f"{sorted(r)})") from None
        raise


def _to_rle(segmentation, height: int, width: int, mask_api):
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):              # polygons: one object, several parts
        return mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_api.frPyObjects(segmentation, height, width)  # uncompressed RLE
    return segmentation                             # compressed RLE


def _check_ground_truth(ground_truth: Any) -> None:
    if not isinstance(ground_truth, dict):
        raise TypeError(f"ground_truth must be a COCO annotation dict, got "
                        f"{type(ground_truth).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in ground_truth:
            raise ValueError(f"ground_truth has no {key!r} list; a COCO annotation dict has "
                             f"'images', 'annotations' and 'categories' (it has "
                             f"{sorted(ground_truth)})")


class _Objects:
    """Ground-truth objects or detections as flat arrays, sorted into (category, image) groups.

    Rows are ordered by category index, image index, then (detections) descending score and
    input order. ``group`` is category_index * num_images + image_index.
    """

    def __init__(self, img: np.ndarray, cat: np.ndarray, num_images: int, order_key=None):
        keys = (np.arange(len(img)),) + (() if order_key is None else (order_key,)) + (img, cat)
        self.order = np.lexsort(keys)                       # stable sort, last key primary
        self.img, self.cat = img[self.order], cat[self.order]
        self.group = self.cat.astype(np.int64) * num_images + self.img
        self.group_ids, self.group_start, self.group_size = np.unique(
            self.group, return_index=True, return_counts=True)
        # Rank inside the group: 0 for the highest score.
        self.rank = np.arange(len(img)) - np.repeat(self.group_start, self.group_size)

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (a boolean mask over the sorted rows; keeps the order)."""
        self.order, self.img, self.cat = self.order[rows], self.img[rows], self.cat[rows]
        self.group, self.rank = self.group[rows], self.rank[rows]
        self.group_ids, self.group_start, self.group_size = np.unique(
            self.group, return_index=True, return_counts=True)


def _read_ground_truth(ground_truth: dict, iou_type: str, img_index: dict, cat_index: dict,
                       num_images: int) -> tuple[_Objects, dict]:
    """The ground-truth objects of the listed images and categories, with their fields."""
    all_anns = ground_truth["annotations"]
    for key in ("image_id", "category_id"):
        _column(all_anns, key, "ground_truth['annotations']")
    # Objects of images or categories the dict does not list are left out, as in COCOeval.
    anns = [a for a in all_anns if a["image_id"] in img_index and a["category_id"] in cat_index]
    what = "ground_truth['annotations'] (of listed images and categories)"
    ids = _column(anns, "id", what)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"ground_truth annotation ids must be unique; id {dup!r} appears "
                         f"{ids.count(dup)} times")
    img = np.array([img_index[a["image_id"]] for a in anns], np.int64)
    cat = np.array([cat_index[a["category_id"]] for a in anns], np.int64)
    objs = _Objects(img, cat, num_images)
    anns = [anns[i] for i in objs.order]
    fields = {
        "area": np.asarray(_column(anns, "area", what), np.float64).reshape(-1),
        "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
    }
    fields["ignore"] = fields["iscrowd"].copy()
    if iou_type in ("bbox", "keypoints"):
        fields["bbox"] = _as_boxes(_column(anns, "bbox", what), "ground-truth 'bbox'")
    if iou_type == "keypoints":
        fields["keypoints"] = _as_keypoints(_column(anns, "keypoints", what),
                                            len(COCO_KEYPOINT_SIGMAS), "ground-truth 'keypoints'")
        num_kpts = np.asarray(_column(anns, "num_keypoints", what), np.int64).reshape(-1)
        fields["ignore"] |= num_kpts == 0
    if iou_type == "segm":
        mask_api = _mask_api()
        sizes = _image_sizes(ground_truth)
        fields["rle"] = [_to_rle(s, *sizes[a["image_id"]], mask_api)
                         for s, a in zip(_column(anns, "segmentation", what), anns)]
    return objs, fields


def _image_sizes(ground_truth: dict) -> dict:
    """image id -> (height, width), needed to rasterise polygons."""
    images = ground_truth["images"]
    heights = _column(images, "height", "ground_truth['images']")
    widths = _column(images, "width", "ground_truth['images']")
    return {im["id"]: (int(h), int(w)) for im, h, w in zip(images, heights, widths)}


def _read_detections(detections: list, ground_truth: dict, iou_type: str, img_index: dict,
                     cat_index: dict, num_images: int, max_det: int) -> tuple[_Objects, dict]:
    """The detections of the listed categories, sorted and cut to ``max_det`` per group."""
    if not isinstance(detections, (list, tuple)):
        raise TypeError(f"detections must be a list of COCO result dicts, got "
                        f"{type(detections).__name__}")
    what = "detections"
    # pycocotools' loadRes picks the rule for detection areas from the first detection.
    first = detections[0] if len(detections) else {}
    if not len(detections):                                   # nothing to measure
        area_rule = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    elif isinstance(first, dict) and len(first.get("bbox", [])) != 0:
        area_rule = "bbox"
    elif isinstance(first, dict) and "segmentation" in first:
        area_rule = "segmentation"
    else:
        area_rule = "keypoints"
    needed = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    for key in ("image_id", "category_id", "score", needed, area_rule):
        _column(detections, key, what)  # names the first detection without the field
    unknown = [i for i, d in enumerate(detections) if d["image_id"] not in img_index]
    if unknown:
        raise ValueError(f"detections[{unknown[0]}] has image_id "
                         f"{detections[unknown[0]]['image_id']!r}, which is not in "
                         f"ground_truth['images'] ({len(unknown)} such detections); results "
                         f"must refer to the evaluated images")
    # Detections of categories the ground truth does not list are dropped, as in COCOeval.
    dets = [d for d in detections if d["category_id"] in cat_index]
    img = np.array([img_index[d["image_id"]] for d in dets], np.int64)
    cat = np.array([cat_index[d["category_id"]] for d in dets], np.int64)
    score = np.asarray([d["score"] for d in dets], np.float64).reshape(-1)
    # COCOeval sorts -score with a stable sort; the input order breaks ties.
    objs = _Objects(img, cat, num_images, order_key=-score)
    objs.keep(objs.rank < max_det)
    dets = [dets[i] for i in objs.order]
    fields = {"score": score[objs.order]}
    if iou_type == "bbox" or area_rule == "bbox":
        fields["bbox"] = _as_boxes([d["bbox"] for d in dets], "detection 'bbox'")
    if iou_type == "keypoints":
        fields["keypoints"] = _as_keypoints([d["keypoints"] for d in dets],
                                            len(COCO_KEYPOINT_SIGMAS), "detection 'keypoints'")
    if iou_type == "segm" or area_rule == "segmentation":
        mask_api = _mask_api()
        sizes = _image_sizes(ground_truth)
        fields["rle"] = [_to_rle(d["segmentation"], *sizes[d["image_id"]], mask_api)
                         for d in dets]
    if area_rule == "bbox":                                   # box area w * h
        fields["area"] = fields["bbox"][:, 2] * fields["bbox"][:, 3]
    elif area_rule == "segmentation":                         # mask area
        # pycocotools' area() fails under numpy 2 for more than 255 RLEs at once (it sizes a
        # uint8 array by their count), so it is called in chunks.
        rles = fields["rle"]
        fields["area"] = np.concatenate(
            [np.zeros(0)] + [np.asarray(mask_api.area(rles[i:i + 255]), np.float64).reshape(-1)
                             for i in range(0, len(rles), 255)])
    else:                                                     # keypoint extent
        x, y = fields["keypoints"][..., 0], fields["keypoints"][..., 1]
        fields["area"] = (x.max(1) - x.min(1)) * (y.max(1) - y.min(1))
    return objs, fields


# ============================================================================ evaluation
def _pair_similarity(iou_type: str, dets: _Objects, det_fields: dict, gts: _Objects,
                     gt_fields: dict):
    """IoU/OKS of every detection-object pair inside each (category, image) group.

    Returns the groups holding both detections and objects as (det_start, det_count,
    gt_start, gt_count, pair_start) arrays, and the flat (P,) similarities: group after group,
    each a row-major (det_count, gt_count) block.
    """
    _, di, gi = np.intersect1d(dets.group_ids, gts.group_ids, assume_unique=True,
                               return_indices=True)
    d_start, d_count = dets.group_start[di], dets.group_size[di]
    g_start, g_count = gts.group_start[gi], gts.group_size[gi]
    block = d_count * g_count
    pair_start = np.concatenate([[0], np.cumsum(block)[:-1]]).astype(np.int64)
    pair_group = np.repeat(np.arange(len(block)), block)                 # (P,)
    within = np.arange(block.sum()) - pair_start[pair_group]
    pair_det = d_start[pair_group] + within // g_count[pair_group]
    pair_gt = g_start[pair_group] + within % g_count[pair_group]
    if iou_type == "bbox":
        sim = _box_iou(det_fields["bbox"][pair_det], gt_fields["bbox"][pair_gt],
                       gt_fields["iscrowd"][pair_gt])
    elif iou_type == "keypoints":
        sim = _oks(det_fields["keypoints"][pair_det], gt_fields["keypoints"][pair_gt],
                   gt_fields["area"][pair_gt], gt_fields["bbox"][pair_gt], COCO_KEYPOINT_SIGMAS)
    else:
        mask_api = _mask_api()
        d_rle, g_rle, crowd = det_fields["rle"], gt_fields["rle"], gt_fields["iscrowd"]
        blocks = [np.asarray(mask_api.iou(d_rle[ds:ds + dn], g_rle[gs:gs + gn],
                                          crowd[gs:gs + gn].astype(np.uint8)), np.float64)
                  .reshape(-1) for ds, dn, gs, gn in zip(d_start, d_count, g_start, g_count)]
        sim = np.concatenate(blocks) if blocks else np.zeros(0)
    return (d_start, d_count, g_start, g_count, pair_start), sim


def _match(groups, sim: np.ndarray, gt_crowd: np.ndarray, gt_ignore: np.ndarray,
           num_dets: int, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching, for all groups, area ranges and thresholds at once.

    Args:
        groups: from ``_pair_similarity``.
        sim: (P,) flat pair similarities.
        gt_crowd: (G,) crowd flags; gt_ignore: (G, A) ignore flag per area range.
        num_dets: number of detections D; thresholds: (T,) IoU thresholds.
    Returns:
        matched (D, A, T) and matched_ignored (D, A, T): whether each detection is matched,
        and whether its match is an ignored object.
    """
    num_areas, num_thr = gt_ignore.shape[1], len(thresholds)
    matched = np.zeros((num_dets, num_areas, num_thr), bool)
    matched_ignored = np.zeros((num_dets, num_areas, num_thr), bool)
    d_start, d_count, g_start, g_count, pair_start = groups
    if len(d_start) == 0:
        return matched, matched_ignored
    # Longest groups first, so the groups still holding a detection of rank r are a prefix.
    by_len = np.argsort(-d_count, kind="stable")
    d_start, d_count, g_start, g_count, pair_start = (
        x[by_len] for x in (d_start, d_count, g_start, g_count, pair_start))
    g_max = int(g_count.max())
    slots = np.arange(g_max)
    valid = slots < g_count[:, None]                                     # (B, Gmax)
    gt_rows = np.where(valid, g_start[:, None] + slots, 0)
    crowd = gt_crowd[gt_rows] & valid                                    # (B, Gmax)
    ignore = np.moveaxis(gt_ignore[gt_rows], -1, 1)                      # (B, A, Gmax)
    taken = np.zeros((len(d_start), num_areas, num_thr, g_max), bool)    # (B, A, T, Gmax)
    thr = np.minimum(thresholds, 1 - 1e-10)[:, None]                     # (T, 1)
    # Number of groups with more than r detections, for r = 0 .. max count - 1.
    active_per_rank = np.searchsorted(-d_count, -np.arange(int(d_count[0])), side="left")
    for rank, n in enumerate(active_per_rank):
        gm = int(g_count[:n].max())
        ok = valid[:n, :gm]
        iou = np.where(ok, sim[np.where(ok, (pair_start[:n] + rank * g_count[:n])[:, None]
                                        + slots[:gm], 0)], -1.0)         # (n, gm)
        ign = ignore[:n, :, :gm]                                         # (n, A, gm)
        # A taken object stays available only if it is a crowd region.
        free = ~taken[:n, :, :, :gm] | crowd[:n, None, None, :gm]        # (n, A, T, gm)
        candidate = free & (iou[:, None, None, :] >= thr)
        regular = candidate & ~ign[:, :, None, :]
        # Objects that are not ignored are preferred; ignored ones only when none qualifies.
        use = np.where(regular.any(-1, keepdims=True), regular, candidate)
        score = np.where(use, iou[:, None, None, :], -1.0)
        best = gm - 1 - np.argmax(score[..., ::-1], axis=-1)              # (n, A, T), last max
        hit = use.any(-1)
        i, a, t = np.nonzero(hit)
        taken[i, a, t, best[i, a, t]] = True
        det_rows = d_start[:n] + rank
        matched[det_rows] = hit
        matched_ignored[det_rows] = hit & np.take_along_axis(ign, best, axis=-1)
    return matched, matched_ignored


def _accumulate(dets: _Objects, score: np.ndarray, dt_match: np.ndarray, dt_ignore: np.ndarray,
                num_regular: np.ndarray, num_categories: int, max_dets: tuple[int, ...]):
    """Precision (T, R, K, A, M) and recall (T, K, A, M) as COCOeval.accumulate computes them.

    Args:
        dt_match, dt_ignore: (D, A, T) per detection; num_regular: (K, A) count of objects that
        are not ignored, per category and area range.
    """
    num_dets, num_areas, num_thr = dt_match.shape
    num_rec = len(_RECALL_THRESHOLDS)
    precision = -np.ones((num_thr, num_rec, num_categories, num_areas, len(max_dets)))
    recall = -np.ones((num_thr, num_categories, num_areas, len(max_dets)))
    cat_start = np.searchsorted(dets.cat, np.arange(num_categories + 1))
    true_pos = dt_match & ~dt_ignore                                     # (D, A, T)
    false_pos = ~dt_match & ~dt_ignore
    for k in range(num_categories):
        areas = np.flatnonzero(num_regular[k] > 0)
        if len(areas) == 0:
            continue
        npig = num_regular[k, areas]                                     # (A',)
        lo, hi = cat_start[k], cat_start[k + 1]
        # All images' detections of the category, by score; images in id order break ties.
        order = lo + np.argsort(-score[lo:hi], kind="mergesort")
        for m, max_det in enumerate(max_dets):
            rows = order[dets.rank[order] < max_det]
            nd = len(rows)
            if nd == 0:
                precision[:, :, k, areas, m] = 0.0
                recall[:, k, areas, m] = 0.0
                continue
            tp = np.cumsum(true_pos[rows][:, areas], axis=0)             # (nd, A', T)
            fp = np.cumsum(false_pos[rows][:, areas], axis=0)
            tp_f = tp.astype(np.float64)
            pr = tp_f / (fp + tp_f + np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]           # precision envelope
            recall[:, k, areas, m] = (tp_f[-1] / npig[:, None]).T
            # COCOeval: i_r = searchsorted(rc, r, 'left') with rc = tp / npig. As rc takes only
            # the values j / npig, rc < r  <=>  tp < c_r, where c_r counts the j in 0..npig with
            # j / npig < r; so i_r = searchsorted(tp, c_r) on integers. One call does all rows:
            # row q (area a, threshold t) is shifted by q * stride, above any value it holds.
            c = np.stack([np.searchsorted(np.arange(n + 1) / n, _RECALL_THRESHOLDS, "left")
                          for n in npig])                                # (A', R)
            rows_tp = np.moveaxis(tp, 0, -1).reshape(-1, nd)             # (A'*T, nd)
            stride = max(nd, int(npig.max())) + 2
            shift = np.arange(len(rows_tp)) * stride
            queries = np.repeat(c, num_thr, axis=0) + shift[:, None]     # (A'*T, R)
            idx = np.searchsorted((rows_tp + shift[:, None]).ravel(), queries, "left")
            idx -= (np.arange(len(rows_tp)) * nd)[:, None]
            rows_pr = np.moveaxis(pr, 0, -1).reshape(-1, nd)
            q = np.where(idx < nd, np.take_along_axis(rows_pr, np.minimum(idx, nd - 1), 1), 0)
            precision[:, :, k, areas, m] = q.reshape(len(areas), num_thr, num_rec).transpose(1, 2, 0)
    return precision, recall


def _summarize(precision: np.ndarray, recall: np.ndarray, area_labels, max_dets,
               summary) -> list[float]:
    """COCOeval.summarize: the mean over entries > -1 of each slice, -1 if there are none."""
    stats = []
    for kind, iou_thr, area, max_det in summary:
        a, m = area_labels.index(area), max_dets.index(max_det)
        s = precision[..., a, m] if kind == "AP" else recall[..., a, m]
        if iou_thr is not None:
            s = s[np.isclose(_IOU_THRESHOLDS, iou_thr)]
        stats.append(float(np.mean(s[s > -1])) if np.any(s > -1) else -1.0)
    return stats


def coco_evaluate(ground_truth: dict, detections: list, iou_type: str = "bbox", *,
                  return_curves: bool = False) -> dict:
    """COCO evaluation of detections: ``COCOeval(...).evaluate(); accumulate(); summarize()``.

    Args:
        ground_truth: a COCO annotation dict with ``images`` (``id``; ``height`` and ``width``
            for masks), ``annotations`` (``id``, ``image_id``, ``category_id``, ``area``,
            ``iscrowd``; ``bbox`` for boxes, ``segmentation`` for masks, ``bbox``,
            ``keypoints`` and ``num_keypoints`` for keypoints) and ``categories`` (``id``).
            Every listed image and category is evaluated.
        detections: a COCO results list: dicts with ``image_id``, ``category_id``, ``score``
            and ``bbox`` (x, y, w, h), ``segmentation`` (RLE or polygons) or ``keypoints``
            (3K numbers) for ``iou_type`` "bbox", "segm" or "keypoints".
        iou_type: "bbox", "segm" or "keypoints".
        return_curves: also return COCOeval's ``precision`` (T, R, K, A, M) and ``recall``
            (T, K, A, M) arrays with their axes.
    Returns:
        {"iou_type", "stats": the 12 (10 for keypoints) numbers in ``COCOeval.stats`` order,
        and each by name: "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
        "ARs", "ARm", "ARl" (keypoints: "AP", "AP50", "AP75", "APm", "APl", "AR", "AR50",
        "AR75", "ARm", "ARl")}. Values are in [0, 1], or -1 where nothing can be measured.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    _check_ground_truth(ground_truth)
    area_labels, max_dets = _SETTINGS[iou_type]
    img_ids = sorted(set(_column(ground_truth["images"], "id", "ground_truth['images']")))
    cat_ids = sorted(set(_column(ground_truth["categories"], "id",
                                 "ground_truth['categories']")))
    img_index = {x: i for i, x in enumerate(img_ids)}
    cat_index = {x: i for i, x in enumerate(cat_ids)}

    gts, gt_fields = _read_ground_truth(ground_truth, iou_type, img_index, cat_index,
                                        len(img_ids))
    dets, det_fields = _read_detections(detections, ground_truth, iou_type, img_index,
                                        cat_index, len(img_ids), max_dets[-1])

    # Ignore flags per area range; an area range includes both ends.
    bounds = np.array([_AREA_RANGES[label] for label in area_labels])   # (A, 2)

    def outside(area):                                                  # (N,) -> (N, A)
        return (area[:, None] < bounds[:, 0]) | (area[:, None] > bounds[:, 1])

    gt_ignore = gt_fields["ignore"][:, None] | outside(gt_fields["area"])    # (G, A)
    num_regular = np.zeros((len(cat_ids), len(area_labels)), np.int64)       # (K, A)
    np.add.at(num_regular, gts.cat, ~gt_ignore)

    groups, sim = _pair_similarity(iou_type, dets, det_fields, gts, gt_fields)
    matched, matched_ignored = _match(groups, sim, gt_fields["iscrowd"], gt_ignore,
                                      len(dets.img), _IOU_THRESHOLDS)        # (D, A, T)
    # An unmatched detection outside the area range is ignored.
    dt_ignore = matched_ignored | (~matched & outside(det_fields["area"])[:, :, None])

    precision, recall = _accumulate(dets, det_fields["score"], matched, dt_ignore,
                                    num_regular, len(cat_ids), max_dets)
    if iou_type == "keypoints":
        summary, names = _KEYPOINT_SUMMARY, COCO_KEYPOINT_STAT_NAMES
    else:
        summary, names = _DETECTION_SUMMARY, COCO_DETECTION_STAT_NAMES
    stats = _summarize(precision, recall, area_labels, max_dets, summary)
    result = {"iou_type": iou_type, "stats": stats, **dict(zip(names, stats))}
    if return_curves:
        result.update(precision=precision, recall=recall, category_ids=list(cat_ids),
                      iou_thresholds=_IOU_THRESHOLDS.copy(),
                      recall_thresholds=_RECALL_THRESHOLDS.copy(),
                      area_ranges=list(area_labels), max_dets=list(max_dets))
    return result


# ============================================================================ PASCAL VOC
_VOC_INTERPOLATIONS = ("all_point", "11_point")


def voc_precision_recall(scores, is_true_positive, num_positives: int):
    """Cumulative precision and recall down a ranked detection list, as the VOC devkit.

    Args:
        scores: (N,) detection confidences.
        is_true_positive: (N,) bool, whether each detection matched an unmatched object.
        num_positives: number of objects to find (VOC: those not marked difficult), > 0.
    Returns:
        (recall, precision), each (N,) float64, in descending score order (stable sort, so
        ties keep their input order; the devkit's Python port uses an unstable sort).
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    tp_flags = np.asarray(is_true_positive, bool).reshape(-1)
    if scores.shape != tp_flags.shape:
        raise ValueError(f"voc_precision_recall: scores and is_true_positive must have the same "
                         f"length, got {scores.shape[0]} and {tp_flags.shape[0]}")
    if num_positives <= 0:
        raise ValueError(f"voc_precision_recall: num_positives must be > 0, got {num_positives}")
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(tp_flags[order]).astype(np.float64)
    fp = np.cumsum(~tp_flags[order]).astype(np.float64)
    recall = tp / num_positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision


def voc_ap(recall, precision, interpolation: str = "all_point") -> float:
    """PASCAL VOC average precision from a precision-recall curve.

    Args:
        recall: (N,) non-decreasing recall down the ranked detections.
        precision: (N,) precision at the same ranks.
        interpolation: "all_point" (VOC2010 on): the area under the precision envelope
            p_interp(r) = max_{r' >= r} p(r'), summed where recall changes; or "11_point"
            (VOC2007): the mean of p_interp at recall 0, 0.1, ..., 1.
    Returns:
        AP in [0, 1] (0 for an empty curve).
    """
    if interpolation not in _VOC_INTERPOLATIONS:
        raise ValueError(f"voc_ap: interpolation must be one of {_VOC_INTERPOLATIONS}, "
                         f"got {interpolation!r}")
    rec = np.asarray(recall, np.float64).reshape(-1)
    prec = np.asarray(precision, np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"voc_ap: recall and precision must have the same length, got "
                         f"{rec.shape[0]} and {prec.shape[0]}")
    if interpolation == "11_point":
        points = np.arange(0.0, 1.1, 0.1)                                 # (11,), devkit values
        reached = rec[None, :] >= points[:, None]                        # (11, N)
        p_interp = np.where(reached, prec[None, :], 0.0).max(1, initial=0.0)
        return float(np.sum(p_interp / 11.0))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]                      # precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])                       # where recall changes
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
