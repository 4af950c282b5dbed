"""Faster / Mask / Keypoint R-CNN against torchvision's layout, its post-processing and its target assignment.

References (independent of canon's code):
    - the state_dict keys and shapes written out below from torchvision's source
      (models/detection/{backbone_utils,faster_rcnn,mask_rcnn,keypoint_rcnn,rpn}.py, ops/misc.py's
      FrozenBatchNorm2d buffers) and the parameter counts torchvision's weight metadata documents
      (``num_params``: 41,755,286; 44,401,393; 59,137,258);
    - torchvision's version-1 key names (``rpn.head.conv.weight``, ``mask_head.mask_fcn{i}.*``, FPN
      ``inner_blocks.{i}.weight``) and its ``_load_from_state_dict`` remaps;
    - rcnn_references.py: torchvision's transform, anchors, Matcher, filter_proposals,
      postprocess_detections, LevelMapper/RoIAlign, mask pasting and heatmap decoding, transcribed
      with plain torch, and ``reference_detect`` composing them with the FPN and heads computed by
      torch.nn.functional from the same state_dict;
    - hand-written assignment cases (IoUs chosen by construction) and the loss formulas with
      torch's own ``F.binary_cross_entropy_with_logits`` / ``F.smooth_l1_loss`` / ``F.cross_entropy``;
    - the overfit check (slow) scores detections with canon.metrics.coco_evaluate (pycocotools-exact).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import canon
from canon.models.detection.faster_rcnn import FasterRCNN, KeypointRCNN, MaskRCNN
from canon.models.detection.roi_heads import (FastRCNNPredictor, RoIHeads, TwoMLPHead, heatmaps_to_keypoints,
                                              keypoints_to_heatmap, maskrcnn_loss)
from canon.models.detection.rpn import RegionProposalNetwork, RPNHead, fpn_anchor_generator
from canon.models.detection.transform import GeneralizedRCNNTransform, ImageList
from canon.ops import MultiScaleRoIAlign
from rcnn_references import (ref_anchors, ref_box_iou, ref_decode, ref_encode, ref_filter_proposals,
                             ref_matcher, ref_paste_masks_in_image, ref_postprocess_detections, ref_resize_boxes,
                             ref_resize_keypoints, ref_transform, reference_detect)

R50_MODELS = {"fasterrcnn_resnet50_fpn": 41_755_286, "maskrcnn_resnet50_fpn": 44_401_393,
              "keypointrcnn_resnet50_fpn": 59_137_258}


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def r18():
    """maskrcnn_resnet18_fpn at its defaults: the RPN and RoI heads are those of every variant."""
    return canon.create_model("maskrcnn_resnet18_fpn")


@pytest.fixture(scope="module")
def r50_models():
    """The three torchvision-compatible detectors at their default (torchvision) configuration, seeded."""
    torch.manual_seed(0)
    return {name: canon.create_model(name) for name in R50_MODELS}


# ----------------------------------------------------------------------------- layout


def _frozen_bn(prefix, c):
    return [(f"{prefix}.{b}", (c,)) for b in ("weight", "bias", "running_mean", "running_var")]


def torchvision_rcnn_layout(kind: str, num_classes: int, num_keypoints: int = 17):
    """torchvision's state_dict for {faster,mask,keypoint}rcnn_resnet50_fpn with FrozenBatchNorm2d."""
    p = "backbone.body"
    keys = [(f"{p}.conv1.weight", (64, 3, 7, 7))] + _frozen_bn(f"{p}.bn1", 64)
    c_in = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for i in range(blocks):
            b = f"{p}.layer{stage}.{i}"
            keys += [(f"{b}.conv1.weight", (planes, c_in, 1, 1))] + _frozen_bn(f"{b}.bn1", planes)
            keys += [(f"{b}.conv2.weight", (planes, planes, 3, 3))] + _frozen_bn(f"{b}.bn2", planes)
            keys += [(f"{b}.conv3.weight", (planes * 4, planes, 1, 1))] + _frozen_bn(f"{b}.bn3", planes * 4)
            if i == 0:
                keys += [(f"{b}.downsample.0.weight", (planes * 4, c_in, 1, 1))] + _frozen_bn(f"{b}.downsample.1",
                                                                                              planes * 4)
            c_in = planes * 4
    for i, c in enumerate((256, 512, 1024, 2048)):
        keys += [(f"backbone.fpn.inner_blocks.{i}.0.weight", (256, c, 1, 1)), (f"backbone.fpn.inner_blocks.{i}.0.bias",
                                                                                (256,))]
    for i in range(4):
        keys += [(f"backbone.fpn.layer_blocks.{i}.0.weight", (256, 256, 3, 3)),
                 (f"backbone.fpn.layer_blocks.{i}.0.bias", (256,))]
    keys += [("rpn.head.conv.0.0.weight", (256, 256, 3, 3)), ("rpn.head.conv.0.0.bias", (256,)),
             ("rpn.head.cls_logits.weight", (3, 256, 1, 1)), ("rpn.head.cls_logits.bias", (3,)),
             ("rpn.head.bbox_pred.weight", (12, 256, 1, 1)), ("rpn.head.bbox_pred.bias", (12,)),
             ("roi_heads.box_head.fc6.weight", (1024, 256 * 7 * 7)), ("roi_heads.box_head.fc6.bias", (1024,)),
             ("roi_heads.box_head.fc7.weight", (1024, 1024)), ("roi_heads.box_head.fc7.bias", (1024,)),
             ("roi_heads.box_predictor.cls_score.weight", (num_classes, 1024)),
             ("roi_heads.box_predictor.cls_score.bias", (num_classes,)),
             ("roi_heads.box_predictor.bbox_pred.weight", (num_classes * 4, 1024)),
             ("roi_heads.box_predictor.bbox_pred.bias", (num_classes * 4,))]
    if kind == "mask":
        for i in range(4):
            keys += [(f"roi_heads.mask_head.{i}.0.weight", (256, 256, 3, 3)),
                     (f"roi_heads.mask_head.{i}.0.bias", (256,))]
        keys += [("roi_heads.mask_predictor.conv5_mask.weight", (256, 256, 2, 2)),
                 ("roi_heads.mask_predictor.conv5_mask.bias", (256,)),
                 ("roi_heads.mask_predictor.mask_fcn_logits.weight", (num_classes, 256, 1, 1)),
                 ("roi_heads.mask_predictor.mask_fcn_logits.bias", (num_classes,))]
    if kind == "keypoint":
        c = 256
        for i in range(8):
            keys += [(f"roi_heads.keypoint_head.{2 * i}.weight", (512, c, 3, 3)),
                     (f"roi_heads.keypoint_head.{2 * i}.bias", (512,))]
            c = 512
        keys += [("roi_heads.keypoint_predictor.kps_score_lowres.weight", (512, num_keypoints, 4, 4)),
                 ("roi_heads.keypoint_predictor.kps_score_lowres.bias", (num_keypoints,))]
    return keys


@pytest.mark.parametrize("name, kind, num_classes", [("fasterrcnn_resnet50_fpn", "box", 91),
                                                      ("maskrcnn_resnet50_fpn", "mask", 91),
                                                      ("keypointrcnn_resnet50_fpn", "keypoint", 2)])
def test_layout_and_parameter_count_equal_torchvision(r50_models, name, kind, num_classes):
    model = r50_models[name]
    assert count_params(model) == R50_MODELS[name]
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == torchvision_rcnn_layout(kind, num_classes)
    info = canon.model_info(name)
    assert (info.task, info.compatible_with, info.num_classes) == ("detection", "torchvision", num_classes)
    # torchvision's defaults for its COCO checkpoints: frozen BN, layer2..layer4 trainable
    body = dict(model.backbone.body.named_parameters())
    assert not body["conv1.weight"].requires_grad and not body["layer1.0.conv1.weight"].requires_grad
    assert body["layer2.0.conv1.weight"].requires_grad


def test_small_variants_are_registered_and_trainable_from_scratch():
    for name in ("fasterrcnn_resnet18_fpn", "maskrcnn_resnet18_fpn", "keypointrcnn_resnet18_fpn"):
        info = canon.model_info(name)
        assert info.task == "detection" and info.compatible_with is None
    model = canon.create_model("fasterrcnn_resnet18_fpn", num_classes=3, min_size=200, max_size=300,
                               rpn_pre_nms_top_n_test=25, rpn_post_nms_top_n_train=60, rpn_score_threshold=0.3,
                               rpn_batch_size_per_image=64, box_batch_size_per_image=32, box_score_threshold=0.2,
                               box_detections_per_image=7, box_regression_weights=(1.0, 2.0, 3.0, 4.0))
    assert (model.transform.min_size, model.transform.max_size) == ((200,), 300)
    assert (model.rpn.pre_nms_top_n_test, model.rpn.post_nms_top_n_train, model.rpn.score_threshold) == (25, 60, 0.3)
    assert (model.rpn.sampler.batch_size_per_image, model.roi_heads.sampler.batch_size_per_image) == (64, 32)
    assert (model.roi_heads.score_threshold, model.roi_heads.detections_per_image) == (0.2, 7)
    assert model.roi_heads.box_coder.weights == (1.0, 2.0, 3.0, 4.0)
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    with pytest.raises(TypeError, match="min_size"):
        canon.create_model("fasterrcnn_resnet18_fpn", min_sise=200)


def test_version_1_checkpoint_names_load(r50_models):
    """A state_dict written in torchvision's released v1 names (no version metadata) loads strictly."""
    model = r50_models["maskrcnn_resnet50_fpn"]
    state = model.state_dict()
    old = {}
    for key, value in state.items():
        new_key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            new_key = new_key.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
            new_key = new_key.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.")
            new_key = new_key.replace(f"fpn.layer_blocks.{i}.0.", f"fpn.layer_blocks.{i}.")
        old[new_key] = value.clone() + 1.0  # different values, so a silent non-load would show
    assert {"rpn.head.conv.weight", "roi_heads.mask_head.mask_fcn1.weight", "backbone.fpn.inner_blocks.0.weight",
            "backbone.fpn.layer_blocks.3.bias"} <= set(old)
    assert len(old) == len(state)
    fresh = canon.create_model("maskrcnn_resnet50_fpn")
    fresh.load_state_dict(old, strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key] + 1.0), key


# ----------------------------------------------------------------------------- transform


def test_transform_resizes_normalises_and_pads_as_torchvision():
    g = torch.Generator().manual_seed(1)
    transform = GeneralizedRCNNTransform(80, 120).eval()  # FasterRCNN(min_size=80, max_size=120)'s transform
    images = [torch.rand(3, 50, 70, generator=g), torch.rand(3, 100, 40, generator=g)]
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([1]),
                "masks": (torch.rand(1, 50, 70, generator=g) > 0.5).to(torch.uint8),
                "keypoints": torch.tensor([[[5.0, 6.0, 2.0], [60.0, 45.0, 0.0]]])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    batch, sizes = transform(images, targets)
    want_batch, want_sizes = ref_transform(images, 80, 120, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # 50x70: scale min(80/50, 120/70) = 1.6 and 100x40: min(2.0, 1.2) = 1.2, but in float32 as torchvision
    # computes them (80.0 / tensor(50.) multiplies by a rounded reciprocal: 1.5999999), and floor(50 * 1.5999999)
    # is 79: torchvision's images come out one pixel short here, and so do ours
    assert batch.image_sizes == want_sizes
    assert want_sizes == [(79, 111), (119, 47)]
    assert tuple(batch.tensors.shape) == (2, 3, 128, 128)  # padded to multiples of 32
    torch.testing.assert_close(batch.tensors, want_batch, rtol=0, atol=0)
    resized = sizes[0]
    torch.testing.assert_close(resized["boxes"], ref_resize_boxes(targets[0]["boxes"], (50, 70), (79, 111)))
    torch.testing.assert_close(resized["keypoints"], ref_resize_keypoints(targets[0]["keypoints"], (50, 70), (79, 111)))
    scale = torch.min(80.0 / torch.tensor(50.0), 120.0 / torch.tensor(70.0)).item()
    want_masks = F.interpolate(targets[0]["masks"][:, None].float(), scale_factor=scale,
                               recompute_scale_factor=True)[:, 0].byte()
    assert resized["masks"].shape == (1, 79, 111) and torch.equal(resized["masks"], want_masks)
    assert targets[0]["boxes"][0, 2] == 30.0  # the caller's targets are not modified
    # back to the input sizes
    detections = [{"boxes": torch.tensor([[8.0, 16.0, 80.0, 64.0]]), "masks": torch.rand(1, 1, 28, 28, generator=g),
                   "keypoints": torch.tensor([[[16.0, 32.0, 1.0]]])},
                  {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 1, 28, 28), "keypoints": torch.zeros(0, 1, 3)}]
    back = transform.postprocess(detections, batch.image_sizes, [(50, 70), (100, 40)])
    want_boxes = ref_resize_boxes(detections[0]["boxes"], (79, 111), (50, 70))
    torch.testing.assert_close(back[0]["boxes"], want_boxes)
    torch.testing.assert_close(back[0]["masks"], ref_paste_masks_in_image(detections[0]["masks"], want_boxes, (50, 70)))
    assert back[0]["masks"].shape == (1, 1, 50, 70) and back[1]["masks"].shape == (0, 1, 100, 40)
    torch.testing.assert_close(back[0]["keypoints"], torch.tensor([[[16.0 * 70 / 111, 32.0 * 50 / 79, 1.0]]]))


def test_multi_scale_training_picks_from_min_size_and_eval_uses_the_last():
    transform = GeneralizedRCNNTransform((64, 96, 128), 1000)
    image = torch.rand(3, 40, 50)
    transform.train()
    seen = {min(transform([image])[0].image_sizes[0]) for _ in range(30)}
    assert seen == {64, 96, 128}
    transform.eval()
    assert transform([image])[0].image_sizes == [(128, 160)]
    # Keypoint R-CNN's default is torchvision's (640, ..., 800)
    assert canon.create_model("keypointrcnn_resnet50_fpn", backbone_name="resnet18").transform.min_size == \
        (640, 672, 704, 736, 768, 800)


# ----------------------------------------------------------------------------- RPN


def test_anchors_match_torchvision_anchor_generator(r18):
    model = r18
    feature_sizes = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    got = torch.cat(model.rpn.anchor_generator((128, 160), feature_sizes))
    want = ref_anchors((128, 160), feature_sizes, [(32,), (64,), (128,), (256,), (512,)], [(0.5, 1.0, 2.0)] * 5)
    assert torch.equal(got, want)
    assert model.rpn.head.cls_logits.out_channels == 3 and model.rpn.head.bbox_pred.out_channels == 12


def _random_proposals(g, num_images, per_level, extent=100.0):
    total = sum(per_level)
    xy = torch.rand(num_images, total, 2, generator=g) * extent - 10
    wh = torch.rand(num_images, total, 2, generator=g) * 40
    wh[:, ::17] = 1e-4  # some boxes too small to keep
    return torch.cat([xy, xy + wh], dim=2), torch.randn(num_images, total, generator=g)


@pytest.mark.parametrize("training", [False, True])
def test_filter_proposals_per_level_top_n_then_nms_then_post_top_n(training):
    g = torch.Generator().manual_seed(2)
    rpn = RegionProposalNetwork(fpn_anchor_generator(), RPNHead(8, 3), pre_nms_top_n_train=40, pre_nms_top_n_test=25,
                                post_nms_top_n_train=60, post_nms_top_n_test=30, score_threshold=0.3)
    rpn.train(training)
    per_level = [120, 60, 30, 9]
    proposals, objectness = _random_proposals(g, 2, per_level)
    sizes = [(90, 80), (70, 95)]
    boxes, scores = rpn.filter_proposals(proposals, objectness, sizes, per_level)
    pre, post = (40, 60) if training else (25, 30)
    want_boxes, want_scores = ref_filter_proposals(proposals, objectness, sizes, per_level, pre, post, 0.7,
                                                   score_threshold=0.3)
    for b, s, wb, ws in zip(boxes, scores, want_boxes, want_scores):
        assert len(b) == len(wb) <= post
        torch.testing.assert_close(b, wb)
        torch.testing.assert_close(s, ws)
    assert max(len(b) for b in boxes) == post  # the post-NMS cap binds on at least one image


def test_rpn_defaults_are_torchvision(r18):
    rpn = r18.rpn
    assert (rpn.pre_nms_top_n_train, rpn.pre_nms_top_n_test, rpn.post_nms_top_n_train, rpn.post_nms_top_n_test) == \
        (2000, 1000, 2000, 1000)
    assert (rpn.nms_threshold, rpn.score_threshold, rpn.min_box_size) == (0.7, 0.0, 1e-3)
    assert (rpn.matcher.high_threshold, rpn.matcher.low_threshold, rpn.matcher.allow_low_quality_matches) == \
        (0.7, 0.3, True)
    assert (rpn.sampler.batch_size_per_image, rpn.sampler.positive_fraction) == (256, 0.5)
    assert rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)


def test_rpn_anchor_labels_on_hand_written_overlaps(r18):
    rpn = r18.rpn
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [48.0, 48.0, 70.0, 70.0]])
    # IoU with gt 0 is h / 10 for [0, 0, 10, h]
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # 1.0   positive
                            [0.0, 0.0, 10.0, 7.5],     # 0.75  positive
                            [0.0, 0.0, 10.0, 6.9],     # 0.69  ignored
                            [0.0, 0.0, 10.0, 3.1],     # 0.31  ignored
                            [0.0, 0.0, 10.0, 2.9],     # 0.29  negative
                            [50.0, 50.0, 60.0, 60.0],  # 100 / 484 = 0.21 with gt 1, its best: positive (low quality)
                            [45.0, 45.0, 58.0, 58.0],  # 100 / 553 = 0.18 with gt 1: negative
                            [80.0, 0.0, 90.0, 10.0]])  # 0: negative
    labels, matched = rpn.assign_targets_to_anchors(anchors, [{"boxes": gt}])
    assert labels[0].tolist() == [1, 1, -1, -1, 0, 1, 0, 0]
    assert torch.equal(matched[0][[0, 1, 5]], gt[[0, 0, 1]])
    want = ref_matcher(ref_box_iou(gt, anchors), 0.7, 0.3, True)
    assert torch.equal((want >= 0).float() - (want == -2).float(), labels[0])
    # an image without objects: every anchor negative
    labels, _ = rpn.assign_targets_to_anchors(anchors, [{"boxes": torch.zeros(0, 4)}])
    assert labels[0].tolist() == [0] * 8


def test_balanced_sampling_counts(r18):
    rpn_sampler, roi_sampler = r18.rpn.sampler, r18.roi_heads.sampler
    for positives, want_rpn, want_roi in ((1000, (128, 128), (128, 384)), (10, (10, 246), (10, 502))):
        labels = torch.cat([torch.ones(positives), torch.zeros(5000), -torch.ones(100)])
        for sampler, (want_pos, want_neg) in ((rpn_sampler, want_rpn), (roi_sampler, want_roi)):
            pos, neg = sampler(labels)
            assert (int(pos.sum()), int(neg.sum())) == (want_pos, want_neg)
            assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())


def test_rpn_losses_against_the_formula():
    """With every labelled anchor sampled, the RPN loss is BCE over them and smooth L1 (beta 1/9) / #sampled."""
    g = torch.Generator().manual_seed(3)
    rpn = RegionProposalNetwork(fpn_anchor_generator(), RPNHead(8, 3), batch_size_per_image=10_000)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 7.5], [0.0, 0.0, 10.0, 6.9],
                            [0.0, 0.0, 10.0, 2.9], [50.0, 50.0, 60.0, 60.0], [80.0, 0.0, 90.0, 10.0]])
    gt = torch.tensor([[1.0, 0.0, 11.0, 9.0], [48.0, 48.0, 70.0, 70.0]])
    labels, matched = rpn.assign_targets_to_anchors(anchors, [{"boxes": gt}])
    targets = [rpn.box_coder.encode(matched[0], anchors)]
    logits, deltas = torch.randn(1, 6, generator=g), torch.randn(1, 6, 4, generator=g)
    loss_objectness, loss_box = rpn.compute_loss(logits, deltas, labels, targets)
    lab = labels[0]
    sampled = lab >= 0
    positive = lab == 1
    want_targets = ref_encode(matched[0], anchors, (1.0, 1.0, 1.0, 1.0))
    want_obj = F.binary_cross_entropy_with_logits(logits[0][sampled], lab[sampled])
    want_box = F.smooth_l1_loss(deltas[0][positive], want_targets[positive], beta=1 / 9,
                                reduction="sum") / sampled.sum()
    torch.testing.assert_close(loss_objectness, want_obj)
    torch.testing.assert_close(loss_box, want_box)


# ----------------------------------------------------------------------------- RoI heads


def test_roi_heads_defaults_are_torchvision(r18):
    heads = r18.roi_heads
    assert (heads.matcher.high_threshold, heads.matcher.low_threshold, heads.matcher.allow_low_quality_matches) == \
        (0.5, 0.5, False)
    assert (heads.sampler.batch_size_per_image, heads.sampler.positive_fraction) == (512, 0.25)
    assert heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert heads.box_coder.scale_clamp == pytest.approx(math.log(1000 / 16))
    assert (heads.score_threshold, heads.nms_threshold, heads.detections_per_image, heads.min_box_size) == \
        (0.05, 0.5, 100, 1e-2)
    assert heads.box_roi_pool.output_size == (7, 7) and heads.box_roi_pool.sampling_ratio == 2
    assert heads.mask_roi_pool.output_size == (14, 14) and heads.feature_names == ("0", "1", "2", "3")


def test_roi_assignment_on_hand_written_overlaps():
    heads = RoIHeads(MultiScaleRoIAlign(7, 2), TwoMLPHead(8 * 49, 16), FastRCNNPredictor(16, 4),
                     batch_size_per_image=10_000)
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([3])}
    proposals = torch.tensor([[0.0, 0.0, 10.0, 5.0],     # IoU 0.5: foreground (>= 0.5)
                              [0.0, 0.0, 10.0, 4.9],     # 0.49: background
                              [20.0, 20.0, 30.0, 30.0]])  # 0: background
    rois, matched, labels, targets = heads.select_training_samples([proposals], [gt])
    assert torch.equal(rois[0], torch.cat([proposals, gt["boxes"]]))  # the ground truth is a proposal too
    assert labels[0].tolist() == [3, 0, 0, 3] and matched[0].tolist() == [0, 0, 0, 0]
    # t = (10 (G_x - P_x) / P_w, 10 (G_y - P_y) / P_h, 5 ln(G_w / P_w), 5 ln(G_h / P_h))
    torch.testing.assert_close(targets[0][0], torch.tensor([0.0, 10 * 2.5 / 5, 0.0, 5 * math.log(2.0)]))
    torch.testing.assert_close(targets[0][3], torch.zeros(4))
    # background only: every RoI is background and the dummy box gives finite targets never used
    rois, _, labels, targets = heads.select_training_samples(
        [proposals], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert labels[0].tolist() == [0, 0, 0]


def test_roi_sampling_keeps_a_quarter_foreground(r18):
    heads = r18.roi_heads
    g = torch.Generator().manual_seed(4)
    gt = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.tensor([1])}
    near = gt["boxes"] + torch.randn(400, 4, generator=g)  # IoU > 0.5
    far = torch.rand(2000, 2, generator=g) * 200 + 100
    proposals = torch.cat([near, torch.cat([far, far + 20], dim=1)])
    _, _, labels, _ = heads.select_training_samples([proposals], [gt])
    assert len(labels[0]) == 512 and int((labels[0] > 0).sum()) == 128


def test_box_losses_against_the_formula():
    from canon.models.detection.roi_heads import fastrcnn_loss

    g = torch.Generator().manual_seed(5)
    logits, regression = torch.randn(6, 4, generator=g), torch.randn(6, 16, generator=g)
    labels = [torch.tensor([0, 2, 3]), torch.tensor([1, 0, 0])]
    targets = [torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)]
    targets[1][1] = -float("inf")  # a background RoI's (dummy) target is never used
    loss_cls, loss_box = fastrcnn_loss(logits, regression, labels, targets)
    lab, tgt = torch.cat(labels), torch.cat(targets)
    pos = torch.where(lab > 0)[0]
    picked = regression.reshape(6, 4, 4)[pos, lab[pos]]
    torch.testing.assert_close(loss_cls, F.cross_entropy(logits, lab))
    torch.testing.assert_close(loss_box, F.smooth_l1_loss(picked, tgt[pos], beta=1 / 9, reduction="sum") / 6)


def test_postprocess_detections_against_torchvision():
    """Decoding (10, 10, 5, 5) with the clamp, score > 0.05, min size, per-class NMS 0.5, 100 per image."""
    g = torch.Generator().manual_seed(6)
    heads = RoIHeads(MultiScaleRoIAlign(7, 2), TwoMLPHead(8 * 49, 16), FastRCNNPredictor(16, 4)).eval()
    sizes = [(120, 100), (90, 140)]
    proposals = []
    for h, w in sizes:
        xy = torch.rand(300, 2, generator=g) * torch.tensor([w, h]) * 0.8
        proposals.append(torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 30 + 2], dim=1))
    logits = torch.randn(600, 4, generator=g) * 2
    regression = torch.randn(600, 16, generator=g) * 0.5
    regression[::50, 2] = 80.0  # t_w = 16 > ln(1000/16): clamped
    got = heads.postprocess_detections(logits, regression, proposals, sizes)
    want = ref_postprocess_detections(logits, regression, proposals, sizes)
    for got_part, want_part in zip(got, want):
        for a, b in zip(got_part, want_part):
            torch.testing.assert_close(a, b)
    assert [len(b) for b in got[0]] == [100, 100]  # the per-image cap binds
    assert all(float(s.min()) > 0.05 for s in got[1])
    # few, spread-out candidates: the score threshold, not the cap, decides
    few = [p[:12] for p in proposals]
    few_logits = torch.cat([logits[:12], logits[300:312]])
    few_regression = torch.cat([regression[:12], regression[300:312]])
    got = heads.postprocess_detections(few_logits, few_regression, few, sizes)
    want = ref_postprocess_detections(few_logits, few_regression, few, sizes)
    for got_part, want_part in zip(got, want):
        for a, b in zip(got_part, want_part):
            torch.testing.assert_close(a, b)
    scores = torch.cat(got[1])
    assert float(scores.min()) < 0.1 and float(scores.min()) > 0.05 and len(scores) < 24 * 3
    # the clamp: a huge t_w decodes to exp(ln(1000/16)) = 62.5 times the proposal width
    decoded = heads.box_coder.decode(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    assert float(decoded[0, 2] - decoded[0, 0]) == pytest.approx(62.5 * 4, rel=1e-5)
    torch.testing.assert_close(decoded, ref_decode(torch.tensor([[0.0, 0.0, 100.0, 0.0]]),
                                                   torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (10.0, 10.0, 5.0, 5.0))[:, 0])


def test_mask_targets_and_loss_on_a_hand_case():
    g = torch.Generator().manual_seed(7)
    mask_logits = torch.randn(2, 3, 28, 28, generator=g)
    mask_logits[:, 0] = 1e4  # other classes' channels do not matter
    gt_masks = torch.zeros(2, 60, 60, dtype=torch.uint8)
    gt_masks[1, 5:55, 5:55] = 1  # object 1's mask covers RoI 0 completely; object 0's is empty
    rois = torch.tensor([[10.0, 10.0, 40.0, 40.0], [10.0, 10.0, 40.0, 40.0]])
    loss = maskrcnn_loss(mask_logits, [rois], [gt_masks], [torch.tensor([1, 2])], [torch.tensor([1, 0])])
    # RoI 0 -> object 1 (label 2, all-ones target), RoI 1 -> object 0 (label 1, all-zeros target)
    want = torch.cat([F.softplus(-mask_logits[0, 2]).reshape(-1), F.softplus(mask_logits[1, 1]).reshape(-1)]).mean()
    torch.testing.assert_close(loss, want)


def test_keypoint_heatmap_targets_on_a_hand_case():
    rois = torch.tensor([[0.0, 0.0, 56.0, 28.0]])
    keypoints = torch.tensor([[[10.5, 20.5, 2.0], [56.0, 28.0, 1.0], [30.0, 5.0, 0.0], [60.0, 5.0, 1.0]]])
    index, valid = keypoints_to_heatmap(keypoints, rois, 56)
    # x scale 56/56, y scale 56/28: (10.5, 20.5) -> col 10, row 41; the corner (56, 28) -> (55, 55);
    # invisible and outside keypoints are invalid
    assert valid.tolist() == [[1, 1, 0, 0]]
    assert index.tolist() == [[41 * 56 + 10, 55 * 56 + 55, 0, 0]]


def test_heatmaps_to_keypoints_reads_the_argmax():
    heatmaps = torch.full((1, 2, 56, 56), -5.0)
    heatmaps[0, 0, 28, 14] = 5.0
    heatmaps[0, 1, 3, 50] = 5.0
    rois = torch.tensor([[100.0, 200.0, 156.0, 256.0]])  # 56 x 56: one heatmap pixel per image pixel
    keypoints, scores = heatmaps_to_keypoints(heatmaps, rois)
    torch.testing.assert_close(keypoints, torch.tensor([[[114.5, 228.5, 1.0], [150.5, 203.5, 1.0]]]))
    torch.testing.assert_close(scores, torch.tensor([[5.0, 5.0]]))


# ----------------------------------------------------------------------------- vectorised


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _ops(fn) -> int:
    with _OpCounter() as counter:
        fn()
    return counter.count


def test_matching_sampling_and_decoding_are_vectorised(r18):
    """The number of tensor operations does not grow with the number of anchors, RoIs or boxes."""
    model = r18
    g = torch.Generator().manual_seed(8)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 200
        return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 50 + 1], dim=1)

    def rpn_step(num_anchors, num_gt):
        anchors, gt = boxes(num_anchors), {"boxes": boxes(num_gt)}
        def run():
            labels, matched = model.rpn.assign_targets_to_anchors(anchors, [gt])
            targets = [model.rpn.box_coder.encode(matched[0], anchors)]
            model.rpn.compute_loss(torch.randn(1, num_anchors), torch.randn(1, num_anchors, 4), labels, targets)
            model.rpn.box_coder.decode(torch.randn(num_anchors, 4), anchors)
        return run

    def roi_step(num_rois, num_gt):
        rois, gt = boxes(num_rois), {"boxes": boxes(num_gt), "labels": torch.ones(num_gt, dtype=torch.int64)}
        def run():
            model.roi_heads.select_training_samples([rois], [gt])
            model.roi_heads.box_coder.decode(torch.randn(num_rois * 91, 4), rois.repeat_interleave(91, dim=0))
        return run

    assert _ops(rpn_step(200, 2)) == _ops(rpn_step(5_000, 40))
    assert _ops(roi_step(100, 2)) == _ops(roi_step(2_000, 30))


# ----------------------------------------------------------------------------- whole model, eval


def _spread_heads(model, seed):
    """Random weights that make thresholds and NMS bite (the default init scores everything ~ equally)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.rpn.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.copy_(torch.randn(predictor.cls_score.weight.shape, generator=g) * 0.05)
        predictor.bbox_pred.weight.copy_(torch.randn(predictor.bbox_pred.weight.shape, generator=g) * 0.02)


def _assert_same_detections(got, want):
    from scipy.optimize import linear_sum_assignment

    for image_got, image_want in zip(got, want):
        assert len(image_got["boxes"]) == len(image_want["boxes"]) > 0
        cost = (image_got["boxes"][:, None] - image_want["boxes"][None]).abs().amax(-1) \
            + 1e3 * (image_got["labels"][:, None] != image_want["labels"][None])
        rows, cols = linear_sum_assignment(cost.numpy())
        assert float(cost[rows, cols].max()) < 1e-3
        for key in ("scores", "masks", "keypoints", "keypoints_scores"):
            if key in image_want:
                torch.testing.assert_close(image_got[key][rows], image_want[key][cols], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, options", [
    ("fasterrcnn_resnet50_fpn", dict(num_classes=5)),
    ("maskrcnn_resnet50_fpn", dict(num_classes=5, box_detections_per_image=6, rpn_post_nms_top_n_test=150)),
    ("keypointrcnn_resnet50_fpn", dict(box_detections_per_image=2, rpn_post_nms_top_n_test=100))])
def test_eval_detections_equal_the_torchvision_reference(name, options):
    torch.manual_seed(9)
    model = canon.create_model(name, min_size=128, max_size=192, **options).eval()
    _spread_heads(model, 10)
    g = torch.Generator().manual_seed(11)
    images = [torch.rand(3, 100, 150, generator=g), torch.rand(3, 120, 96, generator=g)]
    with torch.no_grad():
        got = model(images)
        want = reference_detect(model, images, min_size=128, max_size=192,
                                post_nms_top_n=options.get("rpn_post_nms_top_n_test", 1000),
                                detections_per_image=options.get("box_detections_per_image", 100))
    _assert_same_detections(got, want)
    for image, detections in zip(images, got):
        assert detections["boxes"].dtype == torch.float32 and detections["labels"].dtype == torch.int64
        assert float(detections["boxes"][:, 2].max()) <= image.shape[2] and float(detections["boxes"].min()) >= 0
        if "masks" in detections:
            assert detections["masks"].shape == (len(detections["boxes"]), 1, *image.shape[1:])
        if "keypoints" in detections:
            assert detections["keypoints"].shape == (len(detections["boxes"]), 17, 3)
            assert detections["keypoints_scores"].shape == (len(detections["boxes"]), 17)


def test_a_batch_tensor_is_accepted_in_eval_and_summarize_works():
    from canon.engine.summary import summarize

    model = canon.create_model("maskrcnn_resnet18_fpn", min_size=96, max_size=96, rpn_post_nms_top_n_test=50,
                               box_detections_per_image=5).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 96, 96))
    assert len(out) == 2 and out[0]["masks"].shape[-2:] == (96, 96)
    summary = summarize(model, (1, 3, 96, 96), name="maskrcnn_resnet18_fpn")
    assert summary.params == count_params(model) and summary.macs > 0


# ----------------------------------------------------------------------------- training and bad input


def _targets(num_classes=3, with_masks=False, with_keypoints=False, size=(96, 128)):
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 90.0, 80.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, num_classes - 1])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    if with_masks:
        masks = torch.zeros(2, *size, dtype=torch.uint8)
        masks[0, 15:60, 12:55] = 1
        masks[1, 35:75, 45:85] = 1
        target["masks"], empty["masks"] = masks, torch.zeros(0, *size, dtype=torch.uint8)
    if with_keypoints:
        keypoints = torch.rand(2, 17, 3, generator=torch.Generator().manual_seed(12)) * 40 + 20
        keypoints[..., 2] = 2.0
        target["keypoints"], empty["keypoints"] = keypoints, torch.zeros(0, 17, 3)
    return target, empty


@pytest.mark.parametrize("name", ["fasterrcnn_resnet18_fpn", "maskrcnn_resnet18_fpn", "keypointrcnn_resnet18_fpn"])
def test_background_only_images_train_with_finite_losses(name):
    torch.manual_seed(13)
    num_classes = 2 if "keypoint" in name else 3
    model = canon.create_model(name, num_classes=num_classes, min_size=96, max_size=128,
                               rpn_post_nms_top_n_train=100, box_batch_size_per_image=16).train()
    target, empty = _targets(num_classes, "mask" in name, "keypoint" in name)
    for images, targets in (([torch.rand(3, 96, 128), torch.rand(3, 96, 128)], [target, empty]),
                            ([torch.rand(3, 96, 128)], [empty])):
        losses = model(images, targets)
        expected = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
        expected |= {"loss_mask"} if "mask" in name else {"loss_keypoint"} if "keypoint" in name else set()
        assert set(losses) == expected
        assert all(torch.isfinite(v) for v in losses.values()), losses
        model.zero_grad()
        sum(losses.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert float(losses["loss_box_reg"].detach()) == 0.0 and float(losses["loss_rpn_box_reg"].detach()) == 0.0


@pytest.fixture(scope="module")
def small_model():
    return canon.create_model("maskrcnn_resnet18_fpn", num_classes=5, min_size=96, max_size=128)


def _expect_error(model, images, targets, *patterns):
    model.train()
    with pytest.raises(ValueError) as info:
        model(images, targets)
    for pattern in patterns:
        assert pattern in str(info.value), (pattern, str(info.value))


def test_bad_images_are_rejected(small_model):
    target, _ = _targets(5, with_masks=True)
    _expect_error(small_model, [], [], "non-empty list", "[N, 4]", "x1 < x2")
    _expect_error(small_model, torch.rand(3, 96, 128), [target], "wrap a single image")
    _expect_error(small_model, [torch.rand(96, 128)], [target], "images[0]", "[3, H, W]")
    _expect_error(small_model, [torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)], [target], "float tensor")
    _expect_error(small_model, [torch.rand(3, 96, 128)], None, "targets are required in training mode")
    _expect_error(small_model, [torch.rand(3, 96, 128)], [target, target], "one target dict per image")


def test_bad_boxes_and_labels_are_rejected(small_model):
    image = torch.rand(3, 96, 128)
    target, _ = _targets(5, with_masks=True)
    for boxes in (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(2, 5), torch.zeros(0)):
        _expect_error(small_model, [image], [{**target, "boxes": boxes}], "[N, 4]", "x1 < x2")
    flipped = target["boxes"].clone()
    flipped[1, 2] = flipped[1, 0]  # x1 == x2
    _expect_error(small_model, [image], [{**target, "boxes": flipped}], "[N, 4]", "x1 < x2", "box 1")
    flipped = target["boxes"].clone()
    flipped[0, 3] = 5.0  # y2 < y1
    _expect_error(small_model, [image], [{**target, "boxes": flipped}], "y1 < y2", "box 0")
    _expect_error(small_model, [image], [{**target, "labels": torch.tensor([1, 5])}], "0..4", "num_classes=5")
    _expect_error(small_model, [image], [{**target, "labels": torch.tensor([-1, 2])}], "0..4")
    _expect_error(small_model, [image], [{**target, "labels": torch.tensor([1.0, 2.0])}], "int64")
    _expect_error(small_model, [image], [{"boxes": target["boxes"], "labels": target["labels"]}], "'masks'",
                  "[N, H, W]")
    _expect_error(small_model, [image], [{**target, "masks": target["masks"][:, :50]}], "[2, 96, 128]")
    _expect_error(small_model, [image], [{"labels": target["labels"]}], "'boxes' and 'labels'")


def test_bad_keypoints_are_rejected():
    model = canon.create_model("keypointrcnn_resnet18_fpn", min_size=96, max_size=128)
    target, _ = _targets(2, with_keypoints=True)
    _expect_error(model, [torch.rand(3, 96, 128)], [{**target, "keypoints": target["keypoints"][:, :5]}],
                  "'keypoints'", "[2, 17, 3]")


def test_composes_with_a_single_map_backbone():
    """The paper's form: one stride-16 feature map, 9 anchors (3 sizes x 3 ratios), RoIs pooled from it."""
    from canon.ops import AnchorGenerator

    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 16, stride=16), torch.nn.ReLU())
    backbone.out_channels = 16
    model = FasterRCNN(num_classes=3, backbone=backbone, min_size=128, max_size=160,
                       rpn_anchor_generator=AnchorGenerator(((32, 64, 128),), ((0.5, 1.0, 2.0),)),
                       box_roi_pool=MultiScaleRoIAlign(7, 2), box_feature_names=("0",),
                       rpn_post_nms_top_n_train=50, box_batch_size_per_image=16)
    assert model.rpn.head.cls_logits.out_channels == 9
    target, empty = _targets()
    losses = model([torch.rand(3, 96, 128), torch.rand(3, 96, 128)], [target, empty])
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        assert model.eval()([torch.rand(3, 96, 128)])[0]["boxes"].shape[1] == 4
    model.roi_heads.feature_names = ("0", "1")
    with pytest.raises(ValueError, match="box_feature_names"):
        model([torch.rand(3, 96, 128)])


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="includes the background"):
        canon.create_model("fasterrcnn_resnet18_fpn", num_classes=1)
    with pytest.raises(ValueError, match="not both"):
        FasterRCNN(backbone=canon.create_model("fasterrcnn_resnet18_fpn").backbone, backbone_name="resnet50")
    assert issubclass(MaskRCNN, FasterRCNN) and issubclass(KeypointRCNN, FasterRCNN)
    assert isinstance(ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)]).image_sizes, list)


# ----------------------------------------------------------------------------- overfit (slow)


def _painted_rectangles(g, count, size):
    """An image of dim noise with ``count`` non-overlapping solid rectangles, red (class 1) or blue (class 2)."""
    image = torch.rand(3, size, size, generator=g) * 0.3
    boxes, labels = [], []
    while len(boxes) < count:
        w, h = torch.randint(20, 48, (2,), generator=g).tolist()
        x, y = int(torch.randint(0, size - w, (1,), generator=g)), int(torch.randint(0, size - h, (1,), generator=g))
        box = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
        if boxes and float(ref_box_iou(box[None], torch.stack(boxes)).max()) > 0:
            continue
        label = int(torch.randint(1, 3, (1,), generator=g))
        colour = torch.tensor([1.0, 0.2, 0.2]) if label == 1 else torch.tensor([0.2, 0.4, 1.0])
        image[:, y:y + h, x:x + w] = colour[:, None, None]
        boxes.append(box)
        labels.append(label)
    return image, {"boxes": torch.stack(boxes), "labels": torch.tensor(labels)}


def _coco_ap50(targets, detections, size):
    from canon.metrics import coco_evaluate

    ground_truth = {"images": [{"id": i, "height": size, "width": size} for i in range(len(targets))],
                    "categories": [{"id": 1}, {"id": 2}], "annotations": []}
    results = []
    for i, (target, found) in enumerate(zip(targets, detections)):
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            ground_truth["annotations"].append({"id": len(ground_truth["annotations"]) + 1, "image_id": i,
                                                "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for (x1, y1, x2, y2), label, score in zip(found["boxes"].tolist(), found["labels"].tolist(),
                                                  found["scores"].tolist()):
            results.append({"image_id": i, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return coco_evaluate(ground_truth, results, "bbox")["AP50"]


@pytest.mark.slow
def test_overfits_painted_rectangles():
    """Losses, target assignment and decoding agree: 2 images, 3 rectangles, AP50 >= 0.9 after 70 steps."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    size = 96
    data = [_painted_rectangles(g, count, size) for count in (1, 2)]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    model = canon.create_model("fasterrcnn_resnet18_fpn", num_classes=3, min_size=size, max_size=size,
                               rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                               rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=64, box_batch_size_per_image=64)
    with torch.no_grad():
        assert _coco_ap50(targets, model.eval()(images), size) < 0.1  # not by chance at the start
    steps = 70
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        detections = model(images)
    ap50 = _coco_ap50(targets, detections, size)
    assert np.isfinite(loss.item()) and ap50 >= 0.9, ap50
