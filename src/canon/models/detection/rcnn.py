"""R-CNN: regions with CNN features, the 2014 pipeline step by step.

Paper: Rich feature hierarchies for accurate object detection and semantic segmentation, Girshick,
Donahue, Darrell, Malik, 2014, arXiv:1311.2524 (v5).

Follows the paper:
    * Region proposals (Sec. 2.1): selective search in fast mode, about 2,000 per image
      (canon.ops.SelectiveSearch).
    * Warping (Sec. 2.1, Appendix A): each proposal is dilated so that, once warped to
      227 x 227, there are exactly p = 16 pixels of image context around the original box; the
      dilated box is warped anisotropically to 227 x 227 whatever its aspect ratio; the part outside
      the image is filled with the mean (zero after mean subtraction).
    * Features (Sec. 2.1): a CNN over every warped region, one forward pass each (canon's
      AlexNet, torchvision's single-tower layout): pool5 (256 x 6 x 6 = 9216) and fc7 (4096).
    * Fine-tuning (Sec. 2.3): the CNN's 1000-way layer is replaced by an (N + 1)-way one; proposals
      with IoU >= 0.5 with a ground truth (and the ground truths themselves) are positives of that
      box's class, the rest background; 128 windows per mini-batch, 32 positive and 96 background
      (``fine_tune_rois_per_image``, ``fine_tune_positive_fraction`` per image).
    * Object classifiers (Sec. 2.3, Appendix B): one linear SVM per class on fc7 features of the
      fine-tuned net; positives are the ground-truth boxes only, negatives proposals with IoU < 0.3
      with every instance of the class, the rest ignored; standard hard-negative mining; liblinear's
      L2-regularised hinge loss with C = 0.001, positive weight 2 and bias multiplier 10 (the
      released code's settings), features scaled to a mean norm of 20.
    * Bounding-box regression (Appendix C): per class, ridge regression (λ = 1000) from pool5
      features of proposals with IoU > 0.6 with a ground truth to that box's
      t = ((G_x - P_x) / P_w, (G_y - P_y) / P_h, ln(G_w / P_w), ln(G_h / P_h)).
    * Test time (Sec. 2.2): score every proposal with every class's SVM, regress its box with
      that class's regressor, then greedy NMS per class at IoU 0.3 (the released code's value).

Deviates, and why:
    * Hard-negative mining runs over a random subset of each training image's negatives
      (``negatives_per_image`` proposals, whose fc7 features are computed once) instead of all of
      its ~2,000 windows, and for at most ``mining_rounds`` rounds: on two CPU cores every window is
      a full AlexNet forward pass. The rounds are the paper's: train, add every negative scoring
      above -1 (a margin violator), drop cached negatives scoring below -1.2, train again.
    * Without fitted SVMs (``model.svms.fitted`` is False, e.g. right after ``canon train``, which
      runs the fine-tuning stage only) the fine-tuned softmax scores the regions, the variant the
      paper compares in Appendix B; without fitted regressors the proposals are kept as they are.
    * Box coordinates are continuous (no "+1" widths); at test time the best 100 detections per
      image are kept (the paper kept all).
    * No ImageNet pre-training exists here: the CNN is fine-tuned from its initialisation.

Training is multi-stage (``fine_tune`` the CNN with SGD on the loss dict; then
:func:`fit_svms_and_box_regressors`); SPPnet (sppnet.py) reuses the second stage. The CNN stage
runs through ``canon train rcnn_alexnet`` too, since in training mode the model returns
{"loss_classifier"}.

Contract: ``model(images, targets=None, proposals=None)`` (external_proposals.py). Eval: per image
{"boxes" [K, 4] xyxy in the input image's pixels, "labels" [K], "scores" [K]} (SVM margins, or
softmax probabilities before the SVMs are fitted). ``model.times`` holds the seconds per stage:
proposals, warp, cnn, svm (scoring, regression and NMS).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canon.models.classification.alexnet import AlexNet
from canon.models.detection.external_proposals import (StageTimes, check_inputs, proposals_for,
                                                       selective_search_proposals)
from canon.models.detection.transform import IMAGENET_MEAN, IMAGENET_STD, example_detection_inputs
from canon.ops import BalancedPositiveNegativeSampler, BoxCoder, batched_nms, box_iou, clip_boxes_to_image, roi_align
from canon.registry import register_model

__all__ = ["context_padded_boxes", "warp_regions", "LinearSVMs", "BoxRegressors", "RCNN", "region_labels",
           "fit_svms_and_box_regressors", "mine_hard_negatives", "rcnn_alexnet"]

PAPER = "Rich feature hierarchies for accurate object detection and semantic segmentation, 2014, arXiv:1311.2524"


# --------------------------------------------------------------------------- warping


def context_padded_boxes(boxes: Tensor, warp_size: int = 227, padding: int = 16) -> Tensor:
    """Dilate xyxy boxes [K, 4] about their centres so that ``padding`` warped pixels of context surround them.

    The box fills warp_size - 2·padding of the warped square, so each side grows by the factor
    warp_size / (warp_size - 2·padding) (227 / 195 for R-CNN).
    """
    if not 0 <= 2 * padding < warp_size:
        raise ValueError(f"padding must satisfy 0 <= 2 * padding < warp_size, got padding={padding}, "
                         f"warp_size={warp_size}")
    factor = warp_size / (warp_size - 2 * padding)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * factor
    return torch.cat([centre - half, centre + half], dim=1)


def warp_regions(image: Tensor, boxes: Tensor, size: int = 227) -> Tensor:
    """Bilinear anisotropic warp of each xyxy box [K, 4] of ``image`` [C, H, W] to [K, C, size, size].

    Output pixel (i, j) of box (x1, y1, x2, y2) samples the image at the continuous point
    (x1 + (j + 0.5)·(x2 - x1) / size, y1 + (i + 0.5)·(y2 - y1) / size) (pixel centres at +0.5):
    RoIAlign with one sample per bin and ``aligned=True``. Points more than half a pixel outside
    the image read 0 (the mean, for a normalised image).
    """
    return roi_align(image[None], [boxes], size, spatial_scale=1.0, sampling_ratio=1, aligned=True).contiguous()


# --------------------------------------------------------------------------- the post-hoc linear models


class LinearSVMs(nn.Module):
    """One linear SVM per foreground class: scores [K, C - 1] = (s · x) W^T + b, s the feature scale.

    Buffers (saved with the model): ``weight`` [C - 1, D], ``bias`` [C - 1], ``feature_scale`` and
    ``fitted`` (False until :func:`fit_svms_and_box_regressors` sets them).
    """

    def __init__(self, num_foreground: int, num_features: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_foreground, num_features))
        self.register_buffer("bias", torch.zeros(num_foreground))
        self.register_buffer("feature_scale", torch.tensor(1.0))
        self.register_buffer("fitted", torch.tensor(False))

    def forward(self, features: Tensor) -> Tensor:
        return (features * self.feature_scale) @ self.weight.t() + self.bias  # (K, C - 1)


class BoxRegressors(nn.Module):
    """Per foreground class, a linear map from features to box deltas: [K, D] -> [K, C - 1, 4].

    Buffers: ``weight`` [C - 1, 4, D], ``bias`` [C - 1, 4], ``feature_scale``, ``fitted``.
    """

    def __init__(self, num_foreground: int, num_features: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_foreground, 4, num_features))
        self.register_buffer("bias", torch.zeros(num_foreground, 4))
        self.register_buffer("feature_scale", torch.tensor(1.0))
        self.register_buffer("fitted", torch.tensor(False))

    def forward(self, features: Tensor) -> Tensor:
        return torch.einsum("kd,cjd->kcj", features * self.feature_scale, self.weight) + self.bias  # (K, C-1, 4)


# --------------------------------------------------------------------------- the model


def region_labels(rois: Tensor, gt_boxes: Tensor, gt_labels: Tensor, foreground_iou: float
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Per RoI: class (its best ground truth's when IoU >= ``foreground_iou``, else 0), best IoU, best index."""
    if gt_boxes.shape[0] == 0:
        zeros = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
        return zeros, rois.new_zeros(rois.shape[0]), zeros
    best_iou, best = box_iou(gt_boxes, rois).nan_to_num(0.0).max(dim=0)  # (R,)
    labels = torch.where(best_iou >= foreground_iou, gt_labels[best], torch.zeros_like(gt_labels[best]))
    return labels, best_iou, best


class RCNN(nn.Module):
    """Selective search -> warp each region to 227 x 227 -> CNN -> per-class SVMs and box regressors -> NMS.

    Args (keyword-only):
        num_classes: classes including the background (21 for PASCAL VOC).
        cnn: an AlexNet-layout classifier (``features``, ``avgpool``, ``classifier`` whose last layer
            gives ``num_classes`` logits); default canon's AlexNet with ``num_classes`` outputs.
        warp_size, context_padding: the warp (227, p = 16).
        image_mean, image_std: the normalisation (ImageNet's).
        proposal_method, proposal_cache, max_proposals, proposal_mode, proposal_max_side: the proposals.
        crops_per_batch: regions per CNN forward pass (memory, not results).
        fine_tune_rois_per_image, fine_tune_positive_fraction, fine_tune_foreground_iou: fine-tuning.
        nms_threshold, detections_per_image, score_threshold: test time (the score threshold
            applies to softmax probabilities only; SVM margins are kept however low).
    """

    def __init__(self, *, num_classes: int = 21, cnn: nn.Module | None = None, warp_size: int = 227,
                 context_padding: int = 16, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, proposal_method=None, proposal_cache: str | None = None,
                 max_proposals: int = 2000, proposal_mode: str = "fast", proposal_max_side: int | None = 500,
                 crops_per_batch: int = 64, fine_tune_rois_per_image: int = 128,
                 fine_tune_positive_fraction: float = 0.25, fine_tune_foreground_iou: float = 0.5,
                 nms_threshold: float = 0.3, detections_per_image: int = 100, score_threshold: float = 0.05):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (it includes the background), got {num_classes!r}")
        if not isinstance(warp_size, int) or warp_size < 63:
            raise ValueError(f"warp_size must be an int >= 63 (AlexNet's smallest input), got {warp_size!r}")
        context_padded_boxes(torch.zeros(0, 4), warp_size, context_padding)  # checks the padding
        if not isinstance(crops_per_batch, int) or crops_per_batch < 1:
            raise ValueError(f"crops_per_batch must be a positive int, got {crops_per_batch!r}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError(f"image_mean and image_std need 3 values (RGB), got {image_mean!r}, {image_std!r}")
        self.num_classes = num_classes
        self.cnn = cnn if cnn is not None else AlexNet(num_classes=num_classes)
        self.warp_size, self.context_padding, self.crops_per_batch = warp_size, context_padding, crops_per_batch
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.sampler = BalancedPositiveNegativeSampler(fine_tune_rois_per_image, fine_tune_positive_fraction)
        self.fine_tune_foreground_iou = float(fine_tune_foreground_iou)
        fc7 = self.cnn.classifier[-1].in_features  # 4096
        pool5 = self.cnn.classifier[1].in_features if isinstance(self.cnn.classifier[1], nn.Linear) else \
            self.cnn.classifier[0].in_features  # 256 * 6 * 6
        self.svms = LinearSVMs(num_classes - 1, fc7)
        self.box_regressors = BoxRegressors(num_classes - 1, pool5)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))  # Appendix C's t, unscaled
        self.nms_threshold, self.detections_per_image = float(nms_threshold), int(detections_per_image)
        self.score_threshold = float(score_threshold)
        self.proposal_method = proposal_method if proposal_method is not None else selective_search_proposals(
            mode=proposal_mode, max_proposals=max_proposals, max_side=proposal_max_side, cache_dir=proposal_cache)
        self.times = StageTimes()

    @property
    def in_chans(self) -> int:
        return 3

    def example_inputs(self, input_shape: tuple[int, ...] | None = None) -> tuple[list[Tensor]]:
        return example_detection_inputs(self, input_shape)

    # ------------------------------------------------------------------ regions -> CNN
    def warp(self, image: Tensor, boxes: Tensor) -> Tensor:
        """Normalise ``image`` [3, H, W] and warp each context-padded box: [K, 3, 227, 227]."""
        normalised = (image - self.image_mean) / self.image_std
        return warp_regions(normalised, context_padded_boxes(boxes, self.warp_size, self.context_padding),
                            self.warp_size)

    def cnn_outputs(self, crops: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """pool5 [K, 9216], fc7 [K, 4096] and logits [K, num_classes] of warped regions [K, 3, 227, 227]."""
        pool5 = torch.flatten(self.cnn.avgpool(self.cnn.features(crops)), 1)  # (K, 9216)
        fc7 = self.cnn.classifier[:-1](pool5)  # (K, 4096)
        return pool5, fc7, self.cnn.classifier[-1](fc7)

    def region_features(self, image: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """Eval-mode features of the regions ``boxes`` [K, 4] of one image, ``crops_per_batch`` at a time:
        {"classifier" (fc7) [K, 4096], "regression" (pool5) [K, 9216], "logits" [K, num_classes]}."""
        pool5, fc7, logits = [], [], []
        for chunk in boxes.split(self.crops_per_batch):
            with self.times.measure("warp"):
                crops = self.warp(image, chunk)
            with self.times.measure("cnn"):
                a, b, c = self.cnn_outputs(crops)
            pool5.append(a)
            fc7.append(b)
            logits.append(c)
        empty = boxes.new_zeros((0,))
        return {"classifier": torch.cat(fc7) if fc7 else empty.view(0, self.svms.weight.shape[1]),
                "regression": torch.cat(pool5) if pool5 else empty.view(0, self.box_regressors.weight.shape[2]),
                "logits": torch.cat(logits) if logits else empty.view(0, self.num_classes)}

    # ------------------------------------------------------------------ fine-tuning
    def fine_tune_loss(self, images: Sequence[Tensor], targets: Sequence[dict], proposals: Sequence[Tensor]) -> Tensor:
        """Cross-entropy of the (N + 1)-way CNN over each image's sampled windows (proposals + ground truths)."""
        crops, labels = [], []
        for image, target, rois in zip(images, targets, proposals):
            rois = torch.cat([rois, target["boxes"].to(rois.dtype)])
            image_labels, _, _ = region_labels(rois, target["boxes"], target["labels"], self.fine_tune_foreground_iou)
            positive, negative = self.sampler(image_labels)
            chosen = torch.where(positive | negative)[0]
            crops.append(self.warp(image, rois[chosen]))
            labels.append(image_labels[chosen])
        logits = self.cnn(torch.cat(crops)) if len(crops) else None
        return F.cross_entropy(logits, torch.cat(labels))

    # ------------------------------------------------------------------ test time
    def detect(self, image: Tensor, proposals: Tensor) -> dict[str, Tensor]:
        """Score, regress and suppress the proposals of one image (the paper's test-time procedure)."""
        height, width = image.shape[-2:]
        features = self.region_features(image, proposals)
        with self.times.measure("svm"):
            if bool(self.svms.fitted):
                scores = self.svms(features["classifier"])  # (K, C - 1) margins
                threshold = -math.inf
            else:  # Appendix B's softmax variant
                scores = F.softmax(features["logits"], dim=1)[:, 1:]
                threshold = self.score_threshold
            num_rois, num_foreground = scores.shape
            boxes = proposals[:, None, :].expand(num_rois, num_foreground, 4)
            if bool(self.box_regressors.fitted):
                deltas = self.box_regressors(features["regression"])  # (K, C - 1, 4)
                boxes = self.box_coder.decode(deltas.reshape(-1, 4), boxes.reshape(-1, 4)).view(num_rois,
                                                                                               num_foreground, 4)
            boxes = clip_boxes_to_image(boxes.reshape(-1, 4), (height, width))
            labels = torch.arange(1, num_foreground + 1, device=image.device).repeat(num_rois)
            scores = scores.reshape(-1)
            keep = torch.where((scores > threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_threshold)[: self.detections_per_image]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}

    def forward(self, images, targets: Sequence[dict] | None = None, proposals: Sequence[Tensor] | None = None):
        images, targets = check_inputs(images, targets, 3, self.num_classes, self.training)
        proposals = proposals_for(images, proposals, self.proposal_method, self.times)
        if self.training:
            return {"loss_classifier": self.fine_tune_loss(images, targets, proposals)}
        detections = [self.detect(image, rois) for image, rois in zip(images, proposals)]
        self.times.images += len(images)
        return detections


# --------------------------------------------------------------------------- the second stage: SVMs, ridge


def mine_hard_negatives(positives: np.ndarray, negatives: np.ndarray, *, c: float = 1e-3,
                        positive_weight: float = 2.0, bias_multiplier: float = 10.0, hard_threshold: float = -1.0,
                        easy_threshold: float = -1.2, rounds: int = 3, initial_negatives: int = 1000,
                        seed: int = 0) -> tuple[np.ndarray, float, dict]:
    """A linear SVM (liblinear's L2-regularised hinge loss) trained with hard-negative mining.

    positives [P, D], negatives [M, D] (scaled features) -> (w [D], b, stats). Round 0 trains on
    the positives and ``initial_negatives`` random negatives; each further round adds every
    negative scoring above ``hard_threshold`` and drops cached ones below ``easy_threshold``, until
    no negative outside the cache is hard or ``rounds`` retrainings have been done.
    """
    from sklearn.svm import LinearSVC

    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError(f"an SVM needs positives and negatives, got {len(positives)} and {len(negatives)}")
    rng = np.random.default_rng(seed)
    cache = np.sort(rng.permutation(len(negatives))[: min(initial_negatives, len(negatives))])
    stats = {"rounds": 0, "cache_sizes": []}
    for round_index in range(rounds + 1):
        svm = LinearSVC(C=c, loss="hinge", dual=True, class_weight={1: positive_weight, 0: 1.0},
                        intercept_scaling=bias_multiplier, max_iter=20000, random_state=seed)
        features = np.concatenate([positives, negatives[cache]])
        svm.fit(features, np.concatenate([np.ones(len(positives)), np.zeros(len(cache))]))
        stats["rounds"], stats["cache_sizes"] = round_index, stats["cache_sizes"] + [int(len(cache))]
        scores = svm.decision_function(negatives)
        in_cache = np.zeros(len(negatives), dtype=bool)
        in_cache[cache] = True
        hard = np.where((scores > hard_threshold) & ~in_cache)[0]
        if len(hard) == 0 or round_index == rounds:
            break
        keep = cache[scores[cache] >= easy_threshold]  # evict the easy ones
        cache = np.union1d(keep, hard)
    stats["hard_left"] = int(((svm.decision_function(negatives) > hard_threshold) & ~in_cache).sum())
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0]), stats


def _feature_scale(features: np.ndarray, target_norm: float) -> float:
    """The scale giving ``features`` a mean L2 norm of ``target_norm`` (R-CNN's feat_norm_mean = 20)."""
    mean_norm = float(np.linalg.norm(features, axis=1).mean()) if len(features) else 0.0
    return target_norm / mean_norm if mean_norm > 0 else 1.0


@torch.no_grad()
def fit_svms_and_box_regressors(model: nn.Module, dataset, *, negatives_per_image: int = 200,
                                regression_samples_per_image: int = 32, negative_iou: float = 0.3,
                                regression_iou: float = 0.6, svm_c: float = 1e-3, positive_weight: float = 2.0,
                                mining_rounds: int = 3, ridge_alpha: float = 1000.0, feature_norm: float = 20.0,
                                seed: int = 0, report: Callable[[str], None] | None = None) -> dict:
    """R-CNN's second stage on ``dataset`` (items (image [3, H, W], target)): fit ``model.svms`` and
    ``model.box_regressors``. Works for any model with ``proposal_method``, ``region_features(image,
    boxes)`` -> {"classifier", "regression"} and those two modules (R-CNN, SPPnet).

    Per image, the features of its ground truths (the SVM positives), of up to
    ``negatives_per_image`` random proposals with IoU < ``negative_iou`` to every object of some
    class (the negative pool) and of up to ``regression_samples_per_image`` proposals with IoU >
    ``regression_iou`` to a ground truth (the ridge samples) are computed once. Returns statistics.
    """
    from sklearn.linear_model import Ridge

    model.eval()
    num_foreground = model.num_classes - 1
    rng = np.random.default_rng(seed)
    positives = [[] for _ in range(num_foreground)]
    pool_features, pool_iou = [], []  # negatives: features and IoU with each class's objects (max)
    regression_x, regression_t, regression_class = [], [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        boxes, labels = target["boxes"].float(), target["labels"]
        proposals = model.proposal_method(image).to(boxes.dtype)
        iou = box_iou(boxes, proposals).nan_to_num(0.0) if len(boxes) else proposals.new_zeros((0, len(proposals)))
        per_class = torch.zeros(num_foreground, len(proposals))
        for c in range(num_foreground):
            if (labels == c + 1).any():
                per_class[c] = iou[labels == c + 1].max(dim=0).values
        negative_any = torch.where((per_class < negative_iou).any(dim=0))[0].numpy()
        chosen = rng.permutation(negative_any)[:negatives_per_image]
        near = torch.where(iou.max(dim=0).values > regression_iou)[0].numpy() if len(boxes) else np.zeros(0, int)
        near = rng.permutation(near)[:regression_samples_per_image]
        regions = torch.cat([boxes, proposals[chosen], proposals[near]])
        features = model.region_features(image, regions)
        classifier, regression = features["classifier"].numpy(), features["regression"].numpy()
        for k, label in enumerate(labels.tolist()):
            positives[label - 1].append(classifier[k])
        start = len(boxes)
        pool_features.append(classifier[start:start + len(chosen)])
        pool_iou.append(per_class[:, chosen].t().numpy())
        if len(near):
            best = iou[:, near].argmax(dim=0)
            targets = model.box_coder.encode(boxes[best], proposals[near])
            regression_x.append(regression[start + len(chosen):])
            regression_t.append(targets.numpy())
            regression_class.append(labels[best].numpy() - 1)
        if report is not None and (index + 1) % 20 == 0:
            report(f"features: {index + 1}/{len(dataset)} images")
    pool_features = np.concatenate(pool_features) if pool_features else np.zeros((0, model.svms.weight.shape[1]))
    pool_iou = np.concatenate(pool_iou) if pool_iou else np.zeros((0, num_foreground))
    all_positives = [np.stack(p) if p else np.zeros((0, pool_features.shape[1]), np.float32) for p in positives]
    svm_scale = _feature_scale(np.concatenate([pool_features] + all_positives), feature_norm)
    stats: dict = {"positives": [len(p) for p in all_positives], "negative_pool": int(len(pool_features)),
                   "svm_feature_scale": svm_scale, "classes": {}}
    weight = torch.zeros_like(model.svms.weight)
    bias = torch.zeros_like(model.svms.bias)
    for c in range(num_foreground):
        negatives = pool_features[pool_iou[:, c] < negative_iou] * svm_scale
        if len(all_positives[c]) == 0 or len(negatives) == 0:
            stats["classes"][c + 1] = "skipped: no positives or negatives"
            bias[c] = -1e3  # a class never seen never fires
            continue
        w, b, class_stats = mine_hard_negatives(all_positives[c] * svm_scale, negatives, c=svm_c,
                                                positive_weight=positive_weight, rounds=mining_rounds, seed=seed)
        weight[c], bias[c] = torch.from_numpy(w), b
        stats["classes"][c + 1] = class_stats
        if report is not None:
            report(f"svm class {c + 1}: {class_stats}")
    model.svms.weight.copy_(weight)
    model.svms.bias.copy_(bias)
    model.svms.feature_scale.fill_(svm_scale)
    model.svms.fitted.fill_(True)

    if regression_x:
        x, t, cls = np.concatenate(regression_x), np.concatenate(regression_t), np.concatenate(regression_class)
        ridge_scale = _feature_scale(x, feature_norm)
        weight = torch.zeros_like(model.box_regressors.weight)
        bias = torch.zeros_like(model.box_regressors.bias)
        for c in range(num_foreground):
            members = cls == c
            if members.sum() < 2:
                continue
            ridge = Ridge(alpha=ridge_alpha).fit(x[members] * ridge_scale, t[members])
            weight[c] = torch.from_numpy(ridge.coef_.astype(np.float32))  # (4, D)
            bias[c] = torch.from_numpy(ridge.intercept_.astype(np.float32))
        model.box_regressors.weight.copy_(weight)
        model.box_regressors.bias.copy_(bias)
        model.box_regressors.feature_scale.fill_(ridge_scale)
        model.box_regressors.fitted.fill_(True)
        stats["regression_samples"] = int(len(x))
    return stats


# ----------------------------------------------------------------------------- registered names
@register_model(RCNN, task="detection", paper=PAPER, num_classes=21, input_size=(3, 500, 500))
def rcnn_alexnet(**kwargs) -> RCNN:
    return RCNN(**kwargs)
