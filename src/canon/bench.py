"""Model throughput: images/s and GFLOP/s of canon's execution modes, beside the machine and onnxruntime.

    rows, info = canon.bench.bench_model("resnet50", batch_sizes=(1, 32), modes=("eager", "bf16"))
    print(canon.bench.format_table(rows, info))

Two references are measured in the same run, on the same threads:

- the machine: the float32 matrix-multiply rate of a large ``torch.mm``
  (:func:`matmul_gflops`), so each row says what fraction of it the model reaches;
- onnxruntime: the model exported by :func:`canon.export.export_onnx` (checked against PyTorch)
  and run on the same inputs; each canon row gives its speed ratio to onnxruntime's.

The model is freshly initialised (no download) and given a trained network's scale
(:func:`stand_in_weights`: zero-initialised heads drawn at random, BatchNorm statistics
calibrated on image-like inputs), so the accuracy guard compares real logits; speed does not
depend on the weight values.

Multiply-adds come from :func:`canon.engine.summary.summarize` (one forward pass counted by
``torch.utils.flop_counter``); GFLOP/s counts 2 FLOPs per multiply-add, and a training step as
3 forward passes (the backward pass costs about twice the forward).

Execution modes (:data:`MODES`): ``eager`` (float32, contiguous), ``channels_last`` (the model and
the input in NHWC memory format), ``bf16`` (``torch.autocast("cpu", torch.bfloat16)``),
``channels_last_bf16`` (both) and ``compile`` (``torch.compile`` with inductor, float32).
:func:`best_mode` times each and keeps the fastest whose outputs stay within ``tolerance`` of
float32 eager: ``max |y - y_fp32| <= tolerance * max(1, max |y_fp32|)`` — an absolute 1e-2 for
logits up to 1, relative beyond, so trained networks with large logits are held to the same
number of significant digits.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Mode", "MODES", "ModeResult", "BestMode", "matmul_gflops", "time_call", "model_macs",
           "output_tensor", "accuracy_ok", "best_mode", "interleaved_seconds", "train_step", "onnxruntime_runner",
           "bench_model", "bench", "select_modes", "format_table", "calibrate_batchnorm", "stand_in_weights",
           "add_arguments", "run", "main", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 1e-2


# ----------------------------------------------------------------------------- timing
def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The float32 ``torch.mm`` rate of this machine on the current threads, in GFLOP/s (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


def time_call(fn: Callable[[], object], repeats: int = 3, min_seconds: float = 0.5, warmup: int = 1,
              max_calls: int = 50) -> float:
    """Median wall time of ``fn()`` in seconds: ``warmup`` untimed calls, then at least ``repeats``
    timed ones, more (up to ``max_calls``) until ``min_seconds`` have passed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < max_calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def model_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on ``input_shape`` (batch included), from canon's summary."""
    from canon.engine.summary import summarize

    return summarize(model, tuple(input_shape)).macs


def output_tensor(out) -> torch.Tensor:
    """The main output of a model call: the tensor, ``out["logits"]`` or ``out["out"]``, or the first of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        for key in ("logits", "out"):
            if key in out:
                return out[key]
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot read a tensor from a model output of type {type(out).__name__}")


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, passes: int = 2) -> nn.Module:
    """Set every BatchNorm's running statistics to their average over ``passes`` forward passes on ``x``.

    A freshly initialised network has running mean 0 and variance 1, so in eval mode its
    BatchNorm layers do nothing and deep residual networks' activations grow layer by layer
    (a random ResNet-152's logits reach 1e7). Calibrated statistics give trained-like O(1)
    activations, which is what timing a bf16 mode or checking an export should see. A model
    without BatchNorm is returned untouched; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def stand_in_weights(model: nn.Module, x: torch.Tensor, std: float = 0.02) -> nn.Module:
    """Give a freshly initialised model the scale of a trained one, in place, for timing and checks.

    Parameters that are all zero (torchvision zero-initialises ViT's head, so every logit is 0 and
    any mode would "match" float32) are drawn from N(0, ``std``²); then the BatchNorm statistics
    are calibrated on ``x`` (:func:`calibrate_batchnorm`). Returns the model in eval mode.
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1 and not torch.any(p):
                p.normal_(0, std)
    return calibrate_batchnorm(model, x)


# ----------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class Mode:
    """One way of running inference: ``prepare(model, x)`` returns a zero-argument callable that runs
    one forward pass and returns its output (preparation — format changes, compilation — happens
    in ``prepare`` or the untimed warm-up call)."""

    name: str
    prepare: Callable[[nn.Module, torch.Tensor], Callable[[], object]]
    description: str = ""


def _eager(model, x):
    return lambda: model(x)


def _channels_last(model, x):
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    def run():
        return model(x)

    return run


def _bf16(model, x):
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    return run


def _channels_last_bf16(model, x):
    run_cl = _channels_last(model, x)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run_cl()

    return run


def _compile(model, x):
    compiled = torch.compile(model)
    return lambda: compiled(x)


def _compile_frozen(model, x, channels_last: bool = False, cpp_wrapper: bool = False):
    """torch.compile with inductor's ``freezing``: weights become constants, so batch norm folds
    into the convolutions and oneDNN weights are prepacked (inference only). The first call,
    which compiles, runs here under the setting. ``cpp_wrapper``: inductor writes the code that
    calls the kernels in C++ instead of Python, which saves the per-operator Python cost that
    dominates small batches."""
    import torch._inductor.config as inductor_config

    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    compiled = torch.compile(model)
    with inductor_config.patch(freezing=True, cpp_wrapper=cpp_wrapper), torch.no_grad():
        compiled(x)
    return lambda: compiled(x)


def _jit_frozen(model, x):
    """TorchScript trace, frozen and optimised for inference (oneDNN convolutions with folded batch norm)."""
    with torch.no_grad():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
    return lambda: frozen(x)


MODES: dict[str, Mode] = {
    "eager": Mode("eager", _eager, "float32, contiguous (NCHW)"),
    "channels_last": Mode("channels_last", _channels_last, "float32, model and input in channels-last (NHWC)"),
    "bf16": Mode("bf16", _bf16, "torch.autocast('cpu', bfloat16)"),
    "channels_last_bf16": Mode("channels_last_bf16", _channels_last_bf16, "channels-last and bfloat16 autocast"),
    "compile": Mode("compile", _compile, "torch.compile (inductor), float32"),
    "compile_frozen": Mode("compile_frozen", _compile_frozen, "torch.compile with inductor freezing (batch norm "
                                                              "folded, weights prepacked), float32"),
    "compile_frozen_channels_last": Mode("compile_frozen_channels_last",
                                         lambda m, x: _compile_frozen(m, x, channels_last=True),
                                         "the same in channels-last"),
    "compile_frozen_cpp": Mode("compile_frozen_cpp",
                               lambda m, x: _compile_frozen(m, x, channels_last=True, cpp_wrapper=True),
                               "the same, channels-last, with inductor's C++ wrapper"),
    "jit_frozen": Mode("jit_frozen", _jit_frozen, "TorchScript trace + freeze + optimize_for_inference, float32"),
}


def accuracy_ok(output: torch.Tensor, reference: torch.Tensor,
                tolerance: float = DEFAULT_TOLERANCE) -> tuple[bool, float]:
    """``(accepted, max |output - reference|)``; accepted when the difference is at most
    ``tolerance * max(1, max |reference|)``."""
    output, reference = output.float(), reference.float()
    if output.shape != reference.shape:
        return False, float("inf")
    diff = float((output - reference).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    return bool(diff <= tolerance * scale), diff


@dataclass
class ModeResult:
    """One mode's timing and accuracy against float32 eager."""

    mode: str
    seconds: float | None  # median per call; None if the mode failed
    max_abs_diff: float | None
    accepted: bool
    error: str | None = None


@dataclass
class BestMode:
    """The fastest accepted mode and every candidate's result (eager is always a candidate)."""

    mode: str
    seconds: float
    candidates: list[ModeResult] = field(default_factory=list)
    run: Callable[[], object] | None = field(default=None, repr=False)  # the chosen mode, prepared

    def to_dict(self) -> dict:
        return {"mode": self.mode, "seconds": self.seconds, "candidates": [c.__dict__ for c in self.candidates]}


def _fresh_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def best_mode(model: nn.Module, x: torch.Tensor, modes: Sequence[str | Mode] = tuple(MODES),
              tolerance: float = DEFAULT_TOLERANCE, repeats: int = 3, min_seconds: float = 0.5) -> BestMode:
    """Time ``model(x)`` in each of ``modes`` and pick the fastest whose output stays within
    ``tolerance`` of float32 eager (see :func:`accuracy_ok`).

    ``modes``: names from :data:`MODES` or :class:`Mode` objects (a caller's own). Each mode runs
    on its own copy of the model, so a format change or compilation never leaks into another.
    A mode that raises is recorded with its error and not chosen.
    """
    model.eval()
    unknown = [m for m in modes if isinstance(m, str) and m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    chosen = [MODES[m] if isinstance(m, str) else m for m in modes]
    if not any(m.name == "eager" for m in chosen):
        chosen = [MODES["eager"], *chosen]
    with torch.no_grad():
        reference = output_tensor(model(x)).float()
    results, runs = [], {}
    for mode in chosen:
        try:
            with torch.no_grad():
                run = mode.prepare(model if mode.name == "eager" else _fresh_copy(model), x)
                out = output_tensor(run()).float()  # also the warm-up (compilation happens here)
                ok, diff = accuracy_ok(out, reference, tolerance)
                seconds = time_call(run, repeats=repeats, min_seconds=min_seconds, warmup=0)
            results.append(ModeResult(mode.name, seconds, diff, ok))
            runs[mode.name] = run
        except Exception as exc:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
            results.append(ModeResult(mode.name, None, None, False, f"{type(exc).__name__}: {exc}"[:300]))
    accepted = [r for r in results if r.accepted and r.seconds is not None]
    best = min(accepted, key=lambda r: r.seconds)  # eager is always accepted (difference 0)
    return BestMode(best.mode, best.seconds, results, runs[best.mode])


def interleaved_seconds(first: Callable[[], object], second: Callable[[], object],
                        repeats: int = 3) -> tuple[float, float]:
    """Median seconds of ``first()`` and ``second()`` timed in alternation (``repeats`` rounds after a
    warm-up of each), so that a shared machine's changing load weighs on both alike."""
    first(), second()
    a, b = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        first()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        second()
        b.append(time.perf_counter() - t)
    return statistics.median(a), statistics.median(b)


# ----------------------------------------------------------------------------- training and onnxruntime
def _loss(output) -> torch.Tensor:
    output = output_tensor(output)
    if output.dim() == 4:  # dense prediction: a constant target map
        return F.cross_entropy(output, torch.zeros(output.shape[0], *output.shape[2:], dtype=torch.long))
    return F.cross_entropy(output, torch.zeros(output.shape[0], dtype=torch.long))


def train_step(model: nn.Module, x: torch.Tensor, mode: str = "eager") -> Callable[[], None]:
    """A zero-argument callable running one SGD step (forward, cross-entropy on class 0, backward, update).

    ``mode``: ``eager``, ``channels_last`` or ``bf16`` (autocast around forward and loss).
    """
    if mode not in ("eager", "channels_last", "bf16"):
        raise ValueError(f"training modes are eager, channels_last and bf16, got {mode!r}")
    model.train()
    if mode == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = _loss(model(x))
        loss.backward()
        optimizer.step()

    return step


def onnxruntime_runner(model: nn.Module, input_shape: tuple[int, ...], path, threads: int | None = None):
    """Export ``model`` with a symbolic batch (checked in onnxruntime), and return
    ``(run(x) -> numpy output, export result)`` for a session on ``threads`` intra-op threads."""
    from canon.export import export_onnx, onnx_session

    result = export_onnx(model, path, input_shape=(1, *input_shape[1:]), dynamic_batch=True, check=True)
    session = onnx_session(path, threads=threads)
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor):
        return session.run(None, {input_name: x.numpy()})[0]

    return run, result


# ----------------------------------------------------------------------------- one model
def bench_model(name: str, batch_sizes: Sequence[int] = (1, 32), *, kind: str = "infer",
                modes: Sequence[str] = ("eager",), onnx: bool = True, threads: int | None = None,
                input_size: int | None = None, repeats: int = 3, min_seconds: float = 0.5,
                tolerance: float = DEFAULT_TOLERANCE, peak_gflops: float | None = None,
                workdir=None) -> tuple[list[dict], dict]:
    """Benchmark registered model ``name``; returns ``(rows, info)``.

    Args:
        batch_sizes: one row group per batch size. kind: ``"infer"``, ``"train"`` or ``"both"``.
        modes: inference modes to try (eager is always included); the best accepted one is
            marked ``best`` (:func:`best_mode`). Training uses eager (and channels_last / bf16 if asked).
        onnx: also time onnxruntime on the exported model, same inputs, same threads.
        threads: ``torch.set_num_threads`` and onnxruntime's intra-op threads (default: torch's now).
        input_size: square input side (default: the registry's). repeats, min_seconds: see :func:`time_call`.
        peak_gflops: the matmul reference; measured now when ``None``.

    Each row: ``model, input, batch, kind, mode, seconds, images_per_s, gflops, of_matmul``, and for
    inference ``max_abs_diff`` (to float32 eager), ``accepted``, ``best``, ``vs_onnxruntime``
    (canon's images/s over onnxruntime's; > 1 means canon is faster); the best row also has
    ``interleaved``: the best mode and onnxruntime re-timed in alternation, the fairer ratio on
    a machine whose load changes. ``info``: ``threads``,
    ``matmul_gflops``, ``gmacs`` (per image) and the ONNX check figures.
    """
    import tempfile
    from pathlib import Path

    import canon

    if kind not in ("infer", "train", "both"):
        raise ValueError(f"kind must be 'infer', 'train' or 'both', got {kind!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    info_entry = canon.model_info(name)
    if len(info_entry.input_size) != 3:
        raise ValueError(f"{name} has no image input ({info_entry.input_size}); canon bench times image models")
    c, h, w = info_entry.input_size
    if input_size:
        h = w = int(input_size)
    torch.manual_seed(0)
    model = stand_in_weights(canon.create_model(name), canon_input(2, c, min(h, 128), min(w, 128)))
    macs = model_macs(model, (1, c, h, w))
    peak = peak_gflops if peak_gflops is not None else matmul_gflops()
    info = {"model": name, "threads": threads, "matmul_gflops": peak, "gmacs": macs / 1e9, "input": f"{h}x{w}"}
    rows: list[dict] = []

    ort_run = None
    if onnx and kind in ("infer", "both"):
        folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="canon-bench-"))
        ort_run, exported = onnxruntime_runner(model, (1, c, h, w), folder / f"{name}.onnx", threads=threads)
        info["onnx"] = {"max_abs_diff": exported.max_abs_diff, "opset": exported.opset}

    def row(batch, kind_, mode, seconds, **extra):
        factor = 1 if kind_ == "infer" else 3
        gflops = factor * 2 * macs * batch / seconds / 1e9
        return {"model": name, "input": f"{h}x{w}", "batch": batch, "kind": kind_, "mode": mode, "seconds": seconds,
                "images_per_s": batch / seconds, "gflops": gflops, "of_matmul": gflops / peak, **extra}

    for batch in batch_sizes:
        x = canon_input(batch, c, h, w)
        if kind in ("infer", "both"):
            best = best_mode(model, x, modes, tolerance=tolerance, repeats=repeats, min_seconds=min_seconds)
            group = []
            for r in best.candidates:
                if r.seconds is None:
                    group.append({"model": name, "input": f"{h}x{w}", "batch": batch, "kind": "infer", "mode": r.mode,
                                  "error": r.error})
                    continue
                group.append(row(batch, "infer", r.mode, r.seconds, max_abs_diff=r.max_abs_diff, accepted=r.accepted,
                                 best=r.mode == best.mode))
            if ort_run is not None:
                with torch.no_grad():
                    reference = output_tensor(model(x)).float()
                ort_out = torch.from_numpy(ort_run(x))
                _, ort_diff = accuracy_ok(ort_out, reference, tolerance)
                ort_seconds = time_call(lambda: ort_run(x), repeats=repeats, min_seconds=min_seconds)
                for g in group:
                    if "seconds" in g:
                        g["vs_onnxruntime"] = ort_seconds / g["seconds"]
                group.append(row(batch, "infer", "onnxruntime", ort_seconds, max_abs_diff=ort_diff, accepted=True,
                                 best=False))
                # the headline ratio: the best mode and onnxruntime timed call by call in alternation
                with torch.no_grad():
                    best_s, ort_alt_s = interleaved_seconds(best.run, lambda: ort_run(x), repeats)
                for g in group:
                    if g.get("best"):
                        g["interleaved"] = {"seconds": best_s, "onnxruntime_seconds": ort_alt_s,
                                            "vs_onnxruntime": ort_alt_s / best_s}
            rows += group
        if kind in ("train", "both"):
            for mode in [m for m in ("eager", "channels_last", "bf16") if m == "eager" or m in modes]:
                trainee = canon.create_model(name)
                try:
                    seconds = time_call(train_step(trainee, x, mode), repeats=repeats, min_seconds=min_seconds)
                    rows.append(row(batch, "train", mode, seconds))
                except ValueError as exc:  # e.g. batch norm on a 1x1 map at batch 1
                    rows.append({"model": name, "input": f"{h}x{w}", "batch": batch, "kind": "train", "mode": mode,
                                 "error": str(exc)[:200]})
    return rows, info


def select_modes(channels_last: bool = False, bf16: bool = False, compile: bool = False,
                 best: bool = False) -> list[str]:
    """The inference modes the CLI flags ask for: eager, plus each flag's (``best``: all of :data:`MODES`)."""
    if best:
        return list(MODES)
    modes = ["eager"]
    if channels_last:
        modes.append("channels_last")
    if bf16:
        modes.append("bf16")
    if channels_last and bf16:
        modes.append("channels_last_bf16")
    if compile:
        modes += ["compile", "compile_frozen", "jit_frozen"]
        if channels_last:
            modes += ["compile_frozen_channels_last", "compile_frozen_cpp"]
    return modes


def bench(target: str, batch_sizes: Sequence[int] = (1, 32), *, kind: str = "infer", channels_last: bool = False,
          bf16: bool = False, compile: bool = False, best: bool = False, threads: int | None = None,
          onnx: bool = True, input_size: int | None = None, repeats: int = 3, min_seconds: float = 0.5,
          tolerance: float = DEFAULT_TOLERANCE) -> tuple[list[dict], list[dict]]:
    """``canon bench MODEL|PATTERN``: :func:`bench_model` for one name or every name matching a
    shell pattern (``"resnet*"``), one matmul reference for the whole run. Returns ``(rows, infos)``."""
    import canon

    if any(ch in target for ch in "*?["):
        names = canon.list_models(pattern=target)
        names = [n for n in names if len(canon.model_info(n).input_size) == 3]
        if not names:
            raise ValueError(f"no image model matches {target!r}; `canon list` shows the names")
    else:
        canon.model_info(target)  # an unknown name fails here with the closest names
        names = [target]
    if threads is not None:
        torch.set_num_threads(threads)
    peak = matmul_gflops()
    modes = select_modes(channels_last, bf16, compile, best)
    rows, infos = [], []
    for name in names:
        r, info = bench_model(name, batch_sizes, kind=kind, modes=modes, onnx=onnx, input_size=input_size,
                              repeats=repeats, min_seconds=min_seconds, tolerance=tolerance, peak_gflops=peak)
        rows += r
        infos.append(info)
    return rows, infos


def canon_input(batch: int, c: int, h: int, w: int) -> torch.Tensor:
    """The benchmark's input: an image-like batch (:func:`canon.export.example_input`)."""
    from canon.export import example_input

    return example_input((batch, c, h, w))


def format_table(rows: list[dict], infos: Sequence[dict] = ()) -> str:
    """A markdown table of :func:`bench_model` rows (the header line gives threads and the matmul rate)."""
    lines = []
    for info in infos:
        lines.append(f"{info['model']}: {info['threads']} thread(s), "
                     f"float32 matmul {info['matmul_gflops']:.1f} GFLOP/s, "
                     f"{info['gmacs']:.3f} GMACs/image at {info['input']}"
                     + (f", ONNX check max abs diff {info['onnx']['max_abs_diff']:.1e}" if "onnx" in info else ""))
    if lines:
        lines.append("")
    lines.append("| model | input | batch | kind | mode | img/s | GFLOP/s | of matmul | max abs diff "
                 "| vs onnxruntime |")
    lines.append("|---|---|---:|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['input']} | {r['batch']} | {r['kind']} | {r['mode']} | failed: "
                         f"{r['error'][:60]} | | | | |")
            continue
        mode = r["mode"] + (" (best)" if r.get("best") else "") + ("" if r.get("accepted", True) else " (rejected)")
        diff = f"{r['max_abs_diff']:.1e}" if r.get("max_abs_diff") is not None else ""
        ratio = f"{r['vs_onnxruntime']:.2f}x" if "vs_onnxruntime" in r else ""
        if "interleaved" in r:
            ratio += f" (alternating: {r['interleaved']['vs_onnxruntime']:.2f}x)"
        lines.append(f"| {r['model']} | {r['input']} | {r['batch']} | {r['kind']} | {mode} | {r['images_per_s']:.1f} | "
                     f"{r['gflops']:.1f} | {r['of_matmul']:.0%} | {diff} | {ratio} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    """The ``canon bench`` options, for the CLI's subparser (and ``python -m canon.bench``)."""
    parser.add_argument("models", nargs="+", help="model names or shell patterns (e.g. 'resnet*')")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 32], dest="batch_size")
    parser.add_argument("--mode", choices=("infer", "train", "both"), default="infer")
    parser.add_argument("--channels-last", action="store_true", help="also time channels-last memory format")
    parser.add_argument("--bf16", action="store_true", help="also time bfloat16 autocast")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (plain, with inductor freezing) and a frozen TorchScript trace")
    parser.add_argument("--best", action="store_true", help="time every mode and mark the fastest accurate one")
    parser.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--input-size", type=int, help="square input side (default: the model's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (at least)")
    parser.add_argument("--json", action="store_true", help="print rows and run facts as JSON")


def run(args, on_result: Callable[[list[dict], list[dict]], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Run ``canon bench`` for parsed ``args`` (see :func:`add_arguments`); returns ``(rows, infos)``.

    ``on_result(rows, infos)`` is called after each MODEL|PATTERN argument, so a long run shows
    its results as they come.
    """
    rows, infos = [], []
    for target in args.models:
        r, i = bench(target, args.batch_size, kind=args.mode, channels_last=args.channels_last, bf16=args.bf16,
                     compile=args.compile, best=args.best, threads=args.threads, onnx=not args.no_onnx,
                     input_size=args.input_size, repeats=args.repeats)
        rows += r
        infos += i
        if on_result is not None:
            on_result(r, i)
    return rows, infos


def main(argv=None) -> None:
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m canon.bench", description="canon bench: model throughput")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.json:
        rows, infos = run(args)
        json.dump({"rows": rows, "runs": infos}, sys.stdout, indent=1, default=str)
        print()
    else:
        run(args, lambda r, i: print(format_table(r, i) + "\n", flush=True))


if __name__ == "__main__":
    main()
