"""Segmentation throughput: forward and training-step images/s for every segmentation model, at
512x512 (batch 1) and at its training crop size (the registry's input size), beside the machine's
measured float32 matmul GFLOP/s (see bench_models.py, whose timing functions this reuses).

    python benchmarks/bench_segmentation.py                          # every segmentation model
    python benchmarks/bench_segmentation.py --pattern 'unet*' --repeats 1
    python benchmarks/bench_segmentation.py --sizes 512 --train-batch 2

Valid-convolution models (``unet_paper``) cannot take 512x512: they are timed at their tile
(572 -> 388) instead. Models with image-level pooling + batch norm (DeepLab v3's ASPP) cannot train
on batch 1, so the training step uses ``--train-batch`` images (default 2) for every model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import canon  # noqa: E402
from bench_models import _loss, _time, matmul_gflops  # noqa: E402
from canon.engine.summary import summarize  # noqa: E402


def sizes_for(name: str, requested: list[int]) -> list[int]:
    """The square sides to time ``name`` at: the requested ones it accepts, then its training crop."""
    info = canon.model_info(name)
    model = canon.create_model(name)
    crop = info.input_size[-1]
    out = []
    for side in requested + [crop]:
        if hasattr(model, "tile_output_size") and model.output_size(side) is None:
            side = model.tile_size  # valid-convolution U-Net: its overlap tile instead
        if side not in out:
            out.append(side)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pattern", help="model name pattern, e.g. 'deeplab*'")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="square sides besides the crop size")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = matmul_gflops()
    print(f"threads: {torch.get_num_threads()}  float32 matmul (2048^3): {peak:.1f} GFLOP/s\n")
    print("| model | input | GMACs/img | forward img/s (batch 1) | train img/s "
          f"(batch {args.train_batch}) | forward GFLOP/s | forward / matmul peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in canon.list_models(task="segmentation", pattern=args.pattern):
        for side in sizes_for(name, args.sizes):
            r = bench_one(name, side, args.train_batch, args.repeats)
            gflops = 2 * r["macs"] / r["fwd_s"] / 1e9
            print(f"| {name} | {side}x{side} | {r['macs'] / 1e9:.2f} | {1 / r['fwd_s']:.2f} | "
                  f"{args.train_batch / r['train_s']:.2f} | {gflops:.1f} | {gflops / peak:.0%} |", flush=True)


def bench_one(name: str, side: int, train_batch: int, repeats: int) -> dict:
    """One model built once: its multiply-adds, a batch-1 forward and a training step."""
    info = canon.model_info(name)
    model = canon.create_model(name)
    c = info.input_size[0]
    macs = summarize(model, (1, c, side, side)).macs
    x1 = torch.randn(1, c, side, side)
    model.eval()

    def forward():
        with torch.no_grad():
            model(x1)

    fwd_s = _time(forward, repeats)
    model.train()
    xb = torch.randn(train_batch, c, side, side)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        _loss(model(xb), info.num_classes).backward()
        opt.step()

    return {"macs": macs, "fwd_s": fwd_s, "train_s": _time(step, repeats)}

if __name__ == "__main__":
    main()
