"""SPPnet (sppnet_zf5, sppnet_resnet18): ZF-5, the window mapping, the pyramid, the contract.

References (independent of canon's code):
    - closed-form parameter counts of ZF-5 (Table 1 of the paper: 96 7x7, 256 5x5, 384, 384, 256 3x3),
      the 12,800-d pyramid (256 x (36 + 9 + 4 + 1)) and fc6/fc7;
    - Appendix A's corner formulas evaluated by hand on chosen windows, and the receptive field of
      ZF-5 measured by back-propagation: the centre of a conv5 cell's receptive field is S·x';
    - canon.layers.spatial_pyramid_pool (the SPP layer) on each window's cells cut out by slicing;
    - the fine-tuning windows (25 % positives, background in [0.1, 0.5)) on proposals of known IoU.
"""
from __future__ import annotations

import math

import pytest
import torch

import canon
from canon.layers import spatial_pyramid_pool
from canon.models.detection.sppnet import SPPNet, map_windows_to_feature_map, spp_windows, zf5_backbone
from rcnn_references import ref_box_iou
from test_fast_rcnn import conv, linear, proposals_with_known_overlaps, resnet18_c4_params


def test_parameter_counts_equal_the_closed_forms():
    zf5 = conv(3, 96, 7) + conv(96, 256, 5) + conv(256, 384, 3) + conv(384, 384, 3) + conv(384, 256, 3)
    assert sum(p.numel() for p in zf5_backbone().parameters()) == zf5
    model = canon.create_model("sppnet_zf5")
    assert model.fc6.in_features == 12_800  # 256 x (6² + 3² + 2² + 1²)
    heads = linear(12_800, 4096) + linear(4096, 4096) + linear(4096, 21)
    assert sum(p.numel() for p in model.parameters()) == zf5 + heads
    small = canon.create_model("sppnet_resnet18", num_classes=2)
    assert sum(p.numel() for p in small.parameters()) == resnet18_c4_params() + linear(256 * 50, 1024) + \
        linear(1024, 1024) + linear(1024, 2)
    assert model.pyramid == (6, 3, 2, 1) and model.backbone.stride == 16 and model.transform.min_size == (688,)
    assert model.svms.weight.shape == (20, 4096) and model.box_regressors.weight.shape == (20, 4, 12_800)


def test_zf5_receptive_field_centres_are_at_s_times_x():
    """Appendix A's premise: with floor(p/2) padding, conv5 cell x' is centred on image pixel S x' (S = 16)."""
    torch.manual_seed(0)
    backbone = zf5_backbone().double()
    image = torch.rand(1, 3, 256, 256, dtype=torch.float64, requires_grad=True)
    out = backbone(image)
    assert out.shape == (1, 256, 16, 16)
    for row, col in ((5, 6), (8, 9)):
        image.grad = None
        out[0, :, row, col].sum().backward(retain_graph=True)
        support = image.grad[0].abs().sum(0) > 0
        ys, xs = torch.where(support)
        centre_y, centre_x = (ys.min() + ys.max()).item() / 2, (xs.min() + xs.max()).item() / 2
        assert abs(centre_y - 16 * row) <= 1.5 and abs(centre_x - 16 * col) <= 1.5, (centre_y, centre_x)


def test_window_mapping_is_appendix_a():
    boxes = torch.tensor([[0.0, 0.0, 160.0, 96.0],  # last pixel 159 -> ceil(159/16) - 1 = 9
                          [33.0, 47.0, 250.0, 200.0],  # floor(33/16)+1 = 3, floor(47/16)+1 = 3, 15, 12
                          [20.0, 20.0, 30.0, 30.0],  # left 2 > right 1: the cell nearest the centre
                          [-50.0, 10.0, 2000.0, 40.0]])  # clamped to the 20 x 30 map
    cells = map_windows_to_feature_map(boxes, 16, (20, 30))
    want = torch.tensor([[1, 1, 9, 5], [3, 3, 15, 12], [2, 2, 2, 2], [0, 1, 29, 2]])
    assert cells.tolist() == want.tolist()
    for (x1, y1, x2, y2), (left, top, right, bottom) in zip(boxes.tolist()[:2], cells.tolist()[:2]):
        assert left == math.floor(x1 / 16) + 1 and right == math.ceil((x2 - 1) / 16) - 1
        assert top == math.floor(y1 / 16) + 1 and bottom == math.ceil((y2 - 1) / 16) - 1


def test_pyramid_of_windows_equals_the_spp_layer_on_each_window():
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(2, 5, 17, 23, generator=g)
    windows = [torch.tensor([[0, 0, 22, 16], [3, 4, 9, 5], [7, 2, 7, 2], [10, 0, 20, 15]]),
               torch.tensor([[1, 1, 13, 13], [0, 8, 22, 8]])]
    pooled = spp_windows(feature, windows, (6, 3, 2, 1))
    assert pooled.shape == (6, 5 * 50)
    k = 0
    for image, image_windows in enumerate(windows):
        for left, top, right, bottom in image_windows.tolist():
            cells = feature[image:image + 1, :, top:bottom + 1, left:right + 1]
            torch.testing.assert_close(pooled[k], spatial_pyramid_pool(cells, (6, 3, 2, 1))[0])
            k += 1


def test_fine_tuning_windows_are_a_quarter_positive_background_in_0_1_to_0_5():
    torch.manual_seed(0)
    model = canon.create_model("sppnet_resnet18", num_classes=3)
    gt, proposals = proposals_with_known_overlaps()
    windows, labels = model._sample_windows([{"boxes": gt, "labels": torch.tensor([2])}], [proposals])
    assert len(windows[0]) == 64 and (labels == 2).sum() == 16
    iou = ref_box_iou(gt, windows[0])[0]
    assert (iou[labels == 2] >= 0.5).all() and ((iou[labels == 0] >= 0.1) & (iou[labels == 0] < 0.5)).all()
    _, labels = model._sample_windows([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
                                      [proposals])
    assert len(labels) == 64 and (labels == 0).all()  # background-only image


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return canon.create_model("sppnet_resnet18", num_classes=3, min_size=96, max_size=160, representation_size=64)


def test_training_loss_and_eval_contract(small):
    images = [torch.rand(3, 120, 160), torch.rand(3, 90, 70)]
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 100.0, 110.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    proposals = [torch.tensor([[18.0, 22.0, 104.0, 108.0], [0.0, 0.0, 60.0, 60.0], [90.0, 10.0, 160.0, 80.0]]),
                 torch.tensor([[5.0, 5.0, 40.0, 40.0]])]
    small.train()
    losses = small(images, targets, proposals)
    assert set(losses) == {"loss_classifier"} and torch.isfinite(losses["loss_classifier"])
    losses["loss_classifier"].backward()
    small.eval()
    small.times.reset()
    with torch.no_grad():
        out = small(images, proposals=proposals)
    for detection, image in zip(out, images):
        assert set(detection) == {"boxes", "labels", "scores"} and detection["boxes"].shape[1] == 4
        assert (detection["boxes"][:, 2] <= image.shape[2]).all() and (detection["boxes"][:, 3] <= image.shape[1]).all()
    # softmax scoring with no regressor fitted: every detection is one of its image's proposals
    for detection, rois in zip(out, proposals):
        for box in detection["boxes"]:
            assert ((rois - box).abs().max(dim=1).values < 1e-3).any()
    assert {"cnn", "spp", "svm"} <= set(small.times.seconds) and small.times.images == 2


def test_svm_scores_once_fitted(small):
    g = torch.Generator().manual_seed(2)
    small.eval()
    small.svms.weight.copy_(torch.randn(2, 64, generator=g))
    small.svms.bias.copy_(torch.randn(2, generator=g))
    small.svms.fitted.fill_(True)
    image = torch.rand(3, 120, 160, generator=g)
    proposals = torch.tensor([[18.0, 22.0, 104.0, 108.0], [0.0, 0.0, 60.0, 60.0]])
    try:
        with torch.no_grad():
            out = small([image], proposals=[proposals])[0]
            features = small.region_features(image, proposals)
        margins = features["classifier"] @ small.svms.weight.t() + small.svms.bias
        assert out["scores"][0] == pytest.approx(margins.max().item(), abs=1e-5)
        assert features["regression"].shape == (2, 256 * 50)
    finally:
        small.svms.fitted.fill_(False)


def test_bad_inputs_are_rejected(small):
    with pytest.raises(ValueError, match="pyramid"):
        SPPNet(backbone_name="resnet18", pyramid=(6, 0))
    with pytest.raises(ValueError, match="backbone_name"):
        SPPNet(backbone_name="zf7")
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        small.eval()([torch.rand(3, 64, 64)], proposals=[torch.zeros(4)])
