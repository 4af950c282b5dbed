"""Fast R-CNN: one convolution pass per image, RoI max pooling of each proposal, two sibling heads.

Paper: Fast R-CNN, Ross Girshick, 2015, arXiv:1504.08083.

Follows the paper:
    * The whole image goes through the convolutional layers once (VGG-16 up to conv5_3 and its
      ReLU, stride 16, 512 channels; the last max pool is replaced by RoI pooling, Sec. 2.1-2.2).
    * RoI max pooling (Sec. 2.1) turns each proposal's window of conv5_3 into a fixed 7 x 7 x 512
      map (canon.ops.roi_pool, spatial scale 1/16), then fc6 and fc7 (4096, ReLU, dropout 0.5).
    * Two sibling outputs (Sec. 2.2): softmax over K + 1 classes and, per class, the box
      regression offsets t^k = (t_x, t_y, t_w, t_h) of R-CNN, t_x = (G_x - P_x) / P_w,
      t_y = (G_y - P_y) / P_h, t_w = ln(G_w / P_w), t_h = ln(G_h / P_h); initialised from zero-mean
      Gaussians with standard deviations 0.01 and 0.001 (Sec. 2.3).
    * The multi-task loss (Sec. 2.3, eq. 1): L = L_cls(p, u) + λ [u >= 1] L_loc(t^u, v), λ = 1,
      L_cls = -log p_u, L_loc = Σ_i smooth_L1(t^u_i - v_i) with smooth_L1(x) = 0.5 x² if |x| < 1
      else |x| - 0.5, averaged over the RoIs of the mini-batch.
    * Mini-batch sampling (Sec. 2.3): 64 RoIs per image (the paper's R = 128 over N = 2 images),
      25 % foreground (IoU >= 0.5 with a ground truth, that object's class), the rest background
      with the maximum IoU in [0.1, 0.5) ("hard example mining" by the lower bound); the ground-
      truth boxes are candidate RoIs too, as in the released code.
    * Single-scale training and testing with the shorter side 600 (at most 1000); at test time
      per-class NMS at 0.3 on the class-specific boxes (Sec. 3).
    * Proposals from selective search in fast mode, ~2,000 per image (Sec. 4).

Deviates, and why:
    * The regression targets are scaled by (10, 10, 5, 5) (dividing by the fixed standard
      deviations 0.1, 0.1, 0.2, 0.2 of the released Faster R-CNN code) rather than by the
      training set's own mean and variance; decoding clamps t_w, t_h at ln(1000 / 16) (canon.ops.BoxCoder).
    * Test-time detections: softmax scores above 0.05, the best 100 per image (torchvision's
      post-processing, canon's RoIHeads).
    * No ImageNet initialisation exists here: the weights start from VGG's initialisation
      (Kaiming-normal convolutions), so all layers train (the paper fine-tunes from conv3_1).
    * ``fast_rcnn_resnet18`` is not in the paper: a CPU form for training from scratch, ResNet-18
      up to layer3 (stride 16, 256 channels, trainable batch norm), RoI pooling 7 x 7, two fully
      connected layers of 1024 with dropout, shorter side 512 (at most 853).
    * Proposals are memoised by image content (canon.ops.SelectiveSearch); ``proposal_cache``
      names a folder that keeps them across runs, as the paper's code loads precomputed ones.

Contract: ``model(images, targets=None, proposals=None)`` (see external_proposals.py). In
training, {"loss_classifier", "loss_box_reg"}; in eval, per image {"boxes" [K, 4] xyxy in the
input image's pixels, "labels" [K], "scores" [K]}. ``model.times`` holds the seconds per stage.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canon.losses.functional import fast_rcnn_loss_terms
from canon.models.classification import resnet as resnet_family
from canon.models.classification.vgg import VGG_CONFIGS, make_vgg_features
from canon.models.detection.backbones import ResNetBody
from canon.models.detection.external_proposals import StageTimes, check_inputs, proposals_for, scale_proposals, \
    selective_search_proposals
from canon.models.detection.roi_heads import FastRCNNPredictor, RoIHeads
from canon.models.detection.transform import (
    IMAGENET_MEAN, IMAGENET_STD, GeneralizedRCNNTransform, example_detection_inputs,
)
from canon.ops import box_iou, roi_pool
from canon.registry import register_model

__all__ = ["RoIPool", "SingleMapBackbone", "vgg16_conv5_backbone", "resnet18_c4_backbone", "FullyConnectedBoxHead",
           "fast_rcnn_loss", "FastRCNNRoIHeads", "FastRCNN", "fast_rcnn_vgg16", "fast_rcnn_resnet18"]

PAPER = "Fast R-CNN, 2015, arXiv:1504.08083"


# --------------------------------------------------------------------------- RoI pooling and backbones


class RoIPool(nn.Module):
    """RoI max pooling over one feature map, with RoIHeads' pooler signature: (features, boxes, image_sizes).

    ``features`` a list whose first entry is [N, C, H, W] (or that tensor), ``boxes`` a list of
    [K_i, 4] in image pixels -> [sum K_i, C, *output_size], the box scaled by ``spatial_scale``.
    """

    def __init__(self, output_size: int | tuple[int, int] = 7, spatial_scale: float = 1 / 16):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, features, boxes: Sequence[Tensor], image_sizes=None) -> Tensor:
        feature = features[0] if isinstance(features, (list, tuple)) else features
        return roi_pool(feature, list(boxes), self.output_size, self.spatial_scale).contiguous()

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class SingleMapBackbone(nn.Module):
    """A convolutional body returning one feature map [N, out_channels, H / stride, W / stride]."""

    def __init__(self, body: nn.Module, out_channels: int, stride: int):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out["0"] if isinstance(out, dict) else out


def vgg16_conv5_backbone() -> SingleMapBackbone:
    """VGG-16 (configuration D) up to conv5_3 + ReLU, without the fifth max pool: stride 16, 512 channels."""
    features = make_vgg_features(VGG_CONFIGS["D"])[:-1]  # (N, 512, H/16, W/16)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):  # VGG's initialisation (torchvision's)
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return SingleMapBackbone(features, 512, 16)


def resnet18_c4_backbone() -> SingleMapBackbone:
    """ResNet-18 up to layer3 (C4) with trainable batch norm: stride 16, 256 channels."""
    resnet = resnet_family.resnet18(num_classes=0, norm_layer=nn.BatchNorm2d)
    return SingleMapBackbone(ResNetBody(resnet, {"layer3": "0"}), 256, 16)


class FullyConnectedBoxHead(nn.Module):
    """fc6, fc7 with ReLU and dropout (VGG's classifier layers): [K, C, 7, 7] -> [K, representation_size]."""

    def __init__(self, in_features: int, representation_size: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.dropout = nn.Dropout(dropout)
        for layer in (self.fc6, self.fc7):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.relu(self.fc6(x.flatten(start_dim=1))))  # (K, 4096)
        return self.dropout(F.relu(self.fc7(x)))  # (K, 4096)


# --------------------------------------------------------------------------- the multi-task loss


def fast_rcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Sequence[Tensor],
                   regression_targets: Sequence[Tensor], *, box_loss_weight: float = 1.0,
                   smooth_l1_beta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Eq. (1) over the R sampled RoIs: (Σ_r -log p_u / R, λ Σ_{r: u >= 1} Σ_i smooth_L1(t^u_i - v_i) / R)."""
    labels, regression_targets = torch.cat(list(labels)), torch.cat(list(regression_targets))
    # background RoIs have no target (a dummy box may encode to inf): zero them, [u >= 1] does the rest
    regression_targets = torch.where((labels > 0)[:, None], regression_targets, regression_targets.new_zeros(()))
    classification, localisation = fast_rcnn_loss_terms(class_logits, box_regression, labels, regression_targets,
                                                        beta=smooth_l1_beta)
    count = max(labels.numel(), 1)
    return classification.sum() / count, box_loss_weight * localisation.sum() / count


class FastRCNNRoIHeads(RoIHeads):
    """RoIHeads with Fast R-CNN's sampling (background IoU in [low, 0.5)) and loss (smooth L1, β = 1, λ).

    forward(features {"0": map}, proposals, image_sizes, targets) -> (detections, losses), box head only.
    """

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module, *,
                 background_low_iou_threshold: float = 0.1, box_loss_weight: float = 1.0,
                 smooth_l1_beta: float = 1.0, **kwargs):
        super().__init__(box_roi_pool, box_head, box_predictor, **kwargs)
        if not 0.0 <= background_low_iou_threshold <= self.matcher.low_threshold:
            raise ValueError(f"background_low_iou_threshold must lie in [0, {self.matcher.low_threshold}] (the "
                             f"background's upper IoU), got {background_low_iou_threshold!r}")
        self.background_low_iou_threshold = float(background_low_iou_threshold)
        self.box_loss_weight = float(box_loss_weight)
        self.smooth_l1_beta = float(smooth_l1_beta)

    def assign_targets_to_proposals(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                                    gt_labels: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """As RoIHeads, and background RoIs whose best IoU is below the lower threshold are ignored (-1);
        in an image without objects every RoI stays background (there is nothing to be near)."""
        matched, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        for rois, boxes, image_labels in zip(proposals, gt_boxes, labels):
            if self.background_low_iou_threshold > 0 and boxes.shape[0]:  # an image without objects: all background
                best = box_iou(boxes, rois).nan_to_num(0.0).max(dim=0).values
                image_labels[(image_labels == 0) & (best < self.background_low_iou_threshold)] = -1
        return matched, labels

    def forward(self, features: dict[str, Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]], targets: Sequence[dict] | None = None
                ) -> tuple[list[dict], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("FastRCNNRoIHeads needs targets in training mode")
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        pooled = self._pooled(self.box_roi_pool, features, proposals, image_sizes)  # (R, C, 7, 7)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))  # (R, K+1), (R, 4(K+1))
        if self.training:
            loss_classifier, loss_box_reg = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets,
                                                           box_loss_weight=self.box_loss_weight,
                                                           smooth_l1_beta=self.smooth_l1_beta)
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        boxes, scores, box_labels = self.postprocess_detections(class_logits, box_regression, proposals, image_sizes)
        return [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, box_labels, scores)], {}


# --------------------------------------------------------------------------- the model

BACKBONES = {"vgg16": vgg16_conv5_backbone, "resnet18": resnet18_c4_backbone}


class FastRCNN(nn.Module):
    """transform -> backbone (one map, stride 16) -> RoI pooling of the proposals -> fc6, fc7 -> two heads.

    Args (keyword-only):
        num_classes: classes including the background (21 for PASCAL VOC).
        backbone_name: "vgg16" (the paper's conv5_3) or "resnet18" (C4, the CPU form); or give
            ``backbone`` (a module with ``out_channels`` and ``stride`` returning one map).
        representation_size, dropout: fc6 / fc7.
        min_size, max_size, image_mean, image_std: the transform (shorter side 600, at most 1000).
        proposal_method: a callable image -> Float[K, 4]; default selective search (fast mode,
            ``max_proposals`` boxes, ``proposal_max_side``, memoised in ``proposal_cache``).
        box_*: sampling (64 RoIs per image, 25 % foreground at IoU >= 0.5, background in
            [0.1, 0.5)), loss weight λ and smooth L1 β, and the test-time post-processing.
    """

    def __init__(self, *, num_classes: int = 21, backbone: nn.Module | None = None, backbone_name: str = "vgg16",
                 representation_size: int = 4096, dropout: float = 0.5, roi_output_size: int = 7,
                 min_size: int | Sequence[int] = 600, max_size: int = 1000,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 proposal_method=None, proposal_cache: str | None = None, max_proposals: int = 2000,
                 proposal_mode: str = "fast", proposal_max_side: int | None = 500,
                 box_batch_size_per_image: int = 64, box_positive_fraction: float = 0.25,
                 box_foreground_iou_threshold: float = 0.5, box_background_iou_threshold: float = 0.5,
                 box_background_low_iou_threshold: float = 0.1, box_loss_weight: float = 1.0,
                 smooth_l1_beta: float = 1.0, box_regression_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 box_score_threshold: float = 0.05, box_nms_threshold: float = 0.3,
                 box_detections_per_image: int = 100):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (it includes the background), got {num_classes!r}")
        if backbone is None:
            if backbone_name not in BACKBONES:
                raise ValueError(f"backbone_name must be one of {sorted(BACKBONES)}, got {backbone_name!r}")
            backbone = BACKBONES[backbone_name]()
        if not hasattr(backbone, "out_channels") or not hasattr(backbone, "stride"):
            raise ValueError("backbone must have out_channels and stride attributes (one feature map)")
        self.num_classes = num_classes
        self.transform = GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std,
                                                  size_divisible=backbone.stride)
        self.backbone = backbone
        pool = RoIPool(roi_output_size, 1.0 / backbone.stride)
        head = FullyConnectedBoxHead(backbone.out_channels * pool.output_size[0] * pool.output_size[1],
                                     representation_size, dropout)
        predictor = FastRCNNPredictor(representation_size, num_classes)
        nn.init.normal_(predictor.cls_score.weight, 0.0, 0.01)  # Sec. 2.3
        nn.init.normal_(predictor.bbox_pred.weight, 0.0, 0.001)
        nn.init.zeros_(predictor.cls_score.bias)
        nn.init.zeros_(predictor.bbox_pred.bias)
        self.roi_heads = FastRCNNRoIHeads(
            pool, head, predictor, background_low_iou_threshold=box_background_low_iou_threshold,
            box_loss_weight=box_loss_weight, smooth_l1_beta=smooth_l1_beta,
            foreground_iou_threshold=box_foreground_iou_threshold,
            background_iou_threshold=box_background_iou_threshold, batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction, box_regression_weights=box_regression_weights,
            score_threshold=box_score_threshold, nms_threshold=box_nms_threshold,
            detections_per_image=box_detections_per_image, feature_names=("0",))
        self.proposal_method = proposal_method if proposal_method is not None else selective_search_proposals(
            mode=proposal_mode, max_proposals=max_proposals, max_side=proposal_max_side, cache_dir=proposal_cache)
        self.times = StageTimes()

    def example_inputs(self, input_shape: tuple[int, ...] | None = None) -> tuple[list[Tensor]]:
        return example_detection_inputs(self, input_shape)

    def forward(self, images, targets: Sequence[dict] | None = None, proposals: Sequence[Tensor] | None = None):
        images, targets = check_inputs(images, targets, len(self.transform.image_mean), self.num_classes, self.training)
        proposals = proposals_for(images, proposals, self.proposal_method, self.times)
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        with self.times.measure("network"):
            image_list, targets = self.transform(images, targets)
            rois = scale_proposals(proposals, original_sizes, image_list.image_sizes)
            features = {"0": self.backbone(image_list.tensors)}  # (N, C, H/16, W/16): one pass per image
            detections, losses = self.roi_heads(features, rois, image_list.image_sizes, targets)
        if self.training:
            return losses
        self.times.images += len(images)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


# ----------------------------------------------------------------------------- registered names
_SMALL = dict(backbone_name="resnet18", representation_size=1024, min_size=512, max_size=853)


@register_model(FastRCNN, task="detection", paper=PAPER, num_classes=21, input_size=(3, 600, 600))
def fast_rcnn_vgg16(**kwargs) -> FastRCNN:
    return FastRCNN(**kwargs)


@register_model(FastRCNN, task="detection", paper=PAPER, num_classes=21, input_size=(3, 512, 512))
def fast_rcnn_resnet18(**kwargs) -> FastRCNN:
    return FastRCNN(**{**_SMALL, **kwargs})
