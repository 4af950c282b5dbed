"""SSD: default boxes of several scales and aspect ratios on several feature maps, one pass.

Paper: "SSD: Single Shot MultiBox Detector", Liu, Anguelov, Erhan, Szegedy, Reed, Fu, Berg,
2015, arXiv:1512.02325.

Follows the paper:
    * SSD300 (Fig. 2): VGG-16 through conv5_3 with pool5 made 3×3/1 and fc6/fc7 turned into a
      3×3 convolution dilated by 6 and a 1×1 convolution (1024 channels), then the extra layers
      conv8_2 … conv11_2; predictions from conv4_3 (L2-normalised, with a learned per-channel
      scale starting at 20, Sec. 3.1 and ParseNet), fc7, conv8_2, conv9_2, conv10_2, conv11_2,
      i.e. 38², 19², 10², 5², 3², 1² maps with 4, 6, 6, 6, 4, 4 default boxes per location:
      8,732 in all.
    * Default boxes (Sec. 2.2 "Choosing scales and aspect ratios"): on map k of size f_k the
      centres are ((i + 0.5)/f_k, (j + 0.5)/f_k); aspect ratios {1, 2, 1/2} or {1, 2, 3, 1/2,
      1/3} with w = s_k √a, h = s_k / √a, plus a second square box of scale √(s_k s_{k+1}).
    * Each prediction is 3×3 convolution outputs per default box: C + 1 class scores (softmax
      with background) and 4 offsets, encoded like Faster R-CNN's (centre offsets over the
      default box's size, log size ratios) with variances 0.1 and 0.2 (weights 10, 10, 5, 5).
    * Matching (Sec. 2.2): each ground truth takes the default box of best IoU, then every
      default box with IoU > 0.5 takes its best ground truth. Loss (eq. 1):
      (L_conf + L_loc) / N with N the matched boxes; L_loc smooth L1 over the matches; L_conf
      softmax cross-entropy over the matches and the hardest negatives, at most 3 per positive
      (hard negative mining, Sec. 2.2).
    * Inference: per class, boxes above a confidence of 0.01, NMS at IoU 0.45, the 200 best
      detections per image (Sec. 3, "top 200 detections per image").

Deviates, and why:
    * torchvision's implementation choices, so that ``ssd300_vgg16`` is torchvision-compatible:
      the same ``state_dict`` keys and shapes (``backbone.features.*``, ``backbone.scale_weight``,
      ``backbone.extra.*``, ``head.classification_head.module_list.*``,
      ``head.regression_head.module_list.*``; 35,641,826 parameters at 91 classes) and, given the
      same weights, the same detections: the scales 0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05 of
      torchvision (the paper's conv4_3 scale 0.1 and s_min 0.2 for VOC differ), the default-box
      centres placed with the "steps" 8, 16, 32, 64, 100, 300 px of the original Caffe code,
      box widths and heights (not centres) clipped to [0, 1]; pool3 rounds up (ceil mode) so the
      conv4_3 map is 38×38; images resized to 300×300 (any aspect ratio) and normalised with
      torchvision's (0.48235, 0.45882, 0.40784) mean and 1/255 std (the Caffe VGG's [0, 255]
      input); before NMS the 400 best boxes of each class; the number of hard negatives is
      3 × the positives of that image.
    * ``num_classes`` counts the background (91 for torchvision's COCO layout), labels are
      1..num_classes - 1. Keyword names are spelled out as in canon's other detectors
      (``score_threshold``, ``nms_threshold``, ``detections_per_image``, ``iou_threshold`` for
      torchvision's ``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``iou_thresh``).
    * A hard negative is never a positive: when 3 × positives exceeds the negatives, torchvision's
      rank rule would also select positive boxes a second time; here the selection stops at the
      negatives.
    * The extra layers start with Xavier-uniform weights (torchvision's), the VGG layers with
      canon VGG's Kaiming initialisation (torchvision ports an ImageNet VGG there).
    * ``ssd300_resnet18`` (not in the paper, for CPU training from scratch): ResNet-18's layer2,
      layer3 and layer4 (strides 8, 16, 32; 38², 19², 10² at 300 px) with trainable batch norm,
      then three extra 1×1 → 3×3/2 blocks (with batch norm) to 5², 3², 2²; the same scales and
      aspect ratios, centres at (i + 0.5)/f_k of each map (the paper's formula, so any
      ``image_size`` works), ImageNet mean/std normalisation. 8,744 default boxes at 300 px.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from canon.losses import cross_entropy, smooth_l1_loss
from canon.models.classification.resnet import resnet18
from canon.models.classification.vgg import VGG_CONFIGS, make_vgg_features
from canon.models.detection.backbones import ResNetBody
from canon.models.detection.transform import (
    example_detection_inputs, GeneralizedRCNNTransform, IMAGENET_MEAN, IMAGENET_STD,
)
from canon.models.detection.yolo import check_detection_input
from canon.ops import BoxCoder, Matcher, batched_nms, box_iou, clip_boxes_to_image
from canon.registry import register_model

__all__ = ["DefaultBoxGenerator", "SSDFeatureExtractorVGG", "SSDFeatureExtractorResNet", "SSDHead", "SSD",
           "ssd_match", "hard_negative_mask", "SSD300_ASPECT_RATIOS", "SSD300_SCALES", "SSD300_STEPS",
           "ssd300_vgg16", "ssd300_resnet18"]

PAPER = "SSD: Single Shot MultiBox Detector, 2015, arXiv:1512.02325"

SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)  # torchvision's; s_{k+1} of the last map is 1.05
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
CAFFE_VGG_MEAN = (0.48235, 0.45882, 0.40784)
CAFFE_VGG_STD = (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0)  # undoes the [0, 1] scaling


# ============================================================================ default boxes


class DefaultBoxGenerator(nn.Module):
    """SSD's default boxes for a list of feature maps: forward(image_size, feature_sizes) -> [A, 4] xyxy pixels.

    Args:
        aspect_ratios: per map, the ratios a ≠ 1 (each gives boxes a and 1/a).
        min_ratio, max_ratio: s_min, s_max of the paper's linear scale rule (used without ``scales``).
        scales: explicit s_1 … s_{m+1} (one more than maps: the last feeds √(s_m s_{m+1})).
        steps: per map, the pixel spacing of the centres (Caffe's); None: 1 / f_k.
        clip: clip the normalised widths and heights to [0, 1].
    Boxes are ordered map by map, location by location (row-major), then per location:
    (s_k, s_k), (s'_k, s'_k), and (s_k √a, s_k / √a), (s_k / √a, s_k √a) for each a.
    """

    def __init__(self, aspect_ratios: Sequence[Sequence[float]], *, min_ratio: float = 0.15, max_ratio: float = 0.9,
                 scales: Sequence[float] | None = None, steps: Sequence[int] | None = None, clip: bool = True):
        super().__init__()
        num_maps = len(aspect_ratios)
        if steps is not None and len(steps) != num_maps:
            raise ValueError(f"steps needs one entry per feature map ({num_maps}), got {list(steps)}")
        if scales is None:  # s_k = s_min + (s_max - s_min)(k - 1)/(m - 1), then 1.0 for s'_m
            if num_maps > 1:
                scales = [min_ratio + (max_ratio - min_ratio) * k / (num_maps - 1.0) for k in range(num_maps)] + [1.0]
            else:
                scales = [min_ratio, max_ratio]
        if len(scales) != num_maps + 1:
            raise ValueError(f"scales needs one entry per feature map plus one ({num_maps + 1}), got {list(scales)}")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.scales = [float(s) for s in scales]
        self.steps = list(steps) if steps is not None else None
        self.clip = clip
        self.wh_pairs = []  # per map, [boxes per location, 2] normalised (w, h)
        for k in range(num_maps):
            s_k, s_prime = self.scales[k], math.sqrt(self.scales[k] * self.scales[k + 1])
            pairs = [[s_k, s_k], [s_prime, s_prime]]
            for ratio in self.aspect_ratios[k]:
                w, h = s_k * math.sqrt(ratio), s_k / math.sqrt(ratio)
                pairs.extend([[w, h], [h, w]])
            self.wh_pairs.append(pairs)

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def forward(self, image_size: Sequence[int], feature_sizes: Sequence[Sequence[int]],
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        if len(feature_sizes) != len(self.wh_pairs):
            raise ValueError(f"expected {len(self.wh_pairs)} feature maps, got {len(feature_sizes)}")
        height, width = int(image_size[0]), int(image_size[1])
        boxes = []
        for k, (f_h, f_w) in enumerate(feature_sizes):
            f_h, f_w = int(f_h), int(f_w)
            x_cells = width / self.steps[k] if self.steps is not None else f_w  # f_k along x
            y_cells = height / self.steps[k] if self.steps is not None else f_h
            centre_x = ((torch.arange(f_w, device=device) + 0.5) / x_cells).to(dtype)  # (i + 0.5) / f_k
            centre_y = ((torch.arange(f_h, device=device) + 0.5) / y_cells).to(dtype)
            grid_y, grid_x = torch.meshgrid(centre_y, centre_x, indexing="ij")
            pairs = torch.as_tensor(self.wh_pairs[k], dtype=dtype, device=device)
            if self.clip:
                pairs = pairs.clamp(min=0, max=1)
            centres = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # (f_h f_w, 2)
            centres = centres[:, None, :].expand(-1, pairs.shape[0], -1).reshape(-1, 2)
            boxes.append(torch.cat([centres, pairs.repeat(f_h * f_w, 1)], dim=1))  # (cx, cy, w, h) in [0, 1]
        boxes = torch.cat(boxes)  # (A, 4)
        scale = torch.tensor([width, height], device=boxes.device)
        return torch.cat([(boxes[:, :2] - 0.5 * boxes[:, 2:]) * scale, (boxes[:, :2] + 0.5 * boxes[:, 2:]) * scale],
                         dim=-1)

    def extra_repr(self) -> str:
        return f"aspect_ratios={self.aspect_ratios}, scales={self.scales}, steps={self.steps}, clip={self.clip}"


# ============================================================================ backbones


def _xavier_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _extra_block(in_chs: int, mid_chs: int, out_chs: int, *, stride: int, padding: int) -> nn.Sequential:
    """conv_x_1 (1×1 reduce) → conv_x_2 (3×3), each with ReLU."""
    return nn.Sequential(nn.Conv2d(in_chs, mid_chs, kernel_size=1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid_chs, out_chs, kernel_size=3, stride=stride, padding=padding),
                         nn.ReLU(inplace=True))


class SSDFeatureExtractorVGG(nn.Module):
    """VGG-16 to conv4_3 (``features``), then fc6/fc7 and conv8 … conv11 (``extra``): 6 maps.

    forward(x (N, 3, 300, 300)) -> OrderedDict "0".."5": conv4_3 (L2-normalised × ``scale_weight``,
    512 × 38²), fc7 (1024 × 19²), conv8_2 (512 × 10²), conv9_2 (256 × 5²), conv10_2 (256 × 3²),
    conv11_2 (256 × 1²).
    """

    def __init__(self, *, in_chans: int = 3):
        super().__init__()
        vgg = make_vgg_features(VGG_CONFIGS["D"], in_chans=in_chans)  # torchvision's vgg16.features layout
        for m in vgg.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        pools = [i for i, layer in enumerate(vgg) if isinstance(layer, nn.MaxPool2d)]
        pool3, pool4 = pools[2], pools[3]
        vgg[pool3].ceil_mode = True  # 75 -> 38, the paper's conv4_3 size
        self.scale_weight = nn.Parameter(torch.ones(512) * 20)  # ParseNet's learned L2 scale, initial 20
        self.features = nn.Sequential(*vgg[:pool4])  # through conv4_3 + ReLU
        fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=False),  # pool5 made 3×3/1
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),  # fc6, atrous
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, kernel_size=1),  # fc7
            nn.ReLU(inplace=True),
        )
        _xavier_init(fc)
        extra = nn.ModuleList([
            _extra_block(1024, 256, 512, stride=2, padding=1),  # conv8_2: 19 -> 10
            _extra_block(512, 128, 256, stride=2, padding=1),  # conv9_2: 10 -> 5
            _extra_block(256, 128, 256, stride=1, padding=0),  # conv10_2: 5 -> 3
            _extra_block(256, 128, 256, stride=1, padding=0),  # conv11_2: 3 -> 1
        ])
        _xavier_init(extra)
        extra.insert(0, nn.Sequential(*vgg[pool4:-1], fc))  # pool4, conv5_1..conv5_3 (pool5 replaced), fc6, fc7
        self.extra = extra
        self.out_channels = [512, 1024, 512, 256, 256, 256]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = self.features(x)  # (N, 512, 38, 38)
        outputs = [self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)]  # L2 over channels, then rescale
        for block in self.extra:
            x = block(x)
            outputs.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(outputs))


class SSDFeatureExtractorResNet(nn.Module):
    """ResNet-18 layer2/3/4 and three 1×1 → 3×3/2 extra blocks (batch norm): 6 maps, strides 8 … 256."""

    def __init__(self, *, in_chans: int = 3):
        super().__init__()
        self.body = ResNetBody(resnet18(num_classes=0, in_chans=in_chans),
                               {"layer2": "0", "layer3": "1", "layer4": "2"})

        def block(in_chs: int, mid_chs: int, out_chs: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_chs, mid_chs, 1, bias=False), nn.BatchNorm2d(mid_chs),
                                 nn.ReLU(inplace=True),
                                 nn.Conv2d(mid_chs, out_chs, 3, stride=2, padding=1, bias=False),
                                 nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True))

        self.extra = nn.ModuleList([block(512, 128, 256), block(256, 128, 256), block(256, 128, 256)])
        for m in self.extra.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.out_channels = [128, 256, 512, 256, 256, 256]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        outputs = list(self.body(x).values())  # strides 8, 16, 32
        x = outputs[-1]
        for block in self.extra:
            x = block(x)
            outputs.append(x)  # strides 64, 128, 256
        return OrderedDict((str(i), v) for i, v in enumerate(outputs))


# ============================================================================ head


class SSDScoringHead(nn.Module):
    """One 3×3 convolution per map; outputs (N, A_total, columns), map by map, location, then box."""

    def __init__(self, module_list: nn.ModuleList, num_columns: int):
        super().__init__()
        self.module_list = module_list
        self.num_columns = num_columns

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        outputs = []
        for conv, x in zip(self.module_list, features):
            out = conv(x)  # (N, A·K, H, W)
            n, _, h, w = out.shape
            out = out.view(n, -1, self.num_columns, h, w).permute(0, 3, 4, 1, 2)  # (N, H, W, A, K)
            outputs.append(out.reshape(n, -1, self.num_columns))  # (N, H·W·A, K)
        return torch.cat(outputs, dim=1)


class SSDHead(nn.Module):
    """Class scores (num_classes per default box) and box offsets (4) from every map."""

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int):
        super().__init__()
        classification = nn.ModuleList([nn.Conv2d(c, num_classes * a, 3, padding=1)
                                        for c, a in zip(in_channels, num_anchors)])
        regression = nn.ModuleList([nn.Conv2d(c, 4 * a, 3, padding=1) for c, a in zip(in_channels, num_anchors)])
        _xavier_init(classification)
        _xavier_init(regression)
        self.classification_head = SSDScoringHead(classification, num_classes)
        self.regression_head = SSDScoringHead(regression, 4)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        return {"bbox_regression": self.regression_head(features), "cls_logits": self.classification_head(features)}


# ============================================================================ matching and loss


def ssd_match(gt_boxes: Tensor, default_boxes: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Matched ground-truth index per default box [A], -1 for background (Sec. 2.2 "Matching strategy").

    Every default box with IoU >= ``iou_threshold`` takes its best ground truth; then each ground
    truth takes the default box it overlaps best (a later ground truth wins a shared best box).
    """
    if gt_boxes.shape[0] == 0:
        return torch.full((default_boxes.shape[0],), -1, dtype=torch.int64, device=default_boxes.device)
    quality = box_iou(gt_boxes, default_boxes)  # (G, A)
    matches = Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=False)(quality)
    best_default = quality.max(dim=1).indices  # (G,)
    matches[best_default] = torch.arange(best_default.shape[0], dtype=torch.int64, device=matches.device)
    return matches


def hard_negative_mask(class_loss: Tensor, foreground: Tensor, negatives_per_positive: float = 3.0) -> Tensor:
    """[N, A] bool: for each image the ``negatives_per_positive`` × (its positives) background boxes
    of highest classification loss (ties in an arbitrary order)."""
    num_negative = negatives_per_positive * foreground.sum(dim=1, keepdim=True)  # (N, 1)
    negative_loss = class_loss.detach().clone()
    negative_loss[foreground] = -float("inf")  # positives rank last
    order = negative_loss.sort(dim=1, descending=True).indices
    rank = order.sort(dim=1).indices  # rank of each box by loss
    return (rank < num_negative) & ~foreground


class SSD(nn.Module):
    """SSD: a fixed-size transform, a multi-map backbone, default boxes, and a 3×3 convolution head.

    Args:
        backbone: returns an OrderedDict of maps and has ``out_channels`` (one per map).
        anchor_generator: the ``DefaultBoxGenerator`` (one aspect-ratio list per map).
        image_size: the square size every image is resized to (300 for SSD300).
        num_classes: classes counting the background (labels 1..num_classes - 1).
        image_mean, image_std: normalisation of the [0, 1] input.
        score_threshold, nms_threshold, detections_per_image, topk_candidates: post-processing
            (per class: score > score_threshold, the topk_candidates best, NMS; then the best overall).
        iou_threshold: matching threshold; positive_fraction: 0.25 gives 3 hard negatives per positive.
    Training returns {"bbox_regression", "classification"}; evaluation, per image, {"boxes",
    "labels", "scores"} with boxes in the image's own pixels.
    """

    def __init__(self, *, backbone: nn.Module, anchor_generator: DefaultBoxGenerator, image_size: int = 300,
                 num_classes: int = 91, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, score_threshold: float = 0.01, nms_threshold: float = 0.45,
                 detections_per_image: int = 200, iou_threshold: float = 0.5, topk_candidates: int = 400,
                 positive_fraction: float = 0.25):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (it counts the background), got {num_classes!r}")
        if not 0.0 < positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in (0, 1], got {positive_fraction}")
        out_channels = list(backbone.out_channels)
        if len(out_channels) != len(anchor_generator.aspect_ratios):
            raise ValueError(f"the backbone gives {len(out_channels)} maps but the default boxes are set for "
                             f"{len(anchor_generator.aspect_ratios)}")
        self.num_classes, self.in_chans, self.image_size = num_classes, len(image_mean), int(image_size)
        self.transform = GeneralizedRCNNTransform(image_size, image_size, image_mean, image_std, size_divisible=1,
                                                  fixed_size=(image_size, image_size))
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self.head = SSDHead(out_channels, anchor_generator.num_anchors_per_location(), num_classes)
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))  # variances 0.1, 0.2
        self.iou_threshold = float(iou_threshold)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.detections_per_image, self.topk_candidates = int(detections_per_image), int(topk_candidates)
        self.neg_to_pos_ratio = (1.0 - positive_fraction) / positive_fraction

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)

    def compute_loss(self, targets: Sequence[dict], head_outputs: dict[str, Tensor], anchors: Tensor,
                     matched_idxs: Sequence[Tensor]) -> dict[str, Tensor]:
        """Eq. 1: (L_loc + L_conf) / N over matched boxes and 3:1 hard negatives."""
        bbox_regression, cls_logits = head_outputs["bbox_regression"], head_outputs["cls_logits"]
        num_foreground, box_losses, class_targets = 0, [], []
        for target, regression, matched in zip(targets, bbox_regression, matched_idxs):
            foreground = torch.where(matched >= 0)[0]
            num_foreground += foreground.numel()
            matched_boxes = target["boxes"][matched[foreground]].to(regression.dtype)
            regression_target = self.box_coder.encode(matched_boxes, anchors[foreground])
            box_losses.append(smooth_l1_loss(regression[foreground], regression_target, beta=1.0, reduction="sum"))
            classes = torch.zeros(matched.shape, dtype=torch.int64, device=matched.device)
            classes[foreground] = target["labels"][matched[foreground]]
            class_targets.append(classes)
        class_targets = torch.stack(class_targets)  # (N, A)
        class_loss = cross_entropy(cls_logits.reshape(-1, cls_logits.shape[-1]), class_targets.reshape(-1),
                                   reduction="none").view(class_targets.shape)  # (N, A)
        foreground = class_targets > 0
        negatives = hard_negative_mask(class_loss, foreground, self.neg_to_pos_ratio)
        normaliser = max(1, num_foreground)
        return {"bbox_regression": torch.stack(box_losses).sum() / normaliser,
                "classification": (class_loss[foreground].sum() + class_loss[negatives].sum()) / normaliser}

    def postprocess_detections(self, head_outputs: dict[str, Tensor], anchors: Tensor,
                               image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        scores_all = F.softmax(head_outputs["cls_logits"], dim=-1)
        detections = []
        for regression, scores, image_size in zip(head_outputs["bbox_regression"], scores_all, image_sizes):
            boxes = clip_boxes_to_image(self.box_coder.decode(regression, anchors), image_size)
            image_boxes, image_scores, image_labels = [], [], []
            for label in range(1, scores.shape[-1]):
                score = scores[:, label]
                keep = score > self.score_threshold
                score, box = score[keep], boxes[keep]
                score, order = score.topk(min(self.topk_candidates, score.shape[0]))
                image_boxes.append(box[order])
                image_scores.append(score)
                image_labels.append(torch.full_like(score, label, dtype=torch.int64))
            image_boxes, image_scores = torch.cat(image_boxes), torch.cat(image_scores)
            image_labels = torch.cat(image_labels)
            keep = batched_nms(image_boxes, image_scores, image_labels, self.nms_threshold)[:self.detections_per_image]
            detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": image_labels[keep]})
        return detections

    def example_inputs(self, input_shape: tuple[int, ...] | None = None) -> tuple[list[torch.Tensor]]:
        """A list of zero images of ``input_shape`` (N, 3, H, W), for ``canon info`` and benchmarks."""
        return example_detection_inputs(self, input_shape)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        check_detection_input(images, targets, num_classes=self.num_classes, in_chans=self.in_chans,
                              training=self.training, model_name=self._model_name)
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, targets = self.transform(images, targets)  # (N, 3, image_size, image_size)
        features = list(self.backbone(batch.tensors).values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(batch.tensors.shape[-2:], [f.shape[-2:] for f in features],
                                        dtype=features[0].dtype, device=features[0].device)
        if self.training:
            matched = [ssd_match(t["boxes"].to(anchors.dtype), anchors, self.iou_threshold) for t in targets]
            return self.compute_loss(targets, head_outputs, anchors, matched)
        detections = self.postprocess_detections(head_outputs, anchors, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


# ============================================================================ registered names

_REG = dict(task="detection", paper=PAPER, input_size=(3, 300, 300), num_classes=91)


@register_model(SSD, compatible_with="torchvision", **_REG)
def ssd300_vgg16(**kwargs) -> SSD:
    return SSD(backbone=SSDFeatureExtractorVGG(),
               anchor_generator=DefaultBoxGenerator(SSD300_ASPECT_RATIOS, scales=SSD300_SCALES, steps=SSD300_STEPS),
               image_size=300, **{"image_mean": CAFFE_VGG_MEAN, "image_std": CAFFE_VGG_STD, **kwargs})


@register_model(SSD, **_REG)
def ssd300_resnet18(**kwargs) -> SSD:
    return SSD(backbone=SSDFeatureExtractorResNet(),
               anchor_generator=DefaultBoxGenerator(SSD300_ASPECT_RATIOS, scales=SSD300_SCALES), **kwargs)
