"""The detection task: the data pipeline against the pixels it moves, the loss against the model's
dict, evaluation against coco_evaluate, pycocotools and a transcription of the VOC devkit, the
COCO result format, canon predict / anchors / demo, bad input, and a CLI round trip."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import canon
from canon.data import build_dataset
from canon.data.detection_transforms import DetectionTransformedDataset, collate_detection
from canon.tasks.detection import (
    DetectionOptions, DetectionTask, InputRule, check_batch, draw_detections, input_rule, to_coco_results,
    training_transforms, write_digit_canvases,
)


@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    """A tiny VOC-XML detection folder: 8 training and 5 test canvases of 64 px with 1-3 digits."""
    root = tmp_path_factory.mktemp("canvases")
    return write_digit_canvases(root, num_train=8, num_test=5, size=64, digit_sizes=(16, 28), seed=1)


class StepRecorder:
    """What compute_loss needs of the engine's StepContext: ``log``."""

    def __init__(self):
        self.logged = []

    def log(self, n=None, **values):
        self.logged.append((n, values))


# ------------------------------------------------------------------------------------- the pipeline
def _box_from_pixels(image: torch.Tensor, colour: torch.Tensor) -> list[float]:
    """The continuous xyxy extent of the pixels whose colour is ``colour`` (within 0.1)."""
    close = ((image - colour[:, None, None]).abs() < 0.1).all(0)
    rows, cols = torch.nonzero(close, as_tuple=True)
    return [float(cols.min()), float(rows.min()), float(cols.max()) + 1, float(rows.max()) + 1]


@pytest.mark.parametrize("crop", ["keep-boxes", "iou", "none"])
def test_pipeline_moves_boxes_with_the_pixels(crop):
    """Two flat-coloured rectangles on black: after crop, resize to 64x64, flip and collate, each
    target box is the extent of its own colour in the output image (the pixels are the reference)."""
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    boxes = torch.tensor([[20.0, 30.0, 100.0, 90.0], [130.0, 10.0, 190.0, 110.0]])
    image = torch.zeros(3, 120, 200)
    for (x1, y1, x2, y2), colour in zip(boxes.long().tolist(), colours):
        image[:, y1:y2, x1:x2] = colour[:, None, None]
    target = {"boxes": boxes, "labels": torch.tensor([1, 2]), "iscrowd": torch.zeros(2, dtype=torch.long)}
    info = build_info()
    pipeline = training_transforms(info, InputRule(fixed=(64, 64)), DetectionOptions(hflip=1.0, crop=crop))
    torch.manual_seed(3)
    for _ in range(5):
        images, targets = collate_detection([pipeline(image, dict(target)), pipeline(image, dict(target))])
        for out_image, out_target in zip(images, targets):
            assert out_image.shape == (3, 64, 64)
            assert len(out_target["boxes"]) >= 1  # never every box lost
            for box, label in zip(out_target["boxes"], out_target["labels"]):
                colour = colours[int(label) - 1]
                # bilinear resampling blurs edges by up to a pixel of the output
                assert torch.allclose(box, torch.tensor(_box_from_pixels(out_image, colour)), atol=1.6), (crop, box)
            # flipped: the red rectangle (left in the input) is now right of the blue one when both survive
            if len(out_target["labels"]) == 2 and crop == "none":
                assert out_target["boxes"][0, 0] > out_target["boxes"][1, 0]


def build_info():
    from canon.data.detection import DetectionInfo

    return DetectionInfo(name="toy", num_classes=3, in_chans=3, image_size=(120, 200),
                         class_names=["background", "red", "blue"], mean=(0.5,) * 3, std=(0.5,) * 3)


def test_input_rule_follows_each_models_transform():
    """The sizes torchvision documents (800/1333 for the R50 R-CNNs and RetinaNet, SSD300's 300)
    and the papers' (YOLO v1 448, v2/v3 416)."""
    expected = {"ssd300_vgg16": InputRule(fixed=(300, 300)), "yolov1": InputRule(fixed=(448, 448)),
                "yolov2": InputRule(fixed=(416, 416)), "yolov3_tiny": InputRule(fixed=(416, 416))}
    for name, rule in expected.items():
        with torch.device("meta"):  # shapes only: quick
            model = canon.create_model(name)
        assert input_rule(model) == rule, name
    # R-CNNs build their anchors with real tensors: the small one, with its sizes given
    model = canon.create_model("fasterrcnn_resnet18_fpn", min_size=(480, 512), max_size=700, num_classes=3)
    assert input_rule(model) == InputRule(min_size=(480, 512), max_size=700)
    model = canon.create_model("yolov3_tiny", image_size=320)
    assert input_rule(model) == InputRule(fixed=(320, 320))
    assert input_rule(nn.Linear(2, 2)) == InputRule()


def test_multiscale_draws_a_listed_size_every_ten_batches():
    task = DetectionTask(multiscale=True)
    with torch.device("meta"):
        model = canon.create_model("yolov2", num_classes=3)
    sizes = []
    for step_count in range(80):
        task._set_multiscale_size(model, step_count)
        sizes.append(model.image_size)
    blocks = [sizes[i:i + 10] for i in range(0, 80, 10)]
    assert all(len(set(block)) == 1 for block in blocks)
    assert set(sizes) <= set(range(320, 609, 32)) and len(set(sizes)) > 2
    again = []
    for step_count in range(80):  # a resumed run draws the same sizes
        task._set_multiscale_size(model, step_count)
        again.append(model.image_size)
    assert again == sizes
    with pytest.raises(ValueError, match="multiscale"):
        DetectionOptions(multiscale_every=0)


# ------------------------------------------------------------------------------------- the loss
class DictLossModel(nn.Module):
    """A stand-in detector whose training losses are known functions of one parameter."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))
        self.seen = None

    def forward(self, images, targets=None):
        self.seen = targets
        return {"loss_classifier": self.weight * 3, "box": self.weight ** 2}


def test_the_loss_is_the_sum_of_the_models_loss_dict_and_each_part_is_logged():
    task = DetectionTask()
    model = DictLossModel()
    images = [torch.rand(3, 20, 30), torch.rand(3, 25, 25)]
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0]]), "labels": torch.tensor([1]),
                "image_id": torch.tensor(0), "difficult": torch.tensor([False])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": torch.tensor(1)}]
    step = StepRecorder()
    loss = task.compute_loss(model, (images, targets), step)
    assert loss.item() == pytest.approx(2.0 * 3 + 2.0 ** 2)
    loss.backward()
    assert model.weight.grad.item() == pytest.approx(3 + 2 * 2.0)
    (n, values), = step.logged
    assert n == 2 and values == pytest.approx({"loss": 10.0, "loss_classifier": 6.0, "loss_box": 4.0})
    assert set(model.seen[0]) == {"boxes", "labels"}  # bookkeeping fields stay out of the model


def test_a_real_detector_trains_on_the_sum_and_on_an_image_without_objects():
    torch.manual_seed(0)
    model = canon.create_model("yolov3_tiny", num_classes=3, image_size=64).train()
    images = [torch.rand(3, 50, 70), torch.rand(3, 64, 48)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # background only
    expected = sum(model(images, copy.deepcopy(targets)).values())
    loss = DetectionTask().compute_loss(model, (images, targets), StepRecorder())
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # an image without any object trains alone as well (background only)
    alone = DetectionTask().compute_loss(model, ([images[1]], [targets[1]]), StepRecorder())
    assert torch.isfinite(alone) and alone.item() > 0


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("images, targets, found", [
    ([], [], "empty list"),
    ([torch.rand(3, 8, 8)], [{"boxes": torch.rand(2, 5), "labels": torch.tensor([1, 1])}], r"\(2, 5\)"),
    ([torch.rand(3, 8, 8)], [{"boxes": torch.tensor([[4.0, 1.0, 2.0, 5.0]]), "labels": torch.tensor([1])}],
     r"box 0 is \[4.0, 1.0, 2.0, 5.0\]"),
    ([torch.rand(3, 8, 8)], [{"boxes": torch.tensor([1.0, 1.0, 2.0, 5.0]), "labels": torch.tensor([1])}],
     r"\(4,\)"),
])
def test_bad_batches_raise_a_value_error_naming_the_box_contract(images, targets, found):
    with pytest.raises(ValueError, match=r"\[N, 4\].*xyxy with x1 < x2") as error:
        DetectionTask().compute_loss(DictLossModel(), (images, targets), StepRecorder())
    assert __import__("re").search(found, str(error.value))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        check_batch(images, targets)


def test_a_class_id_outside_the_models_range_is_not_swallowed():
    model = canon.create_model("yolov3_tiny", num_classes=3, image_size=64).train()
    batch = ([torch.rand(3, 32, 32)], [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([7])}])
    with pytest.raises(ValueError, match=r"1\.\.2"):
        DetectionTask().compute_loss(model, batch, StepRecorder())


# ------------------------------------------------------------------------------------- evaluation
class FixedDetector(nn.Module):
    """Returns prepared detections, one list entry per image in the order the images come."""

    def __init__(self, detections):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.detections, self.calls = detections, 0

    def forward(self, images, targets=None):
        out = []
        for _ in images:
            out.append(self.detections[self.calls % len(self.detections)])
            self.calls += 1
        return out


def _noisy_detections(dataset, seed=0):
    """Per test image: each object's box jittered (some far off), a score, sometimes the wrong
    class, plus a false positive, so precision and recall both vary."""
    g = torch.Generator().manual_seed(seed)
    detections = []
    for record in dataset.records:
        boxes, labels = [], []
        for box, label in zip(record.boxes, record.labels):
            jitter = (torch.rand(4, generator=g) - 0.5) * (12 if torch.rand((), generator=g) < 0.7 else 40)
            x1, y1, x2, y2 = (box + jitter).tolist()
            boxes.append([min(x1, x2 - 1), min(y1, y2 - 1), max(x2, x1 + 1), max(y2, y1 + 1)])
            labels.append(int(label) if torch.rand((), generator=g) < 0.8 else int(torch.randint(1, 11, (1,),
                                                                                              generator=g)))
        boxes.append([2.0, 3.0, 20.0, 25.0])
        labels.append(int(torch.randint(1, 11, (1,), generator=g)))
        scores = torch.rand(len(boxes), generator=g)
        order = scores.argsort(descending=True)
        detections.append({"boxes": torch.tensor(boxes)[order], "labels": torch.tensor(labels)[order],
                           "scores": scores[order]})
    return detections


def _evaluate(canvases, detections, full=False):
    from torch.utils.data import DataLoader

    task = DetectionTask()
    test = DetectionTransformedDataset(build_dataset(f"voc-xml:{canvases}", split="test"), None)
    loader = DataLoader(test, batch_size=2, collate_fn=task.collate)
    return task, test, task.evaluate(FixedDetector(detections), loader, full=full)


def test_evaluation_equals_coco_evaluate_and_pycocotools_on_the_same_detections(canvases):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from canon.metrics import coco_evaluate

    test = build_dataset(f"voc-xml:{canvases}", split="test")
    detections = _noisy_detections(test)
    _, _, result = _evaluate(canvases, detections)
    names = ("ap", "ap50", "ap75", "aps", "apm", "apl", "ar1", "ar10", "ar100", "ars", "arm", "arl")
    # the results list written here by hand: (x, y, w, h), category id = label for VOC-style data
    coco_results = [{"image_id": r.image_id, "category_id": int(l), "score": float(s),
                     "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                    for r, d in zip(test.records, detections)
                    for b, l, s in zip(d["boxes"], d["labels"], d["scores"])]
    expected = coco_evaluate(test.to_coco(), coco_results, "bbox")["stats"]
    assert [result[f"test_{n}"] for n in names] == pytest.approx(expected, abs=1e-12)
    ground_truth = COCO()
    ground_truth.dataset = copy.deepcopy(test.to_coco())
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(copy.deepcopy(coco_results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert [result[f"test_{n}"] for n in names] == pytest.approx(list(evaluator.stats), abs=1e-12)
    assert 0.05 < result["test_ap50"] < 0.95  # the noisy detections make a curve that can go wrong


def _devkit_voc_ap(records, detections, label, use_07):
    """py-faster-rcnn's voc_eval, transcribed: 1-based inclusive coordinates with "+ 1" widths."""
    gt = {}
    npos = 0
    for r in records:
        keep = r.labels == label
        inclusive = r.boxes[keep].double() + torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
        gt[r.image_id] = {"bbox": inclusive.numpy(), "difficult": r.difficult[keep].numpy(),
                          "det": [False] * int(keep.sum())}
        npos += int((~r.difficult[keep]).sum())
    image_ids, confidence, boxes = [], [], []
    for r, d in zip(records, detections):
        for b, l, s in zip(d["boxes"].double(), d["labels"], d["scores"]):
            if int(l) == label:
                image_ids.append(r.image_id)
                confidence.append(float(s))
                boxes.append((b + torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)).numpy())
    order = np.argsort(-np.array(confidence), kind="mergesort")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, i in enumerate(order):
        R, bb = gt[image_ids[i]], boxes[i]
        ovmax, jmax = -np.inf, -1
        BBGT = R["bbox"]
        if BBGT.size > 0:
            ixmin, iymin = np.maximum(BBGT[:, 0], bb[0]), np.maximum(BBGT[:, 1], bb[1])
            ixmax, iymax = np.minimum(BBGT[:, 2], bb[2]), np.minimum(BBGT[:, 3], bb[3])
            iw, ih = np.maximum(ixmax - ixmin + 1.0, 0.0), np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax > 0.5:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d], R["det"][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap += p / 11.0
        return ap
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def test_voc_ap_per_class_equals_the_devkit(canvases):
    test = build_dataset(f"voc-xml:{canvases}", split="test")
    detections = _noisy_detections(test, seed=4)
    _, _, result = _evaluate(canvases, detections, full=True)
    labels = sorted({int(l) for r in test.records for l in r.labels})
    for label in labels:
        row = result["per_class"][test.info.class_names[label]]
        assert row["voc07_ap"] == pytest.approx(_devkit_voc_ap(test.records, detections, label, True), abs=1e-12)
        assert row["voc_ap"] == pytest.approx(_devkit_voc_ap(test.records, detections, label, False), abs=1e-12)
    assert result["test_voc_map"] == pytest.approx(np.mean([_devkit_voc_ap(test.records, detections, label, False)
                                                            for label in labels]), abs=1e-12)


def test_voc_evaluate_ignores_difficult_objects_like_the_devkit():
    """Random boxes with difficult objects and duplicate detections, two classes, five images."""
    from types import SimpleNamespace

    from canon.tasks.detection import voc_evaluate

    g = torch.Generator().manual_seed(11)
    records, detections = [], []
    for image_id in range(5):
        n = int(torch.randint(1, 5, (1,), generator=g))
        corner = torch.rand(n, 2, generator=g) * 80
        boxes = torch.cat([corner, corner + 10 + torch.rand(n, 2, generator=g) * 40], 1)
        labels = torch.randint(1, 3, (n,), generator=g)
        difficult = torch.rand(n, generator=g) < 0.3
        records.append(SimpleNamespace(image_id=image_id, boxes=boxes, labels=labels, difficult=difficult))
        copies = boxes.repeat(2, 1) + torch.randn(2 * n, 4, generator=g) * 4  # each object found twice
        copies[:, 2:] = torch.maximum(copies[:, 2:], copies[:, :2] + 1)
        detections.append({"boxes": copies, "labels": labels.repeat(2), "scores": torch.rand(2 * n, generator=g)})
    ground_truth = [{"image_id": r.image_id, "boxes": r.boxes.numpy(), "labels": r.labels.numpy(),
                     "ignore": r.difficult.numpy()} for r in records]
    found = voc_evaluate(ground_truth, [{"image_id": i, **{k: v.numpy() for k, v in d.items()}}
                                        for i, d in enumerate(detections)], num_classes=3)
    assert set(found) == {1, 2}
    for label in (1, 2):
        assert found[label]["ap07"] == pytest.approx(_devkit_voc_ap(records, detections, label, True), abs=1e-12)
        assert found[label]["ap"] == pytest.approx(_devkit_voc_ap(records, detections, label, False), abs=1e-12)
        assert found[label]["num_objects"] == int(sum(((r.labels == label) & ~r.difficult).sum() for r in records))


def test_perfect_detections_score_one(canvases):
    test = build_dataset(f"voc-xml:{canvases}", split="test")
    perfect = [{"boxes": r.boxes, "labels": r.labels, "scores": torch.linspace(1, 0.5, len(r.labels))}
               for r in test.records]
    _, _, result = _evaluate(canvases, perfect)
    assert result["test_ap"] == pytest.approx(1.0) and result["test_ap50"] == pytest.approx(1.0)
    assert result["test_voc07_map"] == pytest.approx(1.0) and result["test_voc_map"] == pytest.approx(1.0)


def test_coco_result_format_with_masks_and_keypoints():
    from pycocotools import mask as mask_utils

    masks = torch.zeros(2, 1, 20, 30)
    masks[0, 0, 2:8, 3:12] = 0.9
    masks[1, 0, 10:18, 5:25] = 0.6
    detection = {"boxes": torch.tensor([[3.0, 2.0, 12.0, 8.0], [5.0, 10.0, 25.0, 18.0]]),
                 "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.4]), "masks": masks,
                 "keypoints": torch.rand(2, 17, 3)}
    out = to_coco_results(detection, 7, category_ids=[0, 1, 90])  # COCO's ids have gaps: label 2 -> id 90
    json.dumps(out)  # plain JSON types only
    assert out["bbox"][1] == {"image_id": 7, "category_id": 90, "score": pytest.approx(0.4),
                              "bbox": pytest.approx([5.0, 10.0, 20.0, 8.0])}
    rle = out["segm"][0]["segmentation"]
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    assert np.array_equal(decoded, (masks[0, 0] >= 0.5).numpy().astype(np.uint8))
    assert len(out["keypoints"][0]["keypoints"]) == 51 and out["keypoints"][0]["score"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="outside 1..2"):
        to_coco_results({**detection, "labels": torch.tensor([1, 3])}, 0, category_ids=[0, 1, 90])


def test_drawn_boxes_land_on_the_boxes_pixels():
    image = torch.zeros(3, 40, 60)
    detection = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 5.0, 5.0]]),
                 "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.1])}
    picture = np.asarray(draw_detections(image, detection, ["background", "thing"],
                                         ground_truth=torch.tensor([[40.0, 10.0, 55.0, 30.0]])))
    assert tuple(picture[15, 10]) != (0, 0, 0)  # the left edge of the confident box
    assert tuple(picture[20, 40]) == (0, 255, 0)  # the annotated box in green
    assert tuple(picture[2, 0]) == (0, 0, 0)  # the left edge of the box scoring 0.1: not drawn
    assert tuple(picture[15, 20]) == (0, 0, 0)  # boxes are outlines


# ------------------------------------------------------------------------------------- commands
def _run_cli(argv):
    """``canon ARGV`` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from canon.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_canon_anchors_prints_kmeans_anchors_and_the_papers_priors(canvases):
    from canon.ops import kmeans_anchors, mean_best_iou
    from canon.ops.anchor_priors import YOLOV2_VOC_PRIORS, YOLOV3_COCO_ANCHORS

    code, text, _ = _run_cli(["anchors", "--data", f"voc-xml:{canvases}", "--k", "3", "--json"])
    assert code == 0
    report = json.loads(text)
    sizes = build_dataset(f"voc-xml:{canvases}", split="train").box_sizes(relative=True)
    expected = kmeans_anchors(sizes, 3, seed=0)
    assert report["num_boxes"] == len(sizes)
    assert np.allclose(report["priors"], expected.priors.numpy(), atol=1e-5)
    assert report["mean_iou"] == pytest.approx(expected.mean_iou)
    # the papers' priors measured here from their published numbers (cells of a 13x13 grid; 416 px)
    papers = report["paper_priors_mean_iou"]
    assert papers["yolov2_voc_priors (5)"] == pytest.approx(mean_best_iou(sizes, torch.tensor(YOLOV2_VOC_PRIORS) / 13))
    assert papers["yolov3_coco_anchors (9)"] == pytest.approx(
        mean_best_iou(sizes, torch.tensor(YOLOV3_COCO_ANCHORS, dtype=torch.float64) / 416))
    assert np.allclose(report["yolov3_anchors"], (expected.priors * 416).numpy(), atol=0.06)
    code, text, _ = _run_cli(["anchors", "--data", f"voc-xml:{canvases}", "--k", "3"])
    assert code == 0 and f"{expected.mean_iou:.4f}" in text and "61.0" in text


def test_cli_round_trip_train_eval_predict(canvases, tmp_path):
    """canon train (2 steps) -> metrics.json; canon eval -> eval.json, PR curves, predictions.png;
    canon predict -> a PNG per image and detections.json in COCO result format."""
    run = tmp_path / "run"
    data = f"voc-xml:{canvases}"
    code, _, err = _run_cli(["train", "yolov3_tiny", "--data", data, "--epochs", "1", "--max-steps-per-epoch", "2",
                             "--batch-size", "2", "--model-arg", "image_size=64", "--photometric", "--crop", "iou",
                             "--lr", "0.001", "--out", run, "--quiet"])
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test_ap50"] <= 1.0 and "best_test_ap50" in metrics
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "train_loss_box", "train_loss_objectness", "train_loss_classification"} <= set(header)
    code, text, err = _run_cli(["eval", run, "--data", data, "--json"])
    assert code == 0, err
    result = json.loads(text)
    assert result["test_ap50"] == pytest.approx(metrics["test_ap50"])  # the same weights, the same number
    assert json.loads((run / "eval.json").read_text())["test_ap"] == pytest.approx(result["test_ap"])
    assert set(result["per_class"]) <= {str(d) for d in range(10)} and result["per_class"]
    assert (run / "predictions.png").stat().st_size > 0
    assert any(p.name.startswith("pr_") for p in run.iterdir())
    image = canvases / "images" / "test-0000.png"
    code, text, err = _run_cli(["predict", run, image, image, "--save-dir", tmp_path / "p", "--json"])
    assert code == 0, err
    printed = json.loads(text)
    assert [r["image_id"] for r in printed] == [0, 1]
    from PIL import Image

    with Image.open(tmp_path / "p" / "test-0000_detections.png") as picture:
        assert picture.size == (64, 64) and picture.mode == "RGB"
    written = json.loads((tmp_path / "p" / "detections.json").read_text())
    assert isinstance(written, list)
    for entry in written:
        assert set(entry) == {"image_id", "category_id", "score", "bbox"} and len(entry["bbox"]) == 4


def test_cli_errors_are_one_line(canvases, tmp_path):
    code, _, err = _run_cli(["train", "yolov3_tiny", "--data", "digits", "--epochs", "1", "--out", tmp_path / "x",
                             "--quiet"])
    assert code == 2 and "detection models need boxes" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run_cli(["train", "ssd300_resnet18", "--data", f"voc-xml:{canvases}", "--multiscale",
                             "--out", tmp_path / "y", "--quiet"])
    assert code == 2 and "--multiscale needs a fixed-size model with multiscale_sizes" in err
    with pytest.raises(SystemExit):  # argparse's own one-line error for a value outside the choices
        _run_cli(["train", "yolov3_tiny", "--data", f"voc-xml:{canvases}", "--crop", "sideways"])


@pytest.mark.slow
def test_demo_trains_a_detector_that_finds_the_digits(tmp_path):
    """``canon demo detection``: a detector that finds unseen digits (test AP50 >= 0.35; 0.43 measured
    on one thread) in at most 4 CPU-minutes (2 minutes on 2
    cores), measured as process time so that a busy machine does not fail it."""
    from canon.tasks.detection import demo

    started = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert demo(out=str(tmp_path / "demo"), quiet=True) == 0
    cpu_seconds = time.process_time() - started
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["test_ap50"] >= 0.35, out.getvalue()
    assert cpu_seconds < 240
    assert (tmp_path / "demo" / "predictions.png").stat().st_size > 0
