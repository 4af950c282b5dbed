"""R-CNN (rcnn_alexnet): warping, fine-tuning windows, the SVM / ridge stage, test-time scoring.

References (independent of canon's code):
    - the parameter count of torchvision's AlexNet (61,100,840 at 1000 classes, its documented
      figure) and the closed form of its layers;
    - a linear intensity ramp, whose bilinear samples are exactly the ramp at the sample points:
      the warp's geometry (227 x 227, p = 16 context pixels) written as coordinates in the test;
    - scikit-learn's LinearSVC on *all* negatives: hinge-loss SVMs trained with converged
      hard-negative mining must equal it (negatives outside the margin carry no loss);
    - ridge regression in closed form, W = (X_cᵀX_c + λI)⁻¹ X_cᵀ T_c on centred data;
    - the test-time procedure composed by hand (SVM margins, decoded boxes, clipping, per-class
      greedy NMS from rcnn_references.ref_batched_nms).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import canon
from canon.models.detection.rcnn import (RCNN, context_padded_boxes, fit_svms_and_box_regressors,
                                         mine_hard_negatives, warp_regions)
from rcnn_references import ref_batched_nms, ref_box_iou, ref_decode
from test_fast_rcnn import conv, linear, proposals_with_known_overlaps


def alexnet_params(num_classes):
    return (conv(3, 64, 11) + conv(64, 192, 5) + conv(192, 384, 3) + conv(384, 256, 3) + conv(256, 256, 3)
            + linear(256 * 6 * 6, 4096) + linear(4096, 4096) + linear(4096, num_classes))


def test_parameters_are_alexnets_with_an_n_plus_1_way_layer_and_the_linear_models_are_buffers():
    assert alexnet_params(1000) == 61_100_840  # torchvision's documented AlexNet
    model = canon.create_model("rcnn_alexnet")
    assert sum(p.numel() for p in model.parameters()) == alexnet_params(21)
    names = dict(model.named_buffers())
    assert names["svms.weight"].shape == (20, 4096) and names["box_regressors.weight"].shape == (20, 4, 9216)
    assert not model.svms.fitted and not model.box_regressors.fitted
    assert model.warp_size == 227 and model.context_padding == 16 and model.nms_threshold == 0.3
    assert model.proposal_method.mode == "fast" and model.proposal_method.max_proposals == 2000
    assert model.sampler.batch_size_per_image == 128 and model.sampler.positive_fraction == 0.25


# ----------------------------------------------------------------------------- warping


def test_context_padding_leaves_16_of_227_pixels_around_the_box():
    boxes = torch.tensor([[100.0, 50.0, 295.0, 440.0]])  # 195 x 390
    padded = context_padded_boxes(boxes, 227, 16)
    torch.testing.assert_close(padded, torch.tensor([[84.0, 18.0, 311.0, 472.0]]))  # 195 * 227/195 = 227 wide
    assert context_padded_boxes(boxes, 227, 0).equal(boxes)
    with pytest.raises(ValueError, match="padding"):
        context_padded_boxes(boxes, 227, 120)


def test_warp_samples_pixel_centres_and_fills_outside_with_zero():
    """On I(x, y) = 0.01 x + 0.02 y + 1 (pixel (x, y) centred at (x + 0.5, y + 0.5)), output (i, j) of box
    (x1, y1, x2, y2) must read I at X = x1 + (j + 0.5)(x2 - x1)/S - 0.5, Y likewise."""
    height, width, size = 60, 80, 16
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    image = (0.01 * xs + 0.02 * ys + 1.0).expand(3, -1, -1).contiguous()
    box = torch.tensor([[10.0, 5.0, 60.0, 45.0]])
    warped = warp_regions(image, box, size)
    assert warped.shape == (1, 3, size, size)
    j = torch.arange(size, dtype=torch.float32)
    x = 10.0 + (j + 0.5) * 50.0 / size - 0.5
    y = 5.0 + (j + 0.5) * 40.0 / size - 0.5
    want = 0.01 * x[None, :] + 0.02 * y[:, None] + 1.0
    torch.testing.assert_close(warped[0, 0], want)
    # a box hanging over the left edge: samples more than half a pixel outside read 0 (the mean)
    outside = warp_regions(image, torch.tensor([[-40.0, 5.0, 40.0, 45.0]]), size)[0, 0]
    x = -40.0 + (j + 0.5) * 80.0 / size - 0.5
    assert (outside[:, x < -1.0] == 0).all() and (outside[:, x >= 0] > 0).all()


def test_model_warp_is_normalised_and_context_padded():
    model = canon.create_model("rcnn_alexnet", num_classes=2)
    image = torch.rand(3, 300, 400)
    box = torch.tensor([[120.0, 60.0, 315.0, 255.0]])  # 195 x 195: the padded box is 227 x 227 pixels
    crops = model.warp(image, box)
    normalised = (image - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225])[:, None, None]
    # a 227-pixel box warped to 227: one sample per pixel centre, so the crop is the image itself
    torch.testing.assert_close(crops[0], normalised[:, 44:271, 104:331])


# ----------------------------------------------------------------------------- fine-tuning


def test_fine_tuning_windows_are_a_quarter_positive_at_iou_0_5():
    torch.manual_seed(0)
    model = canon.create_model("rcnn_alexnet", num_classes=3, fine_tune_rois_per_image=32)
    gt, proposals = proposals_with_known_overlaps()
    labels_seen = []
    model.cnn = _Recorder(model.cnn, labels_seen)
    target = {"boxes": gt, "labels": torch.tensor([2])}
    model.train()
    image = torch.rand(3, 128, 420)
    torch.manual_seed(5)
    loss = model([image], [target], [proposals])["loss_classifier"]
    crops = labels_seen[0]
    assert crops.shape == (32, 3, 227, 227) and torch.isfinite(loss)
    # the same draw by hand: labels by IoU >= 0.5 with the ground truth added as a window
    torch.manual_seed(5)
    rois = torch.cat([proposals, gt])
    iou = ref_box_iou(gt, rois)[0]
    labels = torch.where(iou >= 0.5, 2, 0)
    positive, negative = model.sampler(labels)
    chosen = torch.where(positive | negative)[0]
    assert (labels[chosen] == 2).sum() == 8 and (labels[chosen] == 0).sum() == 24
    torch.testing.assert_close(crops, model.warp(image, rois[chosen]))  # the windows the CNN was given


class _Recorder(nn.Module):
    """Wraps the CNN, keeps the crops it is called with."""

    def __init__(self, cnn, seen):
        super().__init__()
        self.inner, self.seen = cnn, seen
        self.classifier, self.features, self.avgpool = cnn.classifier, cnn.features, cnn.avgpool

    def forward(self, x):
        self.seen.append(x.detach())
        return self.inner(x)


# ----------------------------------------------------------------------------- SVMs and ridge


def test_converged_hard_negative_mining_equals_an_svm_on_every_negative():
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    positives = rng.normal(1.5, 1.0, (40, 6)).astype(np.float32)
    negatives = rng.normal(-1.0, 1.0, (3000, 6)).astype(np.float32)
    w, b, stats = mine_hard_negatives(positives, negatives, c=0.1, initial_negatives=200, rounds=10)
    assert stats["hard_left"] == 0 and stats["rounds"] >= 1 and max(stats["cache_sizes"]) < 3000
    full = LinearSVC(C=0.1, loss="hinge", dual=True, class_weight={1: 2.0, 0: 1.0}, intercept_scaling=10.0,
                     max_iter=20000, random_state=0).fit(np.concatenate([positives, negatives]),
                                                         np.r_[np.ones(40), np.zeros(3000)])
    points = np.concatenate([positives, negatives[:500]])
    np.testing.assert_allclose(points @ w + b, full.decision_function(points), atol=0.05)


class TinyCNN(nn.Module):
    """An AlexNet-layout stand-in (features, avgpool, classifier ending in the class layer) for quick fits."""

    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.0),
                                        nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_rcnn(proposals):
    torch.manual_seed(0)
    return RCNN(num_classes=2, cnn=TinyCNN(2), warp_size=64, context_padding=4, proposal_method=lambda image: proposals)


def test_second_stage_equals_svm_on_all_negatives_and_closed_form_ridge():
    from sklearn.svm import LinearSVC

    gt = torch.tensor([[20.0, 20.0, 80.0, 90.0]])
    g = torch.Generator().manual_seed(0)
    jitter = torch.rand(200, 4, generator=g) * 60 - 30
    proposals = (gt + jitter).clamp(0, 120)
    proposals = torch.cat([proposals, torch.tensor([[0.0, 0.0, 10.0, 10.0]])])
    proposals = proposals[(proposals[:, 2] > proposals[:, 0] + 2) & (proposals[:, 3] > proposals[:, 1] + 2)]
    image = torch.rand(3, 120, 120, generator=g)
    dataset = [(image, {"boxes": gt, "labels": torch.tensor([1])})]
    model = tiny_rcnn(proposals)
    model.eval()
    stats = fit_svms_and_box_regressors(model, dataset, negatives_per_image=10_000, regression_samples_per_image=10_000,
                                        svm_c=1.0, mining_rounds=10)
    assert model.svms.fitted and model.box_regressors.fitted and stats["positives"] == [1]
    iou = ref_box_iou(gt, proposals)[0]
    negatives, near = proposals[iou < 0.3], proposals[iou > 0.6]
    assert stats["negative_pool"] == len(negatives) and stats["regression_samples"] == len(near)
    with torch.no_grad():
        positive_x = model.region_features(image, gt)["classifier"].numpy()
        negative_x = model.region_features(image, negatives)["classifier"].numpy()
        near_x = model.region_features(image, near)["regression"].numpy().astype(np.float64)
    scale = float(model.svms.feature_scale)
    norms = np.linalg.norm(np.concatenate([negative_x, positive_x]), axis=1)
    assert scale == pytest.approx(20.0 / norms.mean(), rel=1e-5)  # mean norm 20 (R-CNN)
    full = LinearSVC(C=1.0, loss="hinge", dual=True, class_weight={1: 2.0, 0: 1.0}, intercept_scaling=10.0,
                     max_iter=20000, random_state=0).fit(np.concatenate([positive_x, negative_x]) * scale,
                                                         np.r_[np.ones(1), np.zeros(len(negative_x))])
    points = np.concatenate([positive_x, negative_x]) * scale
    ours = points @ model.svms.weight[0].numpy() + float(model.svms.bias[0])
    np.testing.assert_allclose(ours, full.decision_function(points), atol=0.05)
    # ridge: centred closed form on the scaled pool5 features of the proposals with IoU > 0.6
    matched = gt.expand(len(near), 4)
    pw, ph = near[:, 2] - near[:, 0], near[:, 3] - near[:, 1]
    targets = torch.stack([((matched[:, 0] + matched[:, 2]) - (near[:, 0] + near[:, 2])) / 2 / pw,
                           ((matched[:, 1] + matched[:, 3]) - (near[:, 1] + near[:, 3])) / 2 / ph,
                           torch.log((matched[:, 2] - matched[:, 0]) / pw),
                           torch.log((matched[:, 3] - matched[:, 1]) / ph)], dim=1).double().numpy()
    x = near_x * float(model.box_regressors.feature_scale)
    x_mean, t_mean = x.mean(0), targets.mean(0)
    weight = np.linalg.solve((x - x_mean).T @ (x - x_mean) + 1000.0 * np.eye(x.shape[1]),
                             (x - x_mean).T @ (targets - t_mean))  # (D, 4)
    np.testing.assert_allclose(model.box_regressors.weight[0].numpy(), weight.T, atol=1e-4)
    np.testing.assert_allclose(model.box_regressors.bias[0].numpy(), t_mean - x_mean @ weight, atol=1e-4)


def test_detections_are_svm_margins_regressed_clipped_and_suppressed_per_class():
    g = torch.Generator().manual_seed(1)
    proposals = torch.tensor([[5.0, 5.0, 60.0, 60.0], [8.0, 6.0, 62.0, 58.0], [50.0, 40.0, 119.0, 99.0],
                              [0.0, 0.0, 30.0, 100.0], [70.0, 10.0, 110.0, 50.0]])
    torch.manual_seed(0)
    model = RCNN(num_classes=3, cnn=TinyCNN(3), warp_size=64, context_padding=4, proposal_method=lambda i: proposals)
    model.eval()
    model.svms.weight.copy_(torch.randn(2, 12, generator=g))
    model.svms.bias.copy_(torch.randn(2, generator=g))
    model.svms.fitted.fill_(True)
    model.box_regressors.weight.copy_(torch.randn(2, 4, 16, generator=g) * 0.05)
    model.box_regressors.fitted.fill_(True)
    image = torch.rand(3, 100, 120, generator=g)
    with torch.no_grad():
        out = model([image])[0]
        features = model.region_features(image, proposals)
    scores = features["classifier"] @ model.svms.weight.t() + model.svms.bias  # (5, 2)
    deltas = torch.einsum("kd,cjd->kcj", features["regression"], model.box_regressors.weight)  # (5, 2, 4)
    boxes = ref_decode(deltas.reshape(5, 8), proposals, (1.0, 1.0, 1.0, 1.0))  # (5, 2, 4)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, 120)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, 100)
    flat_boxes, flat_scores = boxes.reshape(-1, 4), scores.reshape(-1)
    labels = torch.tensor([1, 2]).repeat(5)
    keep = ref_batched_nms(flat_boxes, flat_scores, labels, 0.3)
    torch.testing.assert_close(out["scores"], flat_scores[keep])
    torch.testing.assert_close(out["boxes"], flat_boxes[keep])
    assert out["labels"].tolist() == labels[keep].tolist()
    assert set(model.times.seconds) == {"proposals", "warp", "cnn", "svm"}


def test_softmax_scores_before_the_svms_and_stage_times():
    proposals = torch.tensor([[5.0, 5.0, 60.0, 60.0], [50.0, 40.0, 119.0, 99.0]])
    model = tiny_rcnn(proposals).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 100, 120)])[0]
    assert (out["scores"] > 0.05).all() and (out["scores"] <= 1).all()
    default = canon.create_model("rcnn_alexnet", num_classes=2, max_proposals=20, proposal_max_side=64,
                                 proposal_mode="single", crops_per_batch=8).eval()
    with torch.no_grad():
        default([torch.rand(3, 48, 64)])
    assert {"proposals", "warp", "cnn", "svm"} <= set(default.times.seconds) and default.times.images == 1
    per_image = default.times.per_image()
    assert per_image["total"] == pytest.approx(sum(default.times.seconds.values()))


def test_bad_inputs_are_rejected():
    model = tiny_rcnn(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\[K, 4\]"):
        model.eval()([torch.rand(3, 64, 64)], proposals=[torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="targets are required"):
        model.train()([torch.rand(3, 64, 64)])
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        model([torch.rand(1, 64, 64)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    with pytest.raises(ValueError, match="warp_size"):
        RCNN(warp_size=32)
    with pytest.raises(ValueError, match="positives and negatives"):
        mine_hard_negatives(np.zeros((0, 3)), np.zeros((4, 3)))


# ----------------------------------------------------------------------------- through the detection task


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [
    ("rcnn_alexnet", ["--model-arg", "fine_tune_rois_per_image=8", "--model-arg", "max_proposals=20"]),
    ("sppnet_resnet18", ["--model-arg", "min_size=64", "--model-arg", "max_size=64", "--model-arg",
                         "representation_size=64"]),
    ("fast_rcnn_resnet18", ["--model-arg", "min_size=64", "--model-arg", "max_size=64", "--model-arg",
                            "representation_size=64"]),
])
def test_canon_train_eval_predict_round_trip(tmp_path, name, extra):
    """canon train (2 steps of the CNN stage) -> canon eval (the same figure) -> canon predict, each model
    with its own selective-search proposals (single strategy on 64 px canvases, to be quick)."""
    import contextlib
    import io
    import json

    from canon.cli import main
    from canon.tasks.detection import write_digit_canvases

    def run(argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        return code, out.getvalue(), err.getvalue()

    canvases = write_digit_canvases(tmp_path / "data", num_train=4, num_test=2, size=64, digit_sizes=(16, 28), seed=1)
    data, out = f"voc-xml:{canvases}", tmp_path / "run"
    proposals = ["--model-arg", "proposal_mode=single", "--model-arg", "proposal_max_side=64",
                 "--model-arg", f"proposal_cache={tmp_path / 'ss'}"]
    code, _, err = run(["train", name, "--data", data, "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size",
                        "2", "--lr", "0.001", "--out", out, "--quiet"] + proposals + extra)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    code, text, err = run(["eval", out, "--data", data, "--json"])
    assert code == 0, err
    assert json.loads(text)["test_ap50"] == pytest.approx(metrics["test_ap50"])
    assert len(list((tmp_path / "ss").glob("*.npy"))) == 6  # one search per image, reused by eval
    code, text, err = run(["predict", out, canvases / "images" / "test-0000.png", "--save-dir", tmp_path / "p"])
    assert code == 0, err
    assert (tmp_path / "p" / "test-0000_detections.png").is_file()
