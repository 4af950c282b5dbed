"""Paired transforms for segmentation: every geometric step moves the image and its mask together.

Images are float (C, H, W) in [0, 1]; masks are long (H, W) of class indices with an ignore index.
Images are resampled bilinearly, masks by nearest neighbour, so masks keep their labels exactly.

The training recipe (``default_transforms(..., train=True)``) combines what the segmentation
papers train with:

* random scale then random crop (DeepLab, arXiv:1606.00915, scales 0.5-2.0 for natural images;
  FCN/DeepLab crop fixed-size patches);
* horizontal and vertical flips, and rotation by a random angle (U-Net, arXiv:1505.04597, Sec. 3.1:
  "shift and rotation invariance");
* elastic deformation, the U-Net paper's key augmentation (Sec. 3.1): "random displacement vectors
  on a coarse 3 by 3 grid ... sampled from a Gaussian distribution with 10 pixels standard deviation.
  Per-pixel displacements are then computed using bicubic interpolation."

Deviates, and why:
* for microscopy (1-channel data such as ISBI) the scale range is narrow (0.8-1.25): the cells have
  one physical size; for natural images it is the DeepLab 0.5-2.0;
* rotation and elastic deformation fill outside the image by reflection (the image is a texture, and
  the U-Net paper's overlap-tile prediction also mirrors); they are on for 1-channel (microscopy)
  data only, and natural images get scale, crop and horizontal flip as DeepLab does.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["default_transforms", "PairedTransform", "PairedTransformedDataset", "random_scale", "random_crop",
           "random_flip", "random_rotation", "elastic_displacement", "warp", "normalize"]

AUGMENTS = ("default", "none")


def _image_mask(image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.dim() != 3 or mask.dim() != 2 or tuple(image.shape[-2:]) != tuple(mask.shape):
        raise ValueError(f"expected image (C, H, W) and mask (H, W) of the same size, "
                         f"got {tuple(image.shape)} and {tuple(mask.shape)}")


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel. image (C, H, W)."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype)[:, None, None]
    std_t = torch.as_tensor(std, dtype=image.dtype)[:, None, None]
    return (image - mean_t) / std_t


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to (H, W): image bilinear, mask nearest (pixel-centre aligned, as bilinear is)."""
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return image, mask


def random_scale(image, mask, scale: tuple[float, float], generator=None):
    """Resize both by one factor drawn uniformly from ``scale``."""
    s = scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item()
    h, w = image.shape[-2:]
    return resize_pair(image, mask, (max(1, round(h * s)), max(1, round(w * s))))


def random_crop(image, mask, size: tuple[int, int], ignore_index: int, generator=None):
    """A random (H, W) window; a smaller image is first padded (image with 0, mask with ignore)."""
    th, tw = size
    h, w = image.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        mask = F.pad(mask, (0, pw, 0, ph), value=ignore_index)
        h, w = image.shape[-2:]
    top = int(torch.randint(0, h - th + 1, (), generator=generator))
    left = int(torch.randint(0, w - tw + 1, (), generator=generator))
    return image[:, top:top + th, left:left + tw], mask[top:top + th, left:left + tw]


def random_flip(image, mask, vertical: bool, generator=None):
    """Horizontal flip with p=0.5; also a vertical flip with p=0.5 when ``vertical``."""
    if torch.rand((), generator=generator) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if vertical and torch.rand((), generator=generator) < 0.5:
        image, mask = image.flip(-2), mask.flip(-2)
    return image, mask


def rotation_grid(angle_deg: float, height: int, width: int) -> torch.Tensor:
    """Sampling grid (H, W, 2) in normalised [-1, 1] (x, y) that rotates an image about its centre."""
    theta = math.radians(angle_deg)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    # Rotate pixel coordinates (in pixels, so non-square images are not sheared).
    px, py = xs * (width - 1) / 2, ys * (height - 1) / 2
    sx = math.cos(theta) * px - math.sin(theta) * py  # x_src = R^T x_dst
    sy = math.sin(theta) * px + math.cos(theta) * py
    return torch.stack([sx / max((width - 1) / 2, 1e-6), sy / max((height - 1) / 2, 1e-6)], dim=-1)


def elastic_displacement(height: int, width: int, sigma: float = 10.0, grid: int = 3,
                         generator=None) -> torch.Tensor:
    """The U-Net paper's elastic field: N(0, sigma^2) pixel displacements on a coarse ``grid`` x
    ``grid`` lattice, bicubically interpolated to every pixel. Returns (H, W, 2) in normalised units."""
    coarse = torch.randn(1, 2, grid, grid, generator=generator) * sigma  # (1, 2, g, g) in pixels (dx, dy)
    dense = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0]  # (2, H, W)
    dx = dense[0] * 2 / max(width - 1, 1)
    dy = dense[1] * 2 / max(height - 1, 1)
    return torch.stack([dx, dy], dim=-1)


def warp(image: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample both at ``grid`` (H, W, 2): image bilinear, mask nearest, reflection outside."""
    image = F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    mask = F.grid_sample(mask[None, None].float(), grid[None], mode="nearest", padding_mode="reflection",
                         align_corners=True)[0, 0].round().long()
    return image, mask


def random_rotation(image, mask, degrees: float, generator=None):
    """Rotate both by an angle uniform in [-degrees, degrees]."""
    angle = (torch.rand((), generator=generator).item() * 2 - 1) * degrees
    return warp(image, mask, rotation_grid(angle, *image.shape[-2:]))


class PairedTransform:
    """The segmentation pipeline as one callable ``(image, mask) -> (image, mask)``.

    ``crop``: training patch (H, W) or None (whole image). ``scale``: range for random scaling or
    None. ``flip`` / ``vflip``: random flips. ``degrees``: random rotation range (0 = none).
    ``elastic_sigma``: the U-Net elastic deformation's std in pixels (0 = none). Always ends with
    per-channel normalisation by ``mean`` / ``std``.
    """

    def __init__(self, *, mean: Sequence[float], std: Sequence[float], ignore_index: int = 255,
                 crop: tuple[int, int] | None = None, scale: tuple[float, float] | None = None,
                 flip: bool = False, vflip: bool = False, degrees: float = 0.0, elastic_sigma: float = 0.0):
        self.mean, self.std, self.ignore_index = tuple(mean), tuple(std), ignore_index
        self.crop, self.scale = (tuple(crop) if crop else None), scale
        self.flip, self.vflip, self.degrees, self.elastic_sigma = flip, vflip, degrees, elastic_sigma

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _image_mask(image, mask)
        if self.scale is not None:
            image, mask = random_scale(image, mask, self.scale)
        if self.crop is not None:
            # Warps need context beyond the crop; cut a larger window, warp, then centre-crop.
            margin = 0
            if self.degrees or self.elastic_sigma:
                margin = int(math.ceil(3 * self.elastic_sigma)) + self.crop[0] // 4
            h, w = image.shape[-2:]  # the margin is what the image has; reflection covers the rest
            big = (min(self.crop[0] + 2 * margin, max(h, self.crop[0])),
                   min(self.crop[1] + 2 * margin, max(w, self.crop[1])))
            image, mask = random_crop(image, mask, big, self.ignore_index)
        if self.flip or self.vflip:
            image, mask = random_flip(image, mask, self.vflip)
        if self.degrees or self.elastic_sigma:
            h, w = image.shape[-2:]
            grid = rotation_grid((torch.rand(()).item() * 2 - 1) * self.degrees, h, w)
            if self.elastic_sigma:
                grid = grid + elastic_displacement(h, w, self.elastic_sigma)
            image, mask = warp(image, mask, grid)
        if self.crop is not None and tuple(image.shape[-2:]) != self.crop:
            h, w = image.shape[-2:]
            top, left = (h - self.crop[0]) // 2, (w - self.crop[1]) // 2
            image, mask = image[:, top:top + self.crop[0], left:left + self.crop[1]], \
                mask[top:top + self.crop[0], left:left + self.crop[1]]
        return normalize(image, self.mean, self.std), mask

    def __repr__(self) -> str:
        return (f"PairedTransform(crop={self.crop}, scale={self.scale}, flip={self.flip}, vflip={self.vflip}, "
                f"degrees={self.degrees}, elastic_sigma={self.elastic_sigma})")


def default_transforms(info, crop: tuple[int, int], train: bool, augment: str = "default") -> PairedTransform:
    """The pipeline for ``info`` (a SegmentationInfo): training crops of size ``crop`` with the
    recipe in the module docstring; evaluation (``train=False``) normalises whole images."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    common = {"mean": info.mean, "std": info.std, "ignore_index": getattr(info, "ignore_index", 255)}
    if not train:
        return PairedTransform(**common)
    if augment == "none":
        return PairedTransform(crop=crop, **common)
    if info.in_chans == 1:  # microscopy: U-Net recipe
        return PairedTransform(crop=crop, scale=(0.8, 1.25), flip=True, vflip=True, degrees=180.0,
                               elastic_sigma=10.0, **common)
    return PairedTransform(crop=crop, scale=(0.5, 2.0), flip=True, **common)


class PairedTransformedDataset(Dataset):
    """``dataset`` with a paired ``transform`` applied to each (image, mask); ``info`` passes through."""

    def __init__(self, dataset: Dataset, transform):
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.dataset, self.transform = dataset, transform

    @property
    def info(self):
        return self.dataset.info

    @property
    def targets(self) -> torch.Tensor:
        return self.dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, mask = self.dataset[index]
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask
