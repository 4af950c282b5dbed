"""Time canon.ops against its references in the same run and print a markdown table.

    python benchmarks/bench_ops.py [--repeat 5] [--threads N] [--quick]

References: OpenCV ``cv2.dnn.NMSBoxes`` / ``NMSBoxesBatched`` and onnxruntime
``NonMaxSuppression`` / ``RoiAlign`` / ``MaxRoiPool`` (sessions built once, outside the timing).
``ratio`` = reference ms / canon ms, so ratio >= 1 means canon is at least as fast.
Random boxes: centres uniform in a 1000 x 1000 image, sides uniform in [16, 128], scores uniform.
Every timed canon call is checked against the reference's answer first.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import canon.ops as ops


def median_ms(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 1000
    wh = torch.rand(n, 2, generator=g) * 112 + 16
    return torch.cat([centre - wh / 2, centre + wh / 2], dim=1), torch.rand(n, generator=g)


def ort_session(node, inputs, outputs, opset: int, threads: int):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph([node], "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="skip the 50k-box sizes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import cv2
    from onnx import TensorProto, helper

    cv2.setNumThreads(args.threads)
    rows = []

    def add(op, size, canon_ms, ref_name, ref_ms):
        ratio = f"{ref_ms / canon_ms:.2f}" if ref_ms is not None else "—"
        ref = f"{ref_ms:.2f}" if ref_ms is not None else "—"
        rows.append(f"| {op} | {size} | {canon_ms:.2f} | {ref_name} | {ref} | {ratio} |")

    f32 = TensorProto.FLOAT
    nms_node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"], ["sel"])
    nms_session = ort_session(
        nms_node,
        [helper.make_tensor_value_info("boxes", f32, None), helper.make_tensor_value_info("scores", f32, None),
         helper.make_tensor_value_info("max_out", TensorProto.INT64, None),
         helper.make_tensor_value_info("iou", f32, None), helper.make_tensor_value_info("score_thr", f32, None)],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, None)], 11, args.threads)

    sizes = (1000, 10000) if args.quick else (1000, 10000, 50000)
    for n in sizes:
        boxes, scores = random_boxes(n, n)
        repeat = max(1, args.repeat if n <= 10000 else min(args.repeat, 3))
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).double().numpy()
        scores_np = scores.numpy()
        kept = ops.nms(boxes, scores, 0.5)
        cv2_kept = np.asarray(cv2.dnn.NMSBoxes(xywh, scores_np, 0.0, 0.5)).ravel()
        assert np.array_equal(kept.numpy(), cv2_kept), "nms differs from cv2.dnn.NMSBoxes"
        feeds = {"boxes": boxes.numpy()[None], "scores": scores_np[None, None],
                 "max_out": np.array([n], np.int64), "iou": np.array([0.5], np.float32),
                 "score_thr": np.array([-1.0], np.float32)}
        assert np.array_equal(nms_session.run(None, feeds)[0][:, 2], kept.numpy()), "nms differs from onnxruntime"
        canon_ms = median_ms(lambda: ops.nms(boxes, scores, 0.5), repeat)
        add("nms", f"{n} boxes", canon_ms, "cv2.dnn.NMSBoxes",
            median_ms(lambda: cv2.dnn.NMSBoxes(xywh, scores_np, 0.0, 0.5), repeat))
        add("nms", f"{n} boxes", canon_ms, "onnxruntime NonMaxSuppression",
            median_ms(lambda: nms_session.run(None, feeds), repeat))

        labels = torch.randint(0, 80, (n,), generator=torch.Generator().manual_seed(n))
        kept = ops.batched_nms(boxes, scores, labels, 0.5)
        cv2_kept = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores_np, labels.numpy().astype(np.int32), 0.0, 0.5)).ravel()
        assert set(cv2_kept.tolist()) == set(kept.tolist()), "batched_nms differs from cv2.dnn.NMSBoxesBatched"
        class_scores = np.zeros((1, 80, n), np.float32)  # each box scores only in its own class
        class_scores[0, labels.numpy(), np.arange(n)] = scores_np
        batched_feeds = dict(feeds, scores=class_scores, score_thr=np.array([0.0], np.float32))
        ort_kept = nms_session.run(None, batched_feeds)[0][:, 2]
        assert set(ort_kept.tolist()) == set(kept.tolist()), "batched_nms differs from onnxruntime"
        canon_ms = median_ms(lambda: ops.batched_nms(boxes, scores, labels, 0.5), repeat)
        add("batched_nms (80 classes)", f"{n} boxes", canon_ms, "cv2.dnn.NMSBoxesBatched",
            median_ms(lambda: cv2.dnn.NMSBoxesBatched(xywh, scores_np, labels.numpy().astype(np.int32), 0.0, 0.5),
                      repeat))
        add("batched_nms (80 classes)", f"{n} boxes", canon_ms, "onnxruntime NonMaxSuppression",
            median_ms(lambda: nms_session.run(None, batched_feeds), repeat))

    # RoIAlign / RoIPool: 512 RoIs on a 1 x 256 x 50 x 68 map (stride 16), 7 x 7
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 256, 50, 68, generator=g)
    corner = torch.rand(512, 2, generator=g) * torch.tensor([1000.0, 700.0])
    wh = torch.rand(512, 2, generator=g) * 300 + 16
    rois = torch.cat([torch.zeros(512, 1), corner, corner + wh], dim=1)
    size = "512 RoIs, 1x256x50x68, 7x7, sr 2"
    align_session = ort_session(
        helper.make_node("RoiAlign", ["X", "rois", "bi"], ["Y"], mode="avg", output_height=7, output_width=7,
                         sampling_ratio=2, spatial_scale=1 / 16, coordinate_transformation_mode="output_half_pixel"),
        [helper.make_tensor_value_info("X", f32, None), helper.make_tensor_value_info("rois", f32, None),
         helper.make_tensor_value_info("bi", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("Y", f32, None)], 16, args.threads)
    align_feeds = {"X": feature.numpy(), "rois": rois[:, 1:].numpy(), "bi": np.zeros(512, np.int64)}
    got = ops.roi_align(feature, rois, 7, 1 / 16, 2)
    assert np.abs(got.numpy() - align_session.run(None, align_feeds)[0]).max() < 1e-4, "roi_align differs from onnxruntime"
    add("roi_align forward", size, median_ms(lambda: ops.roi_align(feature, rois, 7, 1 / 16, 2), args.repeat),
        "onnxruntime RoiAlign", median_ms(lambda: align_session.run(None, align_feeds), args.repeat))
    feature_grad = feature.clone().requires_grad_(True)
    out = ops.roi_align(feature_grad, rois, 7, 1 / 16, 2)
    upstream = torch.randn_like(out)

    def backward():
        feature_grad.grad = None
        ops.roi_align(feature_grad, rois, 7, 1 / 16, 2).backward(upstream)

    add("roi_align forward+backward", size, median_ms(backward, args.repeat), "(no reference)", None)
    pool_session = ort_session(
        helper.make_node("MaxRoiPool", ["X", "rois"], ["Y"], pooled_shape=[7, 7], spatial_scale=1 / 16),
        [helper.make_tensor_value_info("X", f32, None), helper.make_tensor_value_info("rois", f32, None)],
        [helper.make_tensor_value_info("Y", f32, None)], 11, args.threads)
    pool_feeds = {"X": feature.numpy(), "rois": rois.numpy()}
    assert np.array_equal(ops.roi_pool(feature, rois, 7, 1 / 16).numpy(), pool_session.run(None, pool_feeds)[0])
    add("roi_pool forward", "512 RoIs, 1x256x50x68, 7x7",
        median_ms(lambda: ops.roi_pool(feature, rois, 7, 1 / 16), args.repeat),
        "onnxruntime MaxRoiPool", median_ms(lambda: pool_session.run(None, pool_feeds), args.repeat))

    print(f"torch {torch.__version__}, threads {args.threads}, numba kernel: {ops.HAS_NUMBA}, "
          f"cv2 {cv2.__version__}, repeat {args.repeat} (median)\n")
    print("| op | size | canon ms | reference | reference ms | ratio (ref/canon) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
