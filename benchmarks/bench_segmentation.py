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
from bench_models import bench, matmul_gflops  # noqa: E402


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
            fwd = bench(name, [1], side, args.repeats, peak)[0]
            trn = bench(name, [args.train_batch], side, args.repeats, peak)[0]
            print(f"| {name} | {fwd['input']} | {fwd['gmacs']:.2f} | {fwd['fwd_img_s']:.2f} | "
                  f"{trn['train_img_s']:.2f} | {fwd['fwd_gflops']:.1f} | {fwd['fwd_of_peak']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
