"""COCO box evaluation speed: canon.metrics.coco_evaluate beside pycocotools' COCOeval, same run.

Generated data (fixed seed): ``--images`` images (500 by default, as in the issue) with 80
categories, about 7 objects each (some crowd regions), and ``--dets`` detections per image (100
by default): jittered copies of the objects plus false positives, random scores. Both evaluators
get the same COCO dict and results list; the pycocotools time covers what a user runs (``COCO``
index, ``loadRes``, ``evaluate``, ``accumulate``, ``summarize``), canon's the one call.

The 12 stats of both are printed and compared (the run fails if any differs by more than 1e-6),
so a fast wrong answer shows. Read the ``speedup`` line (pycocotools time / canon time); absolute
times on a shared machine are noise.

    python benchmarks/bench_coco_eval.py                  # 500 images x 100 detections
    python benchmarks/bench_coco_eval.py --images 100 --dets 20 --repeats 1
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import time

import numpy as np

from canon.metrics import coco_evaluate
from canon.metrics.detection import COCO_DETECTION_STAT_NAMES


def make_data(num_images: int, dets_per_image: int, num_categories: int = 80, seed: int = 0):
    """A COCO annotation dict and a results list with ``dets_per_image`` detections per image."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "height": 480, "width": 640} for i in range(num_images)]
    categories = [{"id": k + 1, "name": f"class{k}"} for k in range(num_categories)]
    anns, dets = [], []
    for im in images:
        own = []
        for _ in range(rng.integers(1, 14)):
            w, h = rng.uniform(4, 300), rng.uniform(4, 300)
            box = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
            ann = {"id": len(anns) + 1, "image_id": im["id"],
                   "category_id": int(rng.integers(1, num_categories + 1)), "bbox": box,
                   "area": float(w * h * rng.uniform(0.4, 1.0)),
                   "iscrowd": int(rng.random() < 0.05)}
            anns.append(ann)
            own.append(ann)
        for _ in range(dets_per_image):
            if rng.random() < 0.5:
                a = own[rng.integers(0, len(own))]
                x, y, w, h = a["bbox"]
                box = [x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h),
                       w * rng.uniform(0.7, 1.3), h * rng.uniform(0.7, 1.3)]
                cat = a["category_id"]
            else:
                w, h = rng.uniform(4, 300), rng.uniform(4, 300)
                box = [rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
                cat = int(rng.integers(1, num_categories + 1))
            dets.append({"image_id": im["id"], "category_id": cat, "bbox": box,
                         "score": float(rng.random())})
    return {"images": images, "annotations": anns, "categories": categories}, dets


def run_pycocotools(gt: dict, dets: list) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


def run_canon(gt: dict, dets: list) -> list[float]:
    return coco_evaluate(gt, dets, "bbox")["stats"]


def _time(fn, data, repeats: int) -> tuple[float, list[float]]:
    """Median seconds of ``repeats`` calls, each on a fresh deep copy (pycocotools edits it)."""
    times, stats = [], None
    for _ in range(repeats):
        gt, dets = copy.deepcopy(data)
        start = time.perf_counter()
        stats = fn(gt, dets)
        times.append(time.perf_counter() - start)
    return statistics.median(times), stats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the result as json")
    args = parser.parse_args(argv)

    data = make_data(args.images, args.dets)
    print(f"COCO bbox evaluation: {args.images} images x {args.dets} detections, "
          f"{len(data[0]['annotations'])} objects, 80 categories, median of {args.repeats}")
    ref_s, ref_stats = _time(run_pycocotools, data, args.repeats)
    ours_s, ours_stats = _time(run_canon, data, args.repeats)
    max_diff = float(np.max(np.abs(np.subtract(ref_stats, ours_stats))))
    print(f"{'stat':<7}{'pycocotools':>14}{'canon':>14}")
    for name, r, o in zip(COCO_DETECTION_STAT_NAMES, ref_stats, ours_stats):
        print(f"{name:<7}{r:>14.10f}{o:>14.10f}")
    print(f"pycocotools: {ref_s:.3f} s   canon: {ours_s:.3f} s   speedup: {ref_s / ours_s:.1f}x   "
          f"max |stats difference|: {max_diff:.1e}")
    result = {"images": args.images, "dets_per_image": args.dets,
              "pycocotools_seconds": ref_s, "canon_seconds": ours_s,
              "speedup": ref_s / ours_s, "max_stats_difference": max_diff,
              "pycocotools_stats": ref_stats, "canon_stats": ours_stats}
    if args.json:
        print(json.dumps(result))
    if max_diff > 1e-6:
        raise SystemExit(f"stats differ from pycocotools by {max_diff:.3e} (> 1e-6)")
    return result


if __name__ == "__main__":
    main()
