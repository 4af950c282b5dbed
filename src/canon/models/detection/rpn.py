"""The Region Proposal Network of Faster R-CNN, over one feature map or an FPN pyramid.

Paper: Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks,
Ren et al., 2015, arXiv:1506.01497 (Sec. 3.1). FPN's RPN: Lin et al., 2017, arXiv:1612.03144 (Sec. 4.1).

Follows the paper:
    * A 3x3 convolution (256-d, ReLU) slides over the feature map, then two sibling 1x1
      convolutions give per anchor an objectness score and 4 box deltas (t_x, t_y, t_w, t_h).
      The head's weights are shared across pyramid levels; each level has one anchor size
      (32² .. 512² on P2 .. P6) at three aspect ratios.
    * Training: anchors with IoU >= 0.7 to some ground truth, and each ground truth's
      best-overlapping anchors, are positive; IoU < 0.3 negative; the rest ignored. 256
      anchors per image are sampled, up to half positive. L = L_cls (binary cross-entropy on
      the sampled anchors) + L_reg (smooth L1 on the positives' deltas, normalised by the
      number of sampled anchors).
    * Inference: deltas decode the anchors into proposals, clipped to the image; NMS at 0.7.

Deviates, and why (torchvision's choices, kept so that its checkpoints give its proposals):
    * Objectness is one logit per anchor with a sigmoid, not the paper's two-way softmax.
    * Smooth L1 with beta = 1/9 (Detectron's), not 1.
    * Per level, the ``pre_nms_top_n`` highest-scoring anchors are decoded (2000 in training,
      1000 in testing); proposals smaller than 1e-3 px or scoring below ``score_threshold``
      are dropped; NMS runs per level (``batched_nms`` with the level as category); then the
      ``post_nms_top_n`` best of all levels (2000 / 1000) are kept per image.
    * A ground truth that overlaps no anchor at all makes no low-quality match (see
      canon.ops.anchors); torchvision would then mark every anchor positive.
    * The head's convolution is ``conv.0.0`` (torchvision's version-2 layout); version-1
      checkpoints (``conv.weight``) are remapped on load.

Matching, sampling and decoding are vectorised over anchors and boxes; Python loops run only
over images and pyramid levels.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from canon.losses.functional import binary_cross_entropy_with_logits, smooth_l1_loss
from canon.models.detection.transform import ImageList
from canon.ops import (AnchorGenerator, BalancedPositiveNegativeSampler, BoxCoder, Matcher, batched_nms,
                       clip_boxes_to_image, remove_small_boxes)

__all__ = ["RPNHead", "RegionProposalNetwork", "flatten_rpn_outputs", "fpn_anchor_generator"]


def fpn_anchor_generator(sizes: Sequence[int] = (32, 64, 128, 256, 512),
                         aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> AnchorGenerator:
    """One anchor size per pyramid level (P2..P6), the same aspect ratios on each (FPN Sec. 4.1)."""
    return AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=(tuple(aspect_ratios),) * len(sizes))


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness logits (A channels) and 1x1 box deltas (4A channels), per level."""

    _version = 2  # version 1 had a bare convolution ``conv`` instead of ``conv.0.0``

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True))
            for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        version = local_metadata.get("version", None)
        if version is None or version < 2:  # conv.weight -> conv.0.0.weight
            for kind in ("weight", "bias"):
                old_key, new_key = f"{prefix}conv.{kind}", f"{prefix}conv.0.0.{kind}"
                if old_key in state_dict:
                    state_dict[new_key] = state_dict.pop(old_key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)  # (N, C, H, W)
            logits.append(self.cls_logits(hidden))  # (N, A, H, W)
            deltas.append(self.bbox_pred(hidden))  # (N, 4A, H, W)
        return logits, deltas


def flatten_rpn_outputs(logits: Sequence[Tensor], deltas: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> objectness [N, sum_l H_l W_l A] and deltas [N, sum_l H_l W_l A, 4].

    The order is level, then location (row-major), then anchor: the order of AnchorGenerator.
    """
    flat_logits, flat_deltas = [], []
    for level_logits, level_deltas in zip(logits, deltas):
        n, a, h, w = level_logits.shape
        flat_logits.append(level_logits.permute(0, 2, 3, 1).reshape(n, -1))  # (N, H*W*A)
        flat_deltas.append(level_deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    """Proposals from anchors: forward(images, features, targets) -> (list of [K_i, 4] xyxy, losses).

    In training ``targets`` (list of dicts with "boxes" [G_i, 4]) are required and the losses
    are {"loss_objectness", "loss_rpn_box_reg"}; in eval the losses dict is empty.
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, *, foreground_iou_threshold: float = 0.7,
                 background_iou_threshold: float = 0.3, batch_size_per_image: int = 256,
                 positive_fraction: float = 0.5, pre_nms_top_n_train: int = 2000, pre_nms_top_n_test: int = 1000,
                 post_nms_top_n_train: int = 2000, post_nms_top_n_test: int = 1000, nms_threshold: float = 0.7,
                 score_threshold: float = 0.0, min_box_size: float = 1e-3):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(foreground_iou_threshold, background_iou_threshold, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        for name, value in (("pre_nms_top_n_train", pre_nms_top_n_train), ("pre_nms_top_n_test", pre_nms_top_n_test),
                            ("post_nms_top_n_train", post_nms_top_n_train),
                            ("post_nms_top_n_test", post_nms_top_n_test)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.pre_nms_top_n_train, self.pre_nms_top_n_test = pre_nms_top_n_train, pre_nms_top_n_test
        self.post_nms_top_n_train, self.post_nms_top_n_test = post_nms_top_n_train, post_nms_top_n_test
        self.nms_threshold = float(nms_threshold)
        self.score_threshold = float(score_threshold)
        self.min_box_size = float(min_box_size)

    def pre_nms_top_n(self) -> int:
        return self.pre_nms_top_n_train if self.training else self.pre_nms_top_n_test

    def post_nms_top_n(self) -> int:
        return self.post_nms_top_n_train if self.training else self.post_nms_top_n_test

    # ------------------------------------------------------------------ inference
    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_sizes: Sequence[tuple[int, int]],
                         num_anchors_per_level: Sequence[int]) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level top-n, clip, drop tiny and low-scoring boxes, per-level NMS, best post-n per image.

        proposals [N, A, 4], objectness logits [N, A] -> (boxes, sigmoid scores) per image.
        """
        num_images = proposals.shape[0]
        objectness = objectness.detach()
        levels = torch.cat([torch.full((n,), level, dtype=torch.int64, device=proposals.device)
                            for level, n in enumerate(num_anchors_per_level)])
        top_indices, offset = [], 0
        for level_logits in objectness.split(list(num_anchors_per_level), dim=1):
            k = min(self.pre_nms_top_n(), level_logits.shape[1])
            top_indices.append(level_logits.topk(k, dim=1).indices + offset)  # (N, k)
            offset += level_logits.shape[1]
        top_indices = torch.cat(top_indices, dim=1)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        scores_all = torch.sigmoid(objectness[rows, top_indices])
        boxes_all, levels_all = proposals[rows, top_indices], levels[top_indices]
        final_boxes, final_scores = [], []
        for boxes, scores, level, size in zip(boxes_all, scores_all, levels_all, image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, self.min_box_size)
            keep = keep[scores[keep] >= self.score_threshold]
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            keep = batched_nms(boxes, scores, level, self.nms_threshold)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    # ------------------------------------------------------------------ training
    def assign_targets_to_anchors(self, anchors: Tensor, targets: Sequence[dict]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: anchor labels [A] (1 positive, 0 negative, -1 ignored) and matched gt boxes [A, 4]."""
        labels, matched_boxes = [], []
        for target in targets:
            gt_boxes = target["boxes"].to(anchors.dtype)
            if gt_boxes.shape[0] == 0:  # background only: every anchor negative
                labels.append(anchors.new_zeros(anchors.shape[0]))
                matched_boxes.append(torch.zeros_like(anchors))
                continue
            matches = self.matcher.match_boxes(gt_boxes, anchors)  # (A,) gt index, -1 or -2
            image_labels = (matches >= 0).to(anchors.dtype)
            image_labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(image_labels)
            matched_boxes.append(gt_boxes[matches.clamp(min=0)])
        return labels, matched_boxes

    def compute_loss(self, objectness: Tensor, deltas: Tensor, labels: Sequence[Tensor],
                     regression_targets: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Objectness BCE over the sampled anchors, smooth L1 (beta 1/9) over the positives / #sampled."""
        positive_masks, negative_masks = zip(*(self.sampler(image_labels) for image_labels in labels))
        positive = torch.where(torch.cat(positive_masks))[0]
        negative = torch.where(torch.cat(negative_masks))[0]
        sampled = torch.cat([positive, negative])
        objectness, deltas = objectness.reshape(-1), deltas.reshape(-1, 4)
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = smooth_l1_loss(deltas[positive], regression_targets[positive], beta=1 / 9,
                                  reduction="sum") / max(sampled.numel(), 1)
        objectness_loss = binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return objectness_loss, box_loss

    def forward(self, images: ImageList, features: dict[str, Tensor], targets: Sequence[dict] | None = None
                ) -> tuple[list[Tensor], dict[str, Tensor]]:
        feature_maps = list(features.values())
        logits, level_deltas = self.head(feature_maps)
        anchors_per_level = self.anchor_generator(tuple(images.tensors.shape[-2:]),
                                                  [tuple(f.shape[-2:]) for f in feature_maps])
        num_anchors_per_level = [a.shape[0] for a in anchors_per_level]
        anchors = torch.cat(anchors_per_level).to(device=feature_maps[0].device, dtype=feature_maps[0].dtype)
        objectness, deltas = flatten_rpn_outputs(logits, level_deltas)  # (N, A), (N, A, 4)
        num_images = objectness.shape[0]
        proposals = self.box_coder.decode(deltas.detach().reshape(-1, 4), anchors.repeat(num_images, 1))
        proposals = proposals.view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RegionProposalNetwork needs targets in training mode")
            labels, matched_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = [self.box_coder.encode(matched, anchors) for matched in matched_boxes]
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
        return boxes, losses
