"""Fast R-CNN (fast_rcnn_vgg16, fast_rcnn_resnet18) and the paper-form Faster R-CNN (faster_rcnn_vgg16).

References (independent of canon's code):
    - parameter counts from closed forms (k²·c_in·c_out + c_out per convolution, 2c per batch norm,
      in·out + out per linear layer) over the paper's layer lists (VGG-16 configuration D, ZF-5 is
      in test_sppnet.py, ResNet-18 up to layer3);
    - the paper's mini-batch (Sec. 2.3) on proposals whose IoUs are chosen by construction
      (64 RoIs, 25 % foreground at IoU >= 0.5, background only in [0.1, 0.5)), IoU by
      rcnn_references.ref_box_iou;
    - eq. (1) written out: -log softmax + λ [u >= 1] Σ smooth_L1 (0.5 x² if |x| < 1 else |x| - 0.5) / R;
    - the regression targets t = ((Gx−Px)/Pw, (Gy−Py)/Ph, ln(Gw/Pw), ln(Gh/Ph)) from centres and
      sizes computed in the test, times the (10, 10, 5, 5) scaling;
    - the Faster R-CNN paper's anchors (Sec. 3.1.1: 128², 256², 512² x 1:1/1:2/2:1 at stride 16)
      from rcnn_references.ref_anchors.
"""
from __future__ import annotations

import math

import pytest
import torch

import canon
from canon.models.detection.fast_rcnn import FastRCNN, RoIPool, fast_rcnn_loss
from canon.models.detection.faster_rcnn_vgg import FasterRCNNVGG16
from rcnn_references import ref_anchors, ref_box_iou

VGG16_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]  # conv5_3, no pool5


def conv(c_in, c_out, k, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def linear(c_in, c_out):
    return c_in * c_out + c_out


def vgg16_conv5_params():
    total, c_in = 0, 3
    for item in VGG16_D:
        if item != "M":
            total, c_in = total + conv(c_in, item, 3), item
    return total


def resnet18_c4_params():
    """conv1 + bn1, layer1..layer3 of ResNet-18 (basic blocks, batch norm: weight and bias)."""
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, 64, 7, bias=False) + bn(64)
    c_in = 64
    for planes in (64, 128, 256):
        for block in range(2):
            stride_block = block == 0 and planes != c_in
            total += conv(c_in if block == 0 else planes, planes, 3, False) + bn(planes)
            total += conv(planes, planes, 3, False) + bn(planes)
            if stride_block:
                total += conv(c_in, planes, 1, False) + bn(planes)
        c_in = planes
    return total


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def vgg_models():
    """fast_rcnn_vgg16 and faster_rcnn_vgg16 built once, without initialising their 135 M weights (counts and
    structure only; the initialisation is checked on the small form, which runs the same code)."""
    from unittest import mock

    skip = lambda *args, **kwargs: args[0] if args else None  # noqa: E731
    with mock.patch.object(torch.nn.Linear, "reset_parameters", skip), \
            mock.patch.object(torch.nn.modules.conv._ConvNd, "reset_parameters", skip), \
            mock.patch.object(torch.nn.init, "normal_", skip), mock.patch.object(torch.nn.init, "zeros_", skip), \
            mock.patch.object(torch.nn.init, "kaiming_normal_", skip), \
            mock.patch.object(torch.nn.init, "constant_", skip):
        return {name: canon.create_model(name) for name in ("fast_rcnn_vgg16", "faster_rcnn_vgg16")}


def test_parameter_counts_equal_the_closed_forms(vgg_models):
    classes = 21
    head = lambda c_in, width: linear(c_in * 49, width) + linear(width, width) + linear(width, classes) \
        + linear(width, 4 * classes)  # noqa: E731
    assert vgg16_conv5_params() == 14_714_688  # VGG-16's 13 convolutions
    assert count(vgg_models["fast_rcnn_vgg16"]) == vgg16_conv5_params() + head(512, 4096) == 134_690_729
    assert count(canon.create_model("fast_rcnn_resnet18")) == resnet18_c4_params() + head(256, 1024)
    rpn = conv(512, 512, 3) + conv(512, 9, 1) + conv(512, 36, 1)  # 3x3 512-d; k = 9 logits, 4k deltas
    assert count(vgg_models["faster_rcnn_vgg16"]) == vgg16_conv5_params() + head(512, 4096) + rpn


def test_defaults_are_the_papers(vgg_models):
    model = vgg_models["fast_rcnn_vgg16"]
    heads = model.roi_heads
    assert heads.sampler.batch_size_per_image == 64 and heads.sampler.positive_fraction == 0.25
    assert heads.matcher.high_threshold == 0.5 and heads.background_low_iou_threshold == 0.1
    assert heads.box_loss_weight == 1.0 and heads.smooth_l1_beta == 1.0 and heads.nms_threshold == 0.3
    assert isinstance(heads.box_roi_pool, RoIPool) and heads.box_roi_pool.output_size == (7, 7)
    assert heads.box_roi_pool.spatial_scale == 1 / 16 and model.backbone.stride == 16
    assert model.transform.min_size == (600,) and model.transform.max_size == 1000
    assert model.proposal_method.mode == "fast" and model.proposal_method.max_proposals == 2000
    # Sec. 2.3: the sibling layers start from N(0, 0.01) and N(0, 0.001) (the same code builds every form)
    small = canon.create_model("fast_rcnn_resnet18", num_classes=21).roi_heads.box_predictor
    assert small.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert small.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert small.cls_score.bias.abs().max() == 0 and small.bbox_pred.bias.abs().max() == 0


def test_faster_rcnn_vgg16_is_the_papers_form(vgg_models):
    model = vgg_models["faster_rcnn_vgg16"]
    rpn = model.rpn
    assert rpn.head.cls_logits.out_channels == 9 and rpn.head.bbox_pred.out_channels == 36
    assert rpn.head.conv[0][0].out_channels == 512
    assert rpn.sampler.batch_size_per_image == 256 and rpn.sampler.positive_fraction == 0.5
    assert rpn.matcher.high_threshold == 0.7 and rpn.matcher.low_threshold == 0.3 and rpn.nms_threshold == 0.7
    assert (rpn.post_nms_top_n_train, rpn.post_nms_top_n_test) == (2000, 300)
    # 9 anchors per stride-16 position: 128², 256², 512² x 1:2, 1:1, 2:1
    image_size, feature_size = (96, 128), (6, 8)
    anchors = rpn.anchor_generator(image_size, [feature_size])[0]
    want = ref_anchors(image_size, [feature_size], ((128, 256, 512),), ((0.5, 1.0, 2.0),))
    want = want[0] if isinstance(want, (list, tuple)) else want
    torch.testing.assert_close(anchors, want)
    sides = ((anchors[:9, 2] - anchors[:9, 0]) * (anchors[:9, 3] - anchors[:9, 1])).sqrt()  # corners are rounded
    assert all(min(abs(side - s) for s in (128, 256, 512)) <= 2 for side in sides.tolist())
    assert anchors.shape == (6 * 8 * 9, 4) and (anchors[9, [0, 2]] - anchors[0, [0, 2]]).tolist() == [16.0, 16.0]
    assert isinstance(model.roi_heads.box_roi_pool, RoIPool) and model.roi_heads.nms_threshold == 0.3
    assert model.transform.min_size == (600,)
    assert isinstance(model, FasterRCNNVGG16)


# ----------------------------------------------------------------------------- sampling, targets, loss


def _shifted(box, dx, dy):
    return torch.tensor([box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy])


def proposals_with_known_overlaps():
    """Around the ground truth (0, 0, 100, 100): 40 boxes of IoU >= 0.5, 100 in [0.1, 0.5), 100 below 0.1."""
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    fg = [_shifted(gt[0], d, 0) for d in torch.linspace(0, 30, 40)]  # IoU (100-d)/(100+d) >= 0.54
    bg = [_shifted(gt[0], d, 0) for d in torch.linspace(40, 80, 100)]  # IoU 0.43 .. 0.11
    far = [_shifted(gt[0], d, 0) for d in torch.linspace(90, 300, 100)]  # IoU < 0.06
    proposals = torch.stack(fg + bg + far)
    iou = ref_box_iou(gt, proposals)[0]
    assert (iou[:40] >= 0.5).all() and ((iou[40:140] >= 0.1) & (iou[40:140] < 0.5)).all() and (iou[140:] < 0.1).all()
    return gt, proposals


def test_minibatch_is_64_rois_a_quarter_foreground_and_background_in_0_1_to_0_5():
    torch.manual_seed(0)
    heads = canon.create_model("fast_rcnn_resnet18", num_classes=3).roi_heads
    gt, proposals = proposals_with_known_overlaps()
    target = {"boxes": gt, "labels": torch.tensor([2])}
    rois, matched, labels, regression = heads.select_training_samples([proposals], [target])
    rois, labels = rois[0], labels[0]
    assert len(rois) == 64 and (labels == 2).sum() == 16 and (labels == 0).sum() == 48
    iou = ref_box_iou(gt, rois)[0]
    assert (iou[labels == 2] >= 0.5).all()
    assert ((iou[labels == 0] >= 0.1) & (iou[labels == 0] < 0.5)).all()  # none of the 100 far boxes
    # too few foreground candidates: all of them (the 5 + the ground truth), background fills the rest
    few = torch.cat([proposals[:5], proposals[40:]])
    _, _, labels, _ = heads.select_training_samples([few], [target])
    assert (labels[0] == 2).sum() == 6 and len(labels[0]) == 64
    # an image without objects: background only, from every proposal (nothing to measure IoU against)
    _, _, labels, _ = heads.select_training_samples([proposals], [{"boxes": torch.zeros(0, 4),
                                                                   "labels": torch.zeros(0, dtype=torch.int64)}])
    assert len(labels[0]) == 64 and (labels[0] == 0).all()


def test_regression_targets_are_the_papers_t_scaled():
    torch.manual_seed(0)
    heads = canon.create_model("fast_rcnn_resnet18", num_classes=3).roi_heads
    gt = torch.tensor([[10.0, 20.0, 90.0, 140.0]])
    proposals = torch.tensor([[12.0, 18.0, 80.0, 150.0], [0.0, 30.0, 95.0, 130.0], [15.0, 25.0, 85.0, 135.0]])
    rois, matched, labels, regression = heads.select_training_samples([proposals], [{"boxes": gt,
                                                                                     "labels": torch.tensor([1])}])
    rois, regression = rois[0][labels[0] > 0], regression[0][labels[0] > 0]
    gx, gy, gw, gh = 50.0, 80.0, 80.0, 120.0
    for roi, t in zip(rois.tolist(), regression):
        px, py = (roi[0] + roi[2]) / 2, (roi[1] + roi[3]) / 2
        pw, ph = roi[2] - roi[0], roi[3] - roi[1]
        want = torch.tensor([(gx - px) / pw * 10, (gy - py) / ph * 10, math.log(gw / pw) * 5, math.log(gh / ph) * 5])
        torch.testing.assert_close(t, want)


def smooth_l1(x):
    return torch.where(x.abs() < 1, 0.5 * x * x, x.abs() - 0.5)


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_multi_task_loss_equals_equation_1(weight):
    g = torch.Generator().manual_seed(0)
    num_classes, rois = 3, 7
    logits = torch.randn(rois, num_classes, generator=g)
    regression = torch.randn(rois, 4 * num_classes, generator=g)
    labels = [torch.tensor([0, 2, 1, 0]), torch.tensor([1, 0, 0])]
    targets = [torch.randn(4, 4, generator=g), torch.randn(3, 4, generator=g)]
    targets[0][0] = math.inf  # a background RoI's dummy target must not reach the loss
    cls, loc = fast_rcnn_loss(logits, regression, labels, targets, box_loss_weight=weight)
    u, v = torch.cat(labels), torch.cat(targets)
    want_cls = sum(-torch.log_softmax(logits[r], 0)[u[r]] for r in range(rois)) / rois
    want_loc = sum(smooth_l1(regression[r, 4 * u[r]:4 * u[r] + 4] - v[r]).sum() for r in range(rois) if u[r] >= 1)
    torch.testing.assert_close(cls, want_cls)
    torch.testing.assert_close(loc, weight * want_loc / rois)


def test_training_losses_follow_the_sampled_minibatch():
    """The model's loss equals eq. (1) recomputed from the RoIs it sampled (same seed, same draw)."""
    model = canon.create_model("fast_rcnn_resnet18", num_classes=3, min_size=128, max_size=128)
    gt, proposals = proposals_with_known_overlaps()
    image = torch.rand(3, 128, 128)
    target = {"boxes": gt, "labels": torch.tensor([1])}
    model.train()
    model.roi_heads.box_head.dropout.p = 0.0  # so the forward is a function of the sampled RoIs alone
    torch.manual_seed(3)
    losses = model([image], [target], [proposals])
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    torch.manual_seed(3)  # redo by hand: the same transform, the same sampling draw
    image_list, targets = model.transform([image], [target])
    rois, _, labels, regression = model.roi_heads.select_training_samples([proposals], targets)
    pooled = model.roi_heads.box_roi_pool([model.backbone(image_list.tensors)], rois)
    logits, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    u, v = labels[0], regression[0]
    want_cls = torch.nn.functional.cross_entropy(logits, u)
    want_loc = sum(smooth_l1(deltas[r, 4 * u[r]:4 * u[r] + 4] - v[r]).sum() for r in range(len(u)) if u[r] >= 1)
    torch.testing.assert_close(losses["loss_classifier"], want_cls)
    torch.testing.assert_close(losses["loss_box_reg"], want_loc / len(u))


# ----------------------------------------------------------------------------- contract


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return canon.create_model("fast_rcnn_resnet18", num_classes=3, min_size=96, max_size=192)


def test_eval_contract_detections_in_input_pixels(small):
    small.eval()
    images = [torch.rand(3, 150, 200), torch.rand(3, 80, 60)]
    proposals = [torch.tensor([[10.0, 10.0, 120.0, 140.0], [100.0, 20.0, 200.0, 150.0]]),
                 torch.tensor([[0.0, 0.0, 60.0, 80.0]])]
    small.times.reset()
    with torch.no_grad():
        out = small(images, proposals=proposals)
    assert len(out) == 2 and small.times.images == 2 and small.times.per_image()["network"] > 0
    for detection, image in zip(out, images):
        assert set(detection) == {"boxes", "labels", "scores"}
        boxes = detection["boxes"]
        assert boxes.shape[1] == 4 and boxes.shape[0] == detection["labels"].shape[0] == detection["scores"].shape[0]
        assert boxes.shape[0] <= 2 * 2  # at most one box per (proposal, class)
        assert (boxes[:, 2] <= image.shape[2] + 1e-4).all() and (boxes[:, 3] <= image.shape[1] + 1e-4).all()
        assert ((detection["labels"] >= 1) & (detection["labels"] <= 2)).all()
    # with no trained weights the class-specific deltas are ~0: the boxes are the proposals, back in input pixels
    torch.testing.assert_close(out[1]["boxes"], proposals[1].expand(len(out[1]["boxes"]), 4), atol=0.5, rtol=0)


def test_background_only_image_trains(small):
    small.train()
    losses = small([torch.rand(3, 100, 100)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
                   [torch.tensor([[0.0, 0.0, 50.0, 50.0], [10.0, 10.0, 90.0, 90.0]])])
    assert torch.isfinite(losses["loss_classifier"]) and losses["loss_box_reg"] == 0
    sum(losses.values()).backward()


def test_selective_search_is_the_default_proposal_method(small):
    small.eval()
    with torch.no_grad():
        out = small([torch.rand(3, 48, 64)])
    assert len(out) == 1 and small.proposal_method.searches >= 1


def test_bad_inputs_are_rejected(small):
    small.train()
    image = torch.rand(3, 64, 64)
    target = {"boxes": torch.tensor([[5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        small([image], [target], [torch.zeros(3, 5)])
    with pytest.raises(ValueError, match="one Float"):
        small([image], [target], [torch.zeros(3, 4), torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="x1 <= x2"):
        small([image], [target], [torch.tensor([[10.0, 0.0, 5.0, 8.0]])])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        small([image], [{"boxes": torch.zeros(4), "labels": torch.tensor([1])}], [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="x1 < x2"):
        small([image], [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}],
              [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="empty list"):
        small([], [])
    with pytest.raises(ValueError, match="targets are required"):
        small([image])
    with pytest.raises(ValueError, match="backbone_name"):
        FastRCNN(backbone_name="alexnet")
    with pytest.raises(ValueError, match="background_low_iou_threshold"):
        FastRCNN(backbone_name="resnet18", representation_size=16, box_background_low_iou_threshold=0.7)
    with pytest.raises(ValueError, match="includes the background"):
        canon.create_model("faster_rcnn_vgg16", num_classes=1)
