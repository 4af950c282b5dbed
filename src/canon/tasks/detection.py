"""Object detection as a task of the one engine: the model's loss dict, COCO and VOC evaluation, figures.

Data: a detection dataset of ``canon.data.build_dataset`` (``voc:DIR``, ``voc-xml:DIR`` such as
the raccoon set, ``coco:DIR[?keypoints][?masks]``, ``coco:ANNOTATIONS_JSON:IMAGE_DIR``; see
:mod:`canon.data.detection`): items ``(image [3, H, W] in [0, 1], target)`` with ``boxes``
Float[N, 4] (x1, y1, x2, y2) in pixels, ``labels`` 1..C (0 is background; ``info.num_classes``
counts it), and ``masks`` / ``keypoints`` where the data has them. An image without objects
(``boxes`` of shape [0, 4]) trains as background only.

Model contract (torchvision's detectors, every canon detector): ``model(images, targets)`` with
``images`` a list of [3, H, W] tensors in [0, 1]; in training it returns a dict of losses, in
evaluation a list of ``{"boxes" [K, 4] in the input image's pixels, "labels", "scores"}`` (+
``"masks"`` [K, 1, H, W], ``"keypoints"`` [K, J, 3]). The model normalises and resizes itself;
the task never normalises.

The input size, decided per model from its ``transform`` attribute (:func:`input_rule`):

* ``transform.fixed_size`` set (YOLO v1/v2/v3, SSD): every image becomes that square; training
  images are resized to it in the data pipeline (after the crop), so the model's own resize is
  the identity and augmentation runs on the small image. With ``--multiscale`` the pipeline
  resizes to the largest of the model's ``multiscale_sizes`` and the model scales down from it.
* ``transform.min_size`` / ``max_size`` only (Faster/Mask/Keypoint R-CNN, RetinaNet): the model
  rescales each image by its shorter/longer side itself (several ``min_size`` values: one drawn
  per image in training), so the pipeline leaves sizes alone.
* no ``transform`` (a model that takes images at their own size): the pipeline leaves them too.

Evaluation and ``canon predict`` always give the model the untouched image, so detections come
back in the image's own pixels and are scored against the annotation file's boxes. Change a
model's size with ``--model-arg image_size=320`` (YOLO, SSD) or ``--model-arg min_size=384
--model-arg max_size=640`` (R-CNN, RetinaNet).

The loss is the sum of the model's loss dict; ``history.csv`` gets ``train_loss`` and one
``train_loss_<part>`` column per entry (torchvision's ``loss_*`` names are kept as they are).

Evaluation (``test_...`` keys): ``canon.metrics.coco_evaluate`` on the test split's annotations
(``DetectionDataset.to_coco``; VOC ``difficult`` objects as COCO crowd regions, which neither
reward nor penalise a detection) gives AP (IoU 0.50:0.95), AP50, AP75, APs/m/l and AR1/10/100,
ARs/m/l for boxes, the same with ``test_mask_`` for masks and ``test_keypoint_`` (OKS) for
keypoints when the model returns them; :func:`voc_evaluate` gives the VOC07 11-point
(``test_voc07_map``) and the VOC2010+ all-point (``test_voc_map``) mean AP at IoU 0.5, per class
with ``canon eval``; ``test_images_per_s`` is the model's evaluation throughput (forward passes
and post-processing only). The primary metric, which picks ``best.safetensors``, is
``test_ap50`` (COCO AP at IoU 0.5, the figure the raccoon targets are set in).

``canon eval`` writes ``eval.json`` with the per-class table, ``pr_<class>.png`` (the VOC
precision-recall curve of each class at IoU 0.5) and ``predictions.png`` (test images with the
annotated boxes in green and detections scoring at least 0.3 in colour). ``canon predict RUN
IMAGE...`` draws each image's detections (masks, keypoints) into ``IMAGE_detections.png``, lists
the ``--topk`` best, and writes every detection in COCO result format to ``detections.json``
(``--json`` prints them too, each image's ``image_id`` being its position in the list).

Task commands: ``canon anchors --data SPEC --k 5`` (YOLOv2's k-means priors with distance
1 - IoU on the training boxes, beside the mean IoU of the papers' own priors on the same boxes)
and ``canon demo detection`` (a detector trained on canvases of scikit-learn's digits, written
as a VOC-XML folder, so it needs no download).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from canon.engine.options import option
from canon.engine.trainer import TaskData
from canon.tasks.base import CliCommand, Task

__all__ = ["DetectionOptions", "DetectionTask", "InputRule", "input_rule", "training_transforms", "check_batch",
           "to_coco_results", "voc_evaluate", "draw_detections", "write_digit_canvases", "anchors_report",
           "CROPS", "DRAW_SCORE_THRESHOLD"]

CROPS = ("none", "iou", "keep-boxes")
DRAW_SCORE_THRESHOLD = 0.3  # detections drawn in figures and predictions
CONTRACT = ("a non-empty list of images [3, H, W] with one target dict each: 'boxes' Float[N, 4] "
            "(x1, y1, x2, y2) xyxy with x1 < x2 and y1 < y2, 'labels' Int64[N] (N may be 0)")
MODEL_TARGET_KEYS = ("boxes", "labels", "masks", "keypoints")


@dataclass
class DetectionOptions:
    hflip: float = option(0.5, "probability of a horizontal flip of a training image (0: never)")
    photometric: bool = option(False, "SSD's photometric jitter (brightness, contrast, saturation, hue) in training")
    crop: str = option("none", "training crop: none, iou (SSD's IoU-constrained random crop) or keep-boxes (a "
                               "random crop of 0.5-1 of each side that keeps every box whole)", choices=CROPS)
    multiscale: bool = option(False, "YOLOv2's multi-scale training: a new square input from the model's "
                                     "multiscale_sizes (320, 352, ..., 608) every --multiscale-every batches")
    multiscale_every: int = option(10, "batches between two multi-scale size draws", metavar="N")

    def __post_init__(self):
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"--hflip must be a probability in [0, 1], got {self.hflip}")
        if self.crop not in CROPS:
            raise ValueError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if isinstance(self.multiscale_every, bool) or not isinstance(self.multiscale_every, int) \
                or self.multiscale_every < 1:
            raise ValueError(f"--multiscale-every must be a whole number of batches >= 1, got {self.multiscale_every!r}")


# ------------------------------------------------------------------------------------- the model's size rule
@dataclass(frozen=True)
class InputRule:
    """How a detector sizes its input: ``fixed`` (H, W) for every image, else ``min_size`` (one or
    several shorter sides) and ``max_size`` (the longest side allowed); all None: any size."""

    fixed: tuple[int, int] | None = None
    min_size: tuple[int, ...] | None = None
    max_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"fixed": list(self.fixed) if self.fixed else None,
                "min_size": list(self.min_size) if self.min_size else None, "max_size": self.max_size}


def input_rule(model: nn.Module) -> InputRule:
    """The size rule of ``model`` (module docstring), read from its ``transform`` (canon's and
    torchvision's ``GeneralizedRCNNTransform``: ``fixed_size`` is (width, height))."""
    transform = getattr(model, "transform", None)
    if transform is None:
        return InputRule()
    fixed = getattr(transform, "fixed_size", None)
    if fixed is not None:
        return InputRule(fixed=(int(fixed[1]), int(fixed[0])))
    min_size = getattr(transform, "min_size", None)
    if min_size is None:
        return InputRule()
    sizes = tuple(int(s) for s in (min_size if isinstance(min_size, (list, tuple)) else (min_size,)))
    return InputRule(min_size=sizes, max_size=int(getattr(transform, "max_size", max(sizes))))


def training_transforms(info, rule: InputRule, options: DetectionOptions, *, resize_to: tuple[int, int] | None = None):
    """The training pipeline: drop crowd regions, crop, resize (fixed-size models), photometric
    jitter, flip. ``resize_to`` overrides the rule's fixed size (multi-scale training)."""
    from canon.data import detection_transforms as DT

    steps: list = [DT.DropCrowd()]
    if options.crop == "iou":
        steps.append(DT.RandomIoUCrop())
    elif options.crop == "keep-boxes":
        steps.append(DT.RandomCropKeepBoxes())
    size = resize_to or rule.fixed
    if size is not None:
        steps.append(DT.Resize(size))  # the model's own resize is then the identity
    if options.photometric:
        steps.append(DT.PhotometricJitter())  # after the resize: the same jitter on fewer pixels
    if options.hflip > 0:
        steps.append(DT.RandomHorizontalFlip(options.hflip, getattr(info, "keypoint_flip", None) or None))
    return DT.Compose(steps)


def _base_dataset(dataset):
    """The DetectionDataset under transform and subset wrappers (it has ``records`` and ``to_coco``)."""
    seen = 0
    while not hasattr(dataset, "to_coco") and hasattr(dataset, "dataset") and seen < 10:
        dataset, seen = dataset.dataset, seen + 1
    if not hasattr(dataset, "to_coco"):
        raise TypeError(f"the detection task evaluates a canon.data DetectionDataset (it has records and to_coco), "
                        f"got {type(dataset).__name__}")
    return dataset


def _model_needs(model: nn.Module) -> tuple[bool, int]:
    """(whether the model trains a mask head, its keypoint count or 0)."""
    roi_heads = getattr(model, "roi_heads", None)
    masks = bool(getattr(roi_heads, "has_mask", False)) if roi_heads is not None else False
    return masks, int(getattr(model, "num_keypoints", None) or 0)


# ------------------------------------------------------------------------------------- the batch
def check_batch(images, targets) -> None:
    """ValueError unless ``images`` and ``targets`` follow the training contract (:data:`CONTRACT`)."""
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        found = "an empty list" if isinstance(images, (list, tuple)) else type(images).__name__
        raise ValueError(f"detection batch: expected {CONTRACT}; got {found}")
    if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
        found = f"{len(targets)} targets" if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"detection batch: expected {CONTRACT}; got {len(images)} images and {found}")
    for i, (image, target) in enumerate(zip(images, targets)):
        if not isinstance(image, Tensor) or image.dim() != 3:
            found = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"detection batch: images[{i}] must be a tensor [3, H, W], got {found}")
        boxes = target.get("boxes") if isinstance(target, dict) else None
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            found = (f"{tuple(boxes.shape)} {boxes.dtype}" if isinstance(boxes, Tensor) else
                     type(boxes).__name__ if isinstance(target, dict) else type(target).__name__)
            raise ValueError(f"detection batch: targets[{i}]['boxes'] must be Float[N, 4] (x1, y1, x2, y2) xyxy "
                             f"with x1 < x2 and y1 < y2; got {found}")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]) | ~torch.isfinite(boxes).all(1)
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0])
            raise ValueError(f"detection batch: targets[{i}]['boxes'] must be Float[N, 4] (x1, y1, x2, y2) xyxy "
                             f"with x1 < x2 and y1 < y2; box {k} is {[round(v, 2) for v in boxes[k].tolist()]}")
        labels = target.get("labels")
        if not isinstance(labels, Tensor) or labels.shape != (boxes.shape[0],) or labels.is_floating_point():
            found = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"detection batch: targets[{i}]['labels'] must be Int64[{boxes.shape[0]}] "
                             f"(one class id 1..C per box), got {found}")


def _log_name(name: str) -> str:
    return name if name.startswith("loss") else f"loss_{name}"


# ------------------------------------------------------------------------------------- COCO results
def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def to_coco_results(detection: dict, image_id: int, category_ids: Sequence[int], *,
                    mask_threshold: float = 0.5) -> dict[str, list[dict]]:
    """One image's detections as COCO result lists: ``{"bbox": [...], "segm": [...], "keypoints": [...]}``.

    Each entry has ``image_id``, ``category_id`` (``category_ids[label]``, the source's id),
    ``score`` and ``bbox`` (x, y, width, height); masks ([K, 1, H, W] probabilities) become RLE
    ``segmentation`` after thresholding at ``mask_threshold`` (torchvision's reference does the
    same); keypoints [K, J, 3] become 3J numbers scored with their box's score.
    """
    boxes = detection["boxes"].detach().float().cpu()
    scores = detection["scores"].detach().float().cpu().tolist()
    labels = detection["labels"].detach().cpu().tolist()
    out: dict[str, list[dict]] = {"bbox": [], "segm": [], "keypoints": []}
    for k, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
        if not 0 < int(label) < len(category_ids):
            raise ValueError(f"detection label {label} is outside 1..{len(category_ids) - 1} (the data's classes)")
        x1, y1, x2, y2 = box
        common = {"image_id": int(image_id), "category_id": int(category_ids[int(label)]), "score": float(score)}
        out["bbox"].append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
        if "masks" in detection:
            mask = detection["masks"][k, 0].detach().float().cpu().numpy() >= mask_threshold
            out["segm"].append({**common, "segmentation": _rle(mask)})
        if "keypoints" in detection:
            out["keypoints"].append({**common, "keypoints": detection["keypoints"][k].detach().float().cpu()
                                     .flatten().tolist()})
    return out


# ------------------------------------------------------------------------------------- VOC AP
def _pair_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box [4] with boxes [G, 4], continuous coordinates."""
    inter_w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = inter_w * inter_h
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def voc_evaluate(ground_truth: Sequence[dict], detections: Sequence[dict], num_classes: int, *,
                 iou_threshold: float = 0.5) -> dict[int, dict[str, Any]]:
    """PASCAL VOC AP per class, the devkit's matching (``VOCevaldet`` / py-faster-rcnn's ``voc_eval``).

    ground_truth: per image ``{"image_id", "boxes" [G, 4] xyxy, "labels" [G], "ignore" [G] bool}``
    (VOC ``difficult``, COCO crowd); detections: per image ``{"image_id", "boxes", "labels",
    "scores"}``. For each class, detections of all images in descending score order (stable)
    take the object of their image with the highest IoU; above ``iou_threshold`` (strictly, as
    the devkit) a first match of an object that is not ignored is a true positive, a match of
    an ignored object counts neither way, anything else is a false positive. Coordinates are
    continuous (a VOC box covers [xmin - 1, xmax], see :mod:`canon.data.detection`), so the
    IoU needs none of the devkit's "+ 1" on widths.

    Returns ``{label: {"ap", "ap07", "recall", "precision", "num_objects", "num_detections"}}``
    for labels 1..num_classes - 1 that have objects to find.
    """
    from canon.metrics import voc_ap, voc_precision_recall

    gt_by_image = {int(g["image_id"]): g for g in ground_truth}
    out: dict[int, dict[str, Any]] = {}
    for label in range(1, num_classes):
        objects, num_positives = {}, 0
        for image_id, g in gt_by_image.items():
            keep = np.asarray(g["labels"]) == label
            if keep.any():
                ignore = np.asarray(g["ignore"], bool)[keep]
                objects[image_id] = (np.asarray(g["boxes"], np.float64)[keep], ignore, np.zeros(int(keep.sum()), bool))
                num_positives += int((~ignore).sum())
        if num_positives == 0:
            continue
        rows = []  # (score, image_id, box)
        for d in detections:
            labels = np.asarray(d["labels"])
            for box, score in zip(np.asarray(d["boxes"], np.float64)[labels == label],
                                  np.asarray(d["scores"], np.float64)[labels == label]):
                rows.append((score, int(d["image_id"]), box))
        order = np.argsort(-np.array([r[0] for r in rows], np.float64), kind="mergesort")
        scores, true_positive, counted = [], [], []
        for index in order:
            score, image_id, box = rows[index]
            is_tp = False
            ignored = False
            if image_id in objects:
                boxes, ignore, found = objects[image_id]
                iou = _pair_iou(box, boxes)
                best = int(iou.argmax())
                if iou[best] > iou_threshold:
                    if ignore[best]:
                        ignored = True
                    elif not found[best]:
                        is_tp, found[best] = True, True
            if not ignored:
                scores.append(score)
                true_positive.append(is_tp)
        if scores:
            recall, precision = voc_precision_recall(scores, true_positive, num_positives)
        else:
            recall, precision = np.zeros(0), np.zeros(0)
        out[label] = {"ap": voc_ap(recall, precision, "all_point"), "ap07": voc_ap(recall, precision, "11_point"),
                      "recall": recall, "precision": precision, "num_objects": num_positives,
                      "num_detections": len(rows)}
        del counted
    return out


def _ground_truth_rows(dataset) -> list[dict]:
    rows = []
    for r in dataset.records:
        ignore = r.iscrowd.bool()
        if r.difficult is not None:
            ignore = ignore | r.difficult.bool()
        rows.append({"image_id": r.image_id, "boxes": r.boxes.numpy(), "labels": r.labels.numpy(),
                     "ignore": ignore.numpy()})
    return rows


# ------------------------------------------------------------------------------------- drawing
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))


def draw_detections(image: Tensor, detection: dict | None, class_names: Sequence[str], *,
                    score_threshold: float = DRAW_SCORE_THRESHOLD, ground_truth: Tensor | None = None,
                    skeleton: Sequence[tuple[int, int]] = ()):
    """A PIL image of ``image`` (RGB [3, H, W] in [0, 1]) with the annotated boxes ``ground_truth``
    [G, 4] in green and the detections scoring at least ``score_threshold`` in their class colour,
    labelled "class score"; masks blended in, keypoints as dots joined by the ``skeleton``."""
    from PIL import Image, ImageDraw

    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    array = (rgb.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().copy()
    keep = []
    if detection is not None:
        keep = [k for k, s in enumerate(detection["scores"].tolist()) if s >= score_threshold]
        if "masks" in detection:
            for k in keep:
                colour = np.array(PALETTE[int(detection["labels"][k]) % len(PALETTE)], np.float32)
                mask = detection["masks"][k, 0].detach().float().cpu().numpy() >= 0.5
                array[mask] = (0.5 * array[mask] + 0.5 * colour).astype(np.uint8)
    picture = Image.fromarray(array)
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 250))
    if ground_truth is not None:
        for box in ground_truth.tolist():
            draw.rectangle(box, outline=(0, 255, 0), width=width)
    if detection is not None:
        for k in keep:
            label = int(detection["labels"][k])
            colour = PALETTE[label % len(PALETTE)]
            box = detection["boxes"][k].tolist()
            draw.rectangle(box, outline=colour, width=width)
            name = class_names[label] if label < len(class_names) else str(label)
            text = f"{name} {float(detection['scores'][k]):.2f}"
            left, top = box[0], max(0.0, box[1] - 11)
            draw.rectangle(draw.textbbox((left, top), text), fill=colour)
            draw.text((left, top), text, fill=(0, 0, 0))
            if "keypoints" in detection:
                points = detection["keypoints"][k].tolist()
                for a, b in skeleton:
                    if points[a][2] > 0 and points[b][2] > 0:
                        draw.line([tuple(points[a][:2]), tuple(points[b][:2])], fill=colour, width=width)
                for x, y, v in points:
                    if v > 0:
                        draw.ellipse([x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width], fill=colour)
    return picture


# ------------------------------------------------------------------------------------- the task
class DetectionTask(Task):
    name = "detection"
    Options = DetectionOptions
    primary_metric = "test_ap50"
    higher_is_better = True
    eval_batch_size = 4  # whole test images, of different sizes: the detectors take lists
    sample_unit = "images"

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        self.info = None
        self.rule = InputRule()
        self.seed = 0
        self._train_set = None  # the DetectionTransformedDataset whose transform build_model completes
        self._test_set = None
        self._base_image_size: int | None = None
        self._curves: dict[str, dict] = {}

    # ------------------------------------------------------------------ data and model
    def _datasets(self, data: str, data_dir: str | None, train: bool = True):
        from canon.data import build_dataset
        from canon.data.detection_transforms import DetectionTransformedDataset

        train_raw = build_dataset(data, split="train", data_dir=data_dir) if train else None
        test_raw = build_dataset(data, split="test", data_dir=data_dir)
        info = (train_raw or test_raw).info
        if getattr(info, "task", None) != "detection" or not hasattr(test_raw, "records"):
            raise ValueError(f"{data!r} is a {getattr(info, 'task', 'classification')} dataset; detection models need "
                             "boxes: voc:DIR, voc-xml:DIR (e.g. ../shared/data/raccoon), coco:DIR[?keypoints]"
                             "[?masks] or coco:ANNOTATIONS_JSON:IMAGE_DIR")
        self.info = info
        test = DetectionTransformedDataset(test_raw, None)  # untouched: detections come back in its pixels
        train_ds = DetectionTransformedDataset(train_raw, None) if train_raw is not None else None
        return train_ds, test, info

    def build_data(self, run) -> TaskData:
        cfg = run.config
        self.seed = cfg.seed
        train, test, info = self._datasets(cfg.data, cfg.data_dir)
        self._train_set, self._test_set = train, test
        return TaskData(train=train, test=test, info=info)

    def model_kwargs(self, data: TaskData) -> dict[str, Any]:
        return {"num_classes": data.info.num_classes}

    def build_model(self, run, data: TaskData) -> nn.Module:
        from canon.registry import create_model, model_info

        kwargs = self.model_kwargs(data)
        if data.info.num_keypoints and "num_keypoints" in model_info(run.config.model).valid_kwargs():
            kwargs["num_keypoints"] = data.info.num_keypoints
        model = create_model(run.config.model, **{**kwargs, **run.config.model_kwargs})
        self._fit_data_to_model(model, data.info)
        self.rule = input_rule(model)
        resize_to = None
        if self.options.multiscale:
            sizes = getattr(model, "multiscale_sizes", None)
            if not sizes or self.rule.fixed is None:
                raise ValueError(f"--multiscale needs a fixed-size model with multiscale_sizes (yolov2, yolov3, "
                                 f"yolov3_tiny); {run.config.model} has none")
            self._base_image_size = int(model.image_size)
            resize_to = (max(sizes), max(sizes))
        self._train_set.transform = training_transforms(data.info, self.rule, self.options, resize_to=resize_to)
        return model

    def _fit_data_to_model(self, model: nn.Module, info) -> None:
        """Masks for a mask head (COCO ``?masks`` switched on); the model's class count checked."""
        num_classes = getattr(model, "num_classes", None)
        if num_classes is not None and num_classes != info.num_classes:
            raise ValueError(f"the model has num_classes={num_classes} but {info.name} has {info.num_classes} "
                             f"(with the background): {list(info.class_names)[:6]}...; leave num_classes to the data")
        masks, keypoints = _model_needs(model)
        if keypoints and keypoints != info.num_keypoints:
            raise ValueError(f"the model predicts {keypoints} keypoints but the data has {info.num_keypoints} "
                             f"(a keypoint model needs coco:DIR?keypoints or a person_keypoints json)")
        if masks:
            for wrapper in (self._train_set, self._test_set):
                if wrapper is not None and not wrapper.dataset.masks:
                    if any(r.segmentations is None for r in wrapper.dataset.records[:1]):
                        raise ValueError(f"a mask head needs instance masks; {info.name} has none (use coco:DIR?masks "
                                         "or coco:ANNOTATIONS_JSON:IMAGE_DIR?masks)")
                    wrapper.dataset = wrapper.dataset.with_masks()

    def checkpoint_meta(self) -> dict[str, Any]:
        info = self.info
        return {"class_names": list(getattr(info, "class_names", []) or []),
                "category_ids": list(getattr(info, "category_ids", []) or []),
                "keypoint_names": list(getattr(info, "keypoint_names", []) or []),
                "skeleton": [list(p) for p in getattr(info, "skeleton", ()) or ()],
                "input_rule": self.rule.as_dict()}

    def build_eval_data(self, data, data_dir, meta, model) -> TaskData:
        _, test, info = self._datasets(data, data_dir, train=False)
        self._train_set, self._test_set = None, test
        trained_on = meta.get("extra", {}).get("class_names") or []
        if trained_on and list(trained_on) != list(info.class_names):
            raise ValueError(f"the checkpoint was trained on classes {trained_on[:6]} ({len(trained_on)} with the "
                             f"background), {data!r} has {list(info.class_names)[:6]} ({info.num_classes}): evaluate "
                             f"on data with the same classes")
        self._fit_data_to_model(model, info)
        self.rule = input_rule(model)
        return TaskData(train=None, test=test, info=info)

    collate = None  # set below: canon.data.detection_transforms.collate_detection (lists of images and targets)

    # ------------------------------------------------------------------ the step
    def _set_multiscale_size(self, module: nn.Module, step_count: int) -> None:
        """The size of batch ``step_count``: a draw from the model's sizes that depends on the seed
        and ``step_count // multiscale_every`` alone (the same on every process and after a resume)."""
        sizes = module.multiscale_sizes
        period = step_count // self.options.multiscale_every
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + period)
        module.image_size = int(sizes[int(torch.randint(len(sizes), (1,), generator=generator))])

    def train_step(self, model, batch, step) -> None:
        if self.options.multiscale:
            self._set_multiscale_size(step.module, step.step_count)
        super().train_step(model, batch, step)

    def compute_loss(self, model, batch, step=None):
        images, targets = batch
        check_batch(images, targets)
        model_targets = [{k: t[k] for k in MODEL_TARGET_KEYS if k in t} for t in targets]
        losses = model(list(images), model_targets)
        if not isinstance(losses, dict) or not losses:
            raise TypeError(f"a detector in training mode returns a dict of losses, got {type(losses).__name__}")
        loss = sum(value.float() for value in losses.values())
        if step is not None:
            step.log(len(images), loss=loss.item(), **{_log_name(k): v.item() for k, v in losses.items()})
        return loss

    # ------------------------------------------------------------------ evaluation
    def _restore_size(self, model: nn.Module) -> None:
        if self._base_image_size is not None and hasattr(model, "image_size"):
            model.image_size = self._base_image_size

    @torch.no_grad()
    def predict_batch(self, model: nn.Module, images: Sequence[Tensor]) -> list[dict]:
        model.eval()
        return model(list(images))

    @torch.no_grad()
    def evaluate(self, model, loader, *, full: bool = False) -> dict[str, Any]:
        from canon.metrics import coco_evaluate
        from canon.metrics.detection import COCO_DETECTION_STAT_NAMES, COCO_KEYPOINT_STAT_NAMES

        was_training = model.training
        model.eval()
        self._restore_size(model)
        dataset = _base_dataset(loader.dataset)
        info = dataset.info
        category_ids = list(info.category_ids)
        results: dict[str, list[dict]] = {"bbox": [], "segm": [], "keypoints": []}
        voc_detections, seconds, count = [], 0.0, 0
        for images, targets in loader:
            synchronize = images[0].is_cuda
            if synchronize:
                torch.cuda.synchronize()
            started = time.perf_counter()
            outputs = model(list(images))
            if synchronize:
                torch.cuda.synchronize()
            seconds += time.perf_counter() - started
            count += len(images)
            for output, target in zip(outputs, targets):
                image_id = int(target["image_id"])
                for kind, entries in to_coco_results(output, image_id, category_ids).items():
                    results[kind].extend(entries)
                voc_detections.append({"image_id": image_id, "boxes": output["boxes"].float().cpu().numpy(),
                                       "labels": output["labels"].cpu().numpy(),
                                       "scores": output["scores"].float().cpu().numpy()})
        model.train(was_training)
        ground_truth = dataset.to_coco()
        out: dict[str, Any] = {}
        bbox = coco_evaluate(ground_truth, results["bbox"], "bbox", return_curves=full)
        out.update({f"test_{name.lower()}": bbox[name] for name in COCO_DETECTION_STAT_NAMES})
        if results["segm"] and all("segmentation" in a for a in ground_truth["annotations"]):
            segm = coco_evaluate(ground_truth, results["segm"], "segm")
            out.update({f"test_mask_{name.lower()}": segm[name] for name in COCO_DETECTION_STAT_NAMES})
        if results["keypoints"] and info.num_keypoints:
            keypoints = coco_evaluate(ground_truth, results["keypoints"], "keypoints")
            out.update({f"test_keypoint_{name.lower()}": keypoints[name] for name in COCO_KEYPOINT_STAT_NAMES})
        voc = voc_evaluate(_ground_truth_rows(dataset), voc_detections, info.num_classes)
        out["test_voc07_map"] = float(np.mean([v["ap07"] for v in voc.values()])) if voc else 0.0
        out["test_voc_map"] = float(np.mean([v["ap"] for v in voc.values()])) if voc else 0.0
        out["test_images_per_s"] = count / max(seconds, 1e-9)
        if full:
            out["num_test_images"] = count
            out["per_class"] = _per_class_table(info, voc, bbox)
            self._curves = {info.class_names[label]: v for label, v in voc.items()}
        return out

    # ------------------------------------------------------------------ figures and prediction
    def write_figures(self, model, data, result, out_dir: Path, count: int = 6) -> dict[str, Any]:
        from canon.engine.checkpoint import atomic_write_bytes
        from canon.engine.plots import _figure_bytes, _pyplot

        plt = _pyplot()
        out_dir = Path(out_dir)
        written = []
        for name, curve in self._curves.items():
            fig, ax = plt.subplots(figsize=(4.5, 4))
            recall, precision = curve["recall"], curve["precision"]
            if len(recall):
                ax.plot(recall, precision, label="precision")
                envelope = np.maximum.accumulate(precision[::-1])[::-1]
                ax.plot(recall, envelope, linestyle="--", label="envelope (all-point AP)")
                ax.legend(loc="lower left")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_title(f"{name}: AP {curve['ap']:.3f}, VOC07 AP {curve['ap07']:.3f} (IoU 0.5)")
            path = out_dir / f"pr_{_safe_name(name)}.png"
            atomic_write_bytes(path, _figure_bytes(fig))
            written.append(str(path))
        test_set = data.test
        device = next(model.parameters()).device
        n = min(count, len(test_set))
        cols = min(3, n) or 1
        rows = max(1, math.ceil(n / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.2 * rows), squeeze=False)
        names = list(data.info.class_names)
        for index in range(rows * cols):
            ax = axes[index // cols][index % cols]
            ax.axis("off")
            if index >= n:
                continue
            image, target = test_set[index]
            detection = {k: v.cpu() for k, v in self.predict_batch(model, [image.to(device)])[0].items()}
            ax.imshow(draw_detections(image, detection, names, ground_truth=target["boxes"],
                                      skeleton=getattr(data.info, "skeleton", ())))
            ax.set_title(Path(_base_dataset(test_set).records[index].image_path).name, fontsize=8)
        fig.suptitle(f"green: annotated; colour: detections with score >= {DRAW_SCORE_THRESHOLD}")
        predictions = out_dir / "predictions.png"
        atomic_write_bytes(predictions, _figure_bytes(fig))
        return {"predictions_png": str(predictions), "pr_curve_pngs": written}

    @torch.no_grad()
    def predict(self, model, meta, inputs, *, save_dir=None, topk: int = 5, device=None):
        from canon.data import load_image
        from canon.engine.checkpoint import CheckpointError, atomic_write_text

        if not inputs:
            raise CheckpointError("no input images given")
        extra = meta.get("extra", {})
        device = device or torch.device("cpu")
        names = extra.get("class_names") or []
        num_classes = getattr(model, "num_classes", None) or len(names)
        category_ids = extra.get("category_ids") or list(range(num_classes))
        skeleton = [tuple(p) for p in extra.get("skeleton") or []]
        out_dir = Path(save_dir) if save_dir else Path(meta["path"]).parent / "predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        results, everything = [], []
        for image_id, path in enumerate(inputs):
            image = load_image(path, 3)
            detection = {k: v.cpu() for k, v in self.predict_batch(model, [image.to(device)])[0].items()}
            target = out_dir / f"{Path(path).stem}_detections.png"
            draw_detections(image, detection, names, skeleton=skeleton).save(target)
            coco = to_coco_results(detection, image_id, category_ids)
            entries = coco["bbox"]
            for kind in ("segm", "keypoints"):
                for entry, extra_entry in zip(entries, coco[kind]):
                    entry.update({k: v for k, v in extra_entry.items() if k in ("segmentation", "keypoints")})
            everything.extend(entries)
            top = []
            for k in range(min(topk, len(detection["scores"]))):  # the model returns them best first
                label = int(detection["labels"][k])
                top.append({"class": names[label] if label < len(names) else str(label), "index": label,
                            "probability": float(detection["scores"][k]),
                            "box": [round(v, 2) for v in detection["boxes"][k].tolist()]})
            results.append({"input": str(path), "image_id": image_id, "overlay": str(target), "top": top,
                            "detections": entries})
        atomic_write_text(out_dir / "detections.json", json.dumps(everything))
        return results

    # ------------------------------------------------------------------ commands
    @classmethod
    def cli_commands(cls) -> list[CliCommand]:
        return [CliCommand("anchors", "YOLOv2's k-means anchor priors (distance 1 - IoU) of a detection set's "
                                      "training boxes, beside the papers' priors", _anchors_arguments, _anchors_run)]


def _per_class_table(info, voc: dict, bbox: dict) -> dict[str, dict]:
    table = {}
    precision = bbox.get("precision")
    for label in range(1, info.num_classes):
        row: dict[str, Any] = {"category_id": int(info.category_ids[label])}
        if label in voc:
            row.update(voc_ap=voc[label]["ap"], voc07_ap=voc[label]["ap07"], num_objects=voc[label]["num_objects"],
                       num_detections=voc[label]["num_detections"])
        if precision is not None:
            k = list(bbox["category_ids"]).index(info.category_ids[label])
            p = precision[:, :, k, 0, -1]  # (T, R) at area "all", the largest maxDets
            row["coco_ap"] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
            p50 = p[0]
            row["coco_ap50"] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else -1.0
        table[info.class_names[label]] = row
    return table


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "class"


def _collate(batch):
    from canon.data.detection_transforms import collate_detection

    return collate_detection(batch)


DetectionTask.collate = staticmethod(_collate)


# ------------------------------------------------------------------------------------- canon anchors
def anchors_report(box_sizes: Tensor, k: int, *, input_size: int = 416, seed: int = 0) -> dict[str, Any]:
    """k-means priors (:func:`canon.ops.kmeans_anchors`) of (width, height) fractions of the image
    [N, 2], and the mean best IoU of the papers' own priors on the same boxes (each in fractions:
    YOLOv2's cell units / 13, YOLOv3's pixels / 416)."""
    from canon.ops import kmeans_anchors, mean_best_iou
    from canon.ops.anchor_priors import YOLOV2_COCO_PRIORS, YOLOV2_VOC_PRIORS, YOLOV3_COCO_ANCHORS

    result = kmeans_anchors(box_sizes, k, seed=seed)
    grid = input_size / 32
    papers = {
        "yolov2_voc_priors (5)": mean_best_iou(box_sizes, torch.tensor(YOLOV2_VOC_PRIORS) / 13),
        "yolov2_coco_priors (5)": mean_best_iou(box_sizes, torch.tensor(YOLOV2_COCO_PRIORS) / 13),
        "yolov3_coco_anchors (9)": mean_best_iou(box_sizes, torch.tensor(YOLOV3_COCO_ANCHORS, dtype=torch.float64)
                                                 / 416),
    }
    priors = result.priors.double()
    return {"num_boxes": int(box_sizes.shape[0]), "k": k, "input_size": input_size,
            "priors": [[round(float(w), 5), round(float(h), 5)] for w, h in priors],
            "mean_iou": result.mean_iou, "iterations": result.iterations, "paper_priors_mean_iou": papers,
            "yolov2_anchors": [[round(float(w) * grid, 4), round(float(h) * grid, 4)] for w, h in priors],
            "yolov3_anchors": [[round(float(w) * input_size, 1), round(float(h) * input_size, 1)] for w, h in priors]}


def _anchors_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="a detection spec: voc:DIR, voc-xml:DIR, coco:DIR, ...")
    parser.add_argument("--data-dir")
    parser.add_argument("--k", type=int, default=5, help="number of priors (YOLOv2: 5, YOLOv3: 9, v3-tiny: 6)")
    parser.add_argument("--input-size", type=int, default=416, help="the square network input, for the priors "
                                                                    "in pixels and in 32-px cells")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")


def _anchors_run(args) -> int:
    from canon.data import build_dataset

    dataset = build_dataset(args.data, split="train", data_dir=args.data_dir)
    if not hasattr(dataset, "box_sizes"):
        raise ValueError(f"{args.data!r} is not a detection dataset (voc:DIR, voc-xml:DIR, coco:DIR, ...)")
    if args.input_size < 32 or args.input_size % 32:
        raise ValueError(f"--input-size must be a positive multiple of 32, got {args.input_size}")
    sizes = dataset.box_sizes(relative=True)
    report = anchors_report(sizes, args.k, input_size=args.input_size, seed=args.seed)
    report["data"] = args.data
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['num_boxes']} training boxes of {args.data}; k = {args.k}; sizes as fractions of the image "
          f"(YOLO resizes every image to a square)")
    print(f"{'width':>8} {'height':>8}   {'px @' + str(args.input_size):>14}   {'32-px cells':>14}")
    for (w, h), (pw, ph), (cw, ch) in zip(report["priors"], report["yolov3_anchors"], report["yolov2_anchors"]):
        print(f"{w:8.4f} {h:8.4f}   {pw:6.1f} x {ph:<6.1f}   {cw:6.3f} x {ch:<6.3f}")
    print(f"mean IoU of the {args.k} k-means priors: {report['mean_iou']:.4f} ({report['iterations']} iterations)")
    for name, value in report["paper_priors_mean_iou"].items():
        print(f"mean IoU of {name + ':':<26} {value:.4f}")
    print("(YOLO9000, Table 1: 61.0 mean IoU with 5 k-means priors on VOC 2007)")
    as_text = lambda pairs: "(" + ", ".join(f"({a}, {b})" for a, b in pairs) + ")"  # noqa: E731
    print(f"yolov2: --model-arg \"anchors={as_text(report['yolov2_anchors'])}\"")
    if args.k in (6, 9):
        print(f"yolov3{'_tiny' if args.k == 6 else ''}: --model-arg \"anchors={as_text(report['yolov3_anchors'])}\" "
              f"(--model-arg image_size={args.input_size})")
    return 0


# ------------------------------------------------------------------------------------- the demo
def _xml(filename: str, width: int, height: int, objects: Sequence[tuple[str, int, int, int, int]]) -> str:
    parts = [f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin>"
                     f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>\n"


def write_digit_canvases(root: str | Path, *, num_train: int = 300, num_test: int = 60, size: int = 96,
                         max_digits: int = 3, digit_sizes: tuple[int, int] = (24, 44), seed: int = 0) -> Path:
    """A VOC-XML detection folder (``voc-xml:ROOT``) of ``size``-pixel canvases holding 1 to
    ``max_digits`` of scikit-learn's bundled digits each, upscaled to ``digit_sizes`` pixels and
    placed without overlap, in a random bright colour on dark noise. Boxes are the extent of each
    digit's ink (grey level > 1/16); classes "0".."9". Training canvases draw from canon's digits
    training split, test canvases from its test split, so test digits are unseen."""
    import torch.nn.functional as F
    from PIL import Image
    from sklearn.datasets import load_digits

    from canon.data.digits import split_indices

    root = Path(root)
    for folder in ("images", "annotations", "splits"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    pixels = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    split = split_indices(len(pixels))
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    randint = lambda low, high: int(torch.randint(low, high, (1,), generator=generator))  # noqa: E731
    for split_name, count in (("train", num_train), ("test", num_test)):
        pool = split[split_name]
        names = []
        for n in range(count):
            canvas = 0.15 * rand(3, size, size) + 0.1 * rand(3, 1, 1)
            objects, taken = [], []
            for _ in range(randint(1, max_digits + 1)):
                side = randint(digit_sizes[0], digit_sizes[1] + 1)
                for _attempt in range(20):
                    top, left = randint(0, size - side + 1), randint(0, size - side + 1)
                    box = (left, top, left + side, top + side)
                    if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in taken):
                        break
                else:
                    continue
                index = int(pool[randint(0, len(pool))])
                ink = F.interpolate(pixels[index][None, None], size=(side, side), mode="bilinear",
                                    align_corners=False)[0, 0].clamp(0, 1)  # (side, side)
                colour = 0.5 + 0.5 * rand(3, 1, 1)
                region = canvas[:, top:top + side, left:left + side]
                canvas[:, top:top + side, left:left + side] = region * (1 - ink) + colour * ink
                rows, cols = torch.nonzero(ink > 1 / 16, as_tuple=True)
                if not len(rows):
                    continue
                taken.append(box)
                # 1-based inclusive VOC pixel indices of the ink's extent
                objects.append((str(int(digits.target[index])), left + int(cols.min()) + 1, top + int(rows.min()) + 1,
                                left + int(cols.max()) + 1, top + int(rows.max()) + 1))
            filename = f"{split_name}-{n:04d}.png"
            array = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(array).save(root / "images" / filename)
            (root / "annotations" / f"{split_name}-{n:04d}.xml").write_text(_xml(filename, size, size, objects))
            names.append(filename)
        (root / "splits" / f"{split_name}.txt").write_text("\n".join(names) + "\n")
    return root


DEMO_MODEL = "yolov3_tiny"


def demo(out: str | None = None, quiet: bool = False) -> int:
    """``canon demo detection``: YOLOv3-tiny on canvases of scikit-learn's digits (no download)."""
    from canon.data import build_dataset
    from canon.tasks import train

    out_dir = Path(out or "runs/demo-detection")
    data_dir = write_digit_canvases(out_dir / "digit-canvases")
    spec = f"voc-xml:{data_dir}"
    sizes = build_dataset(spec, split="train").box_sizes(relative=True)
    image_size = 96
    anchors = anchors_report(sizes, 6, input_size=image_size)["yolov3_anchors"]
    print(f"canon demo: training {DEMO_MODEL} ({image_size} px, k-means anchors of the training boxes) on "
          f"{len(sizes)} digits in 300 canvases of scikit-learn's digits ({data_dir})", file=sys.stderr)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    # batch 8: more updates for the same arithmetic (batch 16 for 12 epochs reached AP50 0.37, batch 8 for
    # 14 epochs 0.43 on one thread, 157 CPU-seconds)
    metrics = train(DEMO_MODEL, data=spec, epochs=14, batch_size=8, lr=2e-3, optimizer="adamw", weight_decay=5e-4,
                    scheduler="cosine", warmup_epochs=1, seed=0, out=str(out_dir), progress=not quiet,
                    eval_every=14, model_kwargs={"image_size": image_size, "anchors": [tuple(a) for a in anchors]},
                    hflip=0.0)
    seconds = time.perf_counter() - started
    from canon.engine.checkpoint import load_model
    from canon.data.detection_transforms import DetectionTransformedDataset

    model, _ = load_model(str(out_dir))
    test = DetectionTransformedDataset(build_dataset(spec, split="test"), None)
    task = DetectionTask()
    task.info = test.info
    figures = task.write_figures(model, TaskData(train=None, test=test, info=test.info), {}, out_dir)
    print(f"{DEMO_MODEL} on digit canvases: test AP50 {metrics['test_ap50']:.3f}, AP {metrics['test_ap']:.3f} "
          f"after {metrics['epochs']} epochs in {seconds:.0f} s; detections drawn in {figures['predictions_png']}")
    return 0


DetectionTask.demo = staticmethod(demo)
