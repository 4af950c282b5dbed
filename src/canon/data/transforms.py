"""Image transforms on tensors: resize, random crop with padding, horizontal flip, normalisation.

Every transform is a callable from a float tensor ``[C, H, W]`` to a tensor. The random ones
draw from torch's global generator (``torch.randint``/``torch.rand``), so ``torch.manual_seed``
makes a run repeat, and each ``DataLoader`` worker (which torch seeds differently) draws its own
stream. The maths is in small functions (``resize``, ``pad``, ``crop``, ``hflip``, ``normalize``);
the classes only hold their settings and draw the random numbers.

The augmentation recipe follows K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for
Image Recognition", 2015, arXiv:1512.03385, section 4.2 (CIFAR-10): "4 pixels are padded on
each side, and a 32x32 crop is randomly sampled from the padded image or its horizontal flip".

Follows the paper:
  - zero padding, then a uniformly placed crop of the original size, then a flip with p = 1/2.

Deviates, and why:
  - for digit sets (``digits``, ``mnist``, ``fashion-mnist``, ``mnist-folder``) the default
    recipe pads by 2 and never flips: a mirrored 2, 3, 5, 7 or 9 is not the same digit, and every
    Fashion-MNIST shoe faces left in both splits, so a flip would train on images the test
    never shows;
  - for other sets the padding scales with the input, ``max(H, W) // 8`` (4 at 32x32, the paper's
    value).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from canon.data.core import DatasetInfo

__all__ = ["resize", "pad", "crop", "hflip", "normalize", "Compose", "Resize", "RandomCrop",
           "RandomHorizontalFlip", "Normalize", "default_transforms", "AUGMENTS", "DIGIT_DATASETS"]

PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _check_image(img, who: str) -> None:
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor image [C, H, W], got {type(img).__name__}")
    if img.dim() != 3:
        raise ValueError(f"{who} expects an image [C, H, W], got shape {tuple(img.shape)}")
    if not img.is_floating_point():
        raise TypeError(f"{who} expects a float image in [0, 1], got dtype {img.dtype}; "
                        f"convert with img.float() / 255")


def _pair(size, name: str) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{name} must be a positive int or (H, W), got {size}")
    return size


# --- the maths ---------------------------------------------------------------------------------


def resize(img: torch.Tensor, size: int | Sequence[int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of ``img [C, H, W]``.

    ``size``: ``(H, W)``, or an int that the shorter side becomes (aspect ratio kept, the longer
    side rounded down), as torchvision reads it. Pixel centres sit at half-integers
    (``align_corners=False``); with ``antialias`` a downscale averages over the whole footprint
    (a triangle filter widened by the scale, as Pillow's ``BILINEAR``).
    """
    _check_image(img, "resize")
    h, w = img.shape[-2:]
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"resize size must be positive, got {size}")
        size = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    size = _pair(size, "resize size")
    if size == (h, w):
        return img
    return F.interpolate(img.unsqueeze(0), size=size, mode="bilinear", align_corners=False,
                         antialias=antialias).squeeze(0)  # (C, size[0], size[1])


def pad(img: torch.Tensor, padding: int | Sequence[int], fill: float = 0.0, mode: str = "constant") -> torch.Tensor:
    """Pad ``img [C, H, W]`` on its borders.

    ``padding``: an int for all four sides, ``(left/right, top/bottom)``, or
    ``(left, top, right, bottom)``. ``mode``: ``"constant"`` (value ``fill``), ``"reflect"``
    (mirror without repeating the edge pixel) or ``"edge"`` (repeat the edge pixel).
    """
    _check_image(img, "pad")
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {sorted(PAD_MODES)}, got {mode!r}")
    p = (padding,) * 4 if isinstance(padding, int) else tuple(int(v) for v in padding)
    if len(p) == 2:
        p = (p[0], p[1], p[0], p[1])
    if len(p) != 4 or min(p) < 0:
        raise ValueError(f"padding must be an int >= 0, (lr, tb) or (left, top, right, bottom), got {padding}")
    left, top, right, bottom = p
    if mode == "constant":
        return F.pad(img, (left, right, top, bottom), mode="constant", value=fill)
    return F.pad(img.unsqueeze(0), (left, right, top, bottom), mode=PAD_MODES[mode]).squeeze(0)


def crop(img: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """``img[:, top:top+height, left:left+width]``; the window must lie inside the image."""
    h, w = img.shape[-2:]
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"crop window (top={top}, left={left}, {height}x{width}) is outside the "
                         f"{h}x{w} image")
    return img[..., top:top + height, left:left + width]


def hflip(img: torch.Tensor) -> torch.Tensor:
    """Mirror left-right (the last axis)."""
    return img.flip(-1)


def normalize(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(img - mean[c]) / std[c]`` per channel of ``img [C, H, W]``."""
    _check_image(img, "normalize")
    if len(mean) != img.shape[0] or len(std) != img.shape[0]:
        raise ValueError(f"normalize has mean/std for {len(mean)} channel(s) but the image has "
                         f"{img.shape[0]} (shape {tuple(img.shape)})")
    mean_t = torch.as_tensor(mean, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    return (img - mean_t) / std_t


# --- the transform objects ---------------------------------------------------------------------


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        for t in transforms:
            if not callable(t):
                raise TypeError(f"Compose takes callables, got {type(t).__name__}")
        self.transforms = list(transforms)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class Resize:
    """Bilinear resize to ``size`` (``(H, W)``, or an int for the shorter side); see :func:`resize`."""

    def __init__(self, size: int | Sequence[int], antialias: bool = True):
        self.size = size if isinstance(size, int) else _pair(size, "Resize size")
        if isinstance(size, int) and size <= 0:
            raise ValueError(f"Resize size must be positive, got {size}")
        self.antialias = antialias

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return resize(img, self.size, self.antialias)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomCrop:
    """Pad by ``padding``, then cut a ``size`` window at a uniformly random position."""

    def __init__(self, size: int | Sequence[int], padding: int | Sequence[int] = 0, fill: float = 0.0,
                 padding_mode: str = "constant"):
        self.size = _pair(size, "RandomCrop size")
        if padding_mode not in PAD_MODES:
            raise ValueError(f"padding_mode must be one of {sorted(PAD_MODES)}, got {padding_mode!r}")
        self.padding, self.fill, self.padding_mode = padding, fill, padding_mode

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.padding:
            img = pad(img, self.padding, self.fill, self.padding_mode)
        _check_image(img, "RandomCrop")
        h, w = img.shape[-2:]
        ch, cw = self.size
        if ch > h or cw > w:
            raise ValueError(f"RandomCrop of {ch}x{cw} does not fit the {h}x{w} (padded) image; "
                             f"resize first or give more padding")
        top = int(torch.randint(0, h - ch + 1, (1,)))
        left = int(torch.randint(0, w - cw + 1, (1,)))
        return crop(img, top, left, ch, cw)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return hflip(img) if float(torch.rand(())) < self.p else img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Subtract ``mean`` and divide by ``std``, one value per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std):
            raise ValueError(f"Normalize needs as many std values as mean values, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize std must be positive, got {tuple(std)}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return normalize(img, self.mean, self.std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


# --- the recipes ---------------------------------------------------------------------------------

AUGMENTS = ("default", "none")
DIGIT_DATASETS = frozenset({"digits", "mnist", "fashion-mnist", "mnist-folder"})


def default_transforms(info: DatasetInfo, input_size: tuple[int, int], train: bool,
                       augment: str = "default") -> Compose:
    """The standard pipeline for ``info``'s dataset feeding a model of ``input_size`` ``(H, W)``.

    * resize to ``input_size`` when the dataset's images differ from it (always checked per image
      for ``imagefolder``, whose images may differ from each other);
    * training with ``augment="default"``: random crop with padding (2 pixels, no flip, for digit
      sets; ``max(H, W) // 8`` pixels and a horizontal flip otherwise), see the module docstring;
    * ``Normalize(info.mean, info.std)``.

    ``augment="none"`` (or ``train=False``) leaves out the random steps.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    input_size = _pair(input_size, "input_size")
    steps = []
    if info.name == "imagefolder" or tuple(info.image_size) != input_size:
        steps.append(Resize(input_size))
    if train and augment == "default":
        if info.name in DIGIT_DATASETS:
            steps.append(RandomCrop(input_size, padding=2))
        else:
            steps.append(RandomCrop(input_size, padding=max(1, max(input_size) // 8)))
            steps.append(RandomHorizontalFlip())
    steps.append(Normalize(info.mean, info.std))
    return Compose(steps)
