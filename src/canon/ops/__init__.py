"""canon.ops: vision operators — boxes, NMS, RoI pooling/align, anchors — with torchvision-style signatures."""
from canon.ops.boxes import (BoxCoder, box_area, box_convert, box_iou, clip_boxes_to_image, complete_box_iou,
                             distance_box_iou, generalized_box_iou, remove_small_boxes)
from canon.ops.nms import HAS_NUMBA, batched_nms, nms, soft_nms

__all__ = [
    "BoxCoder", "box_area", "box_convert", "box_iou", "clip_boxes_to_image", "complete_box_iou",
    "distance_box_iou", "generalized_box_iou", "remove_small_boxes",
    "nms", "batched_nms", "soft_nms", "HAS_NUMBA",
]
from canon.ops.roi import MultiScaleRoIAlign, assign_fpn_levels, roi_align, roi_pool  # noqa: E402

__all__ += ["roi_align", "roi_pool", "assign_fpn_levels", "MultiScaleRoIAlign"]
from canon.ops.anchors import AnchorGenerator, BalancedPositiveNegativeSampler, Matcher  # noqa: E402

__all__ += ["AnchorGenerator", "Matcher", "BalancedPositiveNegativeSampler"]
