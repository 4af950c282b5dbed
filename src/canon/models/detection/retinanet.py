"""RetinaNet: a one-stage detector on a feature pyramid, trained with the focal loss.

Paper: "Focal Loss for Dense Object Detection", Lin, Goyal, Girshick, He, Dollár, 2017,
arXiv:1708.02002.

Follows the paper:
    * Backbone (Sec. 4): ResNet + FPN with levels P3–P7 (P3–P5 from C3–C5, P6 a 3×3/2
      convolution, P7 a ReLU and another 3×3/2), 256 channels (``canon.models.detection.backbones``).
    * Anchors: areas 32² … 512² on P3 … P7, three scales {2⁰, 2^{1/3}, 2^{2/3}} and three aspect
      ratios {1:2, 1:1, 2:1}: A = 9 per location.
    * Assignment: an anchor is foreground when its IoU with a ground truth is ≥ 0.5, background
      when its best IoU is < 0.4, ignored in between (plus each ground truth's best anchors, the
      low-quality matches of torchvision's Matcher).
    * Heads: two subnets of four 3×3×256 convolutions with ReLU, then a 3×3 convolution with
      K·A outputs (sigmoid per class) or 4·A box offsets; weights N(0, 0.01²), the classification
      bias at b = −log((1 − π)/π) with prior π = 0.01 so that training starts from "background
      everywhere" (Sec. 4.1, "Initialization").
    * Loss: the focal loss FL(p_t) = −α_t (1 − p_t)^γ log(p_t) with α = 0.25, γ = 2
      (``canon.losses.sigmoid_focal_loss``) summed over all non-ignored anchors and divided by the
      number of foreground anchors; box regression on the foreground anchors.
    * Inference (Sec. 4.1): per level, the 1000 best anchors with score > 0.05; boxes from all
      levels merged by NMS at 0.5.

Deviates, and why:
    * torchvision's implementation, so that ``retinanet_resnet50_fpn`` is torchvision-compatible:
      the same ``state_dict`` keys and shapes (``backbone.body.*``, ``backbone.fpn.*``,
      ``head.classification_head.conv.{0..3}.0``, ``.cls_logits``, ``head.regression_head.conv.*``,
      ``.bbox_reg``; 34,014,999 parameters at 91 classes with frozen batch norm, whose statistics
      are buffers) and, given the same weights, the same detections: P6 from P5 (the paper: from
      C5), anchor sizes rounded down (32, 40, 50, …), the box regression loss is L1 (the paper:
      smooth L1), each image's losses are normalised by its own foreground count and then
      averaged over the images, ``num_classes`` counts the background (91 for the COCO layout)
      and the background column is a sigmoid like the others (it is never a positive, so it
      learns to stay low), images resized to a shorter side of 800 (at most 1333), at most 300
      detections per image. torchvision's older key names (``conv.{2i}.weight``) are remapped
      on load, as torchvision does. Its v1 COCO checkpoint was trained with frozen-BN eps = 0:
      call ``canon.models.detection.backbones.set_frozen_batch_norm_eps(model, 0.0)`` after
      loading it.
    * ``retinanet_resnet18_fpn`` (not in the paper, for CPU training from scratch): the same
      heads on a ResNet-18 FPN with trainable batch norm, every layer trainable, and a shorter
      side of 512 (at most 853) by default.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from canon.losses import sigmoid_focal_loss
from canon.models.detection.backbones import LastLevelP6P7, resnet_fpn_backbone
from canon.models.detection.transform import (
    example_detection_inputs, GeneralizedRCNNTransform, IMAGENET_MEAN, IMAGENET_STD,
)
from canon.models.detection.yolo import check_detection_input
from canon.ops import AnchorGenerator, BoxCoder, Matcher, batched_nms, box_iou, clip_boxes_to_image
from canon.registry import register_model

__all__ = ["RetinaNetClassificationHead", "RetinaNetRegressionHead", "RetinaNetHead", "RetinaNet",
           "retinanet_anchor_generator", "match_anchors", "retinanet_loss", "retinanet_resnet50_fpn",
           "retinanet_resnet18_fpn"]

PAPER = "Focal Loss for Dense Object Detection, 2017, arXiv:1708.02002"


def retinanet_anchor_generator() -> AnchorGenerator:
    """9 anchors per location on P3..P7: sizes x·2^{0, 1/3, 2/3} (rounded down, torchvision's) × ratios 0.5, 1, 2."""
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512))
    with torch.device("cpu"):  # its cell anchors are plain CPU tensors, also when the model is built on "meta"
        return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


# ============================================================================ heads


def _subnet(channels: int) -> nn.Sequential:
    """Four 3×3 convolutions with ReLU (each a Sequential, torchvision's Conv2dNormActivation keys)."""
    blocks = [nn.Sequential(nn.Conv2d(channels, channels, 3, stride=1, padding=1), nn.ReLU(inplace=True))
              for _ in range(4)]
    for block in blocks:
        nn.init.normal_(block[0].weight, std=0.01)
        nn.init.zeros_(block[0].bias)
    return nn.Sequential(*blocks)


def _rename_v1_keys(state_dict: dict, prefix: str) -> None:
    """torchvision's version-1 heads stored conv.{2i}.weight; version 2 has conv.{i}.0.weight."""
    for i in range(4):
        for kind in ("weight", "bias"):
            old_key, new_key = f"{prefix}conv.{2 * i}.{kind}", f"{prefix}conv.{i}.0.{kind}"
            if old_key in state_dict:
                state_dict[new_key] = state_dict.pop(old_key)


def _to_anchor_rows(x: Tensor, columns: int) -> Tensor:
    """(N, A·K, H, W) -> (N, H·W·A, K): location-major, then anchor, as the anchors are ordered."""
    n, _, h, w = x.shape
    return x.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns)


class RetinaNetClassificationHead(nn.Module):
    """The classification subnet: (N, 256, H, W) per level -> (N, Σ H·W·A, num_classes) logits."""

    _version = 2

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01):
        super().__init__()
        if not 0.0 < prior_probability < 1.0:
            raise ValueError(f"prior_probability must be in (0, 1), got {prior_probability}")
        self.conv = _subnet(in_channels)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, stride=1, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        # b = -log((1 - π) / π): every anchor starts at probability π of being foreground
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))
        self.num_classes, self.num_anchors = num_classes, num_anchors

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if local_metadata.get("version", None) is None or local_metadata["version"] < 2:
            _rename_v1_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return torch.cat([_to_anchor_rows(self.cls_logits(self.conv(x)), self.num_classes) for x in features], dim=1)


class RetinaNetRegressionHead(nn.Module):
    """The box subnet: (N, 256, H, W) per level -> (N, Σ H·W·A, 4) offsets (t_x, t_y, t_w, t_h)."""

    _version = 2

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = _subnet(in_channels)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, stride=1, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if local_metadata.get("version", None) is None or local_metadata["version"] < 2:
            _rename_v1_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return torch.cat([_to_anchor_rows(self.bbox_reg(self.conv(x)), 4) for x in features], dim=1)


class RetinaNetHead(nn.Module):
    """Both subnets, shared across the pyramid levels."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01):
        super().__init__()
        self.classification_head = RetinaNetClassificationHead(in_channels, num_anchors, num_classes,
                                                               prior_probability)
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        return {"cls_logits": self.classification_head(features), "bbox_regression": self.regression_head(features)}


# ============================================================================ assignment and loss


def match_anchors(gt_boxes: Tensor, anchors: Tensor, matcher: Matcher) -> Tensor:
    """[A] int64: the matched ground truth, -1 background (IoU < low), -2 ignored (between the thresholds)."""
    if gt_boxes.shape[0] == 0:
        return torch.full((anchors.shape[0],), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=anchors.device)
    return matcher(box_iou(gt_boxes, anchors))


def retinanet_loss(cls_logits: Tensor, bbox_regression: Tensor, anchors: Tensor, targets: Sequence[dict],
                   matched_idxs: Sequence[Tensor], box_coder: BoxCoder, *, alpha: float = 0.25,
                   gamma: float = 2.0) -> dict[str, Tensor]:
    """Focal loss over non-ignored anchors and L1 box loss over foreground anchors, each image's sums
    divided by its number of foreground anchors (at least 1), then averaged over the images.

    cls_logits [N, A, K], bbox_regression [N, A, 4], anchors [A, 4] xyxy, matched_idxs per image [A].
    """
    classification, regression = [], []
    for target, logits, deltas, matched in zip(targets, cls_logits, bbox_regression, matched_idxs):
        foreground = matched >= 0
        num_foreground = max(1, int(foreground.sum()))
        one_hot = torch.zeros_like(logits)  # (A, K)
        one_hot[foreground, target["labels"][matched[foreground]]] = 1.0
        valid = matched != Matcher.BETWEEN_THRESHOLDS
        classification.append(sigmoid_focal_loss(logits[valid], one_hot[valid], alpha=alpha, gamma=gamma,
                                                 reduction="sum") / num_foreground)
        boxes = target["boxes"][matched[foreground]].to(deltas.dtype)
        wanted = box_coder.encode(boxes, anchors[foreground])  # t = ((G - P)/P_wh, ln(G_wh / P_wh))
        regression.append((deltas[foreground] - wanted).abs().sum() / num_foreground)
    num_images = max(1, len(targets))
    return {"classification": torch.stack(classification).sum() / num_images,
            "bbox_regression": torch.stack(regression).sum() / num_images}


# ============================================================================ the model


class RetinaNet(nn.Module):
    """RetinaNet; the parts not given are built with torchvision's defaults.

    Args (keyword-only):
        num_classes: classes counting the background (labels 1..num_classes - 1; 91 for COCO's ids).
        backbone: a module returning an ordered dict of pyramid levels with ``out_channels``;
            default ``resnet_fpn_backbone(backbone_name, norm_layer=backbone_norm,
            trainable_layers=trainable_backbone_layers, returned_layers=(2, 3, 4),
            extra_blocks=LastLevelP6P7(256, 256))``. Give these three only without ``backbone``.
        min_size, max_size, image_mean, image_std: the transform.
        anchor_generator, head: default ``retinanet_anchor_generator()`` and ``RetinaNetHead``.
        score_threshold, nms_threshold, detections_per_image, topk_candidates: post-processing
            (per level the topk_candidates best anchor-class scores above score_threshold).
        foreground_iou_threshold, background_iou_threshold: anchor assignment (0.5 / 0.4).
        focal_alpha, focal_gamma, prior_probability: the focal loss and the classifier's bias prior.
    Training returns {"classification", "bbox_regression"}; evaluation, per image, {"boxes",
    "labels", "scores"} with boxes in the image's own pixels.
    """

    def __init__(self, *, num_classes: int = 91, backbone: nn.Module | None = None, backbone_name: str | None = None,
                 backbone_norm: str | None = None, trainable_backbone_layers: int | None = None,
                 min_size: int | Sequence[int] = 800, max_size: int = 1333,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 anchor_generator: AnchorGenerator | None = None, head: nn.Module | None = None,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, detections_per_image: int = 300,
                 foreground_iou_threshold: float = 0.5, background_iou_threshold: float = 0.4,
                 topk_candidates: int = 1000, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 prior_probability: float = 0.01):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (it counts the background), got {num_classes!r}")
        if backbone is None:
            backbone = resnet_fpn_backbone(backbone_name or "resnet50", norm_layer=backbone_norm or "frozen_batch_norm",
                                           trainable_layers=3 if trainable_backbone_layers is None
                                           else trainable_backbone_layers,
                                           returned_layers=(2, 3, 4), extra_blocks=LastLevelP6P7(256, 256))
        elif (backbone_name, backbone_norm, trainable_backbone_layers) != (None, None, None):
            raise ValueError("backbone_name, backbone_norm and trainable_backbone_layers build the default backbone; "
                             "give them or a backbone module, not both")
        if not hasattr(backbone, "out_channels"):
            raise ValueError("backbone must have an out_channels attribute (the channels of its pyramid levels)")
        self.num_classes, self.in_chans = num_classes, len(image_mean)
        self.backbone = backbone
        self.anchor_generator = anchor_generator if anchor_generator is not None else retinanet_anchor_generator()
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise ValueError(f"the shared head needs the same number of anchors on every level, got {num_anchors}")
        self.head = head if head is not None else RetinaNetHead(backbone.out_channels, num_anchors[0], num_classes,
                                                                prior_probability)
        self.matcher = Matcher(foreground_iou_threshold, background_iou_threshold, allow_low_quality_matches=True)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.transform = GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.detections_per_image, self.topk_candidates = int(detections_per_image), int(topk_candidates)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)

    def postprocess_detections(self, cls_logits: Sequence[Tensor], bbox_regression: Sequence[Tensor],
                               anchors: Sequence[Tensor], image_size: tuple[int, int]) -> dict:
        """Detections of one image from its per-level logits [A_l, K], offsets [A_l, 4] and anchors [A_l, 4]."""
        boxes_all, scores_all, labels_all = [], [], []
        for logits, deltas, level_anchors in zip(cls_logits, bbox_regression, anchors):
            num_classes = logits.shape[-1]
            scores = torch.sigmoid(logits).flatten()  # (A_l * K,) anchor-major
            candidates = torch.where(scores > self.score_threshold)[0]
            scores = scores[candidates]
            scores, order = scores.topk(min(self.topk_candidates, candidates.numel()))
            candidates = candidates[order]
            anchor_index = torch.div(candidates, num_classes, rounding_mode="floor")
            boxes = self.box_coder.decode(deltas[anchor_index], level_anchors[anchor_index])
            boxes_all.append(clip_boxes_to_image(boxes, image_size))
            scores_all.append(scores)
            labels_all.append(candidates % num_classes)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(boxes, scores, labels, self.nms_threshold)[:self.detections_per_image]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def example_inputs(self, input_shape: tuple[int, ...] | None = None) -> tuple[list[torch.Tensor]]:
        """A list of zero images of ``input_shape`` (N, 3, H, W), for ``canon info`` and benchmarks."""
        return example_detection_inputs(self, input_shape)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        check_detection_input(images, targets, num_classes=self.num_classes, in_chans=self.in_chans,
                              training=self.training, model_name=self._model_name)
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, targets = self.transform(images, targets)
        features = list(self.backbone(batch.tensors).values())  # P3..P7
        head_outputs = self.head(features)
        level_anchors = self.anchor_generator(tuple(batch.tensors.shape[-2:]), [tuple(f.shape[-2:]) for f in features])
        level_anchors = [a.to(device=features[0].device, dtype=features[0].dtype) for a in level_anchors]
        anchors = torch.cat(level_anchors)  # the same anchors for every image of the padded batch
        if self.training:
            matched = [match_anchors(t["boxes"].to(anchors.dtype), anchors, self.matcher) for t in targets]
            return retinanet_loss(head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors, targets,
                                  matched, self.box_coder, alpha=self.focal_alpha, gamma=self.focal_gamma)
        sizes = [a.shape[0] for a in level_anchors]
        detections = []
        for logits, deltas, image_size in zip(head_outputs["cls_logits"], head_outputs["bbox_regression"],
                                              batch.image_sizes):
            detections.append(self.postprocess_detections(logits.split(sizes), deltas.split(sizes), level_anchors,
                                                          image_size))
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


# ============================================================================ registered names
# ResNet-18 variant for CPU training from scratch (see the module docstring).
_SMALL = dict(backbone_name="resnet18", backbone_norm="batch_norm", trainable_backbone_layers=5, min_size=512,
              max_size=853)


@register_model(RetinaNet, task="detection", paper=PAPER, input_size=(3, 800, 800), num_classes=91,
                compatible_with="torchvision")
def retinanet_resnet50_fpn(**kwargs) -> RetinaNet:
    return RetinaNet(**kwargs)


@register_model(RetinaNet, task="detection", paper=PAPER, input_size=(3, 512, 512), num_classes=91)
def retinanet_resnet18_fpn(**kwargs) -> RetinaNet:
    return RetinaNet(**{**_SMALL, **kwargs})
