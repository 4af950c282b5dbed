"""ONNX export, checked in onnxruntime against PyTorch on the same inputs.

    result = canon.export_onnx(canon.create_model("resnet18"), "resnet18.onnx")
    result.max_abs_diff, result.argmax_agreement      # 2e-06, 1.0

Exporter: torch 2.13 ships two. ``torch.onnx.export(..., dynamo=False)`` (TorchScript tracing)
needs nothing beyond torch and exports canon's models 3-10x faster on CPU (resnet18: 1.5 s vs
5.3 s); the ``torch.export``-based default (``dynamo=True``) needs the ``onnxscript`` package,
which canon does not depend on. canon uses tracing by default and the new exporter with
``dynamo=True``. Tracing records the operations that ran, so Python-side checks (canon's input
validation) are evaluated once at export time and the exported graph has no such checks.

Outputs: a tensor is exported as ``output``; a dict (``{"out", "aux"}`` of the segmentation models
with ``aux_loss``) as one ONNX output per key, in the dict's order; a tuple or list as
``output_0``, ``output_1``, ...
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["ExportResult", "ExportCheckError", "export_onnx", "check_onnx", "example_input", "onnx_session",
           "DEFAULT_ATOL"]

DEFAULT_ATOL = 1e-4
DEFAULT_MIN_ARGMAX_AGREEMENT = 0.999  # segmentation: fraction of pixels whose class must agree


class ExportCheckError(ValueError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportResult:
    """Where the model went and how closely onnxruntime reproduces PyTorch on the check inputs."""

    path: str
    input_shape: tuple[int, ...]
    opset: int
    output_names: list[str]
    dynamic_batch: bool
    exporter: str  # "torchscript" or "dynamo"
    max_abs_diff: float | None = None  # over every output and check batch; None without check
    argmax_agreement: float | None = None  # class argmax over dim 1 (per sample, or per pixel)
    checked_batches: list[int] = field(default_factory=list)
    # filled only when max_abs_diff exceeded the tolerance: both float32 runtimes' distance from a
    # float64 PyTorch evaluation of the first check batch
    float64_check: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__, input_shape=list(self.input_shape))


class _FlatOutputs(nn.Module):
    """The model with its outputs as a flat tuple of tensors (ONNX has no dicts)."""

    def __init__(self, model: nn.Module, keys: list[str] | None):
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return (out,)
        if isinstance(out, dict):
            return tuple(out[k] for k in self.keys)
        return tuple(out)


def _output_names(out) -> tuple[list[str], list[str] | None]:
    if isinstance(out, torch.Tensor):
        return ["output"], None
    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return [str(k) for k in out], list(out)
    if isinstance(out, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in out):
        return [f"output_{i}" for i in range(len(out))], None
    raise TypeError(f"export_onnx: the model returns {type(out).__name__}; expected a tensor, a dict of "
                    f"tensors or a tuple of tensors")


def _default_input_shape(model: nn.Module) -> tuple[int, ...]:
    name = getattr(model, "canon_name", None)
    if name is None:
        raise ValueError("export_onnx: input_shape is required for a model that canon.create_model did not "
                         "build (it has no registered input size)")
    from canon.registry import model_info

    size = model_info(name).input_size
    if len(size) != 3:
        raise ValueError(f"export_onnx: {name} has no image input size ({size}); pass input_shape")
    return (1, *size)


def example_input(input_shape: tuple[int, ...], model: nn.Module | None = None, seed: int = 0) -> torch.Tensor:
    """Image-like check input: uniform [0, 1] pixels, normalised as the model's weights expect.

    The mean and std are the model's ``canon_preprocessing`` when it has one, else ImageNet's
    for 3 channels and 0.5 / 0.5 otherwise — so the values span what a real image gives.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(input_shape, generator=generator)
    channels = input_shape[1]
    prep = getattr(model, "canon_preprocessing", None) if model is not None else None
    if prep:
        mean, std = prep["mean"], prep["std"]
    elif channels == 3:
        from canon.weights.released import IMAGENET_MEAN, IMAGENET_STD

        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (0.5,) * channels, (0.5,) * channels
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for ``path`` (``threads``: intra-op threads; default: onnxruntime's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None,
                opset: int | None = None, dynamic_batch: bool = False, check: bool = True, *,
                dynamo: bool = False, atol: float = DEFAULT_ATOL, rtol: float = 0.0,
                min_argmax_agreement: float = DEFAULT_MIN_ARGMAX_AGREEMENT) -> ExportResult:
    """Write ``model`` (in eval mode) to ``path`` as ONNX and, with ``check``, verify it in onnxruntime.

    Args:
        model: any ``nn.Module`` taking one image batch (N, C, H, W).
        path: the ``.onnx`` file to write (its folder is created).
        input_shape: (N, C, H, W); default ``(1, *input_size)`` of the model's registry entry.
        opset: ONNX opset; default: torch's.
        dynamic_batch: export the batch dimension as symbolic (the check then also runs N + 1).
        check: run :func:`example_input` through PyTorch and onnxruntime and compare.
        dynamo: use the ``torch.export``-based exporter (needs ``onnxscript``) instead of tracing.
        atol: the largest absolute difference accepted, over every output (1e-4). Past it, the
            export is still accepted if onnxruntime is no further from a float64 PyTorch run
            than twice float32 PyTorch's own distance from it (``result.float64_check``): some
            networks amplify float32 rounding beyond 1e-4 in any runtime.
        rtol: plus ``rtol * max |PyTorch output|`` (default 0: the absolute bound alone). For
            untrained deep networks whose outputs reach 1e4 and more, float32 rounding alone
            exceeds 1e-4; a trained network's logits do not.
        min_argmax_agreement: for (N, K, H, W) outputs, the least fraction of pixels whose argmax
            class must agree (0.999; near-ties of untrained models may flip a handful).

    Returns:
        :class:`ExportResult` with ``max_abs_diff`` and ``argmax_agreement`` when checked.

    Raises:
        ExportCheckError: the check found a larger difference (the message gives both figures).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx expects an nn.Module, got {type(model).__name__}")
    shape = tuple(int(s) for s in (input_shape or _default_input_shape(model)))
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (N, C, H, W) with positive sizes, got {shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        x = example_input(shape, model)
        with torch.no_grad():
            reference = model(x)
        names, keys = _output_names(reference)
        wrapper = _FlatOutputs(model, keys).eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # input checks become constants
            if dynamo:
                dims = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
                program = torch.onnx.export(wrapper, (x,), dynamo=True, opset_version=opset,
                                            input_names=["input"], output_names=names, dynamic_shapes=dims,
                                            verbose=False)
                program.save(str(path))
            else:
                axes = {n: {0: "batch"} for n in ["input", *names]} if dynamic_batch else None
                torch.onnx.export(wrapper, (x,), str(path), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=names, dynamic_axes=axes,
                                  do_constant_folding=True)
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        used_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)
        result = ExportResult(path=str(path), input_shape=shape, opset=used_opset, output_names=names,
                              dynamic_batch=dynamic_batch, exporter="dynamo" if dynamo else "torchscript")
        if check:
            _check(wrapper, result, x, atol, rtol, min_argmax_agreement)
        return result
    finally:
        model.train(was_training)


def check_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None, *,
               atol: float = DEFAULT_ATOL, rtol: float = 0.0,
               min_argmax_agreement: float = DEFAULT_MIN_ARGMAX_AGREEMENT,
               seed: int = 0) -> ExportResult:
    """Compare an existing ONNX file with ``model`` on :func:`example_input` (the check of :func:`export_onnx`).

    The batch size is the file's when fixed; a symbolic batch is checked at ``input_shape``'s N
    (default 1) and N + 1. Raises :class:`ExportCheckError` past the tolerances.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dynamic = not dims[0].HasField("dim_value")
    shape = tuple(int(s) for s in (input_shape or _default_input_shape(model)))
    if not dynamic:
        shape = (dims[0].dim_value, *shape[1:])
    used_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)
    was_training = model.training
    model.eval()
    try:
        x = example_input(shape, model, seed=seed)
        with torch.no_grad():
            names, keys = _output_names(model(x))
        onnx_names = [o.name for o in proto.graph.output]
        if len(onnx_names) != len(names):
            raise ExportCheckError(f"{path}: {len(onnx_names)} outputs ({', '.join(onnx_names)}), the model has "
                                   f"{len(names)} ({', '.join(names)})")
        result = ExportResult(path=str(path), input_shape=shape, opset=used_opset, output_names=onnx_names,
                              dynamic_batch=dynamic, exporter="unknown")
        _check(_FlatOutputs(model, keys).eval(), result, x, atol, rtol, min_argmax_agreement)
        return result
    finally:
        model.train(was_training)


def _check(flat: _FlatOutputs, result: ExportResult, x: torch.Tensor, atol: float, rtol: float,
           min_agreement: float) -> None:
    session = onnx_session(result.path)
    batches = [x]
    if result.dynamic_batch:
        batches.append(example_input((x.shape[0] + 1, *x.shape[1:]), flat.model, seed=1))
    worst, agree, total, scale = 0.0, 0, 0, 0.0
    dense_agreement = 1.0
    for batch in batches:
        with torch.no_grad():
            expected = flat(batch)
        got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        for name, want, have in zip(result.output_names, expected, got):
            want = want.numpy()
            if want.shape != have.shape:
                raise ExportCheckError(f"{result.path}: output {name} has shape {have.shape} in onnxruntime, "
                                       f"{want.shape} in PyTorch (batch {batch.shape[0]})")
            worst = max(worst, float(np.max(np.abs(want.astype(np.float64) - have))))
            scale = max(scale, float(np.max(np.abs(want))))
            if want.ndim >= 2:
                same = want.argmax(axis=1) == have.argmax(axis=1)  # per sample, or per pixel
                agree += int(same.sum())
                total += same.size
                if want.ndim == 4:
                    dense_agreement = min(dense_agreement, float(same.mean()))
        result.checked_batches.append(int(batch.shape[0]))
    result.max_abs_diff = worst
    result.argmax_agreement = agree / total if total else None
    within = worst <= atol + rtol * scale
    if not within:
        result.float64_check = _float64_check(flat, session, x)
        f64 = result.float64_check
        within = f64["onnxruntime_error"] <= FLOAT64_FACTOR * f64["pytorch_float32_error"] + atol
    if not within or dense_agreement < min_agreement:
        agreement = "n/a" if result.argmax_agreement is None else f"{result.argmax_agreement:.4%}"
        f64 = result.float64_check
        detail = (f"; against float64 PyTorch, onnxruntime is off by {f64['onnxruntime_error']:.3g} and float32 "
                  f"PyTorch by {f64['pytorch_float32_error']:.3g}" if f64 else "")
        raise ExportCheckError(f"{result.path}: onnxruntime differs from PyTorch: max abs difference {worst:.3g} "
                               f"(tolerance {atol + rtol * scale:.3g}), argmax agreement {agreement}{detail}")


FLOAT64_FACTOR = 2.0


def _float64_check(flat: _FlatOutputs, session, x: torch.Tensor) -> dict:
    """How far float32 PyTorch and onnxruntime each are from float64 PyTorch on ``x``.

    Some networks (deep untrained ResNets above all) amplify float32 rounding so much that
    PyTorch's own float32 result is more than 1e-4 from the exact one; onnxruntime cannot be
    asked to match PyTorch more closely than PyTorch matches the mathematics. The check then
    accepts the export when onnxruntime's distance from float64 is at most ``FLOAT64_FACTOR``
    times float32 PyTorch's (plus ``atol``).
    """
    import copy

    exact = copy.deepcopy(flat).double().eval()
    with torch.no_grad():
        reference = [o.numpy() for o in exact(x.double())]
        float32 = [o.numpy() for o in flat(x)]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    del exact
    return {"pytorch_float32_error": max(float(np.max(np.abs(a - r))) for a, r in zip(float32, reference)),
            "onnxruntime_error": max(float(np.max(np.abs(g - r))) for g, r in zip(got, reference))}
