"""YOLO v1, v2 and v3: one network looks at the whole image once and regresses boxes and classes.

Papers:
    * "You Only Look Once: Unified, Real-Time Object Detection", Redmon, Divvala, Girshick,
      Farhadi, 2015, arXiv:1506.02640 (YOLO v1, Fast YOLO).
    * "YOLO9000: Better, Faster, Stronger", Redmon and Farhadi, 2016, arXiv:1612.08242 (v2).
    * "YOLOv3: An Incremental Improvement", Redmon and Farhadi, 2018, arXiv:1804.02767 (v3).

Follows the papers:
    * v1 (§2, Figure 3): a 448×448 image → 24 convolutions (1×1 reductions between 3×3s) and
      2 fully connected layers → an S×S×(B·5 + C) tensor; leaky ReLU 0.1 everywhere but the
      last layer (linear); dropout 0.5 after the first fully connected layer. Each cell predicts
      B boxes (x, y offsets within the cell, √w, √h relative to the image, a confidence) and one
      set of C class probabilities conditioned on the cell holding an object.
    * v1 loss (§2.2), summed: λ_coord = 5 on x, y and on √w, √h; λ_noobj = 0.5 on the
      confidence of predictors responsible for no object; the "responsible" predictor of an
      object is the one whose current box has the highest IoU with it; the confidence target
      is that IoU (confidence = Pr(Object)·IoU); the class error counts only in cells with an
      object. At test time the class-specific score is confidence × Pr(class | object).
    * Fast YOLO (§2): 9 convolutional layers with fewer filters, otherwise the same.
    * v2 (§2-3): Darknet-19 (Table 6) with batch normalisation on every convolution; for
      detection the classifier is replaced by three 3×3×1024 convolutions and a 1×1 output
      convolution with A·(5 + C) channels; a passthrough layer stacks the 26×26×512 features
      into 13×13×2048 and concatenates them before the last 3×3 convolution; A = 5 anchor
      priors (the VOC priors of the released yolo-voc.cfg by default, in units of the 32-px
      cell; pass k-means ones with ``anchors=``); direct location prediction
      b_x = σ(t_x) + c_x, b_y = σ(t_y) + c_y, b_w = p_w e^{t_w}, b_h = p_h e^{t_h},
      Pr(object)·IoU = σ(t_o); any input that is a multiple of 32 works, and
      ``YOLOv2.multiscale_sizes`` lists the paper's {320, 352, …, 608} for multi-scale
      training (the training task picks a new ``image_size`` from it every 10 batches).
    * v3 (§2): Darknet-53 (Table 1; 3×3/2 downsampling convolutions and residual 1×1-3×3
      blocks), predictions at three scales (strides 32, 16, 8) with 3 anchors each (the
      paper's 9 COCO anchors (10×13), …, (373×326) by default), each scale fed by the
      previous one through a 1×1 convolution, 2× upsampling and concatenation with the
      backbone's features of that stride; the same box parametrisation as v2; logistic
      objectness (target 1 for the best prior, predictions with IoU > 0.5 that are not the
      best ignored) and independent logistic class scores trained with binary cross-entropy;
      each object is assigned to one prior (the best by shape IoU over all nine).
    * ``yolov3_tiny``: the layer list of the released yolov3-tiny.cfg (7 convolutions and
      6 max-pools, two scales at strides 32 and 16, 6 anchors).

Deviates, and why:
    * ``num_classes`` counts the background, as torchvision's detectors and canon's detection
      data do (21 for VOC, 81 for COCO's 80 classes), so one number serves every detector; a
      YOLO has no background output and predicts C = num_classes − 1 classes (label − 1).
    * Images of any size are resized (bilinear, the shared ``GeneralizedRCNNTransform`` with a
      fixed size and no normalisation) to the square ``image_size`` and the detected boxes are
      scaled back to each image's own pixels, so a batch may mix sizes; the papers resize to
      the network size too and leave the rest to the demo code.
    * v1: the fully connected head sees (image_size/64)² × 1024 features and still outputs
      S×S cells, so ``image_size`` (a multiple of 64) and ``grid_size`` S are independent
      options (the paper has 448 and 7). If several objects' centres fall in one cell, the
      first listed is the cell's object (the paper's §2.4 names this limit; one class per
      cell). ``batch_norm=True`` adds v2's batch normalisation (not in the v1 paper), for
      training from scratch without ImageNet pre-training.
    * Fast YOLO: the paper gives only "9 convolutional layers" and "fewer filters";
      the widths follow darknet's yolov1-tiny.cfg (16, 32, …, 512 with a max-pool after each,
      then 1024 and 256, 8 layers), with a second 3×3×1024 as the ninth so the count is the
      paper's, and the cfg's single fully connected layer to the output.
    * v2: the paper gives no loss formula; ``yolov2_loss`` follows darknet's region layer:
      the best prior by shape IoU is responsible; coordinates by squared error on σ(t_x),
      σ(t_y), t_w, t_h scaled by (2 − w·h); objectness by squared error towards the IoU of
      the predicted box (object_scale 5) and towards 0 for predictors whose box overlaps no
      object by more than 0.6 (noobject_scale 1); classes by softmax cross-entropy (darknet
      takes the squared error of the softmax probabilities: the same optimum, better-scaled
      gradients). Darknet's early "match the priors" term (first 12,800 images) is left out.
      The passthrough stacks 2×2 blocks with ``pixel_unshuffle`` (darknet's reorg orders the
      channels differently; the same information) and, as in the paper, has no 1×1 reduction
      (the released yolo-voc.cfg inserts a 64-channel 1×1 convolution first).
    * v3: the coordinate loss is the squared error of σ(t_x), σ(t_y), t_w, t_h scaled by
      (2 − w·h), as darknet's yolo layer computes it (the paper: "sum of squared error").
      ``yolov3_tiny`` gives its finer scale priors 0, 1, 2 (the cfg's mask 1, 2, 3 reuses
      prior 3 at both scales and never uses prior 0).
    * Output convolutions start at N(0, 0.01²) with an objectness bias of −log(99), i.e. a
      prior probability 0.01 of an object (RetinaNet's initialisation, not in the YOLO
      papers), so that early training is not swamped by the many empty cells.
    * Losses are summed over the batch and divided by the number of images (darknet also
      divides by the batch).
    * Decoding clamps t_w, t_h at ln 1000 before the exponential, so an untrained head cannot
      overflow; v1's linear confidence and class outputs are clipped to [0, 1] before they are
      multiplied into a score.

None of these names is layout-compatible with a library; darknet weight files are not read.
Call contract (torchvision's detectors): ``model(images, targets)`` with ``images`` a list of
[3, H, W] float tensors in [0, 1] and, in training, ``targets`` a list of dicts with ``boxes``
Float[N, 4] (x1, y1, x2, y2) in the image's pixels and ``labels`` Int64[N] in 1..num_classes - 1
(0 is background); training returns a dict of losses, evaluation a list of dicts with
``boxes`` [K, 4], ``labels`` [K] and ``scores`` [K], boxes in the input image's pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from canon.models.detection.transform import example_detection_inputs, GeneralizedRCNNTransform
from canon.ops import batched_nms, box_iou
from canon.registry import register_model

__all__ = [
    "ConvBNLeaky", "Darknet19", "Darknet53", "DarknetResidual", "YOLOv1", "YOLOv2", "YOLOv3",
    "check_detection_input", "select_detections",
    "yolov1_targets", "decode_yolov1_boxes", "yolov1_loss", "decode_anchor_boxes", "assign_anchors",
    "yolov2_loss", "yolov3_loss", "VOC_PRIORS_V2", "COCO_ANCHORS_V3", "COCO_ANCHORS_V3_TINY",
    "yolov1", "yolov1_fast", "yolov2", "yolov3", "yolov3_tiny",
]

PAPER_V1 = "You Only Look Once: Unified, Real-Time Object Detection, 2015, arXiv:1506.02640"
PAPER_V2 = "YOLO9000: Better, Faster, Stronger, 2016, arXiv:1612.08242"
PAPER_V3 = "YOLOv3: An Incremental Improvement, 2018, arXiv:1804.02767"

LEAKY_SLOPE = 0.1
# v2: the 5 VOC priors of yolo-voc.cfg (k-means, distance 1 - IoU), (width, height) in 32-px cells.
VOC_PRIORS_V2 = ((1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053),
                 (11.2364, 10.0071))
# v3: the paper's 9 COCO anchors in pixels of a 416 input, smallest first (3 per scale: stride 8, 16, 32).
COCO_ANCHORS_V3 = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198),
                   (373, 326))
# yolov3-tiny.cfg's 6 anchors, smallest first (3 per scale: stride 16, 32).
COCO_ANCHORS_V3_TINY = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
OBJECT_PRIOR = 0.01


# ============================================================================ shared helpers


def check_detection_input(images, targets, *, num_classes: int, in_chans: int, training: bool,
                          model_name: str) -> None:
    """Raise ValueError/TypeError unless images and targets follow the detection contract.

    images: a list of [in_chans, H, W] float tensors; targets (required in training): one dict per
    image with ``boxes`` Float[N, 4] xyxy, x1 < x2 and y1 < y2, and ``labels`` Int64[N] in
    1..num_classes - 1 (``num_classes`` counts the background, label 0).
    """
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError(f"{model_name} expects a non-empty list of [{in_chans}, H, W] image tensors, got "
                        f"{type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise TypeError(f"{model_name}: images[{i}] must be a tensor [{in_chans}, H, W], got "
                            f"{type(image).__name__}")
        if image.dim() != 3 or image.shape[0] != in_chans:
            raise ValueError(f"{model_name}: images[{i}] must have shape [{in_chans}, H, W], got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise TypeError(f"{model_name}: images[{i}] must be a float tensor in [0, 1], got {image.dtype}")
    if targets is None:
        if training:
            raise ValueError(f"{model_name}: in training mode targets are required (a list of dicts with "
                             f"'boxes' and 'labels'); call model.eval() for detections")
        return
    if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
        raise ValueError(f"{model_name}: targets must be a list with one dict per image ({len(images)}), got "
                         f"{len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__}")
    for i, target in enumerate(targets):
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"{model_name}: targets[{i}] must be a dict with 'boxes' and 'labels'")
        boxes, labels = target["boxes"], target["labels"]
        expected = "Float[N, 4] boxes (x1, y1, x2, y2) with x1 < x2 and y1 < y2"
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            found = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"{model_name}: targets[{i}]['boxes'] must be {expected}, got {found}")
        if not boxes.is_floating_point():
            raise ValueError(f"{model_name}: targets[{i}]['boxes'] must be {expected}, got dtype {boxes.dtype}")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]) | ~torch.isfinite(boxes).all(dim=1)
        if bad.any():
            k = int(torch.where(bad)[0][0])
            raise ValueError(f"{model_name}: targets[{i}]['boxes'] must be {expected}; box {k} is "
                             f"{boxes[k].tolist()}")
        if not isinstance(labels, Tensor) or labels.shape != (boxes.shape[0],) or labels.is_floating_point():
            found = (f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__)
            raise ValueError(f"{model_name}: targets[{i}]['labels'] must be Int64[{boxes.shape[0]}], got {found}")
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > num_classes - 1):
            raise ValueError(f"{model_name}: targets[{i}]['labels'] must be class ids in 1..{num_classes - 1} "
                             f"(0 is background; num_classes={num_classes} counts it), got values "
                             f"{int(labels.min())}..{int(labels.max())}")


def select_detections(boxes: Tensor, class_scores: Tensor, *, score_threshold: float, nms_threshold: float,
                      topk_candidates: int, detections_per_image: int) -> dict:
    """Detections of one image from candidate boxes [M, 4] and class-specific scores [M, C].

    Every (box, class) pair with score > ``score_threshold`` is a candidate; the ``topk_candidates``
    best go through per-class NMS (``canon.ops.batched_nms``) and the ``detections_per_image``
    best survivors are returned with labels 1..C.
    """
    num_classes = class_scores.shape[1]
    scores = class_scores.flatten()  # (M*C,) box-major
    candidates = torch.where(scores > score_threshold)[0]
    scores = scores[candidates]
    if scores.numel() > topk_candidates:
        scores, order = scores.topk(topk_candidates)
        candidates = candidates[order]
    box_index = torch.div(candidates, num_classes, rounding_mode="floor")
    classes = candidates % num_classes
    kept_boxes = boxes[box_index]
    keep = batched_nms(kept_boxes, scores, classes, nms_threshold)[:detections_per_image]
    return {"boxes": kept_boxes[keep], "labels": classes[keep] + 1, "scores": scores[keep]}


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corresponding xyxy boxes [..., 4] and [..., 4] -> [...] (0 where the union is empty)."""
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).clamp(min=0).prod(-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).clamp(min=0).prod(-1)
    union = area1 + area2 - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


class ConvBNLeaky(nn.Sequential):
    """k×k convolution ("same" padding), optional batch norm, leaky ReLU 0.1."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, *, batch_norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                              bias=not batch_norm)
        if batch_norm:
            self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)


def make_darknet_layers(config: Sequence, in_chs: int, *, batch_norm: bool) -> tuple[nn.Sequential, int]:
    """Layers from a list of (out_channels, kernel_size[, stride]) and "M" (2×2/2 max-pool)."""
    layers: list[nn.Module] = []
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_chs, kernel_size, *stride = item
        layers.append(ConvBNLeaky(in_chs, out_chs, kernel_size, stride[0] if stride else 1, batch_norm=batch_norm))
        in_chs = out_chs
    return nn.Sequential(*layers), in_chs


def _init_darknet(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _init_output_conv(conv: nn.Conv2d, num_anchors: int, values_per_anchor: int) -> None:
    """N(0, 0.01²) weights; objectness bias (index 4 of each anchor) at log-odds of OBJECT_PRIOR."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    with torch.no_grad():
        conv.bias.view(num_anchors, values_per_anchor)[:, 4] = -math.log((1 - OBJECT_PRIOR) / OBJECT_PRIOR)


class _YOLOBase(nn.Module):
    """The call contract shared by the YOLO versions: resize, network, then losses or detections.

    Subclasses define ``forward_network(batch) -> raw outputs``, ``compute_loss(raw, targets)`` and
    ``decode(raw) -> (boxes [N, M, 4] in input pixels, class-specific scores [N, M, C])``.
    """

    stride = 32

    def _init_contract(self, *, num_classes: int, in_chans: int, image_size: int, score_threshold: float,
                       nms_threshold: float, detections_per_image: int, topk_candidates: int) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (it counts the background: C object classes + 1), "
                             f"got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        if not 0.0 <= score_threshold < 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1) and nms_threshold in [0, 1], got {score_threshold} "
                             f"and {nms_threshold}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_object_classes = num_classes - 1  # C: a YOLO has no background output
        self.transform = GeneralizedRCNNTransform(image_size, image_size, image_mean=(0.0,) * in_chans,
                                                  image_std=(1.0,) * in_chans, size_divisible=1,
                                                  fixed_size=(image_size, image_size))
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.detections_per_image, self.topk_candidates = int(detections_per_image), int(topk_candidates)
        self.image_size = image_size

    @property
    def image_size(self) -> int:
        """The square network input; every image is resized to it (settable for multi-scale training)."""
        return self._image_size

    @image_size.setter
    def image_size(self, size: int) -> None:
        if not isinstance(size, int) or size < self.stride or size % self.stride:
            raise ValueError(f"image_size must be a positive multiple of {self.stride}, got {size!r}")
        self._image_size = size
        self.transform.min_size, self.transform.max_size, self.transform.fixed_size = (size,), size, (size, size)

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)

    def example_inputs(self, input_shape: tuple[int, ...] | None = None) -> tuple[list[torch.Tensor]]:
        """A list of zero images of ``input_shape`` (N, 3, H, W), for ``canon info`` and benchmarks."""
        return example_detection_inputs(self, input_shape)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        check_detection_input(images, targets, num_classes=self.num_classes, in_chans=self.in_chans,
                              training=self.training, model_name=self._model_name)
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, targets = self.transform(images, targets)  # every image resized to (image_size, image_size)
        raw = self.forward_network(batch.tensors)
        if self.training:
            return self.compute_loss(raw, targets)
        boxes, class_scores = self.decode(raw)
        boxes = boxes.clamp(min=0, max=self.image_size)
        detections = [select_detections(b, s, score_threshold=self.score_threshold, nms_threshold=self.nms_threshold,
                                        topk_candidates=self.topk_candidates,
                                        detections_per_image=self.detections_per_image)
                      for b, s in zip(boxes, class_scores)]
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


# ============================================================================ YOLO v1

# Figure 3: (out_channels, kernel_size[, stride]) and "M" for a 2×2/2 max-pool; 24 convolutions.
YOLOV1_LAYERS = [
    (64, 7, 2), "M",
    (192, 3), "M",
    (128, 1), (256, 3), (256, 1), (512, 3), "M",
    *[(256, 1), (512, 3)] * 4, (512, 1), (1024, 3), "M",
    *[(512, 1), (1024, 3)] * 2, (1024, 3), (1024, 3, 2),
    (1024, 3), (1024, 3),
]
# Fast YOLO: 9 convolutions (darknet yolov1-tiny.cfg widths plus a second 1024, see the docstring).
FAST_YOLOV1_LAYERS = [(16, 3), "M", (32, 3), "M", (64, 3), "M", (128, 3), "M", (256, 3), "M", (512, 3), "M",
                      (1024, 3), (1024, 3), (256, 3)]


def yolov1_targets(boxes: Tensor, labels: Tensor, *, grid_size: int, num_object_classes: int,
                   image_size: int) -> Tensor:
    """The S×S×(5 + C) training target of one image from its boxes [N, 4] xyxy (pixels of the
    square input) and labels [N] in 1..C.

    Per cell: (x, y) the object's centre as an offset in [0, 1) within the cell, (w, h) its size
    as a fraction of the image, 1 if an object's centre lies in the cell, then the one-hot class.
    The first listed object wins a cell that several centres share.
    """
    target = boxes.new_zeros(grid_size, grid_size, 5 + num_object_classes)
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 / image_size * grid_size  # in cells
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 / image_size * grid_size
    cols = centre_x.floor().clamp(0, grid_size - 1)
    rows = centre_y.floor().clamp(0, grid_size - 1)
    widths = (boxes[:, 2] - boxes[:, 0]) / image_size
    heights = (boxes[:, 3] - boxes[:, 1]) / image_size
    for k in reversed(range(boxes.shape[0])):  # reversed: the first listed object is written last
        row, col = int(rows[k]), int(cols[k])
        target[row, col] = 0
        target[row, col, :5] = torch.stack([centre_x[k] - col, centre_y[k] - row, widths[k], heights[k],
                                            torch.ones_like(widths[k])])
        target[row, col, 4 + int(labels[k])] = 1.0
    return target


def decode_yolov1_boxes(box_params: Tensor, image_size: float) -> Tensor:
    """xyxy boxes in pixels from v1 box parameters [..., S, S, B, 4] = (x, y, √w, √h).

    Centre = ((col + x) / S, (row + y) / S) · image_size; size = ((√w)², (√h)²) · image_size.
    """
    grid_size = box_params.shape[-3]
    rows = torch.arange(grid_size, dtype=box_params.dtype, device=box_params.device).view(-1, 1, 1)
    cols = torch.arange(grid_size, dtype=box_params.dtype, device=box_params.device).view(1, -1, 1)
    centre_x = (cols + box_params[..., 0]) / grid_size
    centre_y = (rows + box_params[..., 1]) / grid_size
    width, height = box_params[..., 2] ** 2, box_params[..., 3] ** 2
    boxes = torch.stack([centre_x - width / 2, centre_y - height / 2, centre_x + width / 2,
                         centre_y + height / 2], dim=-1)
    return boxes * image_size


def yolov1_loss(predictions: Tensor, targets: Tensor, *, boxes_per_cell: int, lambda_coord: float = 5.0,
                lambda_noobj: float = 0.5) -> dict[str, Tensor]:
    """The sum-squared loss of §2.2 for predictions [N, S, S, 5B + C] and targets [N, S, S, 5 + C]
    (``yolov1_targets``), averaged over the N images.

    Each cell's B predictors are (x, y, √w, √h, confidence); then C class scores. In a cell with
    an object the responsible predictor is the one whose box has the highest IoU with it (ties:
    the first); its confidence target is that IoU. Returns the five terms of the formula:
    ``xy`` and ``wh`` (times λ_coord), ``object``, ``no_object`` (times λ_noobj), ``classification``.
    """
    num_images, grid_size = predictions.shape[:2]
    num_boxes = boxes_per_cell
    boxes = predictions[..., :5 * num_boxes].reshape(num_images, grid_size, grid_size, num_boxes, 5)
    class_scores = predictions[..., 5 * num_boxes:]
    has_object = targets[..., 4]  # (N, S, S)
    true_box = targets[..., None, :4]  # (N, S, S, 1, 4): x, y, w, h
    true_params = torch.cat([true_box[..., :2], true_box[..., 2:].sqrt()], dim=-1)
    with torch.no_grad():
        iou = paired_box_iou(decode_yolov1_boxes(boxes[..., :4], 1.0),
                             decode_yolov1_boxes(true_params.expand_as(boxes[..., :4]), 1.0))  # (N, S, S, B)
        responsible = F.one_hot(iou.argmax(dim=-1), num_boxes).to(predictions.dtype) * has_object[..., None]
    squared = (boxes[..., :4] - true_params) ** 2  # (N, S, S, B, 4)
    confidence = boxes[..., 4]
    terms = {
        "xy": lambda_coord * (responsible * squared[..., :2].sum(-1)).sum(),
        "wh": lambda_coord * (responsible * squared[..., 2:].sum(-1)).sum(),
        "object": (responsible * (confidence - iou) ** 2).sum(),
        "no_object": lambda_noobj * ((1 - responsible) * confidence ** 2).sum(),
        "classification": (has_object[..., None] * (class_scores - targets[..., 5:]) ** 2).sum(),
    }
    return {name: value / num_images for name, value in terms.items()}


class YOLOv1(_YOLOBase):
    """YOLO v1: convolutions and fully connected layers to an S×S×(B·5 + C) grid of predictions.

    Args:
        num_classes: classes counting the background (labels 1..num_classes - 1); the grid holds
            C = num_classes - 1 class scores per cell (the paper's C = 20 for VOC: num_classes=21).
        in_chans: image channels.
        grid_size: S, the cells per side of the output grid.
        boxes_per_cell: B, the boxes each cell predicts.
        image_size: the square network input (a multiple of 64; the paper's 448).
        layers: the convolution list (``YOLOV1_LAYERS`` or ``FAST_YOLOV1_LAYERS``).
        hidden_features: width of the hidden fully connected layer (None: one layer to the output).
        batch_norm: batch normalisation after every convolution (not in the v1 paper).
        dropout: dropout after the hidden fully connected layer.
        lambda_coord, lambda_noobj: the loss weights of §2.2.
        score_threshold, nms_threshold, detections_per_image, topk_candidates: post-processing.
    """

    stride = 64

    def __init__(self, *, num_classes: int = 21, in_chans: int = 3, grid_size: int = 7, boxes_per_cell: int = 2,
                 image_size: int = 448, layers: Sequence = tuple(YOLOV1_LAYERS), hidden_features: int | None = 4096,
                 batch_norm: bool = False, dropout: float = 0.5, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
                 score_threshold: float = 0.01, nms_threshold: float = 0.5, detections_per_image: int = 100,
                 topk_candidates: int = 1000):
        super().__init__()
        self._init_contract(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                            score_threshold=score_threshold, nms_threshold=nms_threshold,
                            detections_per_image=detections_per_image, topk_candidates=topk_candidates)
        if not isinstance(grid_size, int) or grid_size < 1 or not isinstance(boxes_per_cell, int) or boxes_per_cell < 1:
            raise ValueError(f"grid_size and boxes_per_cell must be ints >= 1, got {grid_size!r} and "
                             f"{boxes_per_cell!r}")
        self.grid_size, self.boxes_per_cell = grid_size, boxes_per_cell
        self.lambda_coord, self.lambda_noobj = float(lambda_coord), float(lambda_noobj)
        self.features, channels = make_darknet_layers(layers, in_chans, batch_norm=batch_norm)
        feature_cells = (image_size // self.stride) ** 2
        outputs = grid_size * grid_size * (5 * boxes_per_cell + self.num_object_classes)
        if hidden_features:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * feature_cells, hidden_features),
                                      nn.LeakyReLU(LEAKY_SLOPE, inplace=True), nn.Dropout(dropout),
                                      nn.Linear(hidden_features, outputs))
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * feature_cells, outputs))
        _init_darknet(self.features)
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=LEAKY_SLOPE)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head[-1].weight, std=0.01)

    @_YOLOBase.image_size.setter
    def image_size(self, size: int) -> None:
        # the fully connected layer fixes the feature grid: only the size it was built for works
        if hasattr(self, "_image_size") and size != self._image_size:
            raise ValueError(f"YOLO v1's fully connected head fixes its input at {self._image_size} px; "
                             f"build a new model with image_size={size}")
        _YOLOBase.image_size.fset(self, size)

    def forward_network(self, batch: Tensor) -> Tensor:
        x = self.features(batch)  # (N, 1024, image_size/64, image_size/64)
        x = self.head(x)  # (N, S*S*(5B + C))
        return x.view(-1, self.grid_size, self.grid_size, 5 * self.boxes_per_cell + self.num_object_classes)

    def compute_loss(self, predictions: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        encoded = torch.stack([yolov1_targets(t["boxes"], t["labels"], grid_size=self.grid_size,
                                              num_object_classes=self.num_object_classes,
                                              image_size=self.image_size)
                               for t in targets])
        return yolov1_loss(predictions, encoded.to(predictions.dtype), boxes_per_cell=self.boxes_per_cell,
                           lambda_coord=self.lambda_coord, lambda_noobj=self.lambda_noobj)

    def decode(self, predictions: Tensor) -> tuple[Tensor, Tensor]:
        num_images, num_boxes = predictions.shape[0], self.boxes_per_cell
        boxes = predictions[..., :5 * num_boxes].reshape(num_images, self.grid_size, self.grid_size, num_boxes, 5)
        xyxy = decode_yolov1_boxes(boxes[..., :4], float(self.image_size))  # (N, S, S, B, 4)
        # class-specific confidence Pr(class | object) · Pr(object) · IoU; the linear outputs are
        # clipped to [0, 1] first so that two negative outputs cannot multiply into a high score
        confidence = boxes[..., 4, None].clamp(0, 1)
        scores = confidence * predictions[..., None, 5 * num_boxes:].clamp(0, 1)  # (N, S, S, B, C)
        return xyxy.reshape(num_images, -1, 4), scores.reshape(num_images, -1, self.num_object_classes)


# ============================================================================ anchors (v2, v3)


def decode_anchor_boxes(raw: Tensor, anchors: Tensor, stride: float) -> Tensor:
    """xyxy boxes in pixels from raw predictions [N, H, W, A, ≥4] (t_x, t_y, t_w, t_h, ...) and
    anchors [A, 2] (width, height in pixels): b_x = (σ(t_x) + c_x)·stride, b_w = p_w e^{t_w}."""
    height, width = raw.shape[1:3]
    rows = torch.arange(height, dtype=raw.dtype, device=raw.device).view(-1, 1, 1)
    cols = torch.arange(width, dtype=raw.dtype, device=raw.device).view(1, -1, 1)
    centre_x = (torch.sigmoid(raw[..., 0]) + cols) * stride
    centre_y = (torch.sigmoid(raw[..., 1]) + rows) * stride
    half_w = anchors[:, 0] * torch.exp(raw[..., 2].clamp(max=math.log(1000.0))) / 2
    half_h = anchors[:, 1] * torch.exp(raw[..., 3].clamp(max=math.log(1000.0))) / 2
    return torch.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], dim=-1)


def _shape_iou(sizes: Tensor, anchors: Tensor) -> Tensor:
    """IoU [N, A] of boxes of sizes [N, 2] and anchors [A, 2] placed on the same centre."""
    inter = torch.min(sizes[:, None, :], anchors[None, :, :]).prod(-1)
    return inter / (sizes.prod(-1)[:, None] + anchors.prod(-1)[None, :] - inter)


def assign_anchors(boxes: Tensor, anchors: Tensor, anchors_per_level: Sequence[int], strides: Sequence[int],
                   grid_sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int, int, int, int]]:
    """Each object's responsible prediction: the best anchor by shape IoU over all levels, in the
    cell holding the object's centre at that anchor's level.

    boxes [G, 4] xyxy pixels; anchors [A_total, 2] ordered level by level. Returns one
    (object index, level, row, column, anchor index within the level) per object; of several
    objects claiming the same prediction, the first listed keeps it.
    """
    if boxes.shape[0] == 0:
        return []
    sizes = boxes[:, 2:] - boxes[:, :2]
    best = _shape_iou(sizes, anchors).argmax(dim=1)
    starts = [sum(anchors_per_level[:i]) for i in range(len(anchors_per_level))]
    taken, assignments = set(), []
    for k in range(boxes.shape[0]):
        index = int(best[k])
        level = max(i for i, start in enumerate(starts) if start <= index)
        height, width = grid_sizes[level]
        centre = (boxes[k, :2] + boxes[k, 2:]) / 2 / strides[level]
        col, row = min(int(centre[0]), width - 1), min(int(centre[1]), height - 1)
        key = (level, row, col, index - starts[level])
        if key not in taken:
            taken.add(key)
            assignments.append((k, *key))
    return assignments


def _anchor_loss_terms(raw_levels: Sequence[Tensor], anchors: Tensor, anchors_per_level: Sequence[int],
                       strides: Sequence[int], targets: Sequence[dict], image_size: int, ignore_threshold: float):
    """What v2 and v3 share: assignments, coordinate terms, ignore masks.

    Returns (coordinate loss, list of per-level responsible masks, per-level target IoUs,
    per-level ignore masks, list of (level, image, row, col, anchor, label) for the class terms).
    """
    grid_sizes = [tuple(raw.shape[1:3]) for raw in raw_levels]
    starts = [sum(anchors_per_level[:i]) for i in range(len(anchors_per_level))]
    level_anchors = [anchors[s:s + n] for s, n in zip(starts, anchors_per_level)]
    dtype = raw_levels[0].dtype
    responsible = [raw.new_zeros(raw.shape[:4], dtype=torch.bool) for raw in raw_levels]
    target_iou = [raw.new_zeros(raw.shape[:4]) for raw in raw_levels]
    ignore = []
    with torch.no_grad():
        decoded = [decode_anchor_boxes(raw, a, s) for raw, a, s in zip(raw_levels, level_anchors, strides)]
        for level, boxes_level in enumerate(decoded):  # predictions overlapping an object are not "no object"
            best = boxes_level.new_zeros(boxes_level.shape[:4])
            for i, target in enumerate(targets):
                if target["boxes"].shape[0]:
                    iou = box_iou(boxes_level[i].reshape(-1, 4), target["boxes"].to(dtype)).nan_to_num(0)
                    best[i] = iou.max(dim=1).values.view(best.shape[1:])
            ignore.append(best > ignore_threshold)
    coordinate = raw_levels[0].new_zeros(())
    class_entries = []
    for i, target in enumerate(targets):
        boxes = target["boxes"].to(dtype)
        for k, level, row, col, a in assign_anchors(boxes, anchors, anchors_per_level, strides, grid_sizes):
            stride, anchor = strides[level], level_anchors[level][a]
            prediction = raw_levels[level][i, row, col, a]
            centre = (boxes[k, :2] + boxes[k, 2:]) / 2 / stride
            size = boxes[k, 2:] - boxes[k, :2]
            offset = centre - torch.tensor([col, row], dtype=dtype, device=boxes.device)
            log_scale = torch.log(size / anchor)  # t_w = ln(g_w / p_w)
            weight = 2.0 - size.prod() / image_size ** 2  # small boxes count more
            coordinate = coordinate + weight * (((torch.sigmoid(prediction[:2]) - offset) ** 2).sum()
                                                + ((prediction[2:4] - log_scale) ** 2).sum())
            responsible[level][i, row, col, a] = True
            target_iou[level][i, row, col, a] = paired_box_iou(decoded[level][i, row, col, a], boxes[k])
            class_entries.append((level, i, row, col, a, int(target["labels"][k]) - 1))
    return coordinate, responsible, target_iou, ignore, class_entries


def yolov2_loss(raw: Tensor, targets: Sequence[dict], *, anchors: Tensor, stride: int, image_size: int,
                object_scale: float = 5.0, noobject_scale: float = 1.0, coord_scale: float = 1.0,
                class_scale: float = 1.0, ignore_threshold: float = 0.6) -> dict[str, Tensor]:
    """The v2 loss (darknet's region layer) for raw predictions [N, H, W, A, 5 + C], averaged over images.

    targets: boxes in pixels of the square input, labels 1..C. Terms: ``box`` (squared error of
    σ(t_x), σ(t_y), t_w, t_h, times (2 − w·h)), ``object`` ((σ(t_o) − IoU)² for the responsible
    predictor), ``no_object`` (σ(t_o)² where the predicted box overlaps no object by more than
    ``ignore_threshold``) and ``classification`` (softmax cross-entropy).
    """
    coordinate, responsible, target_iou, ignore, entries = _anchor_loss_terms(
        [raw], anchors, [anchors.shape[0]], [stride], targets, image_size, ignore_threshold)
    objectness = torch.sigmoid(raw[..., 4])
    responsible, target_iou, ignore = responsible[0], target_iou[0], ignore[0]
    no_object = (~responsible & ~ignore).to(raw.dtype)
    classification = raw.new_zeros(())
    if entries:
        index = torch.tensor([e[1:5] for e in entries], device=raw.device)
        logits = raw[index[:, 0], index[:, 1], index[:, 2], index[:, 3], 5:]
        labels = torch.tensor([e[5] for e in entries], device=raw.device)
        classification = F.cross_entropy(logits, labels, reduction="sum")
    num_images = raw.shape[0]
    return {
        "box": coord_scale * coordinate / num_images,
        "object": object_scale * ((objectness - target_iou) ** 2 * responsible).sum() / num_images,
        "no_object": noobject_scale * (objectness ** 2 * no_object).sum() / num_images,
        "classification": class_scale * classification / num_images,
    }


def yolov3_loss(raw_levels: Sequence[Tensor], targets: Sequence[dict], *, anchors: Tensor,
                anchors_per_level: Sequence[int], strides: Sequence[int], image_size: int,
                ignore_threshold: float = 0.5) -> dict[str, Tensor]:
    """The v3 loss for raw predictions, one [N, H, W, A, 5 + C] per level, averaged over images.

    Terms: ``box`` (squared error of σ(t_x), σ(t_y), t_w, t_h times (2 − w·h), for the prior
    responsible for each object), ``objectness`` (binary cross-entropy, target 1 for responsible
    predictions and 0 for the rest, leaving out those whose box overlaps an object by more than
    ``ignore_threshold``) and ``classification`` (binary cross-entropy of independent logistic classes).
    """
    coordinate, responsible, _, ignore, entries = _anchor_loss_terms(
        raw_levels, anchors, anchors_per_level, strides, targets, image_size, ignore_threshold)
    objectness = raw_levels[0].new_zeros(())
    for raw, positive, ignored in zip(raw_levels, responsible, ignore):
        counted = positive | ~ignored
        objectness = objectness + F.binary_cross_entropy_with_logits(
            raw[..., 4][counted], positive[counted].to(raw.dtype), reduction="sum")
    classification = raw_levels[0].new_zeros(())
    for level, raw in enumerate(raw_levels):
        level_entries = [e for e in entries if e[0] == level]
        if not level_entries:
            continue
        index = torch.tensor([e[1:5] for e in level_entries], device=raw.device)
        logits = raw[index[:, 0], index[:, 1], index[:, 2], index[:, 3], 5:]
        one_hot = F.one_hot(torch.tensor([e[5] for e in level_entries], device=raw.device),
                            logits.shape[-1]).to(raw.dtype)
        classification = classification + F.binary_cross_entropy_with_logits(logits, one_hot, reduction="sum")
    num_images = raw_levels[0].shape[0]
    return {"box": coordinate / num_images, "objectness": objectness / num_images,
            "classification": classification / num_images}


def _to_anchor_layout(x: Tensor, num_anchors: int) -> Tensor:
    """(N, A·(5 + C), H, W) -> (N, H, W, A, 5 + C)."""
    n, _, h, w = x.shape
    return x.view(n, num_anchors, -1, h, w).permute(0, 3, 4, 1, 2)


def _check_anchors(anchors, expected: int | None = None) -> Tensor:
    """[A, 2] float tensor of (width, height) priors; ValueError unless ``expected`` positive pairs."""
    pairs = [tuple(float(v) for v in pair) for pair in anchors]
    if (expected is not None and len(pairs) != expected) or not pairs or \
            any(len(pair) != 2 or min(pair) <= 0 for pair in pairs):
        count = f"{expected}" if expected is not None else "one or more"
        raise ValueError(f"anchors must be {count} positive (width, height) pairs, got {list(anchors)}")
    return torch.tensor(pairs, dtype=torch.float32)


# ============================================================================ YOLO v2

# Table 6: Darknet-19 without its classifier; the last "M" splits the stride-16 and stride-32 parts.
DARKNET19_LAYERS = [(32, 3), "M", (64, 3), "M", (128, 3), (64, 1), (128, 3), "M", (256, 3), (128, 1), (256, 3), "M",
                    (512, 3), (256, 1), (512, 3), (256, 1), (512, 3), "M",
                    (1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3)]


class Darknet19(nn.Module):
    """Darknet-19's 18 feature convolutions: (N, 3, H, W) → stride-16 (512) and stride-32 (1024) maps."""

    def __init__(self, *, in_chans: int = 3):
        super().__init__()
        split = len(DARKNET19_LAYERS) - 1 - DARKNET19_LAYERS[::-1].index("M")
        self.stride16, channels = make_darknet_layers(DARKNET19_LAYERS[:split], in_chans, batch_norm=True)
        self.stride32, _ = make_darknet_layers(DARKNET19_LAYERS[split:], channels, batch_norm=True)
        self.out_channels = (512, 1024)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c4 = self.stride16(x)  # (N, 512, H/16, W/16)
        c5 = self.stride32(c4)  # (N, 1024, H/32, W/32)
        return c4, c5


class YOLOv2(_YOLOBase):
    """YOLO v2: Darknet-19, a passthrough layer and 5 anchor priors on a 32-px grid.

    Args:
        num_classes: classes counting the background (labels 1..num_classes - 1; C = num_classes - 1
            class scores per anchor).
        in_chans: image channels.
        anchors: the A priors (width, height) in 32-px cells (``VOC_PRIORS_V2``, or k-means ones).
        image_size: the square network input, a multiple of 32 (settable: multi-scale training).
        score_threshold, nms_threshold, detections_per_image, topk_candidates: post-processing.
    """

    multiscale_sizes = tuple(range(320, 608 + 1, 32))  # §2 "Multi-Scale Training"

    def __init__(self, *, num_classes: int = 21, in_chans: int = 3, anchors: Sequence = VOC_PRIORS_V2,
                 image_size: int = 416, score_threshold: float = 0.01, nms_threshold: float = 0.45,
                 detections_per_image: int = 100, topk_candidates: int = 1000):
        super().__init__()
        self._init_contract(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                            score_threshold=score_threshold, nms_threshold=nms_threshold,
                            detections_per_image=detections_per_image, topk_candidates=topk_candidates)
        priors = _check_anchors(anchors)
        self.num_anchors = priors.shape[0]
        self.register_buffer("anchors", priors * self.stride, persistent=False)  # pixels
        self.backbone = Darknet19(in_chans=in_chans)
        self.head = nn.Sequential(ConvBNLeaky(1024, 1024, 3), ConvBNLeaky(1024, 1024, 3))
        self.fuse = ConvBNLeaky(1024 + 4 * 512, 1024, 3)  # after the passthrough concatenation
        self.output = nn.Conv2d(1024, self.num_anchors * (5 + self.num_object_classes), 1)
        _init_darknet(self)
        _init_output_conv(self.output, self.num_anchors, 5 + self.num_object_classes)

    def forward_network(self, batch: Tensor) -> Tensor:
        c4, c5 = self.backbone(batch)
        x = self.head(c5)  # (N, 1024, H/32, W/32)
        passthrough = F.pixel_unshuffle(c4, 2)  # (N, 2048, H/32, W/32): 2×2 blocks stacked as channels
        x = self.fuse(torch.cat([passthrough, x], dim=1))  # (N, 1024, H/32, W/32)
        return _to_anchor_layout(self.output(x), self.num_anchors)  # (N, H/32, W/32, A, 5 + C)

    def compute_loss(self, raw: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        return yolov2_loss(raw, targets, anchors=self.anchors.to(raw.dtype), stride=self.stride,
                           image_size=self.image_size)

    def decode(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        boxes = decode_anchor_boxes(raw, self.anchors.to(raw.dtype), self.stride)
        # Pr(class | object) · Pr(object)
        scores = torch.sigmoid(raw[..., 4:5]) * torch.softmax(raw[..., 5:], dim=-1)
        return boxes.reshape(raw.shape[0], -1, 4), scores.reshape(raw.shape[0], -1, self.num_object_classes)


# ============================================================================ YOLO v3


class DarknetResidual(nn.Module):
    """Darknet-53's residual block: x + 3×3(c)(1×1(c/2)(x))."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = ConvBNLeaky(channels, channels // 2, 1)
        self.expand = ConvBNLeaky(channels // 2, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.expand(self.reduce(x))


class Darknet53(nn.Module):
    """Darknet-53 without its classifier: 52 convolutions → stride 8 (256), 16 (512), 32 (1024) maps."""

    STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))  # Table 1: (channels, residual blocks)

    def __init__(self, *, in_chans: int = 3):
        super().__init__()
        self.stem = ConvBNLeaky(in_chans, 32, 3)
        channels, stages = 32, []
        for out_chs, blocks in self.STAGES:
            stages.append(nn.Sequential(ConvBNLeaky(channels, out_chs, 3, 2),
                                        *[DarknetResidual(out_chs) for _ in range(blocks)]))
            channels = out_chs
        self.stages = nn.ModuleList(stages)
        self.out_channels = (256, 512, 1024)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[2], outputs[3], outputs[4]  # (N, 256, H/8, W/8), (N, 512, H/16, ...), (N, 1024, H/32, ...)


def _conv_set(in_chs: int, channels: int) -> nn.Sequential:
    """The five alternating 1×1 (channels) / 3×3 (2·channels) convolutions before each v3 output."""
    return nn.Sequential(ConvBNLeaky(in_chs, channels, 1), ConvBNLeaky(channels, 2 * channels, 3),
                         ConvBNLeaky(2 * channels, channels, 1), ConvBNLeaky(channels, 2 * channels, 3),
                         ConvBNLeaky(2 * channels, channels, 1))


class YOLOv3Scale(nn.Module):
    """One v3 output scale: the convolution set, then a 3×3 and the linear 1×1 output convolution."""

    def __init__(self, in_chs: int, channels: int, num_anchors: int, num_object_classes: int):
        super().__init__()
        self.convs = _conv_set(in_chs, channels)
        self.head = ConvBNLeaky(channels, 2 * channels, 3)
        self.output = nn.Conv2d(2 * channels, num_anchors * (5 + num_object_classes), 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        route = self.convs(x)  # feeds the next, finer scale
        return route, self.output(self.head(route))


class YOLOv3(_YOLOBase):
    """YOLO v3 (and v3-tiny): predictions at several strides, anchors split between them.

    Args:
        num_classes: classes counting the background (labels 1..num_classes - 1; C = num_classes - 1
            logistic class scores per anchor; COCO's 80 classes: num_classes=81).
        in_chans: image channels.
        tiny: the yolov3-tiny layer list (two scales) instead of Darknet-53 (three scales).
        anchors: (width, height) priors in pixels of a 416 input, smallest first, 3 per scale
            (``COCO_ANCHORS_V3``, ``COCO_ANCHORS_V3_TINY`` or k-means ones).
        image_size: the square network input, a multiple of 32 (settable: multi-scale training).
        ignore_threshold: IoU above which a non-responsible prediction gets no objectness loss.
        score_threshold, nms_threshold, detections_per_image, topk_candidates: post-processing.
    """

    multiscale_sizes = tuple(range(320, 608 + 1, 32))
    anchors_per_scale = 3

    def __init__(self, *, num_classes: int = 81, in_chans: int = 3, tiny: bool = False,
                 anchors: Sequence | None = None, image_size: int = 416, ignore_threshold: float = 0.5,
                 score_threshold: float = 0.01, nms_threshold: float = 0.45, detections_per_image: int = 100,
                 topk_candidates: int = 1000):
        super().__init__()
        self._init_contract(num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                            score_threshold=score_threshold, nms_threshold=nms_threshold,
                            detections_per_image=detections_per_image, topk_candidates=topk_candidates)
        self.tiny, self.ignore_threshold = bool(tiny), float(ignore_threshold)
        self.strides = (16, 32) if tiny else (8, 16, 32)
        num_scales = len(self.strides)
        default = COCO_ANCHORS_V3_TINY if tiny else COCO_ANCHORS_V3
        self.register_buffer("anchors", _check_anchors(default if anchors is None else anchors,
                                                       self.anchors_per_scale * num_scales), persistent=False)
        classes, num_anchors = self.num_object_classes, self.anchors_per_scale
        per_anchor = 5 + classes
        if tiny:  # yolov3-tiny.cfg
            self.backbone = nn.ModuleDict({
                "stride16": make_darknet_layers([(16, 3), "M", (32, 3), "M", (64, 3), "M", (128, 3), "M", (256, 3)],
                                                in_chans, batch_norm=True)[0],
                "stride32": nn.Sequential(nn.MaxPool2d(2, 2), ConvBNLeaky(256, 512, 3),
                                          nn.ReplicationPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, 1),  # 2×2/1, size kept
                                          ConvBNLeaky(512, 1024, 3)),
            })
            self.route32 = ConvBNLeaky(1024, 256, 1)
            self.head32 = nn.Sequential(ConvBNLeaky(256, 512, 3), nn.Conv2d(512, num_anchors * per_anchor, 1))
            self.lateral32 = ConvBNLeaky(256, 128, 1)
            self.head16 = nn.Sequential(ConvBNLeaky(128 + 256, 256, 3), nn.Conv2d(256, num_anchors * per_anchor, 1))
            outputs = [self.head16[-1], self.head32[-1]]
        else:
            self.backbone = Darknet53(in_chans=in_chans)
            self.scale32 = YOLOv3Scale(1024, 512, num_anchors, classes)
            self.lateral32 = ConvBNLeaky(512, 256, 1)
            self.scale16 = YOLOv3Scale(512 + 256, 256, num_anchors, classes)
            self.lateral16 = ConvBNLeaky(256, 128, 1)
            self.scale8 = YOLOv3Scale(256 + 128, 128, num_anchors, classes)
            outputs = [self.scale8.output, self.scale16.output, self.scale32.output]
        _init_darknet(self)
        for conv in outputs:
            _init_output_conv(conv, num_anchors, per_anchor)

    def forward_network(self, batch: Tensor) -> list[Tensor]:
        """Raw predictions, one (N, H_s, W_s, 3, 5 + C) per stride, finest first."""
        upsample = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
        if self.tiny:
            c4 = self.backbone["stride16"](batch)  # (N, 256, H/16, W/16)
            c5 = self.backbone["stride32"](c4)  # (N, 1024, H/32, W/32)
            route = self.route32(c5)  # (N, 256, H/32, W/32)
            out32 = self.head32(route)
            out16 = self.head16(torch.cat([upsample(self.lateral32(route)), c4], dim=1))  # (N, 3(5+C), H/16, W/16)
            outputs = [out16, out32]
        else:
            c3, c4, c5 = self.backbone(batch)
            route, out32 = self.scale32(c5)  # route (N, 512, H/32, W/32)
            route, out16 = self.scale16(torch.cat([upsample(self.lateral32(route)), c4], dim=1))  # (N, 256, H/16, ..)
            _, out8 = self.scale8(torch.cat([upsample(self.lateral16(route)), c3], dim=1))
            outputs = [out8, out16, out32]
        return [_to_anchor_layout(out, self.anchors_per_scale) for out in outputs]

    def compute_loss(self, raw_levels: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        return yolov3_loss(raw_levels, targets, anchors=self.anchors.to(raw_levels[0].dtype),
                           anchors_per_level=[self.anchors_per_scale] * len(self.strides), strides=self.strides,
                           image_size=self.image_size, ignore_threshold=self.ignore_threshold)

    def decode(self, raw_levels: list[Tensor]) -> tuple[Tensor, Tensor]:
        num_images, boxes, scores = raw_levels[0].shape[0], [], []
        for level, (raw, stride) in enumerate(zip(raw_levels, self.strides)):
            anchors = self.anchors[level * self.anchors_per_scale:(level + 1) * self.anchors_per_scale]
            boxes.append(decode_anchor_boxes(raw, anchors.to(raw.dtype), stride).reshape(num_images, -1, 4))
            # independent logistic classes times the objectness
            level_scores = torch.sigmoid(raw[..., 4:5]) * torch.sigmoid(raw[..., 5:])
            scores.append(level_scores.reshape(num_images, -1, self.num_object_classes))
        return torch.cat(boxes, dim=1), torch.cat(scores, dim=1)


# ============================================================================ registered names


@register_model(YOLOv1, task="detection", paper=PAPER_V1, input_size=(3, 448, 448), num_classes=21)
def yolov1(**kwargs) -> YOLOv1:
    return YOLOv1(**kwargs)


@register_model(YOLOv1, task="detection", paper=PAPER_V1, input_size=(3, 448, 448), num_classes=21)
def yolov1_fast(**kwargs) -> YOLOv1:
    return YOLOv1(layers=tuple(FAST_YOLOV1_LAYERS), hidden_features=None, **kwargs)


@register_model(YOLOv2, task="detection", paper=PAPER_V2, input_size=(3, 416, 416), num_classes=21)
def yolov2(**kwargs) -> YOLOv2:
    return YOLOv2(**kwargs)


@register_model(YOLOv3, task="detection", paper=PAPER_V3, input_size=(3, 416, 416), num_classes=81)
def yolov3(**kwargs) -> YOLOv3:
    return YOLOv3(tiny=False, **kwargs)


@register_model(YOLOv3, task="detection", paper=PAPER_V3, input_size=(3, 416, 416), num_classes=81)
def yolov3_tiny(**kwargs) -> YOLOv3:
    return YOLOv3(tiny=True, **kwargs)
