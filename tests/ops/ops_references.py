"""Independent references for canon.ops: onnxruntime graphs built with ``onnx.helper`` and OpenCV."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def _run(node, inputs: dict, input_types: dict, output_name: str, output_type, opset: int):
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(name, input_types[name], None) for name in inputs],
        [helper.make_tensor_value_info(output_name, output_type, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def ort_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """onnxruntime NonMaxSuppression for one image and one class -> kept indices in its order."""
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["selected"])
    inputs = {
        "boxes": boxes.astype(np.float32)[None],
        "scores": scores.astype(np.float32)[None, None],
        "max_out": np.array([boxes.shape[0] + 1], np.int64),
        "iou": np.array([iou_threshold], np.float32),
    }
    types = {"boxes": TensorProto.FLOAT, "scores": TensorProto.FLOAT, "max_out": TensorProto.INT64,
             "iou": TensorProto.FLOAT}
    selected = _run(node, inputs, types, "selected", TensorProto.INT64, opset=11)
    return selected[:, 2]


def ort_roi_align(feature: np.ndarray, rois: np.ndarray, batch_indices: np.ndarray, output_size, spatial_scale,
                  sampling_ratio, aligned: bool) -> np.ndarray:
    """onnxruntime RoiAlign (avg mode; half_pixel when aligned, output_half_pixel otherwise), opset 16."""
    dtype = TensorProto.DOUBLE if feature.dtype == np.float64 else TensorProto.FLOAT
    node = helper.make_node(
        "RoiAlign", ["X", "rois", "batch_indices"], ["Y"], mode="avg",
        output_height=int(output_size[0]), output_width=int(output_size[1]),
        sampling_ratio=int(max(sampling_ratio, 0)), spatial_scale=float(spatial_scale),
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    inputs = {"X": feature, "rois": rois.astype(feature.dtype), "batch_indices": batch_indices.astype(np.int64)}
    types = {"X": dtype, "rois": dtype, "batch_indices": TensorProto.INT64}
    return _run(node, inputs, types, "Y", dtype, opset=16)


def ort_max_roi_pool(feature: np.ndarray, rois5: np.ndarray, output_size, spatial_scale) -> np.ndarray:
    """onnxruntime MaxRoiPool (Fast R-CNN's RoI max pooling); rois5 [K, 5] = (batch, x1, y1, x2, y2)."""
    node = helper.make_node("MaxRoiPool", ["X", "rois"], ["Y"], pooled_shape=[int(output_size[0]), int(output_size[1])],
                            spatial_scale=float(spatial_scale))
    inputs = {"X": feature.astype(np.float32), "rois": rois5.astype(np.float32)}
    types = {"X": TensorProto.FLOAT, "rois": TensorProto.FLOAT}
    return _run(node, inputs, types, "Y", TensorProto.FLOAT, opset=11)


def cv2_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    kept = cv2.dnn.NMSBoxes(xywh, scores.astype(np.float32), 0.0, float(iou_threshold))
    return np.asarray(kept, np.int64).ravel()
