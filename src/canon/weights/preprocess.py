"""Preparing one image the way a checkpoint's publisher evaluated it (resize, centre crop, normalise)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from canon.data.transforms import crop, normalize
from canon.weights.released import Preprocessing

__all__ = ["preprocess", "resized_size", "center_crop_box"]

_MODES = ("bilinear", "bicubic")


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(H, W) after the shorter side becomes ``shorter`` and the longer keeps the aspect, rounded down
    (torchvision's rule for ``Resize(int)``)."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of a centred ``size`` × ``size`` crop, rounded as torchvision's ``center_crop``."""
    if size > height or size > width:
        raise ValueError(f"cannot crop {size}x{size} from a {height}x{width} image")
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def _to_tensor(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB image tensor (3, H, W), got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255
        if not image.is_floating_point():
            raise TypeError(f"expected a float image in [0, 1] or uint8, got {image.dtype}")
        return image.float()
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise TypeError(f"expected a PIL image or a (3, H, W) tensor, got {type(image).__name__}") from None
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a (3, H, W) tensor, got {type(image).__name__}")
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def preprocess(image, preprocessing: Preprocessing | dict) -> torch.Tensor:
    """A PIL image (or a (3, H, W) tensor, uint8 or float in [0, 1]) as the model's input, (3, crop, crop).

    Steps (torchvision's ``ImageClassification`` / ``SemanticSegmentation`` presets): the shorter
    side resized to ``resize`` (antialiased ``interpolation``, values clamped to [0, 1] as an
    8-bit image would be), a centred ``crop`` (none when ``crop`` is ``None``), then
    ``(x - mean) / std``. torchvision resizes PIL images with Pillow; this resizes tensors with
    ``F.interpolate(antialias=True)``, which differs from Pillow by about one grey level.
    """
    if isinstance(preprocessing, dict):
        from canon.weights.loading import preprocessing_of

        preprocessing = preprocessing_of(preprocessing)
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError("preprocessing must be a Preprocessing or its dict (model.canon_preprocessing); "
                        "these weights recorded none")
    if preprocessing.interpolation not in _MODES:
        raise ValueError(f"interpolation must be one of {_MODES}, got {preprocessing.interpolation!r}")
    x = _to_tensor(image)
    h, w = x.shape[-2:]
    size = resized_size(h, w, preprocessing.resize)
    if size != (h, w):
        x = F.interpolate(x.unsqueeze(0), size=size, mode=preprocessing.interpolation, align_corners=False,
                          antialias=True).squeeze(0).clamp_(0, 1)  # (3, H', W')
    if preprocessing.crop is not None:
        top, left = center_crop_box(x.shape[-2], x.shape[-1], preprocessing.crop)
        x = crop(x, top, left, preprocessing.crop, preprocessing.crop)  # (3, crop, crop)
    return normalize(x.contiguous(), preprocessing.mean, preprocessing.std)
