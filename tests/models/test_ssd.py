"""SSD300 against torchvision's layout and arithmetic, the paper's default boxes, and brute force.

References (independent of canon's code):
    - torchvision/models/detection/ssd.py and anchor_utils.py (``SSD``, ``SSDHead``,
      ``SSDFeatureExtractorVGG``, ``DefaultBoxGenerator``, ``SSDMatcher``): the ``state_dict`` keys
      and shapes written out below, the 35,641,826 parameters at 91 classes that torchvision
      documents for ``ssd300_vgg16``, and its loss (``compute_loss``) and post-processing
      (``postprocess_detections`` + ``GeneralizedRCNNTransform``), transcribed here with
      ``torch.nn.functional`` and a plain greedy NMS;
    - the default boxes of the paper's formula with torchvision's scales, steps and aspect-ratio
      lists, computed with Python loops over maps, rows, columns and boxes;
    - hard negative mining by sorting each image's background losses with ``sorted``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.models.detection.ssd import (SSD300_ASPECT_RATIOS, SSD300_SCALES, SSD300_STEPS, DefaultBoxGenerator,
                                        hard_negative_mask, ssd_match)
from test_yolo import ap50_on, fit_full_batch, painted_rectangles  # the shared synthetic overfit set and its COCO AP50

torch.set_num_threads(1)
MAP_SIZES = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def torchvision_ssd300_layout(num_classes=91):
    keys = [("backbone.scale_weight", (512,))]
    vgg = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
           (17, 256, 512), (19, 512, 512), (21, 512, 512)]
    for i, c_in, c_out in vgg:
        keys += [(f"backbone.features.{i}.weight", (c_out, c_in, 3, 3)), (f"backbone.features.{i}.bias", (c_out,))]
    for i in (1, 3, 5):  # conv5_1..conv5_3 after pool4
        keys += [(f"backbone.extra.0.{i}.weight", (512, 512, 3, 3)), (f"backbone.extra.0.{i}.bias", (512,))]
    keys += [("backbone.extra.0.7.1.weight", (1024, 512, 3, 3)), ("backbone.extra.0.7.1.bias", (1024,)),
             ("backbone.extra.0.7.3.weight", (1024, 1024, 1, 1)), ("backbone.extra.0.7.3.bias", (1024,))]
    for block, (c_in, mid, c_out) in enumerate([(1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)],
                                               start=1):
        keys += [(f"backbone.extra.{block}.0.weight", (mid, c_in, 1, 1)), (f"backbone.extra.{block}.0.bias", (mid,)),
                 (f"backbone.extra.{block}.2.weight", (c_out, mid, 3, 3)), (f"backbone.extra.{block}.2.bias", (c_out,))]
    channels, anchors = [512, 1024, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4]
    for head, per_box in (("classification_head", num_classes), ("regression_head", 4)):
        for i, (c, a) in enumerate(zip(channels, anchors)):
            keys += [(f"head.{head}.module_list.{i}.weight", (per_box * a, c, 3, 3)),
                     (f"head.{head}.module_list.{i}.bias", (per_box * a,))]
    return keys


@pytest.mark.parametrize("num_classes", [91, 21])
def test_ssd300_vgg16_layout_and_parameter_count_equal_torchvision(num_classes):
    with torch.device("meta"):
        model = canon.create_model("ssd300_vgg16", num_classes=num_classes)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == torchvision_ssd300_layout(num_classes)
    if num_classes == 91:
        assert sum(p.numel() for p in model.parameters()) == 35_641_826


def test_ssd300_vgg16_layer_settings():
    with torch.device("meta"):
        model = canon.create_model("ssd300_vgg16")
    features = model.backbone.features
    assert [m.ceil_mode for m in features if isinstance(m, nn.MaxPool2d)] == [False, False, True]  # pool3 rounds up
    fc = model.backbone.extra[0][-1]
    assert (fc[0].kernel_size, fc[0].stride, fc[0].padding) == (3, 1, 1)  # pool5 3×3/1
    assert (fc[1].dilation, fc[1].padding) == ((6, 6), (6, 6))  # atrous fc6
    assert (model.score_threshold, model.nms_threshold, model.topk_candidates, model.detections_per_image) == \
        (0.01, 0.45, 400, 200)
    assert model.transform.image_mean == (0.48235, 0.45882, 0.40784)
    assert model.transform.image_std == pytest.approx((1 / 255,) * 3)
    assert model.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert model.neg_to_pos_ratio == 3.0


# ----------------------------------------------------------------------------- default boxes


def reference_default_boxes(image_size=300, map_sizes=MAP_SIZES, scales=SSD300_SCALES, steps=SSD300_STEPS,
                            aspect_ratios=SSD300_ASPECT_RATIOS):
    """torchvision's DefaultBoxGenerator, one box at a time (cx, cy, w, h clipped, then xyxy pixels)."""
    boxes = []
    for k, (f_h, f_w) in enumerate(map_sizes):
        s_k, s_next = scales[k], scales[k + 1]
        pairs = [(s_k, s_k), (math.sqrt(s_k * s_next),) * 2]
        for a in aspect_ratios[k]:
            pairs += [(s_k * math.sqrt(a), s_k / math.sqrt(a)), (s_k / math.sqrt(a), s_k * math.sqrt(a))]
        cells = image_size / steps[k] if steps else None
        for row in range(f_h):
            for col in range(f_w):
                cx = (col + 0.5) / (cells or f_w)
                cy = (row + 0.5) / (cells or f_h)
                for w, h in pairs:
                    w, h = min(max(w, 0.0), 1.0), min(max(h, 0.0), 1.0)
                    boxes.append([(cx - w / 2) * image_size, (cy - h / 2) * image_size,
                                  (cx + w / 2) * image_size, (cy + h / 2) * image_size])
    return torch.tensor(boxes, dtype=torch.float64)


def test_default_boxes_are_torchvisions_8732():
    assert SSD300_SCALES == (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
    assert SSD300_ASPECT_RATIOS == ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    assert SSD300_STEPS == (8, 16, 32, 64, 100, 300)
    generator = DefaultBoxGenerator(SSD300_ASPECT_RATIOS, scales=SSD300_SCALES, steps=SSD300_STEPS)
    assert generator.num_anchors_per_location() == [4, 6, 6, 6, 4, 4]
    boxes = generator((300, 300), MAP_SIZES)
    assert boxes.shape == (8732, 4)
    assert [h * w * a for (h, w), a in zip(MAP_SIZES, [4, 6, 6, 6, 4, 4])] == [5776, 2166, 600, 150, 36, 4]
    assert torch.allclose(boxes.double(), reference_default_boxes(), atol=1e-4)
    # the first box: centre (0.5 / 37.5) · 300 = 4 px, side 0.07 · 300 = 21 px
    assert boxes[0].tolist() == pytest.approx([-6.5, -6.5, 14.5, 14.5], abs=1e-5)
    # the last map's single location: s = 0.87, s' = √(0.87 · 1.05), ratio-2 boxes clipped to the image width
    last = boxes[-4:]
    side = math.sqrt(0.87 * 1.05) * 300
    assert last[1].tolist() == pytest.approx([150 - side / 2, 150 - side / 2, 150 + side / 2, 150 + side / 2], abs=1e-4)
    assert last[2].tolist() == pytest.approx([0.0, 150 - 0.87 / math.sqrt(2) * 150, 300.0,
                                              150 + 0.87 / math.sqrt(2) * 150], abs=1e-4)


def test_default_boxes_without_steps_use_the_papers_centres():
    generator = DefaultBoxGenerator(SSD300_ASPECT_RATIOS, scales=SSD300_SCALES)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    boxes = generator((128, 128), sizes)
    assert torch.allclose(boxes.double(), reference_default_boxes(128, sizes, steps=None), atol=1e-4)


def test_default_scales_from_min_and_max_ratio():
    # s_k = s_min + (s_max - s_min)(k - 1)/(m - 1), with 1.0 appended for the last s'_k
    generator = DefaultBoxGenerator([[2]] * 6, min_ratio=0.2, max_ratio=0.9)
    assert generator.scales == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.0])


# ----------------------------------------------------------------------------- matching, mining, loss


def reference_iou(a, b):
    """[N, M] IoU with plain tensor arithmetic."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def reference_match(gt, anchors, threshold=0.5):
    """torchvision's SSDMatcher: Matcher(0.5, 0.5, no low-quality matches), then each gt's best anchor."""
    iou = reference_iou(gt, anchors)
    best, matches = iou.max(dim=0)
    matches[best < threshold] = -1
    for g in range(gt.shape[0]):
        matches[int(iou[g].argmax())] = g
    return matches


def test_matching_on_a_hand_built_case():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                            [21.0, 21.0, 31.0, 31.0], [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[0.0, 0.0, 11.0, 10.0],  # IoU 0.909 with anchor 0, 0.375 with anchor 1
                       [20.0, 20.0, 30.5, 30.5],  # IoU 0.907 with 2, 0.735 with 3
                       [55.0, 55.0, 70.0, 70.0]])  # best IoU 25/300 with anchor 4: a forced (low-quality) match
    assert ssd_match(gt, anchors).tolist() == [0, -1, 1, 1, 2]
    assert ssd_match(torch.zeros(0, 4), anchors).tolist() == [-1] * 5


def test_matching_equals_torchvisions_on_default_boxes():
    anchors = DefaultBoxGenerator(SSD300_ASPECT_RATIOS, scales=SSD300_SCALES, steps=SSD300_STEPS)((300, 300), MAP_SIZES)
    torch.manual_seed(0)
    xy = torch.rand(12, 2) * 250
    gt = torch.cat([xy, xy + 10 + torch.rand(12, 2) * 140], dim=1).clamp(max=300)
    assert torch.equal(ssd_match(gt, anchors), reference_match(gt, anchors))


def test_hard_negative_mining_equals_a_brute_force_sort():
    torch.manual_seed(0)
    loss = torch.rand(3, 50)
    foreground = torch.zeros(3, 50, dtype=torch.bool)
    foreground[0, [3, 7]] = True  # 2 positives: the 6 hardest negatives
    foreground[1, :15] = True  # 15 positives: 45 wanted, only 35 negatives exist
    mask = hard_negative_mask(loss, foreground, 3.0)
    for n in range(3):
        negatives = [i for i in range(50) if not foreground[n, i]]
        wanted = 3 * int(foreground[n].sum())
        hardest = sorted(negatives, key=lambda i: -loss[n, i].item())[:wanted]
        assert sorted(torch.where(mask[n])[0].tolist()) == sorted(hardest)
    assert not (mask & foreground).any()


def reference_ssd_loss(targets, bbox_regression, cls_logits, anchors, matched_idxs):
    """torchvision's SSD.compute_loss with F.smooth_l1_loss, F.cross_entropy and its rank-based mining."""
    num_foreground, bbox_loss, cls_targets = 0, [], []
    for t, regression, matched in zip(targets, bbox_regression, matched_idxs):
        fg = torch.where(matched >= 0)[0]
        num_foreground += fg.numel()
        gt, an = t["boxes"][matched[fg]], anchors[fg]
        aw, ah = an[:, 2] - an[:, 0], an[:, 3] - an[:, 1]
        ax, ay = an[:, 0] + 0.5 * aw, an[:, 1] + 0.5 * ah
        gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
        encoded = torch.stack([10 * (gx - ax) / aw, 10 * (gy - ay) / ah, 5 * torch.log(gw / aw),
                               5 * torch.log(gh / ah)], dim=1)
        bbox_loss.append(F.smooth_l1_loss(regression[fg], encoded, reduction="sum"))
        classes = torch.zeros(matched.shape[0], dtype=torch.int64)
        classes[fg] = t["labels"][matched[fg]]
        cls_targets.append(classes)
    cls_targets = torch.stack(cls_targets)
    cls_loss = F.cross_entropy(cls_logits.reshape(-1, cls_logits.shape[-1]), cls_targets.view(-1),
                               reduction="none").view(cls_targets.shape)
    foreground = cls_targets > 0
    num_negative = 3.0 * foreground.sum(1, keepdim=True)
    negative_loss = cls_loss.clone()
    negative_loss[foreground] = -float("inf")
    _, idx = negative_loss.sort(1, descending=True)
    background = idx.sort(1)[1] < num_negative
    n = max(1, num_foreground)
    return {"bbox_regression": torch.stack(bbox_loss).sum() / n,
            "classification": (cls_loss[foreground].sum() + cls_loss[background].sum()) / n}


def test_loss_equals_torchvisions_compute_loss():
    torch.manual_seed(0)
    with torch.device("meta"):
        model = canon.create_model("ssd300_vgg16", num_classes=5)
    anchors = DefaultBoxGenerator(SSD300_ASPECT_RATIOS, scales=SSD300_SCALES, steps=SSD300_STEPS)((300, 300), MAP_SIZES)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 120.0, 200.0], [150.0, 40.0, 290.0, 110.0]]),
                "labels": torch.tensor([1, 4])},
               {"boxes": torch.tensor([[30.0, 30.0, 60.0, 80.0]]), "labels": torch.tensor([2])}]
    regression = torch.randn(2, 8732, 4)
    logits = torch.randn(2, 8732, 5) * 2
    matched = [reference_match(t["boxes"], anchors) for t in targets]
    got = model.compute_loss(targets, {"bbox_regression": regression, "cls_logits": logits}, anchors, matched)
    expected = reference_ssd_loss(targets, regression, logits, anchors, matched)
    for key in ("bbox_regression", "classification"):
        assert got[key].item() == pytest.approx(expected[key].item(), rel=1e-5)


# ----------------------------------------------------------------------------- post-processing


def greedy_nms(boxes, scores, threshold):
    order = scores.argsort(descending=True).tolist()
    iou = reference_iou(boxes, boxes).tolist()
    keep = []
    for i in order:
        if all(iou[i][j] <= threshold for j in keep):
            keep.append(i)
    return keep


def reference_postprocess(regression, logits, anchors, image_size, original_size, score_threshold=0.01,
                          nms_threshold=0.45, topk=400, detections=200):
    """torchvision's postprocess_detections for one image, then GeneralizedRCNNTransform.postprocess."""
    scores = F.softmax(logits, dim=-1)
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    dx, dy = regression[:, 0] / 10, regression[:, 1] / 10
    dw = (regression[:, 2] / 5).clamp(max=math.log(1000.0 / 16))
    dh = (regression[:, 3] / 5).clamp(max=math.log(1000.0 / 16))
    cx, cy, w, h = dx * aw + ax, dy * ah + ay, torch.exp(dw) * aw, torch.exp(dh) * ah
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_size[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_size[0])
    out_boxes, out_scores, out_labels = [], [], []
    for label in range(1, scores.shape[1]):
        s = scores[:, label]
        keep = s > score_threshold
        s, b = s[keep], boxes[keep]
        s, idx = s.topk(min(topk, s.numel()))
        out_boxes.append(b[idx])
        out_scores.append(s)
        out_labels += [label] * s.numel()
    out_boxes, out_scores, out_labels = torch.cat(out_boxes), torch.cat(out_scores), torch.tensor(out_labels)
    kept = []
    for label in out_labels.unique().tolist():  # NMS per class, then all survivors by score
        members = torch.where(out_labels == label)[0]
        kept += members[greedy_nms(out_boxes[members], out_scores[members], nms_threshold)].tolist()
    kept = sorted(kept, key=lambda i: -out_scores[i].item())[:detections]
    ratio = torch.tensor([original_size[1] / image_size[1], original_size[0] / image_size[0]] * 2)
    return out_boxes[kept] * ratio, out_scores[kept], out_labels[kept]


@pytest.mark.parametrize("topk, detections", [(400, 200), (5, 12)])
def test_postprocessing_equals_torchvisions(topk, detections):
    torch.manual_seed(0)
    with torch.device("meta"):
        model = canon.create_model("ssd300_vgg16", num_classes=4, topk_candidates=topk, detections_per_image=detections)
    model.eval()
    anchors = DefaultBoxGenerator(SSD300_ASPECT_RATIOS, scales=SSD300_SCALES, steps=SSD300_STEPS)((300, 300), MAP_SIZES)
    regression = torch.randn(2, 8732, 4) * 0.5
    logits = torch.randn(2, 8732, 4) * 3
    originals = [(200, 260), (480, 320)]
    outputs = model.postprocess_detections({"bbox_regression": regression, "cls_logits": logits}, anchors,
                                           [(300, 300)] * 2)
    outputs = model.transform.postprocess(outputs, [(300, 300)] * 2, originals)
    for i, detection in enumerate(outputs):
        boxes, scores, labels = reference_postprocess(regression[i], logits[i], anchors, (300, 300), originals[i],
                                                      topk=topk, detections=detections)
        assert detection["boxes"].shape[0] == detections
        assert torch.equal(detection["labels"], labels)
        assert torch.allclose(detection["scores"], scores)
        assert torch.allclose(detection["boxes"], boxes, atol=1e-3)


# ----------------------------------------------------------------------------- the call contract


def _small_ssd(**kwargs):
    torch.manual_seed(0)
    return canon.create_model("ssd300_resnet18", num_classes=4, image_size=128, **kwargs)


def test_bad_targets_raise_value_errors():
    model = _small_ssd().train()
    images = [torch.rand(3, 64, 80)]
    good = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    with pytest.raises(ValueError, match=r"1\.\.3.*0 is background; num_classes=4"):
        model(images, [{"boxes": good, "labels": torch.tensor([4])}])
    with pytest.raises(ValueError, match=r"\[N, 4\].*x1 < x2"):
        model(images, [{"boxes": torch.rand(2, 3), "labels": torch.tensor([1, 1])}])
    with pytest.raises(ValueError, match="box 0"):
        model(images, [{"boxes": torch.tensor([[5.0, 50.0, 30.0, 40.0]]), "labels": torch.tensor([1])}])


def test_small_ssd_trains_and_batches_images_of_different_sizes():
    model = _small_ssd()
    images = [torch.rand(3, 90, 160), torch.rand(3, 128, 128), torch.rand(3, 50, 40)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
               {"boxes": torch.tensor([[1.0, 1.0, 39.0, 20.0], [5.0, 5.0, 30.0, 45.0]]),
                "labels": torch.tensor([1, 2])}]
    losses = model.train()(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        together = model(images)
        alone = [model([image])[0] for image in images]
    for image, a, b in zip(images, together, alone):
        assert a["boxes"].shape[0] > 0
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.equal(a["labels"], b["labels"])
        height, width = image.shape[1:]
        assert (a["boxes"][:, 0::2] <= width + 1e-4).all() and (a["boxes"][:, 1::2] <= height + 1e-4).all()


def test_ssd300_resnet18_maps_and_default_boxes():
    with torch.device("meta"):
        model = canon.create_model("ssd300_resnet18", num_classes=2)
        features = model.backbone(torch.empty(1, 3, 300, 300))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (2, 2)]
    assert [f.shape[1] for f in features.values()] == model.backbone.out_channels
    anchors = model.anchor_generator((300, 300), [f.shape[-2:] for f in features.values()], device="cpu")
    assert anchors.shape[0] == 8744


# ----------------------------------------------------------------------------- the full VGG model; overfitting (slow)


def reference_ssd300_detections(sd, image, num_classes):
    """torchvision's SSD300-VGG16 in eval mode, written with torch.nn.functional over a state_dict."""
    mean = torch.tensor([0.48235, 0.45882, 0.40784])[:, None, None]
    x = (image - mean) / (1.0 / 255.0)
    x = F.interpolate(x[None], size=(300, 300), mode="bilinear", align_corners=False)

    def conv(x, name, **kw):
        return F.relu(F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], **kw))

    for stage, pool in (((0, 2), dict(kernel_size=2, stride=2)), ((5, 7), dict(kernel_size=2, stride=2)),
                        ((10, 12, 14), dict(kernel_size=2, stride=2, ceil_mode=True))):
        for i in stage:
            x = conv(x, f"backbone.features.{i}", padding=1)
        x = F.max_pool2d(x, **pool)
    for i in (17, 19, 21):
        x = conv(x, f"backbone.features.{i}", padding=1)
    maps = [sd["backbone.scale_weight"].view(1, -1, 1, 1) * x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)]
    x = F.max_pool2d(x, 2, 2)
    for i in (1, 3, 5):
        x = conv(x, f"backbone.extra.0.{i}", padding=1)
    x = F.max_pool2d(x, 3, 1, 1)
    x = conv(x, "backbone.extra.0.7.1", padding=6, dilation=6)
    x = conv(x, "backbone.extra.0.7.3")
    maps.append(x)
    for block, (stride, padding) in zip((1, 2, 3, 4), ((2, 1), (2, 1), (1, 0), (1, 0))):
        x = conv(x, f"backbone.extra.{block}.0")
        x = conv(x, f"backbone.extra.{block}.2", stride=stride, padding=padding)
        maps.append(x)
    regression, logits = [], []
    for i, m in enumerate(maps):
        for head, columns, out in (("regression_head", 4, regression), ("classification_head", num_classes, logits)):
            y = F.conv2d(m, sd[f"head.{head}.module_list.{i}.weight"], sd[f"head.{head}.module_list.{i}.bias"],
                         padding=1)
            n, _, h, w = y.shape
            out.append(y.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns))
    regression, logits = torch.cat(regression, 1)[0], torch.cat(logits, 1)[0]
    anchors = reference_default_boxes().float()
    return reference_postprocess(regression, logits, anchors, (300, 300), tuple(image.shape[-2:]))


def test_ssd300_vgg16_detections_equal_torchvisions_given_the_same_weights():
    torch.manual_seed(0)
    model = canon.create_model("ssd300_vgg16", num_classes=4).eval()
    image = torch.rand(3, 240, 320)
    assert torch.equal(model.backbone.scale_weight, torch.full((512,), 20.0))
    with torch.no_grad():
        # untrained weights saturate the softmax and give exact score ties (whose order torchvision
        # leaves undefined): small positive biases and a smaller head keep every score distinct
        for m in model.backbone.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(0.0, 0.1)
        for m in model.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.03)
        got = model([image])[0]
        boxes, scores, labels = reference_ssd300_detections(model.state_dict(), image, 4)
    assert got["boxes"].shape[0] == 200 and got["scores"].unique().numel() == 200
    assert torch.equal(got["labels"], labels)
    assert torch.allclose(got["scores"], scores, atol=1e-6)
    assert torch.allclose(got["boxes"], boxes, atol=1e-3)


@pytest.mark.slow
def test_ssd300_resnet18_overfits_painted_rectangles():
    torch.manual_seed(0)
    model = canon.create_model("ssd300_resnet18", num_classes=3, image_size=128).train()
    images, targets = painted_rectangles(4)
    fit_full_batch(model, images, targets, 60, lr=1e-3)
    assert ap50_on(model, images, targets) >= 0.9
