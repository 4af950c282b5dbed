"""Detection transforms: every geometric step moves the image, its boxes, masks and keypoints together.

A transform is a callable ``(image, target) -> (image, target)``: image a float tensor (C, H, W)
in [0, 1], target the dict of :mod:`canon.data.detection` (``boxes`` [N, 4] xyxy in pixels,
``labels`` [N], and per object ``area``, ``iscrowd``, ``difficult``, ``masks`` [N, H, W],
``keypoints`` [N, K, 3]). Transforms return new tensors and leave their inputs alone.

What the detection papers train with, and where it comes from:

* resize so the short side is ``min_size`` unless the long side would pass ``max_size``
  (Fast/Faster R-CNN: 600/1000; torchvision's ``GeneralizedRCNNTransform``: 800/1333), with
  torchvision's rule scale = min(min_size / short side, max_size / long side) and output size
  floor(side * scale); or to a fixed size (YOLO 448/416, SSD 300);
* horizontal flip with p = 0.5 (every detector since R-CNN), swapping left and right keypoints
  (Mask R-CNN's keypoint head; torchvision's ``flip_inds``);
* SSD's IoU-constrained random crop (Liu et al., 2016, arXiv:1512.02325, Sec. 2.2 "Data
  augmentation": a patch whose minimum IoU with the objects is 0.1, 0.3, 0.5, 0.7 or 0.9, or
  the whole image; patch size [0.3, 1] of the image, aspect ratio [1/2, 2]; boxes kept when
  their centre is in the patch) and its photometric distortions (brightness, contrast,
  saturation, hue, as torchvision's ``RandomPhotometricDistort``);
* batching: a list of images of different sizes (the R-CNN family takes lists) or a zero-padded
  batch whose height and width are multiples of 32, with each image's size.

Conventions: boxes and keypoints are continuous coordinates (pixel ``i`` spans [i, i + 1)), so a
flip maps x to W - x for both, as torchvision does. Keypoints that are not labelled
(visibility 0) stay (0, 0, 0); a keypoint moved outside the image by a crop becomes (0, 0, 0).
Images are resampled bilinearly without antialiasing (torchvision's detection transform), masks
by nearest neighbour, so masks stay 0/1.

Deviates, and why:

* the photometric steps run in a fixed order (brightness, contrast, saturation, hue); SSD's code
  puts contrast before or after saturation and hue at random, a detail that changes little;
* :class:`RandomCropKeepBoxes` is not from a paper: a random crop that keeps every box whole
  (the crop always contains the boxes' union), for datasets with few objects such as raccoon,
  where SSD's crop would often cut the one object in half.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from canon.data.segmentation_transforms import normalize
from canon.ops.boxes import box_iou

__all__ = ["Compose", "RandomHorizontalFlip", "Resize", "ResizeMinMax", "RandomCropKeepBoxes", "RandomIoUCrop",
           "PhotometricJitter", "Normalize", "DropCrowd", "DetectionTransformedDataset", "default_transforms",
           "check_target", "select_objects", "drop_crowd", "hflip", "resize", "resize_min_max", "min_max_size",
           "crop", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "rgb_to_hsv",
           "hsv_to_rgb", "normalize", "collate_detection", "pad_to_batch", "PER_OBJECT_KEYS", "AUGMENTS"]

PER_OBJECT_KEYS = ("boxes", "labels", "area", "iscrowd", "difficult", "masks", "keypoints")
AUGMENTS = ("default", "ssd", "none")


# ------------------------------------------------------------------------------------- target checks
def check_target(image: Tensor, target: dict) -> int:
    """Raise ValueError unless ``image`` is (C, H, W) and ``target`` follows the detection contract;
    return the number of objects N."""
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise ValueError(f"expected an image tensor (C, H, W), got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        raise ValueError(f"expected a target dict with 'boxes' [N, 4] and 'labels' [N], got "
                         f"{sorted(target) if isinstance(target, dict) else type(target).__name__}")
    boxes = target["boxes"]
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        raise ValueError(f"expected target['boxes'] a float tensor [N, 4] of (x1, y1, x2, y2), got "
                         f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}"
                         f"{' ' + str(boxes.dtype) if isinstance(boxes, Tensor) else ''}")
    n = boxes.shape[0]
    for key in PER_OBJECT_KEYS:
        value = target.get(key)
        if value is not None and (not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != n):
            raise ValueError(f"expected target[{key!r}] with one row per box ({n}), got "
                             f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}")
    masks, keypoints = target.get("masks"), target.get("keypoints")
    if masks is not None and (masks.dim() != 3 or tuple(masks.shape[1:]) != tuple(image.shape[1:])):
        raise ValueError(f"expected target['masks'] [N, H, W] of the image's size {tuple(image.shape[1:])}, "
                         f"got {tuple(masks.shape)}")
    if keypoints is not None and (keypoints.dim() != 3 or keypoints.shape[2] != 3):
        raise ValueError(f"expected target['keypoints'] [N, K, 3] of (x, y, visibility), got {tuple(keypoints.shape)}")
    return n


def select_objects(target: dict, keep: Tensor) -> dict:
    """The target with only the objects where ``keep`` (bool [N] or indices) holds, in every per-object field."""
    return {k: (v[keep] if k in PER_OBJECT_KEYS and isinstance(v, Tensor) else v) for k, v in target.items()}


def drop_crowd(target: dict) -> dict:
    """The target without crowd regions (``iscrowd`` == 1), as detectors train (torchvision's reference)."""
    if "iscrowd" not in target:
        return target
    return select_objects(target, target["iscrowd"] == 0)


def _zero_unlabelled(keypoints: Tensor) -> Tensor:
    """Keypoints with visibility 0 become (0, 0, 0), COCO's convention."""
    return keypoints * (keypoints[..., 2:] > 0)


# ------------------------------------------------------------------------------------- geometry
def hflip(image: Tensor, target: dict, keypoint_flip: Sequence[int] | None = None) -> tuple[Tensor, dict]:
    """Mirror left-right: x -> W - x for boxes and keypoints, masks flipped; keypoint ``i`` of the
    result is keypoint ``keypoint_flip[i]`` of the input (needed when there are keypoints)."""
    check_target(image, target)
    width = image.shape[-1]
    out = dict(target)
    boxes = target["boxes"]
    out["boxes"] = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
    if target.get("masks") is not None:
        out["masks"] = target["masks"].flip(-1)
    if target.get("keypoints") is not None:
        keypoints = target["keypoints"]
        if keypoint_flip is None or len(keypoint_flip) != keypoints.shape[1]:
            raise ValueError(f"flipping {keypoints.shape[1]} keypoints needs their left/right permutation "
                             f"(info.keypoint_flip), got {keypoint_flip}")
        flipped = keypoints[:, list(keypoint_flip)].clone()
        flipped[..., 0] = width - flipped[..., 0]
        out["keypoints"] = _zero_unlabelled(flipped)
    return image.flip(-1), out


def resize(image: Tensor, target: dict, size: tuple[int, int]) -> tuple[Tensor, dict]:
    """Resize to ``size`` (H, W): image bilinear, masks nearest; boxes, keypoints and areas scaled."""
    check_target(image, target)
    height, width = image.shape[-2:]
    new_h, new_w = int(size[0]), int(size[1])
    if new_h < 1 or new_w < 1:
        raise ValueError(f"expected a size (H, W) of positive integers, got {size}")
    scale_x, scale_y = new_w / width, new_h / height
    out = dict(target)
    out["boxes"] = target["boxes"] * torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=target["boxes"].dtype)
    if target.get("area") is not None:
        out["area"] = target["area"] * (scale_x * scale_y)
    if target.get("masks") is not None:
        masks = target["masks"]
        resized = F.interpolate(masks[None].float(), size=(new_h, new_w), mode="nearest-exact")[0]
        out["masks"] = resized.to(masks.dtype)
    if target.get("keypoints") is not None:
        keypoints = target["keypoints"].clone()
        keypoints[..., 0] *= scale_x
        keypoints[..., 1] *= scale_y
        out["keypoints"] = keypoints
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    return image, out


def min_max_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """torchvision's ``GeneralizedRCNNTransform`` size: scale = min(min_size / short side,
    max_size / long side); each side becomes floor(side * scale)."""
    if min_size <= 0 or max_size <= 0:
        raise ValueError(f"expected min_size and max_size > 0, got {min_size} and {max_size}")
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))


def resize_min_max(image: Tensor, target: dict, min_size: float, max_size: float) -> tuple[Tensor, dict]:
    """Resize by :func:`min_max_size`."""
    return resize(image, target, min_max_size(*image.shape[-2:], min_size, max_size))


def crop(image: Tensor, target: dict, top: int, left: int, height: int, width: int,
         keep: str = "overlap") -> tuple[Tensor, dict]:
    """The window [top, top + height) x [left, left + width); boxes shifted and clipped to it.

    ``keep``: "overlap" keeps boxes that still have an area inside the window, "centre" those whose
    centre lies inside (SSD's rule). Keypoints outside the window become (0, 0, 0); ``area`` is
    re-measured from the masks when there are masks, else scaled by the share of the box kept.
    """
    check_target(image, target)
    if keep not in ("overlap", "centre"):
        raise ValueError(f"keep must be 'overlap' or 'centre', got {keep!r}")
    full_h, full_w = image.shape[-2:]
    if not (0 <= top and 0 <= left and height >= 1 and width >= 1 and top + height <= full_h
            and left + width <= full_w):
        raise ValueError(f"expected a crop window inside the {full_h}x{full_w} image, got top={top} left={left} "
                         f"height={height} width={width}")
    boxes = target["boxes"]
    offset = torch.tensor([left, top, left, top], dtype=boxes.dtype)
    shifted = boxes - offset
    clipped = torch.stack((shifted[:, 0].clamp(0, width), shifted[:, 1].clamp(0, height),
                           shifted[:, 2].clamp(0, width), shifted[:, 3].clamp(0, height)), dim=1)
    if keep == "centre":
        centre = (shifted[:, :2] + shifted[:, 2:]) / 2
        kept = (centre[:, 0] > 0) & (centre[:, 0] < width) & (centre[:, 1] > 0) & (centre[:, 1] < height)
    else:
        kept = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    out = dict(target)
    out["boxes"] = clipped
    if target.get("masks") is not None:
        out["masks"] = target["masks"][:, top:top + height, left:left + width]
    if target.get("area") is not None:
        if target.get("masks") is not None:
            out["area"] = out["masks"].flatten(1).sum(1).to(target["area"].dtype)
        else:
            before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            after = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            out["area"] = target["area"] * torch.where(before > 0, after / before.clamp(min=1e-12), 0.0)
    if target.get("keypoints") is not None:
        keypoints = target["keypoints"].clone()
        keypoints[..., 0] -= left
        keypoints[..., 1] -= top
        inside = (keypoints[..., 0] >= 0) & (keypoints[..., 0] < width) & (keypoints[..., 1] >= 0) & \
                 (keypoints[..., 1] < height)
        keypoints[..., 2] *= inside
        out["keypoints"] = _zero_unlabelled(keypoints)
    return image[:, top:top + height, left:left + width], select_objects(out, kept)


# ------------------------------------------------------------------------------------- photometric
def _grey(image: Tensor) -> Tensor:
    """ITU-R 601 luma (PIL's "L" conversion), (1, H, W)."""
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]


def _blend(image: Tensor, other: Tensor, factor: float) -> Tensor:
    return (factor * image + (1.0 - factor) * other).clamp(0.0, 1.0)


def _rgb(image: Tensor, what: str) -> None:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{what} needs an RGB image (3, H, W), got {tuple(image.shape)}")


def adjust_brightness(image: Tensor, factor: float) -> Tensor:
    """image * factor, clipped to [0, 1] (PIL's ``ImageEnhance.Brightness``)."""
    return (image * factor).clamp(0.0, 1.0)


def adjust_contrast(image: Tensor, factor: float) -> Tensor:
    """Blend with the image's mean grey level (PIL's ``ImageEnhance.Contrast``)."""
    _rgb(image, "adjust_contrast")
    return _blend(image, _grey(image).mean(), factor)


def adjust_saturation(image: Tensor, factor: float) -> Tensor:
    """Blend with the grey version of the image (PIL's ``ImageEnhance.Color``)."""
    _rgb(image, "adjust_saturation")
    return _blend(image, _grey(image), factor)


def rgb_to_hsv(image: Tensor) -> Tensor:
    """RGB (3, H, W) in [0, 1] -> HSV (3, H, W), hue in [0, 1) (Python's ``colorsys`` convention)."""
    r, g, b = image.unbind(0)
    maxc, _ = image.max(0)
    minc, _ = image.min(0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6,
                      torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    saturation = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)),
                             torch.zeros_like(maxc))
    return torch.stack((hue % 1.0, saturation, maxc))


def hsv_to_rgb(image: Tensor) -> Tensor:
    """HSV (3, H, W), hue in [0, 1) -> RGB (3, H, W)."""
    hue, saturation, value = image.unbind(0)
    sector = torch.floor(hue * 6)
    fraction = hue * 6 - sector
    sector = sector.long() % 6
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    # (r, g, b) per sector 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack((torch.stack((value, q, p, p, t, value)),
                         torch.stack((t, value, value, q, p, p)),
                         torch.stack((p, p, t, value, value, q))))  # (3, 6, H, W)
    return table.gather(1, sector[None, None].expand(3, 1, *sector.shape))[:, 0]


def adjust_hue(image: Tensor, shift: float) -> Tensor:
    """Rotate every pixel's hue by ``shift`` turns, in [-0.5, 0.5] (torchvision's ``adjust_hue``)."""
    _rgb(image, "adjust_hue")
    if not -0.5 <= shift <= 0.5:
        raise ValueError(f"hue shift must be in [-0.5, 0.5] (a fraction of the colour circle), got {shift}")
    hsv = rgb_to_hsv(image)
    hsv[0] = (hsv[0] + shift) % 1.0
    return hsv_to_rgb(hsv).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------- transform objects
class Compose:
    """Apply ``transforms`` in order to ``(image, target)``."""

    def __init__(self, transforms: Sequence[Callable]):
        for t in transforms:
            if not callable(t):
                raise TypeError(f"every transform must be callable, got {type(t).__name__}")
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """:func:`hflip` with probability ``p``; ``keypoint_flip`` from ``info.keypoint_flip``."""

    def __init__(self, p: float = 0.5, keypoint_flip: Sequence[int] | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p, self.keypoint_flip = p, (tuple(keypoint_flip) if keypoint_flip else None)

    def __call__(self, image, target):
        if torch.rand(()) < self.p:
            return hflip(image, target, self.keypoint_flip)
        check_target(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Resize:
    """:func:`resize` to a fixed ``size`` (H, W), e.g. (448, 448) for YOLO, (300, 300) for SSD."""

    def __init__(self, size: tuple[int, int]):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (H, W) of positive integers, got {size}")
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image, target):
        return resize(image, target, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class ResizeMinMax:
    """:func:`resize_min_max`; ``min_size`` may be several sizes, one drawn per call (multi-scale
    training, as torchvision's ``GeneralizedRCNNTransform`` does in training)."""

    def __init__(self, min_size: int | Sequence[int] = 800, max_size: int = 1333):
        self.min_sizes = tuple(min_size) if isinstance(min_size, (list, tuple)) else (min_size,)
        if not self.min_sizes or min(self.min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"expected min_size and max_size > 0, got {min_size} and {max_size}")
        self.max_size = max_size

    def __call__(self, image, target):
        min_size = self.min_sizes[int(torch.randint(len(self.min_sizes), ()))]
        return resize_min_max(image, target, min_size, self.max_size)

    def __repr__(self) -> str:
        return f"ResizeMinMax(min_size={self.min_sizes}, max_size={self.max_size})"


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


class RandomCropKeepBoxes:
    """A random crop whose sides are ``[min_scale, 1]`` of the image's, placed so that it contains
    every box whole (it grows to the boxes' union when that is larger). Boxes are never lost."""

    def __init__(self, min_scale: float = 0.5):
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.min_scale = min_scale

    def __call__(self, image, target):
        n = check_target(image, target)
        full_h, full_w = image.shape[-2:]
        if n:
            boxes = target["boxes"]
            x1, y1 = int(math.floor(float(boxes[:, 0].min()))), int(math.floor(float(boxes[:, 1].min())))
            x2, y2 = int(math.ceil(float(boxes[:, 2].max()))), int(math.ceil(float(boxes[:, 3].max())))
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, full_w), min(y2, full_h)
        else:
            x1, y1, x2, y2 = full_w, full_h, 0, 0  # no constraint
        width = min(full_w, max(int(full_w * _uniform(self.min_scale, 1.0)), x2 - x1, 1))
        height = min(full_h, max(int(full_h * _uniform(self.min_scale, 1.0)), y2 - y1, 1))
        left_lo, left_hi = max(0, x2 - width), min(x1, full_w - width)
        top_lo, top_hi = max(0, y2 - height), min(y1, full_h - height)
        left = int(torch.randint(left_lo, left_hi + 1, ()))
        top = int(torch.randint(top_lo, top_hi + 1, ()))
        return crop(image, target, top, left, height, width, keep="overlap")

    def __repr__(self) -> str:
        return f"RandomCropKeepBoxes(min_scale={self.min_scale})"


class RandomIoUCrop:
    """SSD's crop (module docstring): draw a minimum IoU from ``options`` (1.0: keep the whole
    image), then try up to ``trials`` patches for one whose IoU with some kept box reaches it;
    boxes whose centre is in the patch are kept and clipped. An image without boxes, or a draw
    whose trials all fail ``rounds`` times over, is returned whole, so boxes are never all lost."""

    def __init__(self, min_scale: float = 0.3, max_scale: float = 1.0, min_aspect_ratio: float = 0.5,
                 max_aspect_ratio: float = 2.0, options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
                 trials: int = 40, rounds: int = 10):
        if not 0.0 < min_scale <= max_scale <= 1.0:
            raise ValueError(f"expected 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
        if not 0.0 < min_aspect_ratio <= max_aspect_ratio:
            raise ValueError(f"expected 0 < min_aspect_ratio <= max_aspect_ratio, got {min_aspect_ratio}, "
                             f"{max_aspect_ratio}")
        if not options or any(not 0.0 <= o <= 1.0 for o in options):
            raise ValueError(f"options must be IoU values in [0, 1], got {options}")
        self.min_scale, self.max_scale = min_scale, max_scale
        self.min_aspect_ratio, self.max_aspect_ratio = min_aspect_ratio, max_aspect_ratio
        self.options, self.trials, self.rounds = tuple(options), trials, rounds

    def __call__(self, image, target):
        n = check_target(image, target)
        if not n:
            return image, target
        full_h, full_w = image.shape[-2:]
        boxes = target["boxes"]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.rounds):
            min_iou = self.options[int(torch.randint(len(self.options), ()))]
            if min_iou >= 1.0:
                return image, target
            # all trials drawn at once; the first that passes wins, as in a loop over trials
            scales = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(self.trials, 2)
            widths, heights = (full_w * scales[:, 0]).long(), (full_h * scales[:, 1]).long()  # int() truncation
            shape_ok = (widths >= 1) & (heights >= 1)
            aspect = widths / heights.clamp(min=1)
            shape_ok &= (aspect >= self.min_aspect_ratio) & (aspect <= self.max_aspect_ratio)
            offsets = torch.rand(self.trials, 2)
            lefts, tops = ((full_w - widths) * offsets[:, 0]).long(), ((full_h - heights) * offsets[:, 1]).long()
            windows = torch.stack((lefts, tops, lefts + widths, tops + heights), dim=1).to(boxes.dtype)  # (T, 4)
            inside = (centres[None, :, 0] > windows[:, None, 0]) & (centres[None, :, 0] < windows[:, None, 2]) & \
                     (centres[None, :, 1] > windows[:, None, 1]) & (centres[None, :, 1] < windows[:, None, 3])  # (T, N)
            iou = box_iou(windows, boxes).nan_to_num(0.0)  # (T, N)
            reaches = (torch.where(inside, iou, torch.full_like(iou, -1.0)).max(1).values >= min_iou) & inside.any(1)
            passing = torch.nonzero(shape_ok & reaches).flatten()
            if len(passing):
                t = int(passing[0])
                return crop(image, target, int(tops[t]), int(lefts[t]), int(heights[t]), int(widths[t]), keep="centre")
        return image, target

    def __repr__(self) -> str:
        return (f"RandomIoUCrop(min_scale={self.min_scale}, max_scale={self.max_scale}, "
                f"aspect_ratio=({self.min_aspect_ratio}, {self.max_aspect_ratio}), options={self.options})")


class PhotometricJitter:
    """SSD's photometric distortions: each of brightness, contrast, saturation (factors drawn from
    the ranges) and hue (a shift in turns) applied with probability ``p``. Boxes are untouched."""

    def __init__(self, brightness: tuple[float, float] = (0.875, 1.125), contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue: tuple[float, float] = (-0.05, 0.05),
                 p: float = 0.5):
        for name, (low, high) in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {(low, high)}")
        if not -0.5 <= hue[0] <= hue[1] <= 0.5:
            raise ValueError(f"hue must be a range within [-0.5, 0.5], got {hue}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    def __call__(self, image, target):
        check_target(image, target)
        steps = ((adjust_brightness, self.brightness), (adjust_contrast, self.contrast),
                 (adjust_saturation, self.saturation), (adjust_hue, self.hue))
        for step, (low, high) in steps:
            if torch.rand(()) < self.p:
                image = step(image, _uniform(low, high))
        return image, target

    def __repr__(self) -> str:
        return (f"PhotometricJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue}, p={self.p})")


class Normalize:
    """(image - mean) / std per channel; the target passes through."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image, target):
        if image.shape[0] != len(self.mean):
            raise ValueError(f"Normalize has {len(self.mean)} channels, the image {image.shape[0]}")
        return normalize(image, self.mean, self.std), target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class DropCrowd:
    """:func:`drop_crowd` as a transform (first in a training pipeline)."""

    def __call__(self, image, target):
        check_target(image, target)
        return image, drop_crowd(target)

    def __repr__(self) -> str:
        return "DropCrowd()"


def default_transforms(info, *, train: bool, augment: str = "default", size: tuple[int, int] | None = None,
                       min_size: int | Sequence[int] | None = None, max_size: int = 1333,
                       normalize: bool = False) -> Compose:
    """A pipeline for ``info`` (a DetectionInfo).

    Training (``train=True``) drops crowd regions, then augments: "default" flips (torchvision's
    detection recipe), "ssd" adds the photometric jitter and the IoU crop before the flip, "none"
    nothing. Then, in both modes, resizes to ``size`` (H, W) or by ``min_size``/``max_size`` when
    given (leave both out for models that resize themselves, like the R-CNN family), and
    normalises by ``info.mean``/``info.std`` when ``normalize``.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if size is not None and min_size is not None:
        raise ValueError("give size (a fixed H, W) or min_size/max_size, not both")
    steps: list = []
    if train:
        steps.append(DropCrowd())
        if augment == "ssd":
            steps += [PhotometricJitter(), RandomIoUCrop()]
        if augment != "none":
            steps.append(RandomHorizontalFlip(0.5, info.keypoint_flip or None))
    if size is not None:
        steps.append(Resize(size))
    elif min_size is not None:
        steps.append(ResizeMinMax(min_size, max_size))
    if normalize:
        steps.append(Normalize(info.mean, info.std))
    return Compose(steps)


class DetectionTransformedDataset(Dataset):
    """``dataset`` with ``transform(image, target)`` applied to each item; ``info`` and ``records`` pass through."""

    def __init__(self, dataset: Dataset, transform: Callable | None):
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.dataset, self.transform = dataset, transform

    @property
    def info(self):
        return self.dataset.info

    @property
    def records(self):
        return self.dataset.records

    @property
    def targets(self):
        return self.dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"DetectionTransformedDataset({self.dataset!r}, transform={self.transform!r})"


# ------------------------------------------------------------------------------------- batching
def collate_detection(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """A ``DataLoader`` collate: ``[(image, target), ...]`` -> (list of images, list of targets),
    leaving images at their own sizes (torchvision's detectors take lists)."""
    if not batch:
        raise ValueError("collate_detection got an empty batch")
    for item in batch:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
            raise ValueError(f"expected (image, target dict) items, got {type(item).__name__}")
    images, targets = zip(*batch)
    return list(images), list(targets)


def pad_to_batch(images: Sequence[Tensor], size_divisible: int = 32,
                 fill: float = 0.0) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack images of different sizes into one (B, C, H, W) tensor, padded at the bottom and right
    with ``fill`` to the largest height and width rounded up to a multiple of ``size_divisible``
    (torchvision's ``batch_images``). Returns the batch and each image's (H, W) before padding."""
    if not images:
        raise ValueError("pad_to_batch needs at least one image")
    if size_divisible < 1:
        raise ValueError(f"size_divisible must be >= 1, got {size_divisible}")
    for image in images:
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != images[0].shape[0]:
            raise ValueError(f"expected images (C, H, W) with the same C, got shapes "
                             f"{[tuple(i.shape) if isinstance(i, Tensor) else type(i).__name__ for i in images]}")
    sizes = [(int(i.shape[1]), int(i.shape[2])) for i in images]
    height = int(math.ceil(max(h for h, _ in sizes) / size_divisible) * size_divisible)
    width = int(math.ceil(max(w for _, w in sizes) / size_divisible) * size_divisible)
    batch = images[0].new_full((len(images), images[0].shape[0], height, width), fill)
    for slot, image in zip(batch, images):
        slot[:, :image.shape[1], :image.shape[2]].copy_(image)
    return batch, sizes
