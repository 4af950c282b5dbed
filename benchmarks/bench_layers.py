"""Layer timings: canon's written-out layers beside a torch reference of the same shape, same run.

Each row times one layer forward and forward + backward at a realistic feature-map size, and
the reference beside it, and prints the ratio (ours / reference). The reference is the closest
fused torch op, not always the same maths: SoftPool is timed against ``avg_pool2d`` (same
window, plain mean), deformable convolution against ``F.conv2d`` (same kernel, no offsets), so
those ratios read as "what the extra maths costs". Absolute times on shared machines are noise;
the ratio from one run is the figure to read (ours and the reference are called alternately,
so both see the same load).

    python benchmarks/bench_layers.py                      # CPU, all rows
    python benchmarks/bench_layers.py --device cuda --only deform
    python benchmarks/bench_layers.py --json               # one JSON object per row
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from canon.layers import batch_norm, conv2d, deform_conv2d, group_norm, soft_pool2d, spatial_pyramid_pool


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_pair(fn, ref, device: torch.device, repeats: int, min_seconds: float = 0.5) -> tuple[float, float]:
    """Median seconds per call of ``fn`` and ``ref``, called alternately so both see the same machine load."""
    fn(), ref()  # warm-up
    _sync(device)
    times = ([], [])
    start = time.perf_counter()
    while len(times[0]) < repeats or (time.perf_counter() - start < min_seconds and len(times[0]) < 50):
        for f, bucket in ((fn, times[0]), (ref, times[1])):
            t = time.perf_counter()
            f()
            _sync(device)
            bucket.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def _fwd_bwd(fn, inputs):
    """Two callables: forward under no_grad, and forward + backward of a sum."""
    def forward():
        with torch.no_grad():
            fn(*inputs)

    def forward_backward():
        for t in inputs:
            t.grad = None
        fn(*inputs).sum().backward()

    return forward, forward_backward


def cases(device: torch.device):
    """(name, shape string, ours, reference, inputs that need grad) for every row."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_()

    x = randn(8, 256, 32, 32)
    levels = (1, 2, 4)
    yield ("SPP (1,2,4), max", "8x256x32x32", lambda t: spatial_pyramid_pool(t, levels),
           "adaptive_max_pool2d x3 + cat",
           lambda t: torch.cat([F.adaptive_max_pool2d(t, n).flatten(1) for n in levels], 1), (x,))
    yield ("SoftPool 2x2/2", "8x256x32x32", lambda t: soft_pool2d(t, 2), "avg_pool2d 2x2/2",
           lambda t: F.avg_pool2d(t, 2), (x,))
    yield ("SoftPool 2x2/2", "8x256x32x32", lambda t: soft_pool2d(t, 2), "avg_pool(x·eˣ)/avg_pool(eˣ)",
           lambda t: F.avg_pool2d(t * t.exp(), 2) / F.avg_pool2d(t.exp(), 2), (x,))

    xd, wd = randn(2, 64, 64, 64), randn(64, 64, 3, 3)
    offset = (torch.randn(2, 18, 64, 64, generator=g) * 2).to(device).requires_grad_()
    yield ("deform conv 3x3, 64->64", "2x64x64x64", lambda t, o, w: deform_conv2d(t, o, w, padding=1),
           "F.conv2d 3x3 (no offsets)", lambda t, o, w: F.conv2d(t, w, padding=1) + 0 * o.sum(), (xd, offset, wd))
    yield ("conv2d (im2col) 3x3, 64->64", "2x64x64x64", lambda t, w: conv2d(t, w, padding=1),
           "F.conv2d 3x3", lambda t, w: F.conv2d(t, w, padding=1), (xd, wd))

    xb, gamma, beta = randn(8, 256, 32, 32), randn(256), randn(256)
    rm, rv = torch.zeros(256, device=device), torch.ones(256, device=device)
    yield ("batch norm (train)", "8x256x32x32", lambda t, w, b: batch_norm(t, rm, rv, w, b, training=True),
           "F.batch_norm", lambda t, w, b: F.batch_norm(t, rm, rv, w, b, training=True), (xb, gamma, beta))
    yield ("group norm (32 groups)", "8x256x32x32", lambda t, w, b: group_norm(t, 32, w, b),
           "F.group_norm", lambda t, w, b: F.group_norm(t, 32, w, b), (xb, gamma, beta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", help="run only rows whose name contains this text (case-insensitive)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row instead of a table")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if not args.json:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"device: {name}  torch {torch.__version__}\n")
        print("| layer | input | reference | fwd ms | ref fwd ms | fwd ratio | fwd+bwd ms | ref fwd+bwd ms | fwd+bwd ratio |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, shape, ours, ref_name, ref, inputs in cases(device):
        if args.only and args.only.lower() not in name.lower():
            continue
        ours_f, ours_fb = _fwd_bwd(ours, inputs)
        ref_f, ref_fb = _fwd_bwd(ref, inputs)
        fwd, ref_fwd = _time_pair(ours_f, ref_f, device, args.repeats)
        fwd_bwd, ref_fwd_bwd = _time_pair(ours_fb, ref_fb, device, args.repeats)
        row = {"layer": name, "input": shape, "reference": ref_name, "fwd_ms": 1e3 * fwd, "ref_fwd_ms": 1e3 * ref_fwd,
               "fwd_bwd_ms": 1e3 * fwd_bwd, "ref_fwd_bwd_ms": 1e3 * ref_fwd_bwd}
        row["fwd_ratio"] = row["fwd_ms"] / row["ref_fwd_ms"]
        row["fwd_bwd_ratio"] = row["fwd_bwd_ms"] / row["ref_fwd_bwd_ms"]
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"| {name} | {shape} | {ref_name} | {row['fwd_ms']:.2f} | {row['ref_fwd_ms']:.2f} | "
                  f"{row['fwd_ratio']:.2f}x | {row['fwd_bwd_ms']:.2f} | {row['ref_fwd_bwd_ms']:.2f} | "
                  f"{row['fwd_bwd_ratio']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
