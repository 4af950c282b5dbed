"""SSIM speed beside scikit-image's, on the same photograph in the same run.

canon's SSIM filters the five moment images (mu_x, mu_y, E[x^2], E[y^2], E[xy]) in one separable
pass (11 taps down, then 11 across, depthwise, valid region only). The table also times, in the
same process:

- scikit-image's ``structural_similarity`` (Gaussian weights, sigma 1.5, population covariance),
  the reference the tests compare against, in float64 and float32 (scikit-image filters in the
  input's float type);
- the same SSIM with one 11x11 two-dimensional window (121 taps per pixel instead of 22), the way
  kornia's and torchmetrics' SSIM filter, as a torch baseline for what separability buys.

Every row's value is printed too, so a fast wrong answer shows. The figure to read is the
``vs skimage`` column (skimage time / row time, higher is faster); absolute times on a shared
machine are noise.

    python benchmarks/bench_metrics.py                     # 1 x 3 x 512 x 512, as in the issue
    python benchmarks/bench_metrics.py --size 1024 --threads 0   # torch's default thread count

On a machine shared with other jobs, several torch threads can be much slower than one (each of
the many small element-wise operations waits for a descheduled thread), which is why the
default is one thread.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from canon.metrics import ssim
from canon.metrics.image import gaussian_window_1d


def _time(fn, repeats: int, min_seconds: float = 1.0) -> float:
    """Median seconds per call after one warm-up, at least ``repeats`` calls or ``min_seconds``."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 100):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _photo_pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) float64 photograph in [0, 1] (scikit-image's astronaut) and a noisy copy."""
    from skimage.data import astronaut
    from skimage.transform import resize

    image = astronaut().astype(np.float64) / 255
    if image.shape[0] != size:
        image = resize(image, (size, size, 3), anti_aliasing=True)
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.05, image.shape), 0, 1)
    return image, noisy


def ssim_2d_window(preds: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM with one (11, 11) window per channel (no separability): the torch baseline row."""
    c = preds.shape[1]
    g = gaussian_window_1d(11, 1.5, dtype=preds.dtype)
    window = torch.outer(g, g).expand(5 * c, 1, 11, 11)
    x, y = preds / data_range, target / data_range
    mu_x, mu_y, e_xx, e_yy, e_xy = F.conv2d(torch.cat([x, y, x * x, y * y, x * y], 1), window,
                                            groups=5 * c).split(c, dim=1)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * (e_xy - mu_x * mu_y) + c2)
                / ((mu_x ** 2 + mu_y ** 2 + c1) * (e_xx + e_yy - mu_x ** 2 - mu_y ** 2 + c2)))
    return ssim_map.mean()


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image height and width (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls at least (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: scikit-image runs on one core, so one thread is "
                             "the like-for-like comparison; 0 keeps torch's default)")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="keep timing each row for at least this long (default 1.0)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from skimage.metrics import structural_similarity

    image, noisy = _photo_pair(args.size)
    x64 = torch.from_numpy(noisy.transpose(2, 0, 1).copy())[None]  # (1, 3, S, S)
    y64 = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    x32, y32 = x64.float(), y64.float()
    im32, noisy32 = image.astype(np.float32), noisy.astype(np.float32)

    def sk(a, b):
        return structural_similarity(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False)

    cases = [
        ("scikit-image float64", lambda: sk(noisy, image)),
        ("scikit-image float32", lambda: sk(noisy32, im32)),
        ("canon ssim float64 (separable)", lambda: ssim(x64, y64, data_range=1.0).item()),
        ("canon ssim float32 (separable)", lambda: ssim(x32, y32, data_range=1.0).item()),
        ("torch 11x11 window float32 (kornia-style)", lambda: ssim_2d_window(x32, y32).item()),
    ]
    rows = []
    with torch.no_grad():
        for name, fn in cases:
            rows.append({"method": name, "seconds": _time(fn, args.repeats, args.min_seconds),
                         "ssim": float(fn())})
    skimage_seconds = {"float64": rows[0]["seconds"], "float32": rows[1]["seconds"]}
    for row in rows:
        dtype = "float64" if "float64" in row["method"] else "float32"
        row["vs_skimage"] = skimage_seconds["float64"] / row["seconds"]
        row["vs_skimage_same_dtype"] = skimage_seconds[dtype] / row["seconds"]
    if args.json:
        print(json.dumps({"shape": [1, 3, args.size, args.size], "threads": torch.get_num_threads(),
                          "rows": rows}, indent=2))
    else:
        print(f"SSIM on 1x3x{args.size}x{args.size} (astronaut + noise), torch threads = "
              f"{torch.get_num_threads()}; speed-ups are scikit-image's time / the row's time")
        print(f"| {'method':<42} | {'ms':>8} | {'vs skimage f64':>14} | {'vs skimage same dtype':>21} "
              f"| {'SSIM':>10} |")
        print(f"|{'-' * 44}|{'-' * 9}:|{'-' * 15}:|{'-' * 22}:|{'-' * 11}:|")
        for row in rows:
            print(f"| {row['method']:<42} | {1000 * row['seconds']:>8.1f} | {row['vs_skimage']:>13.1f}x "
                  f"| {row['vs_skimage_same_dtype']:>20.1f}x | {row['ssim']:>10.6f} |")
    return rows


if __name__ == "__main__":
    main()
