"""`canon train --amp`: a training step under bfloat16 autocast beside the same step in float32.

Both are timed in one run, alternating, on the same model, batch and thread count; the ratio is
the figure to read (absolute images/s on shared machines are noise). bfloat16 pays off on CPUs
with AVX512-BF16 or AMX (``lscpu | grep -o 'avx512_bf16\\|amx_bf16'``); elsewhere torch emulates
it and the ratio drops below 1.

    python benchmarks/bench_amp.py                                   # the small ViT and ResNet-18
    python benchmarks/bench_amp.py --models deit_tiny_patch4_28 --batch-size 32 --threads 1
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

import canon


def step_seconds(model, images, labels, optimizer, amp: bool, repeats: int) -> float:
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: allocator, kernel selection (oneDNN's bfloat16 kernels)
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["deit_tiny_patch4_28", "resnet18"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=None, help="square input (default: 28 for 1-channel "
                                                                     "models, else 32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, batch {args.batch_size}; training step (forward, loss, backward, AdamW)")
    print("| model | input | float32 img/s | bfloat16 autocast img/s | ratio |")
    print("|---|---|---:|---:|---:|")
    for name in args.models:
        info = canon.model_info(name)
        channels = info.input_size[0]
        size = args.input_size or (28 if channels == 1 else 32)
        torch.manual_seed(0)
        model = canon.create_model(name, num_classes=10).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images = torch.randn(args.batch_size, channels, size, size)
        labels = torch.randint(0, 10, (args.batch_size,))
        seconds = {False: [], True: []}
        for _ in range(2):  # alternate, so drifting load on a shared machine hits both alike
            for amp in (False, True):
                seconds[amp].append(step_seconds(model, images, labels, optimizer, amp, args.repeats))
        fp32, bf16 = (args.batch_size / min(seconds[amp]) for amp in (False, True))
        print(f"| {name} | {channels}x{size}x{size} | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f}x |")


if __name__ == "__main__":
    main()
