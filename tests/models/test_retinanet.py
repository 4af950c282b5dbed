"""RetinaNet against torchvision's layout and arithmetic, and hand-written references on small cases.

References (independent of canon's code):
    - torchvision/models/detection/retinanet.py (``RetinaNetHead``, ``compute_loss``,
      ``postprocess_detections``, ``retinanet_resnet50_fpn``): the ``state_dict`` keys and shapes
      written out below and the 34,014,999 parameters torchvision documents for
      ``retinanet_resnet50_fpn`` (frozen batch norm: its statistics are buffers);
    - its eval-mode forward composed here from tests/models/rcnn_references.py (torchvision's
      transform, anchors, box decoding and per-class NMS written with plain torch) plus the P6/P7
      levels and both subnets computed with ``torch.nn.functional`` from the state_dict; only the
      ResNet body is called as a module (checked in tests/models/test_resnet.py);
    - the focal loss formula −α_t (1 − p_t)^γ log p_t and the per-image normalisation, written
      out here; anchor assignment worked by hand on a few boxes.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import canon
from canon.models.detection.retinanet import RetinaNetHead, match_anchors, retinanet_loss
from canon.ops import BoxCoder, Matcher
from rcnn_references import ref_anchors, ref_batched_nms, ref_box_iou, ref_clip, ref_decode, ref_fpn, ref_matcher, \
    ref_resize_boxes, ref_transform
from test_yolo import ap50_on, fit_full_batch, painted_rectangles  # the shared synthetic overfit set and its COCO AP50

torch.set_num_threads(1)


def frozen_bn(prefix, c):
    return [(f"{prefix}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")]


def torchvision_retinanet_layout(num_classes=91):
    keys = [("backbone.body.conv1.weight", (64, 3, 7, 7))] + frozen_bn("backbone.body.bn1", 64)
    c_in = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for i in range(blocks):
            p = f"backbone.body.layer{stage}.{i}"
            keys += [(f"{p}.conv1.weight", (planes, c_in, 1, 1))] + frozen_bn(f"{p}.bn1", planes)
            keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + frozen_bn(f"{p}.bn2", planes)
            keys += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1))] + frozen_bn(f"{p}.bn3", planes * 4)
            if i == 0:
                keys += [(f"{p}.downsample.0.weight", (planes * 4, c_in, 1, 1))] + frozen_bn(f"{p}.downsample.1",
                                                                                          planes * 4)
            c_in = planes * 4
    for i, c in enumerate((512, 1024, 2048)):  # returned_layers [2, 3, 4]
        keys += [(f"backbone.fpn.inner_blocks.{i}.0.weight", (256, c, 1, 1)),
                 (f"backbone.fpn.inner_blocks.{i}.0.bias", (256,))]
    for i in range(3):
        keys += [(f"backbone.fpn.layer_blocks.{i}.0.weight", (256, 256, 3, 3)),
                 (f"backbone.fpn.layer_blocks.{i}.0.bias", (256,))]
    for name in ("p6", "p7"):
        keys += [(f"backbone.fpn.extra_blocks.{name}.weight", (256, 256, 3, 3)),
                 (f"backbone.fpn.extra_blocks.{name}.bias", (256,))]
    for head, last, outputs in (("classification_head", "cls_logits", 9 * num_classes),
                                ("regression_head", "bbox_reg", 36)):
        for i in range(4):
            keys += [(f"head.{head}.conv.{i}.0.weight", (256, 256, 3, 3)), (f"head.{head}.conv.{i}.0.bias", (256,))]
        keys += [(f"head.{head}.{last}.weight", (outputs, 256, 3, 3)), (f"head.{head}.{last}.bias", (outputs,))]
    return keys


@pytest.mark.parametrize("num_classes", [91, 2])
def test_retinanet_resnet50_fpn_layout_and_parameter_count_equal_torchvision(num_classes):
    with torch.device("meta"):
        model = canon.create_model("retinanet_resnet50_fpn", num_classes=num_classes)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == torchvision_retinanet_layout(num_classes)
    if num_classes == 91:
        assert sum(p.numel() for p in model.parameters()) == 34_014_999


def test_defaults_are_torchvisions():
    with torch.device("meta"):
        model = canon.create_model("retinanet_resnet50_fpn")
    assert model.anchor_generator.sizes == ((32, 40, 50), (64, 80, 101), (128, 161, 203), (256, 322, 406),
                                            (512, 645, 812))
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    assert (model.matcher.high_threshold, model.matcher.low_threshold, model.matcher.allow_low_quality_matches) == \
        (0.5, 0.4, True)
    assert (model.score_threshold, model.nms_threshold, model.detections_per_image, model.topk_candidates) == \
        (0.05, 0.5, 300, 1000)
    assert (model.focal_alpha, model.focal_gamma) == (0.25, 2.0)
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333


def test_prior_probability_bias_and_head_initialisation():
    torch.manual_seed(0)
    head = RetinaNetHead(256, 9, 5)
    assert torch.allclose(head.classification_head.cls_logits.bias, torch.full((45,), -math.log(99.0)))
    assert torch.sigmoid(head.classification_head.cls_logits.bias[0]).item() == pytest.approx(0.01)
    assert torch.equal(head.regression_head.bbox_reg.bias, torch.zeros(36))
    assert head.classification_head.cls_logits.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_torchvisions_version_1_head_keys_load():
    torch.manual_seed(0)
    head = RetinaNetHead(8, 9, 3)
    old = {}
    for key, value in head.state_dict().items():  # conv.{i}.0.weight -> conv.{2i}.weight
        parts = key.split(".")
        if parts[1] == "conv":
            key = ".".join([parts[0], "conv", str(2 * int(parts[2])), parts[4]])
        old[key] = value.clone() + 1
    old = type(head.state_dict())(old)  # an OrderedDict without version metadata: a v1 file
    fresh = RetinaNetHead(8, 9, 3)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.classification_head.conv[2][0].weight, head.classification_head.conv[2][0].weight + 1)


# ----------------------------------------------------------------------------- assignment


def test_anchor_assignment_on_a_hand_built_case():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],  # IoU with gt 0: 100/100 = 1.0 -> foreground
                            [0.0, 0.0, 10.0, 12.0],  # 100/120 = 0.833 -> foreground
                            [0.0, 0.0, 10.0, 22.0],  # 100/220 = 0.4545 -> ignored (between 0.4 and 0.5)
                            [0.0, 0.0, 10.0, 30.0],  # 100/300 = 0.333 -> background
                            [50.0, 50.0, 60.0, 60.0],  # IoU with gt 1: 25/175 = 0.143, its best -> low-quality fg
                            [100.0, 100.0, 110.0, 110.0]])  # overlaps nothing -> background
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [55.0, 55.0, 65.0, 65.0]])
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    assert match_anchors(gt, anchors, matcher).tolist() == [0, 0, -2, -1, 1, -1]
    without = Matcher(0.5, 0.4, allow_low_quality_matches=False)
    assert match_anchors(gt, anchors, without).tolist() == [0, 0, -2, -1, -1, -1]
    assert match_anchors(torch.zeros(0, 4), anchors, matcher).tolist() == [-1] * 6


def test_anchor_assignment_equals_torchvisions_matcher_on_real_anchors():
    torch.manual_seed(0)
    sizes = ((32, 40, 50), (64, 80, 101), (128, 161, 203), (256, 322, 406), (512, 645, 812))
    anchors = ref_anchors((256, 320), [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)], sizes, [(0.5, 1.0, 2.0)] * 5)
    xy = torch.rand(10, 2) * torch.tensor([280.0, 220.0])
    gt = torch.cat([xy, xy + 8 + torch.rand(10, 2) * 150], dim=1)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)  # the model's (test_defaults_are_torchvisions)
    assert torch.equal(match_anchors(gt, anchors, matcher), ref_matcher(ref_box_iou(gt, anchors), 0.5, 0.4, True))


# ----------------------------------------------------------------------------- loss normalisation


def reference_loss(cls_logits, regression, anchors, targets, matched, alpha=0.25, gamma=2.0):
    """torchvision's compute_loss with the focal loss written from the paper."""
    classification, box = 0.0, 0.0
    for t, logits, deltas, m in zip(targets, cls_logits, regression, matched):
        fg = m >= 0
        n_fg = max(1, int(fg.sum()))
        y = torch.zeros_like(logits)
        for a in torch.where(fg)[0].tolist():
            y[a, int(t["labels"][m[a]])] = 1.0
        p = torch.sigmoid(logits.double())
        p_t = torch.where(y > 0, p, 1 - p)
        alpha_t = torch.where(y > 0, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
        focal = -alpha_t * (1 - p_t) ** gamma * torch.log(p_t)  # FL(p_t)
        valid = m != -2
        classification += focal[valid].sum().item() / n_fg
        an, gt = anchors[fg].double(), t["boxes"][m[fg]].double()
        aw, ah = an[:, 2] - an[:, 0], an[:, 3] - an[:, 1]
        gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        wanted = torch.stack([(gt[:, 0] + 0.5 * gw - an[:, 0] - 0.5 * aw) / aw,
                              (gt[:, 1] + 0.5 * gh - an[:, 1] - 0.5 * ah) / ah,
                              torch.log(gw / aw), torch.log(gh / ah)], dim=1)
        box += (deltas[fg].double() - wanted).abs().sum().item() / n_fg
    return classification / len(targets), box / len(targets)


def test_loss_is_normalised_by_each_images_foreground_count():
    torch.manual_seed(0)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 22.0],
                            [0.0, 0.0, 10.0, 30.0], [50.0, 50.0, 60.0, 60.0], [100.0, 100.0, 110.0, 110.0],
                            [52.0, 52.0, 64.0, 66.0]])
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [55.0, 55.0, 65.0, 65.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[1.0, 1.0, 9.0, 11.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # normaliser 1, not 0
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    matched = [match_anchors(t["boxes"], anchors, matcher) for t in targets]
    assert [int((m >= 0).sum()) for m in matched] == [3, 2, 0] and (matched[0] == -2).any()
    cls_logits = torch.randn(3, 7, 4)
    regression = torch.randn(3, 7, 4) * 0.3
    got = retinanet_loss(cls_logits, regression, anchors, targets, matched, BoxCoder((1.0, 1.0, 1.0, 1.0)))
    classification, box = reference_loss(cls_logits, regression, anchors, targets, matched)
    assert got["classification"].item() == pytest.approx(classification, rel=1e-5)
    assert got["bbox_regression"].item() == pytest.approx(box, rel=1e-5)


# ----------------------------------------------------------------------------- same detections as torchvision


def reference_retinanet_detect(model, images, min_size, max_size, score_threshold=0.05, nms_threshold=0.5,
                               topk=1000, detections=300):
    state = model.state_dict()
    batch, sizes = ref_transform(images, min_size, max_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    levels = ref_fpn(list(model.backbone.body(batch).values()), state, extra=None)  # P3, P4, P5
    p6 = F.conv2d(levels[-1], state["backbone.fpn.extra_blocks.p6.weight"], state["backbone.fpn.extra_blocks.p6.bias"],
                  stride=2, padding=1)  # from P5 (in_channels == out_channels)
    p7 = F.conv2d(F.relu(p6), state["backbone.fpn.extra_blocks.p7.weight"], state["backbone.fpn.extra_blocks.p7.bias"],
                  stride=2, padding=1)
    levels += [p6, p7]

    def subnet(x, head, last, columns):
        for i in range(4):
            x = F.relu(F.conv2d(x, state[f"head.{head}.conv.{i}.0.weight"], state[f"head.{head}.conv.{i}.0.bias"],
                                padding=1))
        y = F.conv2d(x, state[f"head.{head}.{last}.weight"], state[f"head.{head}.{last}.bias"], padding=1)
        n, _, h, w = y.shape
        return y.view(n, -1, columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, columns)

    num_classes = model.num_classes
    logits = [subnet(x, "classification_head", "cls_logits", num_classes) for x in levels]
    deltas = [subnet(x, "regression_head", "bbox_reg", 4) for x in levels]
    sizes_per_level = ((32, 40, 50), (64, 80, 101), (128, 161, 203), (256, 322, 406), (512, 645, 812))
    results = []
    for i, (image, size) in enumerate(zip(images, sizes)):
        boxes_all, scores_all, labels_all = [], [], []
        for level, (lg, dl) in enumerate(zip(logits, deltas)):
            anchors = ref_anchors(tuple(batch.shape[-2:]), [tuple(levels[level].shape[-2:])], [sizes_per_level[level]],
                                  [(0.5, 1.0, 2.0)])
            scores = torch.sigmoid(lg[i]).flatten()
            keep = scores > score_threshold
            scores, idxs = scores[keep], torch.where(keep)[0]
            scores, order = scores.topk(min(topk, idxs.numel()))
            idxs = idxs[order]
            anchor_idxs = torch.div(idxs, num_classes, rounding_mode="floor")
            boxes = ref_clip(ref_decode(dl[i][anchor_idxs], anchors[anchor_idxs], (1.0, 1.0, 1.0, 1.0))[:, 0], size)
            boxes_all.append(boxes)
            scores_all.append(scores)
            labels_all.append(idxs % num_classes)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = ref_batched_nms(boxes, scores, labels, nms_threshold)[:detections]
        results.append({"boxes": ref_resize_boxes(boxes[keep], size, tuple(image.shape[-2:])), "scores": scores[keep],
                        "labels": labels[keep]})
    return results


def test_retinanet_resnet50_fpn_detections_equal_torchvisions_given_the_same_weights():
    torch.manual_seed(0)
    model = canon.create_model("retinanet_resnet50_fpn", num_classes=4, min_size=160, max_size=200).eval()
    images = [torch.rand(3, 150, 200), torch.rand(3, 170, 120)]
    with torch.no_grad():
        # untrained weights give saturated scores, hence exact ties whose order torchvision leaves
        # undefined: rescale the last layers so logits spread about ±1 and box offsets about ±0.3
        batch, _ = model.transform(images)
        outputs = model.head(list(model.backbone(batch.tensors).values()))
        model.head.classification_head.cls_logits.weight.div_(outputs["cls_logits"].std())
        model.head.classification_head.cls_logits.bias.uniform_(-1.0, 1.0)
        model.head.regression_head.bbox_reg.weight.mul_(0.3 / outputs["bbox_regression"].std())
        got = model(images)
        expected = reference_retinanet_detect(model, images, 160, 200)
    for g, e in zip(got, expected):
        assert g["boxes"].shape[0] == 300 and g["scores"].unique().numel() == 300
        assert torch.equal(g["labels"], e["labels"])
        assert torch.allclose(g["scores"], e["scores"], atol=1e-6)
        assert torch.allclose(g["boxes"], e["boxes"], atol=1e-3)


# ----------------------------------------------------------------------------- the call contract


def _small_retinanet(**kwargs):
    torch.manual_seed(0)
    return canon.create_model("retinanet_resnet18_fpn", num_classes=4, min_size=128, max_size=128, **kwargs)


def test_bad_targets_raise_value_errors():
    model = _small_retinanet().train()
    images = [torch.rand(3, 64, 80)]
    good = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    with pytest.raises(ValueError, match=r"1\.\.3.*0 is background; num_classes=4"):
        model(images, [{"boxes": good, "labels": torch.tensor([7])}])
    with pytest.raises(ValueError, match=r"\[N, 4\].*x1 < x2"):
        model(images, [{"boxes": torch.rand(4), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="targets are required"):
        model(images)


def test_small_retinanet_trains_and_batches_images_of_different_sizes():
    model = _small_retinanet(score_threshold=0.0)
    images = [torch.rand(3, 90, 160), torch.rand(3, 128, 128), torch.rand(3, 50, 40)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
               {"boxes": torch.tensor([[1.0, 1.0, 39.0, 20.0]]), "labels": torch.tensor([1])}]
    losses = model.train()(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        together = model(images)
        alone = [model([image])[0] for image in images]
    for image, a in zip(images, together):
        height, width = image.shape[1:]
        assert a["boxes"].shape[0] > 0 and a["labels"].max() <= 3
        assert (a["boxes"][:, 0::2] <= width + 1e-3).all() and (a["boxes"][:, 1::2] <= height + 1e-3).all()
    # the 128 × 128 image is neither resized nor padded in the batch, so it must come out as alone
    # (the others are padded to 128 × 128 in the batch and to a multiple of 32 alone, as in torchvision)
    assert torch.allclose(together[1]["boxes"], alone[1]["boxes"], atol=1e-4)
    assert torch.equal(together[1]["labels"], alone[1]["labels"])
    assert (together[2]["boxes"][:, 2] > 20).any()  # scaled back from the 102-px-wide resized frame to 40 px


@pytest.mark.slow
def test_retinanet_resnet18_fpn_overfits_painted_rectangles():
    torch.manual_seed(0)
    # 2 images of 128 px, resized to 96 px inside the model (its four 256-channel subnets on P3
    # dominate the CPU time); AP50 >= 0.9 from about step 40 in our runs
    model = canon.create_model("retinanet_resnet18_fpn", num_classes=3, min_size=96, max_size=96).train()
    images, targets = painted_rectangles(2)
    fit_full_batch(model, images, targets, 60, lr=3e-4)
    assert ap50_on(model, images, targets) >= 0.9
