"""Reference pieces of torchvision's two-stage detectors, written from its documentation and source with
plain torch (no canon code), to test canon.models.detection against.

Transcribed from torchvision (models/detection/transform.py, anchor_utils.py, rpn.py, roi_heads.py,
_utils.py, generalized_rcnn.py; ops/boxes.py, poolers.py, feature_pyramid_network.py and the CPU
RoIAlign kernel csrc/ops/cpu/roi_align_kernel.cpp):

* box coding (``BoxCoder.encode_single`` / ``decode_single``: centres as x1 + 0.5 w, t_w clamped at
  log(1000/16)); IoU; greedy NMS that suppresses IoU > threshold; per-class NMS by a loop over classes
  (torchvision's ``_batched_nms_vanilla``);
* anchors (``AnchorGenerator.generate_anchors`` / ``grid_anchors``), the ``Matcher`` with its
  low-quality rule (ties included), ``RegionProposalNetwork.filter_proposals``;
* ``RoIHeads.postprocess_detections``, ``LevelMapper`` (eps after the log), ``MultiScaleRoIAlign``'s
  scale inference, RoIAlign's bilinear sampling (aligned=False);
* ``GeneralizedRCNNTransform`` (normalise, ``_resize_image_and_masks``, ``batch_images``,
  ``resize_boxes``, ``resize_keypoints``), ``paste_masks_in_image``, ``heatmaps_to_keypoints``;
* ``reference_detect``: the eval-mode forward of Faster/Mask/Keypoint R-CNN composed from these
  pieces, the FPN, RPN head and RoI heads computed with ``torch.nn.functional`` from the state_dict.
  Only the ResNet body is called as a module (canon's ResNet is checked against a functional
  reference in tests/models/test_resnet.py; FrozenBatchNorm2d against its formula in
  tests/models/test_detection_backbones.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE_CLAMP = math.log(1000.0 / 16)


# --------------------------------------------------------------------------- boxes


def ref_box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def ref_box_iou(boxes1, boxes2):
    area1, area2 = ref_box_area(boxes1), ref_box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def ref_encode(reference_boxes, proposals, weights):
    wx, wy, ww, wh = weights
    ex_widths = proposals[:, 2] - proposals[:, 0]
    ex_heights = proposals[:, 3] - proposals[:, 1]
    ex_ctr_x = proposals[:, 0] + 0.5 * ex_widths
    ex_ctr_y = proposals[:, 1] + 0.5 * ex_heights
    gt_widths = reference_boxes[:, 2] - reference_boxes[:, 0]
    gt_heights = reference_boxes[:, 3] - reference_boxes[:, 1]
    gt_ctr_x = reference_boxes[:, 0] + 0.5 * gt_widths
    gt_ctr_y = reference_boxes[:, 1] + 0.5 * gt_heights
    return torch.stack((wx * (gt_ctr_x - ex_ctr_x) / ex_widths, wy * (gt_ctr_y - ex_ctr_y) / ex_heights,
                        ww * torch.log(gt_widths / ex_widths), wh * torch.log(gt_heights / ex_heights)), dim=1)


def ref_decode(rel_codes, boxes, weights, clamp=SCALE_CLAMP):
    """rel_codes [N, 4k] applied to boxes [N, 4] -> [N, k, 4]."""
    wx, wy, ww, wh = weights
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy
    dw = torch.clamp(rel_codes[:, 2::4] / ww, max=clamp)
    dh = torch.clamp(rel_codes[:, 3::4] / wh, max=clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    out = torch.stack((pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                       pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h), dim=2)
    return out


def ref_clip(boxes, size):
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def ref_remove_small(boxes, min_size):
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def ref_nms(boxes, scores, threshold):
    """Greedy: highest score first; a later box is dropped when its IoU with a kept one is > threshold."""
    order = torch.sort(scores, descending=True, stable=True)[1]
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= ref_box_iou(boxes[i:i + 1], boxes)[0] > threshold
    return torch.tensor(keep, dtype=torch.int64)


def ref_batched_nms(boxes, scores, idxs, threshold):
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for class_id in torch.unique(idxs):
        members = torch.where(idxs == class_id)[0]
        keep_mask[members[ref_nms(boxes[members], scores[members], threshold)]] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True, stable=True)[1]]


# --------------------------------------------------------------------------- anchors and matching


def ref_cell_anchors(scales, aspect_ratios):
    scales = torch.as_tensor(scales, dtype=torch.float32)
    aspect_ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(aspect_ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def ref_anchors(image_size, feature_sizes, sizes, aspect_ratios):
    """All anchors of a padded image [sum_l H_l W_l A_l, 4], level by level, location-major."""
    out = []
    for (fh, fw), level_sizes, level_ratios in zip(feature_sizes, sizes, aspect_ratios):
        stride_h, stride_w = image_size[0] // fh, image_size[1] // fw
        base = ref_cell_anchors(level_sizes, level_ratios)
        shifts_x = torch.arange(0, fw, dtype=torch.int32).to(torch.float32) * stride_w
        shifts_y = torch.arange(0, fh, dtype=torch.int32).to(torch.float32) * stride_h
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
    return torch.cat(out)


def ref_matcher(quality, high, low, allow_low_quality_matches):
    """torchvision's Matcher: -1 below low, -2 between, gt index >= high; low-quality ties restored."""
    matched_vals, matches = quality.max(dim=0)
    all_matches = matches.clone()
    matches[matched_vals < low] = -1
    matches[(matched_vals >= low) & (matched_vals < high)] = -2
    if allow_low_quality_matches:
        highest, _ = quality.max(dim=1)
        pairs = torch.where(quality == highest[:, None])
        matches[pairs[1]] = all_matches[pairs[1]]
    return matches


def ref_rpn_flatten(logits, deltas):
    """permute_and_flatten + concat_box_prediction_layers, kept per image: [N, A], [N, A, 4]."""
    flat_logits, flat_deltas = [], []
    for box_cls, box_reg in zip(logits, deltas):
        n, ax_c, h, w = box_cls.shape
        a = box_reg.shape[1] // 4
        c = ax_c // a
        flat_logits.append(box_cls.view(n, -1, c, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1))
        flat_deltas.append(box_reg.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


def ref_filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level, pre_nms_top_n,
                         post_nms_top_n, nms_threshold, score_threshold=0.0, min_size=1e-3):
    num_images = proposals.shape[0]
    objectness = objectness.reshape(num_images, -1)
    levels = torch.cat([torch.full((n,), idx, dtype=torch.int64) for idx, n in enumerate(num_anchors_per_level)])
    levels = levels.reshape(1, -1).expand_as(objectness)
    top_n_idx, offset = [], 0
    for ob in objectness.split(num_anchors_per_level, 1):
        num_anchors = ob.shape[1]
        _, idx = ob.topk(min(pre_nms_top_n, num_anchors), dim=1)
        top_n_idx.append(idx + offset)
        offset += num_anchors
    top_n_idx = torch.cat(top_n_idx, dim=1)
    image_range = torch.arange(num_images)[:, None]
    objectness = objectness[image_range, top_n_idx]
    levels = levels[image_range, top_n_idx]
    proposals = proposals[image_range, top_n_idx]
    probabilities = torch.sigmoid(objectness)
    final_boxes, final_scores = [], []
    for boxes, scores, lvl, img_shape in zip(proposals, probabilities, levels, image_shapes):
        boxes = ref_clip(boxes, img_shape)
        keep = ref_remove_small(boxes, min_size)
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = torch.where(scores >= score_threshold)[0]
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = ref_batched_nms(boxes, scores, lvl, nms_threshold)[:post_nms_top_n]
        final_boxes.append(boxes[keep])
        final_scores.append(scores[keep])
    return final_boxes, final_scores


def ref_postprocess_detections(class_logits, box_regression, proposals, image_shapes, score_threshold=0.05,
                               nms_threshold=0.5, detections_per_image=100, weights=(10.0, 10.0, 5.0, 5.0)):
    num_classes = class_logits.shape[-1]
    boxes_per_image = [len(p) for p in proposals]
    pred_boxes = ref_decode(box_regression, torch.cat(proposals), weights)  # (P, C, 4)
    pred_scores = F.softmax(class_logits, -1)
    all_boxes, all_scores, all_labels = [], [], []
    for boxes, scores, image_shape in zip(pred_boxes.split(boxes_per_image), pred_scores.split(boxes_per_image),
                                          image_shapes):
        boxes = ref_clip(boxes, image_shape)
        labels = torch.arange(num_classes).view(1, -1).expand_as(scores)
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        inds = torch.where(scores > score_threshold)[0]
        boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
        keep = ref_remove_small(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ref_batched_nms(boxes, scores, labels, nms_threshold)[:detections_per_image]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    return all_boxes, all_scores, all_labels


# --------------------------------------------------------------------------- RoIAlign


def ref_roi_align(feature, rois, output_size, spatial_scale, sampling_ratio, chunk=128):
    """torchvision's RoIAlign (aligned=False): feature [N, C, H, W], rois [K, 5] -> [K, C, P, Q]."""
    pooled_h, pooled_w = output_size
    n, channels, height, width = feature.shape
    pixels = feature.permute(0, 2, 3, 1)  # (N, H, W, C)
    outputs = []
    for start in range(0, rois.shape[0], chunk):
        r = rois[start:start + chunk]
        start_w, start_h = r[:, 1] * spatial_scale, r[:, 2] * spatial_scale
        roi_w = (r[:, 3] * spatial_scale - start_w).clamp(min=1.0)
        roi_h = (r[:, 4] * spatial_scale - start_h).clamp(min=1.0)
        bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
        assert sampling_ratio > 0, "the reference covers a fixed sampling ratio"
        g = sampling_ratio
        ph = torch.arange(pooled_h, dtype=feature.dtype)[None, :, None]
        pw = torch.arange(pooled_w, dtype=feature.dtype)[None, :, None]
        i = torch.arange(g, dtype=feature.dtype)[None, None, :]
        y = start_h[:, None, None] + ph * bin_h[:, None, None] + (i + 0.5) * bin_h[:, None, None] / g  # (K, P, G)
        x = start_w[:, None, None] + pw * bin_w[:, None, None] + (i + 0.5) * bin_w[:, None, None] / g  # (K, Q, G)

        def corners(coord, size):
            valid = (coord >= -1.0) & (coord <= size)
            coord = coord.clamp(min=0)
            low = coord.floor().long()
            at_end = low >= size - 1
            low = torch.where(at_end, torch.full_like(low, size - 1), low)
            high = torch.where(at_end, low, low + 1)
            coord = torch.where(at_end, low.to(coord.dtype), coord)
            frac = coord - low
            return low, high, 1 - frac, frac, valid

        y_lo, y_hi, hy, ly, vy = corners(y, height)
        x_lo, x_hi, hx, lx, vx = corners(x, width)
        b = r[:, 0].long()[:, None, None, None, None]
        ylo, yhi = y_lo[:, :, None, :, None], y_hi[:, :, None, :, None]
        xlo, xhi = x_lo[:, None, :, None, :], x_hi[:, None, :, None, :]
        w_hy, w_ly = hy[:, :, None, :, None], ly[:, :, None, :, None]
        w_hx, w_lx = hx[:, None, :, None, :], lx[:, None, :, None, :]
        value = ((w_hy * w_hx)[..., None] * pixels[b, ylo, xlo] + (w_hy * w_lx)[..., None] * pixels[b, ylo, xhi]
                 + (w_ly * w_hx)[..., None] * pixels[b, yhi, xlo] + (w_ly * w_lx)[..., None] * pixels[b, yhi, xhi])
        valid = (vy[:, :, None, :, None] & vx[:, None, :, None, :])[..., None]
        value = torch.where(valid, value, torch.zeros((), dtype=value.dtype))  # (K, P, Q, G, G, C)
        outputs.append(value.sum(dim=(3, 4)) / (g * g))
    if not outputs:
        return feature.new_zeros((0, channels, pooled_h, pooled_w))
    return torch.cat(outputs).permute(0, 3, 1, 2)


def ref_multiscale_roi_align(features, boxes, image_shapes, output_size, sampling_ratio):
    """MultiScaleRoIAlign over maps finest first; scales from the largest image height (torchvision)."""
    max_h = max(s[0] for s in image_shapes)
    max_w = max(s[1] for s in image_shapes)
    scales = []
    for feature in features:
        possible = [2 ** float(torch.tensor(float(s1) / float(s2)).log2().round())
                    for s1, s2 in zip(feature.shape[-2:], (max_h, max_w))]
        scales.append(possible[0])
    k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
    concat = torch.cat(boxes)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)) for i, b in enumerate(boxes)]), concat], dim=1)
    s = torch.sqrt(ref_box_area(concat))
    levels = torch.floor(4 + torch.log2(s / 224) + torch.tensor(1e-6, dtype=s.dtype))
    levels = (torch.clamp(levels, min=k_min, max=k_max).to(torch.int64) - int(k_min))
    out = torch.zeros(len(rois), features[0].shape[1], *output_size)
    for level, (feature, scale) in enumerate(zip(features, scales)):
        idx = torch.where(levels == level)[0]
        if len(idx):
            out[idx] = ref_roi_align(feature, rois[idx], output_size, scale, sampling_ratio)
    return out


# --------------------------------------------------------------------------- transform


def ref_resize(image, min_size, max_size):
    im_shape = torch.tensor(image.shape[-2:])
    min_s = torch.min(im_shape).to(dtype=torch.float32)
    max_s = torch.max(im_shape).to(dtype=torch.float32)
    scale = torch.min(float(min_size) / min_s, float(max_size) / max_s)
    return F.interpolate(image[None], size=None, scale_factor=scale.item(), mode="bilinear",
                         recompute_scale_factor=True, align_corners=False)[0]


def ref_resize_boxes(boxes, original_size, new_size):
    ratios = [torch.tensor(s, dtype=torch.float32) / torch.tensor(s_orig, dtype=torch.float32)
              for s, s_orig in zip(new_size, original_size)]
    ratio_height, ratio_width = ratios
    xmin, ymin, xmax, ymax = boxes.unbind(1)
    return torch.stack((xmin * ratio_width, ymin * ratio_height, xmax * ratio_width, ymax * ratio_height), dim=1)


def ref_resize_keypoints(keypoints, original_size, new_size):
    ratios = [torch.tensor(s, dtype=torch.float32) / torch.tensor(s_orig, dtype=torch.float32)
              for s, s_orig in zip(new_size, original_size)]
    ratio_h, ratio_w = ratios
    resized = keypoints.clone()
    resized[..., 0] *= ratio_w
    resized[..., 1] *= ratio_h
    return resized


def ref_transform(images, min_size, max_size, mean, std, size_divisible=32):
    """-> (batch [N, C, H, W], sizes [(h, w)])."""
    mean, std = torch.tensor(mean), torch.tensor(std)
    resized = [ref_resize((img - mean[:, None, None]) / std[:, None, None], min_size, max_size) for img in images]
    sizes = [tuple(img.shape[-2:]) for img in resized]
    max_h = int(math.ceil(max(s[0] for s in sizes) / float(size_divisible)) * size_divisible)
    max_w = int(math.ceil(max(s[1] for s in sizes) / float(size_divisible)) * size_divisible)
    batch = resized[0].new_full((len(resized), resized[0].shape[0], max_h, max_w), 0)
    for i, img in enumerate(resized):
        batch[i, :, :img.shape[1], :img.shape[2]].copy_(img)
    return batch, sizes


def ref_paste_masks_in_image(masks, boxes, img_shape, padding=1):
    m = masks.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = F.pad(masks, (padding,) * 4)
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1).to(torch.int64)
    im_h, im_w = img_shape
    out = []
    for mask, box in zip(padded[:, 0], expanded):
        w = max(int(box[2] - box[0] + 1), 1)
        h = max(int(box[3] - box[1] + 1), 1)
        resized = F.interpolate(mask.expand((1, 1, -1, -1)), size=(h, w), mode="bilinear", align_corners=False)[0][0]
        im_mask = torch.zeros((im_h, im_w), dtype=resized.dtype)
        x_0, x_1 = max(int(box[0]), 0), min(int(box[2]) + 1, im_w)
        y_0, y_1 = max(int(box[1]), 0), min(int(box[3]) + 1, im_h)
        if x_1 > x_0 and y_1 > y_0:
            im_mask[y_0:y_1, x_0:x_1] = resized[(y_0 - int(box[1])):(y_1 - int(box[1])),
                                                (x_0 - int(box[0])):(x_1 - int(box[0]))]
        out.append(im_mask)
    if not out:
        return masks.new_empty((0, 1, im_h, im_w))
    return torch.stack(out)[:, None]


def ref_heatmaps_to_keypoints(maps, rois):
    offset_x, offset_y = rois[:, 0], rois[:, 1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil, heights_ceil = widths.ceil(), heights.ceil()
    num_keypoints = maps.shape[1]
    xy_preds = torch.zeros((len(rois), 3, num_keypoints))
    end_scores = torch.zeros((len(rois), num_keypoints))
    for i in range(len(rois)):
        roi_map_width, roi_map_height = int(widths_ceil[i].item()), int(heights_ceil[i].item())
        width_correction, height_correction = widths[i] / roi_map_width, heights[i] / roi_map_height
        roi_map = F.interpolate(maps[i][:, None], size=(roi_map_height, roi_map_width), mode="bicubic",
                                align_corners=False)[:, 0]
        w = roi_map.shape[2]
        pos = roi_map.reshape(num_keypoints, -1).argmax(dim=1)
        x_int = pos % w
        y_int = torch.div(pos - x_int, w, rounding_mode="floor")
        xy_preds[i, 0, :] = (x_int.float() + 0.5) * width_correction + offset_x[i]
        xy_preds[i, 1, :] = (y_int.float() + 0.5) * height_correction + offset_y[i]
        xy_preds[i, 2, :] = 1
        end_scores[i, :] = roi_map[torch.arange(num_keypoints), y_int, x_int]
    return xy_preds.permute(0, 2, 1), end_scores


# --------------------------------------------------------------------------- networks from the state_dict


def ref_fpn(inputs, state, prefix="backbone.fpn.", extra="pool"):
    """FeaturePyramidNetwork with LastLevelMaxPool (extra="pool") or no extra level, functionally."""
    def inner(i, x):
        return F.conv2d(x, state[f"{prefix}inner_blocks.{i}.0.weight"], state[f"{prefix}inner_blocks.{i}.0.bias"])

    def layer(i, x):
        return F.conv2d(x, state[f"{prefix}layer_blocks.{i}.0.weight"], state[f"{prefix}layer_blocks.{i}.0.bias"],
                        padding=1)

    last_inner = inner(len(inputs) - 1, inputs[-1])
    results = [layer(len(inputs) - 1, last_inner)]
    for idx in range(len(inputs) - 2, -1, -1):
        lateral = inner(idx, inputs[idx])
        last_inner = lateral + F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
        results.insert(0, layer(idx, last_inner))
    if extra == "pool":
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
    return results


def reference_detect(model, images, *, min_size, max_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     anchor_sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0), pre_nms_top_n=1000,
                     post_nms_top_n=1000, rpn_nms_threshold=0.7, score_threshold=0.05, nms_threshold=0.5,
                     detections_per_image=100):
    """torchvision's eval-mode GeneralizedRCNN forward, from the pieces above and ``model.state_dict()``."""
    state = model.state_dict()
    original_sizes = [tuple(img.shape[-2:]) for img in images]
    batch, sizes = ref_transform(images, min_size, max_size, mean, std)
    body = model.backbone.body(batch)
    features = ref_fpn(list(body.values()), state)
    # RPN head, shared over levels
    logits, deltas = [], []
    for feature in features:
        hidden = F.relu(F.conv2d(feature, state["rpn.head.conv.0.0.weight"], state["rpn.head.conv.0.0.bias"],
                                 padding=1))
        logits.append(F.conv2d(hidden, state["rpn.head.cls_logits.weight"], state["rpn.head.cls_logits.bias"]))
        deltas.append(F.conv2d(hidden, state["rpn.head.bbox_pred.weight"], state["rpn.head.bbox_pred.bias"]))
    anchors = ref_anchors(tuple(batch.shape[-2:]), [tuple(f.shape[-2:]) for f in features],
                          [(s,) for s in anchor_sizes], [aspect_ratios] * len(anchor_sizes))
    num_anchors_per_level = [f.shape[-2] * f.shape[-1] * len(aspect_ratios) for f in features]
    objectness, flat_deltas = ref_rpn_flatten(logits, deltas)
    n = batch.shape[0]
    proposals = ref_decode(flat_deltas.reshape(-1, 4), anchors.repeat(n, 1), (1.0, 1.0, 1.0, 1.0)).view(n, -1, 4)
    proposals, _ = ref_filter_proposals(proposals, objectness, sizes, num_anchors_per_level, pre_nms_top_n,
                                        post_nms_top_n, rpn_nms_threshold)
    # box head
    pooled = ref_multiscale_roi_align(features[:4], proposals, sizes, (7, 7), 2)
    x = F.relu(F.linear(pooled.flatten(1), state["roi_heads.box_head.fc6.weight"],
                        state["roi_heads.box_head.fc6.bias"]))
    x = F.relu(F.linear(x, state["roi_heads.box_head.fc7.weight"], state["roi_heads.box_head.fc7.bias"]))
    class_logits = F.linear(x, state["roi_heads.box_predictor.cls_score.weight"],
                            state["roi_heads.box_predictor.cls_score.bias"])
    box_regression = F.linear(x, state["roi_heads.box_predictor.bbox_pred.weight"],
                              state["roi_heads.box_predictor.bbox_pred.bias"])
    boxes, scores, labels = ref_postprocess_detections(class_logits, box_regression, proposals, sizes,
                                                       score_threshold, nms_threshold, detections_per_image)
    results = [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)]
    if "roi_heads.mask_predictor.mask_fcn_logits.weight" in state:
        x = ref_multiscale_roi_align(features[:4], boxes, sizes, (14, 14), 2)
        i = 0
        while f"roi_heads.mask_head.{i}.0.weight" in state:
            x = F.relu(F.conv2d(x, state[f"roi_heads.mask_head.{i}.0.weight"], state[f"roi_heads.mask_head.{i}.0.bias"],
                                padding=1))
            i += 1
        x = F.relu(F.conv_transpose2d(x, state["roi_heads.mask_predictor.conv5_mask.weight"],
                                      state["roi_heads.mask_predictor.conv5_mask.bias"], stride=2))
        mask_logits = F.conv2d(x, state["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                               state["roi_heads.mask_predictor.mask_fcn_logits.bias"])
        probs = mask_logits.sigmoid()
        all_labels = torch.cat(labels)
        probs = probs[torch.arange(len(all_labels)), all_labels][:, None]
        for result, p in zip(results, probs.split([len(b) for b in boxes])):
            result["masks"] = p
    if "roi_heads.keypoint_predictor.kps_score_lowres.weight" in state:
        x = ref_multiscale_roi_align(features[:4], boxes, sizes, (14, 14), 2)
        i = 0
        while f"roi_heads.keypoint_head.{i}.weight" in state:
            x = F.relu(F.conv2d(x, state[f"roi_heads.keypoint_head.{i}.weight"],
                                state[f"roi_heads.keypoint_head.{i}.bias"], padding=1))
            i += 2
        x = F.conv_transpose2d(x, state["roi_heads.keypoint_predictor.kps_score_lowres.weight"],
                               state["roi_heads.keypoint_predictor.kps_score_lowres.bias"], stride=2, padding=1)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        for result, heatmaps, b in zip(results, x.split([len(b) for b in boxes]), boxes):
            result["keypoints"], result["keypoints_scores"] = ref_heatmaps_to_keypoints(heatmaps, b)
    # back to the input images
    for result, size, original in zip(results, sizes, original_sizes):
        result["boxes"] = ref_resize_boxes(result["boxes"], size, original)
        if "masks" in result:
            result["masks"] = ref_paste_masks_in_image(result["masks"], result["boxes"], original)
        if "keypoints" in result:
            result["keypoints"] = ref_resize_keypoints(result["keypoints"], size, original)
    return results
