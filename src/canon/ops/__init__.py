"""canon.ops: vision operators with torchvision-style signatures.

boxes.py   box formats, area, IoU / GIoU / DIoU / CIoU, clipping, the R-CNN ``BoxCoder``
nms.py     ``nms``, ``batched_nms`` (onnxruntime / OpenCV semantics), ``soft_nms``
roi.py     ``roi_pool`` (Fast R-CNN), ``roi_align`` (Mask R-CNN), FPN ``MultiScaleRoIAlign``
anchors.py ``AnchorGenerator``, IoU ``Matcher``, ``BalancedPositiveNegativeSampler`` (Faster R-CNN)
selective_search.py  ``selective_search``, ``SelectiveSearch`` (R-CNN's proposals)
"""
from canon.ops.anchors import AnchorGenerator, BalancedPositiveNegativeSampler, Matcher
from canon.ops.boxes import (BoxCoder, box_area, box_convert, box_iou, clip_boxes_to_image, complete_box_iou,
                             distance_box_iou, generalized_box_iou, remove_small_boxes)
from canon.ops.anchor_priors import KMeansAnchors, kmeans_anchors, mean_best_iou, origin_iou
from canon.ops.nms import HAS_NUMBA, batched_nms, nms, soft_nms
from canon.ops.roi import MultiScaleRoIAlign, assign_fpn_levels, roi_align, roi_pool
from canon.ops.selective_search import SelectiveSearch, selective_search

__all__ = [
    "BoxCoder", "box_area", "box_convert", "box_iou", "clip_boxes_to_image", "complete_box_iou",
    "distance_box_iou", "generalized_box_iou", "remove_small_boxes",
    "nms", "batched_nms", "soft_nms", "HAS_NUMBA",
    "roi_align", "roi_pool", "assign_fpn_levels", "MultiScaleRoIAlign",
    "AnchorGenerator", "Matcher", "BalancedPositiveNegativeSampler",
    "kmeans_anchors", "mean_best_iou", "origin_iou", "KMeansAnchors",
    "selective_search", "SelectiveSearch",
]
