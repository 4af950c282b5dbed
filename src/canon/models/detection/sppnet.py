"""SPPnet for detection: one convolution pass per image, spatial pyramid pooling of each window.

Paper: Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition, He, Zhang,
Ren, Sun, 2014, arXiv:1406.4729 (Sec. 4 and Appendix A).

Follows the paper:
    * The convolutional layers run once over the whole image (shorter side s; the paper's
      single-scale s = 688), not once per window as in R-CNN (Sec. 4.1).
    * ZF-5 (Table 1 / Sec. 3.1.1): conv1 96 7x7/2, LRN, max pool 3x3/2; conv2 256 5x5/2, LRN, max
      pool 3x3/2; conv3 384, conv4 384, conv5 256 (3x3); every layer padded by floor(p / 2), so the
      stride of conv5 is S = 16.
    * Each window is mapped to conv5 by its corners (Appendix A): left/top x' = floor(x / S) + 1,
      right/bottom x' = ceil(x / S) - 1, the feature pixel whose receptive field is centred
      nearest to the corner.
    * A 4-level pyramid {6x6, 3x3, 2x2, 1x1} (50 bins) max-pools the window's conv5 cells into a
      fixed 12,800-d vector (256 x 50) for any window size (canon.layers' SPP bins).
    * fc6, fc7 (4096, ReLU, dropout 0.5) fine-tuned on windows: 25 % positives (IoU >= 0.5 with
      a ground truth), the rest negatives with IoU in [0.1, 0.5) (Sec. 4.1).
    * Then, as R-CNN: one linear SVM per class on fc7 with hard-negative mining, and
      class-specific bounding-box regression, here on the pooled conv5 features (the paper
      regresses from conv5 features), via rcnn.fit_svms_and_box_regressors; NMS at 0.3.

Deviates, and why:
    * Scoring: the fine-tuned (N + 1)-way softmax until SVMs are fitted (a softmax head, then
      optionally the paper's SVMs and regressors); "fine-tuning" here trains the convolutional
      layers too: the paper keeps ImageNet-pretrained conv layers fixed, but none exist here.
    * The right/bottom corner is the box's last pixel (x2 - 1 in canon's continuous boxes); a
      window smaller than one cell (left > right) becomes the single cell nearest its centre.
    * The pyramid is pooled with canon.ops.roi_pool on the integer windows (one gather for all
      windows and bins), which computes exactly canon.layers.spatial_pyramid_pool's adaptive bins
      on each window's cells.
    * ``sppnet_resnet18`` (not in the paper) is the CPU form: ResNet-18 up to layer3 (stride 16,
      256 channels, trainable batch norm), the same pyramid, fc6/fc7 of 1024; shorter side 512.
    * Single scale only (no multi-scale feature pyramid of images); LRN as AlexNet's (k = 2).

Contract: ``model(images, targets=None, proposals=None)``: in training {"loss_classifier"}; in eval
per image {"boxes", "labels", "scores"}. ``model.times``: proposals, cnn (the single pass), spp
(window mapping, pooling, fc layers), svm (scoring, regression, NMS).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canon.layers.norms import LocalResponseNorm
from canon.models.detection.external_proposals import StageTimes, check_inputs, proposals_for, scale_proposals, \
    selective_search_proposals
from canon.models.detection.fast_rcnn import SingleMapBackbone, resnet18_c4_backbone
from canon.models.detection.rcnn import BoxRegressors, LinearSVMs, region_labels
from canon.models.detection.transform import (
    IMAGENET_MEAN, IMAGENET_STD, GeneralizedRCNNTransform, example_detection_inputs, resize_boxes,
)
from canon.ops import BalancedPositiveNegativeSampler, BoxCoder, batched_nms, clip_boxes_to_image, roi_pool
from canon.registry import register_model

__all__ = ["zf5_backbone", "map_windows_to_feature_map", "spp_windows", "SPPNet", "sppnet_zf5", "sppnet_resnet18"]

PAPER = "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition, 2014, arXiv:1406.4729"
PYRAMID = (6, 3, 2, 1)


def zf5_backbone() -> SingleMapBackbone:
    """ZF-5's five convolutional layers, padded by floor(p / 2): [N, 3, H, W] -> [N, 256, H/16, W/16]."""
    layers = nn.Sequential(
        nn.Conv2d(3, 96, 7, stride=2, padding=3), nn.ReLU(inplace=True),  # conv1: (N, 96, H/2, W/2)
        LocalResponseNorm.alexnet(), nn.MaxPool2d(3, stride=2, padding=1),  # (N, 96, H/4, W/4)
        nn.Conv2d(96, 256, 5, stride=2, padding=2), nn.ReLU(inplace=True),  # conv2: (N, 256, H/8, W/8)
        LocalResponseNorm.alexnet(), nn.MaxPool2d(3, stride=2, padding=1),  # (N, 256, H/16, W/16)
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),  # conv3
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),  # conv4
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),  # conv5: (N, 256, H/16, W/16)
    )
    for module in layers.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return SingleMapBackbone(layers, 256, 16)


def map_windows_to_feature_map(boxes: Tensor, stride: int, feature_size: tuple[int, int]) -> Tensor:
    """Image windows xyxy [K, 4] -> inclusive feature-map cells (left, top, right, bottom) [K, 4] int64.

    Appendix A: left/top = floor(x / S) + 1 of the first pixel, right/bottom = ceil(x / S) - 1 of
    the last pixel (x2 - 1, y2 - 1), clamped to the map; an empty window (left > right) becomes
    the cell round(centre / S).
    """
    height, width = feature_size
    first = boxes[:, :2]
    last = boxes[:, 2:] - 1
    low = torch.floor(first / stride).to(torch.int64) + 1  # x' = floor(x / S) + 1
    high = torch.ceil(last / stride).to(torch.int64) - 1  # x' = ceil(x / S) - 1
    centre = torch.round((first + last) / 2 / stride).to(torch.int64)
    empty = low > high
    low = torch.where(empty, centre, low)
    high = torch.where(empty, centre, high)
    upper = torch.tensor([width - 1, height - 1], device=boxes.device)
    low = torch.minimum(low.clamp(min=0), upper)
    high = torch.minimum(high.clamp(min=0), upper)
    return torch.cat([low, high], dim=1)


def spp_windows(feature: Tensor, windows: Sequence[Tensor], levels: Sequence[int] = PYRAMID) -> Tensor:
    """Spatial pyramid pooling of integer windows (inclusive cells [K_i, 4] per image) of ``feature`` [N, C, H, W].

    -> [sum K_i, C · Σ n²], each level flattened channel-major and the levels concatenated in
    order, as canon.layers.spatial_pyramid_pool on each window's cells.
    """
    rois = [w.to(feature.dtype) for w in windows]
    parts = [roi_pool(feature, rois, level, spatial_scale=1.0).reshape(-1, feature.shape[1] * level * level)
             for level in levels]  # (K, C, n, n) -> (K, C·n²)
    return torch.cat(parts, dim=1)


class SPPNet(nn.Module):
    """transform -> conv layers once -> map each window to the last map -> SPP {6, 3, 2, 1} -> fc6, fc7 -> scores.

    Args (keyword-only):
        num_classes: classes including the background.
        backbone_name: "zf5" (the paper's) or "resnet18" (the CPU form), or ``backbone``.
        pyramid: the pyramid levels (6, 3, 2, 1).
        representation_size, dropout: fc6 / fc7.
        min_size, max_size, image_mean, image_std: the transform (shorter side 688 for ZF-5).
        proposal_*: the proposals, as R-CNN.
        fine_tune_*: windows per image, positive fraction, foreground IoU and the background's
            lower IoU (25 % positives, background in [0.1, 0.5)).
        nms_threshold, detections_per_image, score_threshold: test time, as R-CNN.
    """

    def __init__(self, *, num_classes: int = 21, backbone: nn.Module | None = None, backbone_name: str = "zf5",
                 pyramid: Sequence[int] = PYRAMID, representation_size: int = 4096, dropout: float = 0.5,
                 min_size: int | Sequence[int] = 688, max_size: int = 1100,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 proposal_method=None, proposal_cache: str | None = None, max_proposals: int = 2000,
                 proposal_mode: str = "fast", proposal_max_side: int | None = 500,
                 fine_tune_rois_per_image: int = 64, fine_tune_positive_fraction: float = 0.25,
                 fine_tune_foreground_iou: float = 0.5, fine_tune_background_low_iou: float = 0.1,
                 nms_threshold: float = 0.3, detections_per_image: int = 100, score_threshold: float = 0.05):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (it includes the background), got {num_classes!r}")
        pyramid = tuple(pyramid)
        if not pyramid or any(not isinstance(n, int) or n < 1 for n in pyramid):
            raise ValueError(f"pyramid must be positive ints such as (6, 3, 2, 1), got {pyramid!r}")
        if backbone is None:
            builders = {"zf5": zf5_backbone, "resnet18": resnet18_c4_backbone}
            if backbone_name not in builders:
                raise ValueError(f"backbone_name must be one of {sorted(builders)}, got {backbone_name!r}")
            backbone = builders[backbone_name]()
        self.num_classes = num_classes
        self.pyramid = pyramid
        self.transform = GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std,
                                                  size_divisible=backbone.stride)
        self.backbone = backbone
        pooled = backbone.out_channels * sum(n * n for n in pyramid)  # 256 x 50 = 12,800
        self.fc6 = nn.Linear(pooled, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Linear(representation_size, num_classes)
        for layer, std in ((self.fc6, 0.01), (self.fc7, 0.01), (self.cls_score, 0.01)):
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)
        self.svms = LinearSVMs(num_classes - 1, representation_size)
        self.box_regressors = BoxRegressors(num_classes - 1, pooled)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.sampler = BalancedPositiveNegativeSampler(fine_tune_rois_per_image, fine_tune_positive_fraction)
        self.fine_tune_foreground_iou = float(fine_tune_foreground_iou)
        self.fine_tune_background_low_iou = float(fine_tune_background_low_iou)
        self.nms_threshold, self.detections_per_image = float(nms_threshold), int(detections_per_image)
        self.score_threshold = float(score_threshold)
        self.proposal_method = proposal_method if proposal_method is not None else selective_search_proposals(
            mode=proposal_mode, max_proposals=max_proposals, max_side=proposal_max_side, cache_dir=proposal_cache)
        self.times = StageTimes()

    def example_inputs(self, input_shape: tuple[int, ...] | None = None) -> tuple[list[Tensor]]:
        return example_detection_inputs(self, input_shape)

    # ------------------------------------------------------------------ windows -> features
    def pooled_windows(self, feature: Tensor, rois: Sequence[Tensor]) -> Tensor:
        """SPP vectors [sum K_i, C · 50] of the windows ``rois`` (resized-image pixels) on ``feature``."""
        windows = [map_windows_to_feature_map(boxes, self.backbone.stride, tuple(feature.shape[-2:]))
                   for boxes in rois]
        return spp_windows(feature, windows, self.pyramid)

    def head(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """fc7 [K, 4096] and class logits [K, num_classes] of SPP vectors."""
        fc7 = self.dropout(F.relu(self.fc7(self.dropout(F.relu(self.fc6(pooled))))))
        return fc7, self.cls_score(fc7)

    def _features(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        image_list, _ = self.transform(images, None)
        return self.backbone(image_list.tensors), image_list.image_sizes  # (N, C, H/16, W/16): one pass

    def region_features(self, image: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """Eval-mode features of windows ``boxes`` [K, 4] (input pixels) of one image, for the SVM stage."""
        with self.times.measure("cnn"):
            feature, sizes = self._features([image])
        with self.times.measure("spp"):
            rois = resize_boxes(boxes, tuple(image.shape[-2:]), sizes[0])
            pooled = self.pooled_windows(feature, [rois])
            fc7, logits = self.head(pooled)
        return {"classifier": fc7, "regression": pooled, "logits": logits}

    # ------------------------------------------------------------------ training and test
    def _sample_windows(self, targets: Sequence[dict], proposals: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Per image: proposals + ground truths, 25 % positives, background only at IoU in [low, fg)."""
        chosen_rois, chosen_labels = [], []
        for target, rois in zip(targets, proposals):
            rois = torch.cat([rois, target["boxes"].to(rois.dtype)])
            labels, best_iou, _ = region_labels(rois, target["boxes"], target["labels"], self.fine_tune_foreground_iou)
            if len(target["boxes"]):  # an image without objects: every window is background
                labels[(labels == 0) & (best_iou < self.fine_tune_background_low_iou)] = -1
            positive, negative = self.sampler(labels)
            chosen = torch.where(positive | negative)[0]
            chosen_rois.append(rois[chosen])
            chosen_labels.append(labels[chosen])
        return chosen_rois, torch.cat(chosen_labels)

    def detect(self, feature: Tensor, rois: Tensor, original: tuple[int, int], size: tuple[int, int]) -> dict:
        """Score, regress and suppress one image's windows (boxes in the resized image; output in the original)."""
        with self.times.measure("spp"):
            pooled = self.pooled_windows(feature, [rois])
            fc7, logits = self.head(pooled)
        with self.times.measure("svm"):
            if bool(self.svms.fitted):
                scores, threshold = self.svms(fc7), -math.inf
            else:
                scores, threshold = F.softmax(logits, dim=1)[:, 1:], self.score_threshold
            num_rois, num_foreground = scores.shape
            proposals = resize_boxes(rois, size, original)
            boxes = proposals[:, None, :].expand(num_rois, num_foreground, 4)
            if bool(self.box_regressors.fitted):
                deltas = self.box_regressors(pooled)
                boxes = self.box_coder.decode(deltas.reshape(-1, 4), boxes.reshape(-1, 4))
            boxes = clip_boxes_to_image(boxes.reshape(-1, 4), original)
            labels = torch.arange(1, num_foreground + 1, device=rois.device).repeat(num_rois)
            scores = scores.reshape(-1)
            keep = torch.where((scores > threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}

    def forward(self, images, targets: Sequence[dict] | None = None, proposals: Sequence[Tensor] | None = None):
        images, targets = check_inputs(images, targets, len(self.transform.image_mean), self.num_classes, self.training)
        proposals = proposals_for(images, proposals, self.proposal_method, self.times)
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        if self.training:
            image_list, targets = self.transform(images, targets)
            rois = scale_proposals(proposals, original_sizes, image_list.image_sizes)
            windows, labels = self._sample_windows(targets, rois)
            feature = self.backbone(image_list.tensors)
            _, logits = self.head(self.pooled_windows(feature, windows))
            return {"loss_classifier": F.cross_entropy(logits, labels)}
        with self.times.measure("cnn"):
            feature, sizes = self._features(images)
        rois = scale_proposals(proposals, original_sizes, sizes)
        detections = [self.detect(feature[i:i + 1], rois[i], original_sizes[i], sizes[i]) for i in range(len(images))]
        self.times.images += len(images)
        return detections


# ----------------------------------------------------------------------------- registered names
_SMALL = dict(backbone_name="resnet18", representation_size=1024, min_size=512, max_size=853)


@register_model(SPPNet, task="detection", paper=PAPER, num_classes=21, input_size=(3, 688, 688))
def sppnet_zf5(**kwargs) -> SPPNet:
    return SPPNet(**kwargs)


@register_model(SPPNet, task="detection", paper=PAPER, num_classes=21, input_size=(3, 512, 512))
def sppnet_resnet18(**kwargs) -> SPPNet:
    return SPPNet(**{**_SMALL, **kwargs})
