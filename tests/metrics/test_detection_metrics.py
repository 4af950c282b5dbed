"""COCO and VOC detection metrics against their references.

- ``coco_evaluate`` against pycocotools' ``COCOeval`` (evaluate, accumulate, summarize) on
  generated ground truth and detections (crowd regions, images without detections or objects,
  categories without objects, tied scores, many detections per image) and on the real COCO-mini
  annotations with jittered detections, for boxes, masks and keypoints: ``stats`` equal within
  1e-6 (in practice bit-identical).
- ``coco_box_iou`` against ``pycocotools.mask.iou``; ``coco_keypoint_oks`` against a direct
  per-pair transcription of the OKS formula written here.
- ``voc_ap`` against a direct transcription of the VOC devkit's ``VOCap``/11-point loop written
  here, and hand-computable curves.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as mask_api  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from canon.metrics.detection import (COCO_DETECTION_STAT_NAMES, COCO_KEYPOINT_SIGMAS,  # noqa: E402
                                     coco_box_iou, coco_evaluate, coco_keypoint_oks, voc_ap,
                                     voc_precision_recall)

SHARED = Path(os.environ.get("CANON_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))


# ============================================================================ reference runner
def reference_stats(gt: dict, dets: list, iou_type: str) -> np.ndarray:
    """COCOeval.stats, with pycocotools' printing silenced; inputs are deep-copied."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, np.float64)


# ============================================================================ generated data
def make_box_data(seed: int, num_images: int = 12, num_cats: int = 4, dets_per_image: int = 15,
                  crowd_prob: float = 0.1, tie_scores: bool = False):
    """A COCO dict and results list; image 0 gets no detections, the last category no objects."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + 3 * i, "height": 200, "width": 240} for i in range(num_images)]
    categories = [{"id": 1 + 2 * k, "name": f"c{k}"} for k in range(num_cats)]
    anns, dets = [], []
    ann_id = 1
    for im in images:
        for _ in range(rng.integers(0, 7)):
            cat = categories[rng.integers(0, num_cats - 1)]["id"]   # last category: no objects
            w, h = rng.uniform(2, 150, 2)
            x, y = rng.uniform(0, 240 - w), rng.uniform(0, 200 - h)
            crowd = int(rng.random() < crowd_prob)
            anns.append({"id": ann_id, "image_id": im["id"], "category_id": cat,
                         "bbox": [x, y, w, h], "area": float(w * h * rng.uniform(0.5, 1.0)),
                         "iscrowd": crowd})
            ann_id += 1
    for im in images[1:]:                                           # image 0: no detections
        own = [a for a in anns if a["image_id"] == im["id"]]
        for _ in range(rng.integers(0, dets_per_image + 1)):
            if own and rng.random() < 0.6:                          # jittered object
                a = own[rng.integers(0, len(own))]
                x, y, w, h = a["bbox"]
                x, y = x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h)
                w, h = w * rng.uniform(0.7, 1.3), h * rng.uniform(0.7, 1.3)
                cat = a["category_id"] if rng.random() < 0.9 else categories[-1]["id"]
            else:                                                   # false positive
                w, h = rng.uniform(2, 150, 2)
                x, y = rng.uniform(0, 240 - w), rng.uniform(0, 200 - h)
                cat = categories[rng.integers(0, num_cats)]["id"]
            score = float(rng.integers(0, 5) / 4) if tie_scores else float(rng.random())
            dets.append({"image_id": im["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "score": score})
    return {"images": images, "annotations": anns, "categories": categories}, dets


@pytest.mark.parametrize("seed", range(6))
def test_bbox_stats_match_pycocotools(seed):
    gt, dets = make_box_data(seed, tie_scores=seed % 2 == 1)
    ours = coco_evaluate(gt, dets, "bbox")
    ref = reference_stats(gt, dets, "bbox")
    np.testing.assert_allclose(ours["stats"], ref, rtol=0, atol=1e-6)
    assert [ours[n] for n in COCO_DETECTION_STAT_NAMES] == ours["stats"]


def test_bbox_many_detections_per_image_hits_maxdets():
    """Over 100 detections in an image: the cut to maxDets and AR@1/10 matter."""
    gt, dets = make_box_data(11, num_images=4, num_cats=2, dets_per_image=260, crowd_prob=0.2)
    np.testing.assert_allclose(coco_evaluate(gt, dets)["stats"],
                               reference_stats(gt, dets, "bbox"), rtol=0, atol=1e-6)


def test_bbox_crowd_heavy_and_tiny_objects():
    gt, dets = make_box_data(21, crowd_prob=0.5)
    for a in gt["annotations"][::3]:                   # small areas (and ignored in ranges)
        a["area"] = 50.0
    np.testing.assert_allclose(coco_evaluate(gt, dets)["stats"],
                               reference_stats(gt, dets, "bbox"), rtol=0, atol=1e-6)


def make_grid_box_data(seed: int):
    """Integer boxes on a coarse grid: exact IoU ties, IoU exactly 0.5/0.75, duplicate objects."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "height": 64, "width": 64} for i in range(1, 9)]
    categories = [{"id": 1}, {"id": 2}]
    anns, dets = [], []
    for im in images:
        boxes = [[int(x) * 4, int(y) * 4, int(w) * 4, int(h) * 4]
                 for x, y, w, h in rng.integers(1, 8, (int(rng.integers(1, 6)), 4))]
        boxes += boxes[:1]                                           # a duplicate object
        for b in boxes:
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 1,
                         "bbox": b, "area": float(b[2] * b[3]),
                         "iscrowd": int(rng.random() < 0.15)})
        for b in boxes:
            for _ in range(int(rng.integers(0, 4))):
                shift = rng.integers(-1, 2, 4) * 4
                dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, 3)),
                             "bbox": [float(v) for v in np.maximum(np.add(b, shift), 4)],
                             "score": float(rng.integers(0, 3) / 2)})
    return {"images": images, "annotations": anns, "categories": categories}, dets


@pytest.mark.parametrize("seed", range(4))
def test_bbox_grid_ties_match_pycocotools(seed):
    gt, dets = make_grid_box_data(seed)
    np.testing.assert_allclose(coco_evaluate(gt, dets)["stats"],
                               reference_stats(gt, dets, "bbox"), rtol=0, atol=1e-6)


def test_curves_match_cocoeval_precision_and_recall():
    gt, dets = make_box_data(7)
    ours = coco_evaluate(gt, dets, return_curves=True)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
    np.testing.assert_allclose(ours["precision"], ev.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["recall"], ev.eval["recall"], rtol=0, atol=1e-12)
    assert ours["category_ids"] == [c["id"] for c in gt["categories"]]


def test_bbox_input_is_not_modified():
    gt, dets = make_box_data(3)
    gt_copy, dets_copy = copy.deepcopy(gt), copy.deepcopy(dets)
    coco_evaluate(gt, dets)
    assert gt == gt_copy and dets == dets_copy


def test_empty_detections_give_zero_or_minus_one():
    gt, _ = make_box_data(4)
    stats = coco_evaluate(gt, [])["stats"]
    assert all(s in (0.0, -1.0) for s in stats) and stats[0] == 0.0


def test_object_id_zero_counts_like_any_other():
    """Deliberate deviation: COCOeval stores matched ids, so a match to object id 0 is lost."""
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
          "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50],
                           "area": 2500.0, "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    ours = coco_evaluate(gt, dets)
    assert ours["AP"] == pytest.approx(1.0) and ours["AR100"] == 1.0
    assert reference_stats(gt, dets, "bbox")[0] == 0.0                  # pycocotools' quirk
    gt["annotations"][0]["id"] = 1                                      # otherwise the same
    np.testing.assert_allclose(reference_stats(gt, dets, "bbox"), ours["stats"], atol=1e-12)


def test_duplicate_object_ids_are_rejected():
    gt, dets = make_box_data(6)
    gt["annotations"][1]["id"] = gt["annotations"][0]["id"]
    with pytest.raises(ValueError, match="unique"):
        coco_evaluate(gt, dets)


def test_bad_input_errors_name_the_problem():
    gt, dets = make_box_data(5)
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(gt, dets, "boxes")
    with pytest.raises(ValueError, match="'bbox'"):
        coco_evaluate(gt, [{k: v for k, v in dets[0].items() if k != "bbox"}] + dets[1:])
    with pytest.raises(ValueError, match="image_id"):
        coco_evaluate(gt, [dict(dets[0], image_id=-7)])
    with pytest.raises(ValueError, match="annotations"):
        coco_evaluate({"images": [], "categories": []}, dets)


def test_box_iou_matches_pycocotools_mask_iou():
    rng = np.random.default_rng(0)
    det = np.c_[rng.uniform(0, 50, (7, 2)), rng.uniform(1, 40, (7, 2))]
    gt = np.c_[rng.uniform(0, 50, (5, 2)), rng.uniform(1, 40, (5, 2))]
    crowd = np.array([0, 1, 0, 1, 0])
    ref = mask_api.iou(det.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist())
    np.testing.assert_array_equal(coco_box_iou(det, gt, crowd), ref)


# ============================================================================ masks
def _polygon(rng, cx, cy, r, n=7):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.5, 1.0, n)
    return np.c_[cx + radii * np.cos(angles), cy + radii * np.sin(angles)].ravel().tolist()


def make_mask_data(seed: int, num_images: int = 6, num_cats: int = 3):
    rng = np.random.default_rng(seed)
    h, w = 96, 128
    images = [{"id": i + 1, "height": h, "width": w} for i in range(num_images)]
    categories = [{"id": k + 1} for k in range(num_cats)]
    anns, dets = [], []
    for im in images:
        for _ in range(rng.integers(0, 5)):
            cx, cy, r = rng.uniform(15, w - 15), rng.uniform(15, h - 15), rng.uniform(3, 40)
            poly = _polygon(rng, cx, cy, r)
            rle = mask_api.merge(mask_api.frPyObjects([poly], h, w))
            crowd = int(rng.random() < 0.15)
            seg = ({"size": [h, w], "counts": _uncompressed_counts(mask_api.decode(rle))}
                   if crowd else [poly])
            anns.append({"id": len(anns) + 1, "image_id": im["id"],
                         "category_id": int(rng.integers(1, num_cats)),   # last: no objects
                         "segmentation": seg, "area": float(mask_api.area(rle)),
                         "bbox": mask_api.toBbox(rle).tolist(), "iscrowd": crowd})
            for _ in range(rng.integers(0, 3)):
                jitter = _polygon(rng, cx + rng.normal(0, 3), cy + rng.normal(0, 3), r)
                rle_d = mask_api.merge(mask_api.frPyObjects([jitter], h, w))
                rle_d["counts"] = rle_d["counts"].decode("ascii")
                dets.append({"image_id": im["id"], "category_id": anns[-1]["category_id"],
                             "segmentation": rle_d, "score": float(rng.random())})
        if im["id"] != 1:                                            # false positives
            poly = _polygon(rng, rng.uniform(15, w - 15), rng.uniform(15, h - 15), 10)
            rle_d = mask_api.merge(mask_api.frPyObjects([poly], h, w))
            rle_d["counts"] = rle_d["counts"].decode("ascii")
            dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, num_cats + 1)),
                         "segmentation": rle_d, "score": float(rng.random())})
    dets = [d for d in dets if d["image_id"] != 1]                   # image 1: no detections
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _uncompressed_counts(binary: np.ndarray) -> list:
    """Column-major run lengths starting with a run of zeros (COCO's uncompressed RLE)."""
    flat = binary.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, len(flat)]).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.mark.parametrize("seed", range(3))
def test_segm_stats_match_pycocotools(seed):
    gt, dets = make_mask_data(seed)
    np.testing.assert_allclose(coco_evaluate(gt, dets, "segm")["stats"],
                               reference_stats(gt, dets, "segm"), rtol=0, atol=1e-6)


def test_segm_with_boxes_and_polygons_matches_pycocotools():
    """Results carrying a box too: loadRes takes their area from the box, not the mask."""
    gt, dets = make_mask_data(5, num_images=8)
    rng = np.random.default_rng(5)
    for i, d in enumerate(dets):
        rle = dict(d["segmentation"], counts=d["segmentation"]["counts"].encode("ascii"))
        x, y, w, h = mask_api.toBbox(rle).tolist()
        d["bbox"] = [x, y, w * rng.uniform(0.5, 2.0), h * rng.uniform(0.5, 2.0)]
        if i % 3 == 0:                                               # a polygon instead of RLE
            d["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    np.testing.assert_allclose(coco_evaluate(gt, dets, "segm")["stats"],
                               reference_stats(gt, dets, "segm"), rtol=0, atol=1e-6)


# ============================================================================ keypoints
def oks_direct(det: np.ndarray, gt: np.ndarray, area: float, box, sigmas=COCO_KEYPOINT_SIGMAS):
    """OKS of one detection and one object, transcribed from the definition pair by pair."""
    k2 = (2 * sigmas) ** 2
    visible = gt[:, 2] > 0
    if visible.any():
        d2 = (det[:, 0] - gt[:, 0]) ** 2 + (det[:, 1] - gt[:, 1]) ** 2
        return float(np.mean(np.exp(-d2[visible] / k2[visible] / (area + np.spacing(1)) / 2)))
    x, y, w, h = box
    dx = np.maximum(0, (x - w) - det[:, 0]) + np.maximum(0, det[:, 0] - (x + 2 * w))
    dy = np.maximum(0, (y - h) - det[:, 1]) + np.maximum(0, det[:, 1] - (y + 2 * h))
    return float(np.mean(np.exp(-(dx ** 2 + dy ** 2) / k2 / (area + np.spacing(1)) / 2)))


def test_oks_matches_direct_formula():
    rng = np.random.default_rng(0)
    gt = np.concatenate([rng.uniform(0, 100, (4, 17, 2)), rng.integers(0, 3, (4, 17, 1))], -1)
    gt[3, :, 2] = 0                                                  # no labelled keypoints
    det = np.concatenate([gt[[0, 1, 2, 3, 0], :, :2] + rng.normal(0, 4, (5, 17, 2)),
                          np.ones((5, 17, 1))], -1)
    areas = rng.uniform(100, 3000, 4)
    boxes = np.c_[rng.uniform(0, 50, (4, 2)), rng.uniform(10, 60, (4, 2))]
    ours = coco_keypoint_oks(det, gt, areas, boxes)
    ref = np.array([[oks_direct(d, g, a, b) for g, a, b in zip(gt, areas, boxes)] for d in det])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def make_keypoint_data(gt: dict, seed: int, drop: float = 0.2, false_positives: int = 10):
    """Detections from labelled persons by jittering keypoints; some dropped, some invented."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if a.get("iscrowd", 0) or rng.random() < drop:
            continue
        k = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        scale = np.sqrt(max(a["area"], 1.0))
        xy = k[:, :2] + rng.normal(0, 0.05 * scale, (17, 2))
        if a.get("num_keypoints", 0) == 0:                           # guess inside the box
            x, y, w, h = a["bbox"]
            xy = np.c_[rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17)]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "keypoints": np.c_[xy, np.ones(17)].ravel().tolist(),
                     "score": float(rng.random())})
    image_ids = [im["id"] for im in gt["images"]]
    for _ in range(false_positives):
        x, y = rng.uniform(0, 400, 2)
        xy = np.c_[x + rng.uniform(0, 80, 17), y + rng.uniform(0, 160, 17)]
        dets.append({"image_id": image_ids[rng.integers(0, len(image_ids))],
                     "category_id": 1, "keypoints": np.c_[xy, np.ones(17)].ravel().tolist(),
                     "score": float(rng.random())})
    return dets


def make_synthetic_keypoint_gt(seed: int, num_images: int = 8):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "height": 480, "width": 640} for i in range(num_images)]
    anns = []
    for im in images:
        for _ in range(rng.integers(0, 5)):
            w, h = rng.uniform(20, 200), rng.uniform(40, 300)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            vis = rng.integers(0, 3, 17) * (rng.random() > 0.2)
            pts = np.c_[rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), vis]
            pts[vis == 0, :2] = 0
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 1,
                         "bbox": [x, y, w, h], "area": float(w * h * 0.6),
                         "keypoints": pts.ravel().tolist(), "num_keypoints": int((vis > 0).sum()),
                         "iscrowd": int(rng.random() < 0.1)})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


@pytest.mark.parametrize("seed", range(3))
def test_keypoint_stats_match_pycocotools(seed):
    gt = make_synthetic_keypoint_gt(seed)
    dets = make_keypoint_data(gt, seed)
    ours = coco_evaluate(gt, dets, "keypoints")
    assert len(ours["stats"]) == 10
    np.testing.assert_allclose(ours["stats"], reference_stats(gt, dets, "keypoints"),
                               rtol=0, atol=1e-6)


def test_keypoints_with_boxes_match_pycocotools():
    """Keypoint results carrying a box: loadRes takes their area from it (area ranges)."""
    gt = make_synthetic_keypoint_gt(9, num_images=10)
    dets = make_keypoint_data(gt, 9)
    rng = np.random.default_rng(9)
    for d in dets:
        d["bbox"] = [0.0, 0.0, *rng.uniform(5, 200, 2).tolist()]
    np.testing.assert_allclose(coco_evaluate(gt, dets, "keypoints")["stats"],
                               reference_stats(gt, dets, "keypoints"), rtol=0, atol=1e-6)


# ============================================================================ real COCO-mini
def _load(relative: str) -> dict:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared COCO data not found at {path} (set CANON_SHARED_DATA)")
    return json.loads(path.read_text())


def _jittered_instances(gt: dict, seed: int, with_masks: bool):
    rng = np.random.default_rng(seed)
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        box = [x + rng.normal(0, 0.08 * w), y + rng.normal(0, 0.08 * h),
               w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
        det = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box,
               "score": float(rng.random())}
        if with_masks:
            # The ground-truth mask shifted by a few pixels.
            hh, ww = sizes[a["image_id"]]
            seg = a["segmentation"]
            if isinstance(seg, list):
                rle = mask_api.merge(mask_api.frPyObjects(seg, hh, ww))
            elif isinstance(seg["counts"], list):
                rle = mask_api.frPyObjects(seg, hh, ww)
            else:
                rle = seg
            m = np.roll(mask_api.decode(rle), tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
            enc = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
            enc["counts"] = enc["counts"].decode("ascii")
            det = {k: v for k, v in det.items() if k != "bbox"}
            det["segmentation"] = enc
        dets.append(det)
    for _ in range(40):                                              # false positives
        im = gt["images"][rng.integers(0, len(gt["images"]))]
        w, h = rng.uniform(5, 200, 2)
        box = [rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h), w, h]
        det = {"image_id": im["id"], "category_id": cat_ids[rng.integers(0, len(cat_ids))],
               "score": float(rng.random())}
        if with_masks:
            m = np.zeros((im["height"], im["width"]), np.uint8)
            x0, y0 = int(box[0]), int(box[1])
            m[y0:y0 + int(h) + 1, x0:x0 + int(w) + 1] = 1
            enc = mask_api.encode(np.asfortranarray(m))
            enc["counts"] = enc["counts"].decode("ascii")
            det["segmentation"] = enc
        else:
            det["bbox"] = box
        dets.append(det)
    return dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_real_coco_mini_instances_match_pycocotools(iou_type):
    gt = _load("coco-mini/annotations/instances_val2017.json")
    dets = _jittered_instances(gt, seed=0, with_masks=iou_type == "segm")
    np.testing.assert_allclose(coco_evaluate(gt, dets, iou_type)["stats"],
                               reference_stats(gt, dets, iou_type), rtol=0, atol=1e-6)


@pytest.mark.parametrize("relative", ["coco-mini/annotations/person_keypoints_val2017.json",
                                      "coco-keypoints/person_keypoints_val2017.json"])
def test_real_coco_keypoints_match_pycocotools(relative):
    gt = _load(relative)
    dets = make_keypoint_data(gt, seed=1)
    ours = coco_evaluate(gt, dets, "keypoints")["stats"]
    np.testing.assert_allclose(ours, reference_stats(gt, dets, "keypoints"), rtol=0, atol=1e-6)
    assert ours[0] > 0.3                                             # jitter is mild


# ============================================================================ VOC
def devkit_ap(rec, prec, use_07_metric: bool) -> float:
    """The VOC devkit's AP (VOCevaldet / voc_eval.py's voc_ap), transcribed with loops."""
    rec, prec = list(rec), list(prec)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = max([p for r, p in zip(rec, prec) if r >= t], default=0.0)
            ap += p / 11.0
        return ap
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec))
               if mrec[i] != mrec[i - 1])


@pytest.mark.parametrize("seed", range(5))
def test_voc_ap_matches_devkit_transcription(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    scores, tp = rng.random(n), rng.random(n) < 0.5
    num_pos = int(tp.sum() + rng.integers(0, 5)) or 1
    rec, prec = voc_precision_recall(scores, tp, num_pos)
    order = np.argsort(-scores, kind="mergesort")
    tp_cum = np.cumsum(tp[order])
    np.testing.assert_allclose(rec, tp_cum / num_pos)
    np.testing.assert_allclose(prec, tp_cum / np.arange(1, n + 1))
    for use_07, name in ((True, "11_point"), (False, "all_point")):
        assert voc_ap(rec, prec, name) == pytest.approx(devkit_ap(rec, prec, use_07), abs=1e-12)


def test_voc_ap_hand_computed():
    # Ranked TP, FP, TP with 2 objects: recall .5, .5, 1; precision 1, .5, 2/3.
    rec, prec = voc_precision_recall([0.9, 0.8, 0.7], [True, False, True], 2)
    # All-point: 0.5 * 1 + 0.5 * 2/3.
    assert voc_ap(rec, prec, "all_point") == pytest.approx(0.5 + 1 / 3)
    # 11-point: recall 0..0.5 (6 points) -> 1, 0.6..1.0 (5 points) -> 2/3.
    assert voc_ap(rec, prec, "11_point") == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_ap([1.0], [1.0]) == 1.0 and voc_ap([], []) == 0.0
    with pytest.raises(ValueError, match="interpolation"):
        voc_ap(rec, prec, "101_point")
    with pytest.raises(ValueError, match="num_positives"):
        voc_precision_recall([0.5], [True], 0)
