"""Faster R-CNN with FPN, Mask R-CNN and Keypoint R-CNN: a transform, a backbone, an RPN and RoI heads.

Papers:
    * Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks, Ren, He,
      Girshick, Sun, 2015, arXiv:1506.01497.
    * Feature Pyramid Networks for Object Detection, Lin et al., 2017, arXiv:1612.03144.
    * Mask R-CNN, He, Gkioxari, Dollár, Girshick, 2017, arXiv:1703.06870.

Follows the papers:
    * Two stages sharing one backbone: the RPN proposes boxes from anchors on every pyramid
      level (rpn.py); the RoI heads pool each proposal from the level its size selects and
      classify it, refine its box per class, and (Mask R-CNN) predict its mask or (Keypoint
      R-CNN) its keypoint heatmaps (roi_heads.py). Training minimises the sum of the RPN's and
      the heads' losses, end to end ("approximate joint training").
    * ResNet-50 + FPN with P2..P6 for the RPN and P2..P5 for the RoIs; images resized to a
      shorter side of 800 (at most 1333), 2000 proposals per image in training and 1000 in testing.

Deviates, and why:
    * torchvision's implementation choices throughout (see rpn.py and roi_heads.py), so that
      ``fasterrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn`` and ``keypointrcnn_resnet50_fpn``
      are torchvision-compatible: the same ``state_dict`` keys and shapes (41,755,286,
      44,401,393 and 59,137,258 parameters with frozen batch norm, at 91 / 91 / 2 classes), and
      the same detections for the same weights. Their defaults are the configuration of
      torchvision's COCO checkpoints: frozen batch norm and ``trainable_backbone_layers=3``.
      Those v1 checkpoints were trained with frozen-BN eps = 0: call
      ``canon.models.detection.backbones.set_frozen_batch_norm_eps(model, 0.0)`` after loading
      one. Their older key names (``rpn.head.conv.weight``, ``roi_heads.mask_head.mask_fcn1.*``,
      FPN ``inner_blocks.{i}.weight``) are remapped on load, as torchvision does.
    * Keyword names are spelled out (``rpn_nms_threshold`` for torchvision's ``rpn_nms_thresh``,
      ``box_detections_per_image`` for ``box_detections_per_img``, ``box_regression_weights``
      for ``bbox_reg_weights``, ``*_foreground_iou_threshold`` / ``*_background_iou_threshold``
      for ``*_fg_iou_thresh`` / ``*_bg_iou_thresh``).
    * Not in the papers, for CPU training from scratch: ``fasterrcnn_resnet18_fpn``,
      ``maskrcnn_resnet18_fpn`` and ``keypointrcnn_resnet18_fpn`` put the same heads on a
      ResNet-18 FPN with trainable batch norm (no ImageNet statistics to freeze), all layers
      trainable, and a shorter side of 512 (at most 853) by default; the keypoint variant's head
      has 4 convolutions of 256 channels instead of 8 of 512.
    * Input checking at the entry: images must be a non-empty list of [3, H, W] float tensors (a
      [N, 3, H, W] batch is accepted too); targets must hold "boxes" Float[N, 4] (x1, y1, x2, y2)
      with x1 < x2 and y1 < y2, "labels" Int64[N] in 0..num_classes-1, and "masks" UInt8[N, H, W]
      / "keypoints" Float[N, K, 3] where the model needs them.

Contract: ``model(images, targets=None)``. In training, a dict of losses: "loss_objectness",
"loss_rpn_box_reg", "loss_classifier", "loss_box_reg" (+ "loss_mask", "loss_keypoint"). In eval, per
image {"boxes" [K, 4] xyxy in the input image's pixels, "labels" [K], "scores" [K]} (+ "masks"
[K, 1, H, W] probabilities at the input size, "keypoints" [K, 17, 3], "keypoints_scores" [K, 17]).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from canon.models.detection.backbones import resnet_fpn_backbone
from canon.models.detection.roi_heads import (FastRCNNPredictor, KeypointRCNNHeads, KeypointRCNNPredictor,
                                              MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead)
from canon.models.detection.rpn import RegionProposalNetwork, RPNHead, fpn_anchor_generator
from canon.models.detection.transform import (
    example_detection_inputs, GeneralizedRCNNTransform, IMAGENET_MEAN, IMAGENET_STD,
)
from canon.ops import AnchorGenerator, MultiScaleRoIAlign
from canon.registry import register_model

__all__ = ["GeneralizedRCNN", "FasterRCNN", "MaskRCNN", "KeypointRCNN", "fasterrcnn_resnet50_fpn",
           "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "fasterrcnn_resnet18_fpn", "maskrcnn_resnet18_fpn",
           "keypointrcnn_resnet18_fpn"]

PAPER_FASTER = "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks, 2015, arXiv:1506.01497"
PAPER_MASK = "Mask R-CNN, 2017, arXiv:1703.06870"

CONTRACT = ("model(images, targets) expects images as a non-empty list of float tensors [3, H, W] and, in "
            "training, one target dict per image with 'boxes' Float[N, 4] in (x1, y1, x2, y2) pixels with "
            "x1 < x2 and y1 < y2 ([0, 4] for an image without objects) and 'labels' Int64[N]")


# --------------------------------------------------------------------------- input checks


def _check_images(images, in_chans: int) -> list[Tensor]:
    """The images as a list of [C, H, W] float tensors, or a ValueError that says what was expected."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"{CONTRACT}; got one tensor of shape {tuple(images.shape)} (wrap a single image "
                             "in a list: model([image]))")
        images = list(images.unbind(0))  # a batch [N, C, H, W]
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        found = "an empty list" if isinstance(images, (list, tuple)) else type(images).__name__
        raise ValueError(f"{CONTRACT}; got {found}")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != in_chans \
                or not image.is_floating_point() or min(image.shape[1:]) < 1:
            found = f"shape {tuple(image.shape)} {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"images[{i}] must be a float tensor [{in_chans}, H, W] (values in [0, 1]), got {found}")
    return list(images)


def _check_target(target, index: int, image: Tensor, num_classes: int, needs_masks: bool,
                  num_keypoints: int | None) -> dict:
    """One target dict checked against its image; bool masks become uint8."""
    where = f"targets[{index}]"
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        raise ValueError(f"{where} must be a dict with 'boxes' and 'labels'; {CONTRACT}")
    boxes, labels = target["boxes"], target["labels"]
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        found = f"shape {tuple(boxes.shape)} {boxes.dtype}" if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{where}['boxes'] must be a float tensor [N, 4] of (x1, y1, x2, y2) boxes with x1 < x2 and "
                         f"y1 < y2 ([0, 4] for an image without objects), got {found}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{where}['boxes'] must be finite [N, 4] (x1, y1, x2, y2) boxes, got {boxes.tolist()}")
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if degenerate.any():
        first = int(torch.where(degenerate)[0][0])
        raise ValueError(f"{where}['boxes'] must be [N, 4] (x1, y1, x2, y2) with x1 < x2 and y1 < y2; box {first} "
                         f"is {boxes[first].tolist()} (zero or negative width or height)")
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (boxes.shape[0],):
        found = f"shape {tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{where}['labels'] must be an int64 tensor [N] = [{boxes.shape[0]}], one class per box, "
                         f"got {found}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{where}['labels'] must lie in 0..{num_classes - 1} (num_classes={num_classes} includes "
                         f"the background 0), got values {int(labels.min())}..{int(labels.max())}")
    target = dict(target)
    height, width = image.shape[-2:]
    if needs_masks:
        masks = target.get("masks")
        expected = (boxes.shape[0], height, width)
        if not isinstance(masks, Tensor) or tuple(masks.shape) != expected or masks.dtype not in (torch.uint8,
                                                                                                   torch.bool):
            found = f"shape {tuple(masks.shape)} {masks.dtype}" if isinstance(masks, Tensor) else repr(masks)
            raise ValueError(f"{where}['masks'] must be a uint8 tensor [N, H, W] = {list(expected)} (one binary "
                             f"mask per box, at the image's size), got {found}")
        target["masks"] = masks.to(torch.uint8)
    if num_keypoints is not None:
        keypoints = target.get("keypoints")
        expected = (boxes.shape[0], num_keypoints, 3)
        if not isinstance(keypoints, Tensor) or tuple(keypoints.shape) != expected \
                or not keypoints.is_floating_point():
            found = f"shape {tuple(keypoints.shape)} {keypoints.dtype}" if isinstance(keypoints, Tensor) \
                else repr(keypoints)
            raise ValueError(f"{where}['keypoints'] must be a float tensor [N, K, 3] = {list(expected)} of "
                             f"(x, y, visibility), got {found}")
    return target


# --------------------------------------------------------------------------- composition


class GeneralizedRCNN(nn.Module):
    """transform -> backbone -> rpn -> roi_heads -> transform.postprocess (torchvision's composition)."""

    def __init__(self, transform: GeneralizedRCNNTransform, backbone: nn.Module, rpn: RegionProposalNetwork,
                 roi_heads: RoIHeads, *, num_classes: int):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes

    @property
    def num_keypoints(self) -> int | None:
        return getattr(self.roi_heads.keypoint_predictor, "num_keypoints", None)

    def example_inputs(self, input_shape: tuple[int, ...] | None = None) -> tuple[list[torch.Tensor]]:
        """A list of zero images of ``input_shape`` (N, 3, H, W), for ``canon info`` and benchmarks."""
        return example_detection_inputs(self, input_shape)

    def forward(self, images, targets: Sequence[dict] | None = None):
        images = _check_images(images, len(self.transform.image_mean))
        if self.training and targets is None:
            raise ValueError(f"targets are required in training mode; {CONTRACT}")
        if targets is not None:
            if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
                found = f"{len(targets)} targets" if isinstance(targets, (list, tuple)) else type(targets).__name__
                raise ValueError(f"expected one target dict per image ({len(images)}), got {found}")
            needs_masks = self.training and self.roi_heads.has_mask
            num_keypoints = self.num_keypoints if self.training else None
            targets = [_check_target(t, i, image, self.num_classes, needs_masks, num_keypoints)
                       for i, (image, t) in enumerate(zip(images, targets))]
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)  # {"0": P2, ..., "pool": P6}
        if isinstance(features, Tensor):
            features = {"0": features}
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**detector_losses, **proposal_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


class FasterRCNN(GeneralizedRCNN):
    """Faster R-CNN; the parts not given are built with torchvision's defaults.

    Args (keyword-only):
        num_classes: classes including the background (91 for COCO's ids).
        backbone: any module returning an ordered dict of feature maps with ``out_channels``;
            default ``resnet_fpn_backbone(backbone_name, norm_layer=backbone_norm,
            trainable_layers=trainable_backbone_layers)``. Give these three only without ``backbone``.
        min_size, max_size, image_mean, image_std: the transform (min_size may be a tuple for
            multi-scale training).
        rpn_*: the RPN (anchors, head, top-n before/after NMS for training and testing, NMS IoU,
            foreground / background IoU, sampled anchors per image and their positive fraction,
            score threshold).
        box_*: the RoI heads (pooler, head, predictor, test score threshold, NMS IoU, detections
            per image, foreground / background IoU, sampled RoIs per image, positive fraction,
            the (10, 10, 5, 5) regression weights, the backbone outputs the RoIs are pooled from:
            P2..P5 of the FPN, ("0",) for a backbone returning one map).
    """

    def __init__(self, *, num_classes: int = 91, backbone: nn.Module | None = None, backbone_name: str | None = None,
                 backbone_norm: str | None = None, trainable_backbone_layers: int | None = None,
                 min_size: int | Sequence[int] = 800, max_size: int = 1333,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 rpn_anchor_generator: AnchorGenerator | None = None, rpn_head: nn.Module | None = None,
                 rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                 rpn_nms_threshold: float = 0.7, rpn_foreground_iou_threshold: float = 0.7,
                 rpn_background_iou_threshold: float = 0.3, rpn_batch_size_per_image: int = 256,
                 rpn_positive_fraction: float = 0.5, rpn_score_threshold: float = 0.0,
                 box_roi_pool: MultiScaleRoIAlign | None = None, box_head: nn.Module | None = None,
                 box_predictor: nn.Module | None = None, box_score_threshold: float = 0.05,
                 box_nms_threshold: float = 0.5, box_detections_per_image: int = 100,
                 box_foreground_iou_threshold: float = 0.5, box_background_iou_threshold: float = 0.5,
                 box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
                 box_regression_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 box_feature_names: Sequence[str] = ("0", "1", "2", "3")):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (it includes the background), got {num_classes!r}")
        if backbone is None:
            backbone = resnet_fpn_backbone(backbone_name or "resnet50", norm_layer=backbone_norm or "frozen_batch_norm",
                                           trainable_layers=3 if trainable_backbone_layers is None
                                           else trainable_backbone_layers)
        elif (backbone_name, backbone_norm, trainable_backbone_layers) != (None, None, None):
            raise ValueError("backbone_name, backbone_norm and trainable_backbone_layers build the default backbone; "
                             "give them or a backbone module, not both")
        if not hasattr(backbone, "out_channels"):
            raise ValueError("backbone must have an out_channels attribute (the channels of its feature maps)")
        out_channels = backbone.out_channels
        anchor_generator = rpn_anchor_generator if rpn_anchor_generator is not None else fpn_anchor_generator()
        rpn_head = rpn_head if rpn_head is not None else RPNHead(out_channels,
                                                                 anchor_generator.num_anchors_per_location()[0])
        rpn = RegionProposalNetwork(
            anchor_generator, rpn_head, foreground_iou_threshold=rpn_foreground_iou_threshold,
            background_iou_threshold=rpn_background_iou_threshold, batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=rpn_positive_fraction, pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            pre_nms_top_n_test=rpn_pre_nms_top_n_test, post_nms_top_n_train=rpn_post_nms_top_n_train,
            post_nms_top_n_test=rpn_post_nms_top_n_test, nms_threshold=rpn_nms_threshold,
            score_threshold=rpn_score_threshold)
        box_roi_pool = box_roi_pool if box_roi_pool is not None else MultiScaleRoIAlign(output_size=7,
                                                                                        sampling_ratio=2)
        if box_head is None:
            resolution = box_roi_pool.output_size[0]
            box_head = TwoMLPHead(out_channels * resolution ** 2, 1024)
        box_predictor = box_predictor if box_predictor is not None else FastRCNNPredictor(1024, num_classes)
        roi_heads = RoIHeads(
            box_roi_pool, box_head, box_predictor, foreground_iou_threshold=box_foreground_iou_threshold,
            background_iou_threshold=box_background_iou_threshold, batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction, box_regression_weights=box_regression_weights,
            score_threshold=box_score_threshold, nms_threshold=box_nms_threshold,
            detections_per_image=box_detections_per_image, feature_names=box_feature_names)
        transform = GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std)
        super().__init__(transform, backbone, rpn, roi_heads, num_classes=num_classes)


class MaskRCNN(FasterRCNN):
    """Faster R-CNN plus Mask R-CNN's mask branch (14x14 RoIAlign, 4 convs, deconv, per-class 28x28 masks)."""

    def __init__(self, *, mask_roi_pool: MultiScaleRoIAlign | None = None, mask_head: nn.Module | None = None,
                 mask_predictor: nn.Module | None = None, **kwargs):
        super().__init__(**kwargs)
        out_channels = self.backbone.out_channels
        self.roi_heads.mask_roi_pool = mask_roi_pool if mask_roi_pool is not None else \
            MultiScaleRoIAlign(output_size=14, sampling_ratio=2)
        self.roi_heads.mask_head = mask_head if mask_head is not None else \
            MaskRCNNHeads(out_channels, (256, 256, 256, 256), dilation=1)
        self.roi_heads.mask_predictor = mask_predictor if mask_predictor is not None else \
            MaskRCNNPredictor(256, 256, self.num_classes)


class KeypointRCNN(FasterRCNN):
    """Faster R-CNN plus the keypoint branch (14x14 RoIAlign, 3x3 convs, deconv + x2 to 56x56 heatmaps).

    Defaults as torchvision: 2 classes (background, person), 17 keypoints, multi-scale training
    with min_size (640, 672, 704, 736, 768, 800).
    """

    def __init__(self, *, num_keypoints: int = 17, keypoint_head_layers: Sequence[int] = (512,) * 8,
                 keypoint_roi_pool: MultiScaleRoIAlign | None = None, keypoint_head: nn.Module | None = None,
                 keypoint_predictor: KeypointRCNNPredictor | None = None, **kwargs):
        if not isinstance(num_keypoints, int) or num_keypoints < 1:
            raise ValueError(f"num_keypoints must be a positive int, got {num_keypoints!r}")
        kwargs.setdefault("num_classes", 2)
        kwargs.setdefault("min_size", (640, 672, 704, 736, 768, 800))
        super().__init__(**kwargs)
        out_channels = self.backbone.out_channels
        self.roi_heads.keypoint_roi_pool = keypoint_roi_pool if keypoint_roi_pool is not None else \
            MultiScaleRoIAlign(output_size=14, sampling_ratio=2)
        layers = tuple(keypoint_head_layers)
        self.roi_heads.keypoint_head = keypoint_head if keypoint_head is not None else \
            KeypointRCNNHeads(out_channels, layers)
        self.roi_heads.keypoint_predictor = keypoint_predictor if keypoint_predictor is not None else \
            KeypointRCNNPredictor(layers[-1], num_keypoints)


# ----------------------------------------------------------------------------- registered names
_R50 = dict(task="detection", input_size=(3, 800, 800), compatible_with="torchvision")
_R18 = dict(task="detection", input_size=(3, 512, 512))
# ResNet-18 variants for CPU training from scratch (see the module docstring).
_SMALL = dict(backbone_name="resnet18", backbone_norm="batch_norm", trainable_backbone_layers=5, min_size=512,
              max_size=853)


@register_model(FasterRCNN, paper=PAPER_FASTER, num_classes=91, **_R50)
def fasterrcnn_resnet50_fpn(**kwargs) -> FasterRCNN:
    return FasterRCNN(**kwargs)


@register_model(MaskRCNN, paper=PAPER_MASK, num_classes=91, **_R50)
def maskrcnn_resnet50_fpn(**kwargs) -> MaskRCNN:
    return MaskRCNN(**kwargs)


@register_model(KeypointRCNN, paper=PAPER_MASK, num_classes=2, **_R50)
def keypointrcnn_resnet50_fpn(**kwargs) -> KeypointRCNN:
    return KeypointRCNN(**kwargs)


@register_model(FasterRCNN, paper=PAPER_FASTER, num_classes=91, **_R18)
def fasterrcnn_resnet18_fpn(**kwargs) -> FasterRCNN:
    return FasterRCNN(**{**_SMALL, **kwargs})


@register_model(MaskRCNN, paper=PAPER_MASK, num_classes=91, **_R18)
def maskrcnn_resnet18_fpn(**kwargs) -> MaskRCNN:
    return MaskRCNN(**{**_SMALL, **kwargs})


@register_model(KeypointRCNN, paper=PAPER_MASK, num_classes=2, **_R18)
def keypointrcnn_resnet18_fpn(**kwargs) -> KeypointRCNN:
    return KeypointRCNN(**{**_SMALL, "keypoint_head_layers": (256,) * 4, **kwargs})
