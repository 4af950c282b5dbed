"""``digits``: scikit-learn's bundled handwritten digits, the set that needs no download.

The data is the test part of the UCI "Optical Recognition of Handwritten Digits" set
(E. Alpaydin, C. Kaynak, 1998; no arXiv id), shipped inside scikit-learn as
``sklearn.datasets.load_digits``: 1,797 real 8x8 images with 17 grey levels (0-16), labels 0-9.

Follows the data:
  - every image and label as scikit-learn ships them, grey levels scaled to ``[0, 1]`` by /16.

Deviates, and why:
  - images are upscaled to 32x32 with bilinear interpolation (half-pixel centres, as
    ``torch.nn.functional.interpolate(..., align_corners=False)``), so the same small CNNs that
    take MNIST-sized input run on it; they are then stored as uint8 (at most 1/510 rounding);
  - the data has no official split, so we fix one: ``numpy.random.RandomState(0)`` permutes the
    1,797 indices, the first 360 (20%) are ``test`` and the other 1,437 ``train`` (each split
    kept in the original order);
  - ``mean``/``std`` are measured on the 1,437 upscaled training images.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from canon.data.core import DatasetInfo, InMemoryImageDataset

__all__ = ["build_digits", "DIGITS_SIZE", "NUM_TEST"]

DIGITS_SIZE = (32, 32)
NUM_TEST = 360
SPLIT_SEED = 0


def split_indices(n: int = 1797) -> dict[str, np.ndarray]:
    """The fixed split of the module docstring: ``{"train": idx, "test": idx}``, each sorted."""
    order = np.random.RandomState(SPLIT_SEED).permutation(n)
    return {"test": np.sort(order[:NUM_TEST]), "train": np.sort(order[NUM_TEST:])}


@lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as uint8 ``(N, 1, 32, 32)`` and labels ``(N,)``."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    large = F.interpolate(small, size=DIGITS_SIZE, mode="bilinear", align_corners=False)  # (1797, 1, 32, 32)
    images = large.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return images, torch.from_numpy(bunch.target.astype(np.int64))


def build_digits(split: str) -> InMemoryImageDataset:
    """The ``split`` of the 32x32 digits (see the module docstring for the split and scaling)."""
    images, targets = _all_digits()
    idx = split_indices(len(images))
    train_pixels = images[torch.from_numpy(idx["train"])].double().div_(255.0)
    info = DatasetInfo(name="digits", num_classes=10, in_chans=1, image_size=DIGITS_SIZE,
                       class_names=[str(d) for d in range(10)],
                       mean=(round(train_pixels.mean().item(), 4),),
                       std=(round(train_pixels.std(unbiased=False).item(), 4),))
    chosen = torch.from_numpy(idx[split])
    return InMemoryImageDataset(images[chosen].clone(), targets[chosen].clone(), info, split)
