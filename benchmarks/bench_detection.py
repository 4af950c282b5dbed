"""Detector throughput: images/s at each detector's default size, the GFLOP/s it reaches beside the
float32 matmul rate measured in the same run, and where a two-stage detector spends its time.

    python benchmarks/bench_detection.py                         # every registered detector, 2 threads
    python benchmarks/bench_detection.py --pattern 'yolo*' --batch-sizes 1 8
    python benchmarks/bench_detection.py --threads 1 --repeats 1  # on a shared machine (the slot runner)

What is timed: ``model(images)`` in eval mode under ``torch.no_grad()``, a list of random images
of the registry's input size (YOLO and SSD resize to their fixed square, which is that size; the
R-CNN family and RetinaNet rescale to their ``min_size`` / ``max_size``, and the registry's size is
their ``min_size``, so the resize is the identity). One-stage detectors are timed at batch 1 and
8, two-stage ones at batch 1. GFLOP/s = 2 x multiply-adds per image (``canon.engine.summary``,
convolutions and linear layers) x images / second; the reference is ``torch.mm`` of two 2048 x
2048 float32 matrices on the same threads, so the ratio says how much of the machine's rate a
detector reaches (absolute numbers on a shared machine are noise; the ratio is the figure).

Two-stage shares (batch 1): forward hooks time the transform (normalise, resize, pad), the
backbone with its FPN, the RPN (head, anchors, proposal decoding and NMS) and the RoI heads
(pooling, box/mask/keypoint heads); post-processing is the RoI heads' per-class box decoding,
score threshold and NMS (``postprocess_detections``) plus the transform's mapping back to the
image (``postprocess``, which pastes masks). The weights are random, so how many boxes pass the
score threshold, and so the post-processing share, is not that of a trained detector.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

import canon
from canon.engine.summary import summarize

TWO_STAGE_PARTS = ("transform", "backbone", "rpn", "roi_heads")


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The float32 matmul rate of this machine on the current threads (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / min(times) / 1e9


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def is_two_stage(model: torch.nn.Module) -> bool:
    return all(hasattr(model, part) for part in TWO_STAGE_PARTS)


@contextlib.contextmanager
def stage_timer(model: torch.nn.Module):
    """Seconds per part of a two-stage detector's forward passes, accumulated into the yielded dict:
    the four modules' forward calls (hooks), and the two post-processing methods (wrappers on this
    instance, removed afterwards): ``roi_postprocess`` runs inside the RoI heads' forward,
    ``transform_postprocess`` after it."""
    seconds = {part: 0.0 for part in (*TWO_STAGE_PARTS, "roi_postprocess", "transform_postprocess")}
    starts: dict[str, float] = {}
    handles = []
    for part in TWO_STAGE_PARTS:
        module = getattr(model, part)
        handles.append(module.register_forward_pre_hook(
            lambda m, a, part=part: starts.__setitem__(part, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, a, o, part=part: seconds.__setitem__(part, seconds[part] + time.perf_counter() - starts[part])))

    def timed(owner, method: str, key: str):
        function = getattr(owner, method)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[key] += time.perf_counter() - started
        setattr(owner, method, wrapper)

    timed(model.roi_heads, "postprocess_detections", "roi_postprocess")
    timed(model.transform, "postprocess", "transform_postprocess")
    try:
        yield seconds
    finally:
        for handle in handles:
            handle.remove()
        del model.roi_heads.postprocess_detections, model.transform.postprocess  # back to the class's methods


def bench(name: str, batch_sizes: list[int], repeats: int, size: int | None = None) -> list[dict]:
    info = canon.model_info(name)
    model = canon.create_model(name).eval()
    c, h, w = info.input_size
    if size:
        h = w = size
    macs = summarize(model, (1, c, h, w)).macs
    two_stage = is_two_stage(model)
    rows = []
    torch.manual_seed(0)
    for batch in ([1] if two_stage else batch_sizes):
        images = [torch.rand(c, h, w) for _ in range(batch)]

        def forward():
            with torch.no_grad():
                model(images)

        seconds = median_seconds(forward, repeats)
        row = {"model": name, "input": f"{h}x{w}", "batch": batch, "images_per_s": batch / seconds,
               "gmacs": macs / 1e9, "gflops": 2 * macs * batch / seconds / 1e9}
        if two_stage:
            with stage_timer(model) as parts:
                started = time.perf_counter()
                for _ in range(repeats):
                    forward()
                total = time.perf_counter() - started
            row["shares"] = {"transform": parts["transform"] / total, "backbone": parts["backbone"] / total,
                             "rpn": parts["rpn"] / total,
                             "roi_heads": (parts["roi_heads"] - parts["roi_postprocess"]) / total,
                             "postprocess": (parts["roi_postprocess"] + parts["transform_postprocess"]) / total}
            row["shares"]["other"] = 1.0 - sum(row["shares"].values())
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pattern", help="model name pattern, e.g. 'yolo*'")
    parser.add_argument("--skip", nargs="*", default=[], help="model names to leave out")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="one-stage detectors")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    print(f"threads: {torch.get_num_threads()}  float32 matmul (2048^3): {peak:.1f} GFLOP/s\n", flush=True)
    print("| model | input | batch | GMACs/img | images/s | GFLOP/s | of matmul rate |")
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    shares, r50 = [], None
    for name in canon.list_models(task="detection", pattern=args.pattern):
        if name in args.skip:
            continue
        try:
            rows = bench(name, args.batch_sizes, args.repeats)
        except Exception as error:  # one detector that cannot run here does not stop the table
            print(f"| {name} | failed: {type(error).__name__}: {str(error)[:120]} | | | | | |", flush=True)
            continue
        for row in rows:
            print(f"| {name} | {row['input']} | {row['batch']} | {row['gmacs']:.1f} | {row['images_per_s']:.2f} | "
                  f"{row['gflops']:.1f} | {row['gflops'] / peak:.0%} |", flush=True)
            if "shares" in row:
                shares.append((name, row["shares"]))
            if name == "fasterrcnn_resnet50_fpn":
                r50 = row
    if shares:
        print("\nTwo-stage detectors, share of a batch-1 forward pass (random weights):\n")
        print("| model | transform | backbone + FPN | RPN | RoI heads | post-processing | other |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, s in shares:
            print(f"| {name} | {s['transform']:.0%} | {s['backbone']:.0%} | {s['rpn']:.0%} | {s['roi_heads']:.0%} | "
                  f"{s['postprocess']:.0%} | {s['other']:.0%} |", flush=True)
    if r50 is None and "fasterrcnn_resnet50_fpn" not in args.skip:
        (r50,) = bench("fasterrcnn_resnet50_fpn", [1], args.repeats, size=800)
    if r50 is not None:
        print(f"\nfasterrcnn_resnet50_fpn forward at {r50['input']}: {r50['images_per_s']:.3f} images/s, "
              f"{r50['gflops']:.1f} GFLOP/s = {r50['gflops'] / peak:.0%} of the {peak:.1f} GFLOP/s float32 matmul "
              f"rate on {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
