"""The second stage of Faster / Mask / Keypoint R-CNN: per-RoI box, mask and keypoint heads.

Papers:
    * Fast R-CNN, Girshick, 2015, arXiv:1504.08083 (Sec. 2.3: the multi-task loss, the RoI
      minibatch of 25 % foreground with IoU >= 0.5, background below).
    * Faster R-CNN, Ren et al., 2015, arXiv:1506.01497; FPN, Lin et al., 2017, arXiv:1612.03144
      (Sec. 4.2: RoIs pooled from level k = floor(4 + log2(sqrt(wh) / 224)), a 2-fc 1024-d head).
    * Mask R-CNN, He et al., 2017, arXiv:1703.06870 (Sec. 3: RoIAlign; a 4-conv, deconv x2 FCN
      mask head predicting one 28x28 mask per class, per-pixel sigmoid and binary cross-entropy
      on the ground-truth class's mask only; keypoints as one-hot 56x56 masks with a softmax
      cross-entropy over the pixels, 8 3x3 512-d convs and a deconv, Sec. 5).

Follows the papers:
    * Training RoIs are the RPN's proposals plus the ground-truth boxes; a RoI is foreground
      when its IoU with a ground truth is >= 0.5 (label = that object's class), background
      otherwise; 512 are sampled per image with at most 25 % foreground (FPN's numbers).
    * L = L_cls (cross-entropy over all sampled RoIs) + L_loc (smooth L1 on the class-specific
      deltas of the foreground RoIs, normalised by the number of sampled RoIs) [+ L_mask + L_kp].
    * Box regression targets are t = (t_x, t_y, t_w, t_h) scaled by (10, 10, 5, 5).
    * Masks and keypoints are trained on the foreground RoIs only, against the ground truth the
      RoI matched; at test time they are computed for the final detections.

Deviates, and why (torchvision's choices, kept for identical detections):
    * Smooth L1 with beta = 1/9; decoding clamps t_w, t_h at ln(1000/16) before ``exp``.
    * Post-processing: softmax scores, class-specific boxes clipped to the image, scores
      > 0.05 kept, boxes smaller than 0.01 px dropped, NMS at 0.5 per class, the best 100 per image.
    * Masks are pasted into the image by bilinear resizing of a 1-pixel-padded 28x28 map to the
      (integer, padded) box, torchvision's ``paste_masks_in_image``; keypoints are read off the
      bicubically upsampled heatmap at its argmax (torchvision's ``heatmaps_to_keypoints``).
      Both loop over the final detections (at most ``detections_per_image``) since every box
      has its own output size; the matching, sampling and box decoding are vectorised.
    * Layout: torchvision's module names (``box_head.fc6``, ``box_predictor.cls_score``,
      ``mask_head.{i}.0``, ``mask_predictor.conv5_mask``, ``keypoint_head.{2i}``, ...);
      version-1 mask heads (``mask_head.mask_fcn{i+1}``) are remapped on load.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canon.losses.functional import binary_cross_entropy_with_logits, cross_entropy, fast_rcnn_loss_terms
from canon.ops import (BalancedPositiveNegativeSampler, BoxCoder, Matcher, MultiScaleRoIAlign, batched_nms,
                       box_iou, clip_boxes_to_image, remove_small_boxes, roi_align)

__all__ = ["TwoMLPHead", "FastRCNNPredictor", "MaskRCNNHeads", "MaskRCNNPredictor", "KeypointRCNNHeads",
           "KeypointRCNNPredictor", "RoIHeads", "fastrcnn_loss", "project_masks_on_boxes", "maskrcnn_loss",
           "maskrcnn_inference", "keypoints_to_heatmap", "keypointrcnn_loss", "heatmaps_to_keypoints",
           "paste_masks_in_image"]


# --------------------------------------------------------------------------- box head


class TwoMLPHead(nn.Module):
    """FPN's box head: flatten the pooled RoI, then fc6 and fc7 with ReLU: [K, C, 7, 7] -> [K, 1024]."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)  # (K, C*7*7)
        return F.relu(self.fc7(F.relu(self.fc6(x))))  # (K, representation_size)


class FastRCNNPredictor(nn.Module):
    """The two sibling outputs: class logits [K, num_classes] and per-class deltas [K, num_classes * 4]."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Sequence[Tensor],
                  regression_targets: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy over RoIs, sum of foreground smooth L1 (beta 1/9) / number of RoIs)."""
    labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
    # Background RoIs have no target (their matched box may be a dummy, encoding to -inf): zero them,
    # so the masked-out term is 0, not inf * 0.
    regression_targets = torch.where((labels > 0)[:, None], regression_targets, regression_targets.new_zeros(()))
    classification, localisation = fast_rcnn_loss_terms(class_logits, box_regression, labels, regression_targets,
                                                        beta=1 / 9)
    return classification.mean(), localisation.sum() / max(labels.numel(), 1)


# --------------------------------------------------------------------------- mask head


class MaskRCNNHeads(nn.Sequential):
    """Mask R-CNN's FCN: 3x3 convolutions with ReLU on the 14x14 RoI features (4 x 256 by default)."""

    _version = 2  # version 1 named the convolutions mask_fcn1 .. mask_fcn4

    def __init__(self, in_channels: int, layers: Sequence[int] = (256, 256, 256, 256), dilation: int = 1):
        blocks, previous = [], in_channels
        for channels in layers:
            blocks.append(nn.Sequential(nn.Conv2d(previous, channels, 3, stride=1, padding=dilation, dilation=dilation),
                                        nn.ReLU(inplace=True)))
            previous = channels
        super().__init__(*blocks)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        version = local_metadata.get("version", None)
        if version is None or version < 2:  # mask_fcn{i+1}.weight -> {i}.0.weight
            for i in range(len(self)):
                for kind in ("weight", "bias"):
                    old_key, new_key = f"{prefix}mask_fcn{i + 1}.{kind}", f"{prefix}{i}.0.{kind}"
                    if old_key in state_dict:
                        state_dict[new_key] = state_dict.pop(old_key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class MaskRCNNPredictor(nn.Sequential):
    """2x2/2 deconvolution + ReLU, then 1x1 per-class mask logits: [K, C, 14, 14] -> [K, num_classes, 28, 28]."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(OrderedDict([
            ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
            ("relu", nn.ReLU(inplace=True)),
            ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)),
        ]))
        for name, parameter in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(parameter, mode="fan_out", nonlinearity="relu")
            elif "bias" in name:
                nn.init.constant_(parameter, 0)


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_indices: Tensor, size: int) -> Tensor:
    """Mask targets [K, size, size]: RoIAlign of each RoI's matched ground-truth mask [G, H, W] over the RoI."""
    rois = torch.cat([matched_indices.to(boxes)[:, None], boxes], dim=1)  # (K, 5) = (mask index, box)
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


def maskrcnn_loss(mask_logits: Tensor, proposals: Sequence[Tensor], gt_masks: Sequence[Tensor],
                  gt_labels: Sequence[Tensor], matched_indices: Sequence[Tensor]) -> Tensor:
    """Per-pixel binary cross-entropy on the ground-truth class's mask of each foreground RoI."""
    size = mask_logits.shape[-1]
    labels = torch.cat([image_labels[indices] for image_labels, indices in zip(gt_labels, matched_indices)])
    targets = torch.cat([project_masks_on_boxes(m, p, i, size)
                         for m, p, i in zip(gt_masks, proposals, matched_indices)])
    if targets.numel() == 0:  # no foreground RoI: a zero that keeps the graph
        return mask_logits.sum() * 0
    rows = torch.arange(labels.shape[0], device=labels.device)
    return binary_cross_entropy_with_logits(mask_logits[rows, labels], targets)


def maskrcnn_inference(mask_logits: Tensor, labels: Sequence[Tensor]) -> list[Tensor]:
    """Sigmoid probabilities of each detection's own class: per image [K_i, 1, 28, 28]."""
    probabilities = mask_logits.sigmoid()
    all_labels = torch.cat(list(labels))
    rows = torch.arange(all_labels.shape[0], device=all_labels.device)
    probabilities = probabilities[rows, all_labels][:, None]
    return list(probabilities.split([len(image_labels) for image_labels in labels], dim=0))


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Grow xyxy boxes about their centres by ``scale``."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    centre_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    centre_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=1)


def _paste_mask(mask: Tensor, box: Sequence[int], height: int, width: int) -> Tensor:
    """Resize one [M, M] mask bilinearly to its integer box (+1 px) and place it in a zero [height, width] image."""
    x1, y1, x2, y2 = box
    box_w, box_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    resized = F.interpolate(mask[None, None], size=(box_h, box_w), mode="bilinear", align_corners=False)[0, 0]
    image = mask.new_zeros((height, width))
    left, right = max(x1, 0), min(x2 + 1, width)
    top, bottom = max(y1, 0), min(y2 + 1, height)
    if right > left and bottom > top:
        image[top:bottom, left:right] = resized[top - y1:bottom - y1, left - x1:right - x1]
    return image


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size: Sequence[int], padding: int = 1) -> Tensor:
    """Masks [K, 1, M, M] of boxes [K, 4] (image pixels) -> [K, 1, H, W] probabilities over the whole image.

    Each mask is padded by ``padding`` pixels and its box grown by (M + 2 padding) / M, so the
    mask's border falls on the box's edge; the box is then truncated to integers.
    """
    height, width = int(image_size[0]), int(image_size[1])
    size = masks.shape[-1]
    scale = float(size + 2 * padding) / size
    padded = F.pad(masks, (padding,) * 4)
    int_boxes = _expand_boxes(boxes, scale).to(torch.int64).tolist()
    pasted = [_paste_mask(mask[0], box, height, width) for mask, box in zip(padded, int_boxes)]
    if not pasted:
        return masks.new_zeros((0, 1, height, width))
    return torch.stack(pasted)[:, None]


# --------------------------------------------------------------------------- keypoint head


class KeypointRCNNHeads(nn.Sequential):
    """Keypoint R-CNN's head: 3x3 convolutions with ReLU (8 x 512 in the paper) on 14x14 RoI features."""

    def __init__(self, in_channels: int, layers: Sequence[int] = (512,) * 8):
        modules, previous = [], in_channels
        for channels in layers:
            modules += [nn.Conv2d(previous, channels, 3, stride=1, padding=1), nn.ReLU(inplace=True)]
            previous = channels
        super().__init__(*modules)
        for module in self.children():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(module.bias, 0)


class KeypointRCNNPredictor(nn.Module):
    """4x4/2 deconvolution to one heatmap per keypoint, then bilinear x2: [K, C, 14, 14] -> [K, J, 56, 56]."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.kps_score_lowres = nn.ConvTranspose2d(in_channels, num_keypoints, 4, stride=2, padding=1)
        nn.init.kaiming_normal_(self.kps_score_lowres.weight, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(self.kps_score_lowres.bias, 0)
        self.up_scale = 2
        self.num_keypoints = num_keypoints

    def forward(self, x: Tensor) -> Tensor:
        x = self.kps_score_lowres(x)  # (K, J, 28, 28)
        return F.interpolate(x, scale_factor=float(self.up_scale), mode="bilinear", align_corners=False,
                             recompute_scale_factor=False)  # (K, J, 56, 56)


def keypoints_to_heatmap(keypoints: Tensor, rois: Tensor, heatmap_size: int) -> tuple[Tensor, Tensor]:
    """Each keypoint's pixel index in its RoI's heatmap [K, J] (row * size + column) and validity [K, J].

    A keypoint is valid when visible (v > 0) and inside the RoI; one on the RoI's right/bottom
    edge goes to the last column/row.
    """
    offset_x, offset_y = rois[:, 0:1], rois[:, 1:2]
    scale_x = heatmap_size / (rois[:, 2] - rois[:, 0])[:, None]
    scale_y = heatmap_size / (rois[:, 3] - rois[:, 1])[:, None]
    x, y = keypoints[..., 0], keypoints[..., 1]
    on_right_edge = x == rois[:, 2][:, None]
    on_bottom_edge = y == rois[:, 3][:, None]
    x = ((x - offset_x) * scale_x).floor().long()
    y = ((y - offset_y) * scale_y).floor().long()
    x[on_right_edge] = heatmap_size - 1
    y[on_bottom_edge] = heatmap_size - 1
    inside = (x >= 0) & (y >= 0) & (x < heatmap_size) & (y < heatmap_size)
    valid = (inside & (keypoints[..., 2] > 0)).long()
    return (y * heatmap_size + x) * valid, valid


def keypointrcnn_loss(keypoint_logits: Tensor, proposals: Sequence[Tensor], gt_keypoints: Sequence[Tensor],
                      matched_indices: Sequence[Tensor]) -> Tensor:
    """Softmax cross-entropy over the H*W heatmap pixels of each valid keypoint of each foreground RoI."""
    num_rois, num_keypoints, height, width = keypoint_logits.shape
    if height != width:
        raise ValueError(f"keypoint heatmaps must be square, got {height} x {width}")
    heatmaps, valids = [], []
    for rois, keypoints, indices in zip(proposals, gt_keypoints, matched_indices):
        heatmap, valid = keypoints_to_heatmap(keypoints[indices], rois, height)
        heatmaps.append(heatmap.reshape(-1))
        valids.append(valid.reshape(-1))
    targets = torch.cat(heatmaps)
    valid = torch.where(torch.cat(valids) > 0)[0]
    if targets.numel() == 0 or valid.numel() == 0:
        return keypoint_logits.sum() * 0
    logits = keypoint_logits.reshape(num_rois * num_keypoints, height * width)
    return cross_entropy(logits[valid], targets[valid])


def heatmaps_to_keypoints(heatmaps: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
    """Heatmaps [K, J, 56, 56] of boxes [K, 4] -> keypoints [K, J, 3] (x, y, 1) in image pixels and scores [K, J].

    Each heatmap is resized bicubically to its box's (ceiled) size and its argmax, at the pixel
    centre, is the keypoint; the score is the upsampled logit there.
    """
    num_keypoints = heatmaps.shape[1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    keypoints = heatmaps.new_zeros((len(rois), num_keypoints, 3))
    scores = heatmaps.new_zeros((len(rois), num_keypoints))
    joints = torch.arange(num_keypoints, device=heatmaps.device)
    for i in range(len(rois)):
        map_w, map_h = int(widths_ceil[i].item()), int(heights_ceil[i].item())
        resized = F.interpolate(heatmaps[i][:, None], size=(map_h, map_w), mode="bicubic",
                                align_corners=False)[:, 0]  # (J, map_h, map_w)
        position = resized.reshape(num_keypoints, -1).argmax(dim=1)
        x_int = position % map_w
        y_int = torch.div(position - x_int, map_w, rounding_mode="floor")
        keypoints[i, :, 0] = (x_int.float() + 0.5) * (widths[i] / map_w) + rois[i, 0]
        keypoints[i, :, 1] = (y_int.float() + 0.5) * (heights[i] / map_h) + rois[i, 1]
        keypoints[i, :, 2] = 1
        scores[i] = resized[joints, y_int, x_int]
    return keypoints, scores


# --------------------------------------------------------------------------- the RoI heads


class RoIHeads(nn.Module):
    """Box (and optional mask / keypoint) heads over RoIs pooled from the named feature maps.

    forward(features, proposals, image_sizes, targets) -> (detections, losses): in eval, per image
    {"boxes" [K, 4], "labels" [K], "scores" [K]} (+ "masks" [K, 1, 28, 28] probabilities,
    "keypoints" [K, J, 3], "keypoints_scores" [K, J]) in the resized image's frame, and no
    losses; in training an empty list and {"loss_classifier", "loss_box_reg"} (+ "loss_mask",
    "loss_keypoint").
    """

    def __init__(self, box_roi_pool: MultiScaleRoIAlign, box_head: nn.Module, box_predictor: nn.Module, *,
                 foreground_iou_threshold: float = 0.5, background_iou_threshold: float = 0.5,
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 box_regression_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0), score_threshold: float = 0.05,
                 nms_threshold: float = 0.5, detections_per_image: int = 100, min_box_size: float = 1e-2,
                 feature_names: Sequence[str] = ("0", "1", "2", "3"),
                 mask_roi_pool: MultiScaleRoIAlign | None = None, mask_head: nn.Module | None = None,
                 mask_predictor: nn.Module | None = None, keypoint_roi_pool: MultiScaleRoIAlign | None = None,
                 keypoint_head: nn.Module | None = None, keypoint_predictor: nn.Module | None = None):
        super().__init__()
        if not isinstance(detections_per_image, int) or detections_per_image < 1:
            raise ValueError(f"detections_per_image must be a positive int, got {detections_per_image!r}")
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = BoxCoder(weights=tuple(box_regression_weights))
        self.matcher = Matcher(foreground_iou_threshold, background_iou_threshold, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.detections_per_image = detections_per_image
        self.min_box_size = float(min_box_size)
        self.feature_names = tuple(feature_names)
        self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_roi_pool, mask_head, mask_predictor
        self.keypoint_roi_pool, self.keypoint_head = keypoint_roi_pool, keypoint_head
        self.keypoint_predictor = keypoint_predictor

    @property
    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    @property
    def has_keypoint(self) -> bool:
        return self.keypoint_predictor is not None

    # ------------------------------------------------------------------ training targets
    def assign_targets_to_proposals(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                                    gt_labels: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: matched gt index [P] (0 where none) and class label [P] (0 background, -1 ignored)."""
        matched_all, labels_all = [], []
        for rois, boxes, labels in zip(proposals, gt_boxes, gt_labels):
            if boxes.shape[0] == 0:  # background only
                matched_all.append(torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device))
                labels_all.append(torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device))
                continue
            matches = self.matcher(box_iou(boxes, rois).nan_to_num(0.0))  # (P,)
            image_labels = labels[matches.clamp(min=0)].to(torch.int64)
            image_labels[matches == Matcher.BELOW_LOW_THRESHOLD] = 0
            image_labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
            matched_all.append(matches.clamp(min=0))
            labels_all.append(image_labels)
        return matched_all, labels_all

    def select_training_samples(self, proposals: Sequence[Tensor], targets: Sequence[dict]
                                ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Add the ground truths to the proposals, label them, sample; -> (rois, matched index, labels, targets)."""
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = [torch.cat((rois, boxes)) for rois, boxes in zip(proposals, gt_boxes)]
        matched, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        sampled_rois, sampled_matched, sampled_labels, regression_targets = [], [], [], []
        for rois, image_matched, image_labels, boxes in zip(proposals, matched, labels, gt_boxes):
            positive, negative = self.sampler(image_labels)
            chosen = torch.where(positive | negative)[0]
            rois, image_matched, image_labels = rois[chosen], image_matched[chosen], image_labels[chosen]
            if boxes.shape[0] == 0:  # a dummy box for background-only images; never a regression target
                boxes = boxes.new_zeros((1, 4))
            regression_targets.append(self.box_coder.encode(boxes[image_matched], rois))
            sampled_rois.append(rois)
            sampled_matched.append(image_matched)
            sampled_labels.append(image_labels)
        return sampled_rois, sampled_matched, sampled_labels, regression_targets

    # ------------------------------------------------------------------ inference
    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: Sequence[Tensor],
                               image_sizes: Sequence[tuple[int, int]]
                               ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Decode per-class boxes, clip, threshold, drop tiny, per-class NMS, keep the best per image."""
        num_classes = class_logits.shape[-1]
        rois = torch.cat(list(proposals))
        deltas = box_regression.reshape(-1, 4)  # (P * C, 4)
        boxes_all = self.box_coder.decode(deltas, rois.repeat_interleave(num_classes, dim=0))
        boxes_all = boxes_all.reshape(-1, num_classes, 4)
        scores_all = F.softmax(class_logits, dim=-1)
        sizes = [len(p) for p in proposals]
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, size in zip(boxes_all.split(sizes), scores_all.split(sizes), image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand_as(scores)
            # drop the background column, then one candidate per (RoI, class)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_threshold)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, self.min_box_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
        return out_boxes, out_scores, out_labels

    def _pooled(self, pool: MultiScaleRoIAlign, features: dict[str, Tensor], boxes: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise ValueError(f"RoIHeads pools the feature maps {list(self.feature_names)} but the backbone returned "
                             f"{list(features)}; set feature_names (FasterRCNN's box_feature_names) to match")
        return pool([features[name] for name in self.feature_names], list(boxes), image_sizes)

    def forward(self, features: dict[str, Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]], targets: Sequence[dict] | None = None
                ) -> tuple[list[dict], dict[str, Tensor]]:
        matched = labels = regression_targets = None
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads needs targets in training mode")
            proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self._pooled(self.box_roi_pool, features, proposals, image_sizes))
        class_logits, box_regression = self.box_predictor(box_features)

        detections: list[dict] = []
        losses: dict[str, Tensor] = {}
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            # masks and keypoints learn from the foreground RoIs only
            foreground = [torch.where(image_labels > 0)[0] for image_labels in labels]
            roi_boxes = [rois[f] for rois, f in zip(proposals, foreground)]
            roi_matched = [m[f] for m, f in zip(matched, foreground)]
        else:
            boxes, scores, box_labels = self.postprocess_detections(class_logits, box_regression, proposals,
                                                                    image_sizes)
            detections = [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, box_labels, scores)]
            roi_boxes = boxes

        if self.has_mask:
            mask_logits = self.mask_predictor(self.mask_head(self._pooled(self.mask_roi_pool, features, roi_boxes,
                                                                          image_sizes)))
            if self.training:
                losses["loss_mask"] = maskrcnn_loss(mask_logits, roi_boxes, [t["masks"] for t in targets],
                                                    [t["labels"] for t in targets], roi_matched)
            else:
                for detection, masks in zip(detections, maskrcnn_inference(mask_logits,
                                                                           [d["labels"] for d in detections])):
                    detection["masks"] = masks

        if self.has_keypoint:
            keypoint_logits = self.keypoint_predictor(self.keypoint_head(
                self._pooled(self.keypoint_roi_pool, features, roi_boxes, image_sizes)))
            if self.training:
                losses["loss_keypoint"] = keypointrcnn_loss(keypoint_logits, roi_boxes,
                                                            [t["keypoints"] for t in targets], roi_matched)
            else:
                sizes = [len(b) for b in roi_boxes]
                for detection, heatmaps, rois in zip(detections, keypoint_logits.split(sizes), roi_boxes):
                    detection["keypoints"], detection["keypoints_scores"] = heatmaps_to_keypoints(heatmaps, rois)
        return detections, losses
