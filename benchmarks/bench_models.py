"""Model throughput: forward and training-step images/s, and the GFLOP/s they achieve.

The reference is the machine itself: the float32 matrix-multiply GFLOP/s measured in the same
run (a large ``torch.mm``), so the table says what fraction of the machine's peak each model
reaches. Absolute numbers on shared machines are noise; the ratio is the figure to read.
The timing, multiply-add count and training step are canon.bench's (what ``canon bench`` uses);
``canon bench`` adds the other execution modes and the onnxruntime comparison.

    python benchmarks/bench_models.py                       # every classification model
    python benchmarks/bench_models.py --pattern 'resnet*' --batch-sizes 1 32
    python benchmarks/bench_models.py --task segmentation --input-size 512
"""
from __future__ import annotations

import argparse

import torch

import canon
from canon.bench import matmul_gflops, model_macs, time_call, train_step
from canon.bench import _loss as _bench_loss

__all__ = ["matmul_gflops", "bench", "_time", "_loss"]  # bench_segmentation.py imports the last two


def _time(fn, repeats: int, min_seconds: float = 0.5, warmup: bool = True) -> float:
    """Median seconds of ``fn()`` (``canon.bench.time_call``, one warm-up call unless ``warmup=False``)."""
    return time_call(fn, repeats=repeats, min_seconds=min_seconds, warmup=1 if warmup else 0)


def _loss(output, num_classes=None):
    return _bench_loss(output)


def bench(name: str, batch_sizes: list[int], input_size: int | None, repeats: int, peak: float) -> list[dict]:
    info = canon.model_info(name)
    model = canon.create_model(name)
    c, h, w = info.input_size
    if input_size:
        h = w = input_size
    macs = model_macs(model, (1, c, h, w))
    rows = []
    for i, bs in enumerate(batch_sizes):
        # the first (smallest) batch warms the model up; later ones skip a second warm-up call,
        # which for a 224-px VGG at batch 32 would cost a minute of CPU for nothing
        warmup = i == 0
        x = torch.randn(bs, c, h, w)
        model.eval()

        def forward():
            with torch.no_grad():
                model(x)

        fwd = _time(forward, repeats, warmup=warmup)
        try:
            trn = _time(train_step(model, x), repeats, warmup=warmup)
        except ValueError:  # e.g. batch norm on a 1x1 map with batch 1 has no statistics
            trn = float("nan")
        fwd_gflops = 2 * macs * bs / fwd / 1e9
        trn_gflops = 3 * 2 * macs * bs / trn / 1e9  # backward ~ 2x forward
        rows.append({"model": name, "input": f"{h}x{w}", "batch": bs, "fwd_img_s": bs / fwd,
                     "train_img_s": bs / trn, "fwd_gflops": fwd_gflops, "train_gflops": trn_gflops,
                     "fwd_of_peak": fwd_gflops / peak, "gmacs": macs / 1e9})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="classification")
    parser.add_argument("--pattern", nargs="+", help="shell-style wildcards; a model matching any is timed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--input-size", type=int, help="square input size (default: each model's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = matmul_gflops()
    print(f"threads: {torch.get_num_threads()}  float32 matmul (2048^3): {peak:.1f} GFLOP/s\n")
    print("| model | input | batch | GMACs/img | forward img/s | train img/s | forward GFLOP/s | train GFLOP/s "
          "| forward / matmul peak |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    names = canon.list_models(task=args.task)
    if args.pattern:
        names = sorted({n for p in args.pattern for n in canon.list_models(task=args.task, pattern=p)})
    for name in names:
        for r in bench(name, args.batch_sizes, args.input_size, args.repeats, peak):
            print(f"| {r['model']} | {r['input']} | {r['batch']} | {r['gmacs']:.3f} | {r['fwd_img_s']:.1f} | "
                  f"{r['train_img_s']:.1f} | {r['fwd_gflops']:.1f} | {r['train_gflops']:.1f} | "
                  f"{r['fwd_of_peak']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
