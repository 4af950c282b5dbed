"""What the detectors on external proposals share (R-CNN, SPPnet, Fast R-CNN): the proposals, and timing.

Those detectors take object proposals from outside the network: selective search
(:mod:`canon.ops.selective_search`, "fast mode", about 2,000 boxes per image, as the three papers
use) unless the caller passes its own. The call contract is the other detectors' with one optional
argument: ``model(images, targets=None, proposals=None)``, ``proposals`` a list with one Float[K, 4]
xyxy tensor per image in that image's pixels.

Each model also keeps :class:`StageTimes`, the seconds its last calls spent per stage (proposals,
warping, CNN, SVMs, ...), so that the slowness the papers measure can be measured here.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Sequence

import torch
from torch import Tensor

from canon.models.detection.transform import resize_boxes
from canon.ops.selective_search import SelectiveSearch

__all__ = ["selective_search_proposals", "check_proposals", "proposals_for", "scale_proposals", "StageTimes"]


def selective_search_proposals(*, mode: str = "fast", max_proposals: int = 2000, max_side: int | None = 500,
                               cache_dir: str | None = None) -> SelectiveSearch:
    """The papers' proposals: selective search in fast mode, the best-ranked ``max_proposals`` boxes."""
    return SelectiveSearch(mode=mode, max_proposals=max_proposals, max_side=max_side, cache_dir=cache_dir)


def check_proposals(proposals, images: Sequence[Tensor]) -> list[Tensor]:
    """One Float[K_i, 4] xyxy tensor per image (x1 <= x2, y1 <= y2), or a ValueError naming the bad entry."""
    if not isinstance(proposals, (list, tuple)) or len(proposals) != len(images):
        found = f"{len(proposals)} entries" if isinstance(proposals, (list, tuple)) else type(proposals).__name__
        raise ValueError(f"proposals must be a list with one Float[K, 4] (x1, y1, x2, y2) tensor per image "
                         f"({len(images)}), got {found}")
    checked = []
    for i, (boxes, image) in enumerate(zip(proposals, images)):
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            found = f"shape {tuple(boxes.shape)} {boxes.dtype}" if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"proposals[{i}] must be a float tensor [K, 4] of (x1, y1, x2, y2) boxes in the image's "
                             f"pixels, got {found}")
        if not torch.isfinite(boxes).all() or ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            raise ValueError(f"proposals[{i}] must hold finite [K, 4] (x1, y1, x2, y2) boxes with x1 <= x2 and "
                             f"y1 <= y2")
        checked.append(boxes.to(device=image.device, dtype=image.dtype))
    return checked


def check_inputs(images, targets, in_chans: int, num_classes: int, training: bool):
    """The proposal-based detectors' call contract: ``images`` checked as every canon detector checks
    them, and ``targets`` (required in training) one dict per image with boxes and labels in range."""
    from canon.models.detection.faster_rcnn import _check_images, _check_target  # the shared checks

    images = _check_images(images, in_chans)
    if training and targets is None:
        raise ValueError("targets are required in training mode: one dict per image with 'boxes' Float[N, 4] "
                         "(x1, y1, x2, y2) and 'labels' Int64[N]")
    if targets is not None:
        if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
            found = f"{len(targets)} targets" if isinstance(targets, (list, tuple)) else type(targets).__name__
            raise ValueError(f"expected one target dict per image ({len(images)}), got {found}")
        targets = [_check_target(t, i, image, num_classes, False, None)
                   for i, (image, t) in enumerate(zip(images, targets))]
    return images, targets


def proposals_for(images: Sequence[Tensor], proposals, method, times: "StageTimes") -> list[Tensor]:
    """The given proposals checked, or ``method(image)`` for each image (timed as "proposals")."""
    if proposals is not None:
        return check_proposals(proposals, images)
    if method is None:
        raise ValueError("this model has no proposal method (proposal_method=None): pass proposals=[Float[K, 4], ...]")
    with times.measure("proposals"):
        found = [method(image) for image in images]
    return check_proposals(found, images)


def scale_proposals(proposals: Sequence[Tensor], original_sizes: Sequence[tuple[int, int]],
                    image_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Proposals in each input image's pixels -> the resized image's pixels (the transform's ratio per axis)."""
    return [resize_boxes(boxes, original, size) for boxes, original, size in zip(proposals, original_sizes,
                                                                                  image_sizes)]


class StageTimes:
    """Seconds spent per named stage, summed over calls; ``images`` counts the images seen in eval mode."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.images = 0

    @contextmanager
    def measure(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def per_image(self) -> dict[str, float]:
        """Mean seconds per image of each stage, and their "total"."""
        count = max(self.images, 1)
        out = {stage: value / count for stage, value in self.seconds.items()}
        out["total"] = sum(self.seconds.values()) / count
        return out

    def reset(self) -> None:
        self.seconds.clear()
        self.images = 0

    def __repr__(self) -> str:
        return f"StageTimes(images={self.images}, seconds={ {k: round(v, 3) for k, v in self.seconds.items()} })"
