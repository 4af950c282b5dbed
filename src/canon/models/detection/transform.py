"""The detector's input transform: normalise, resize to a min/max side, pad into one batch; and back.

Follows the papers (Faster R-CNN, arXiv:1506.01497, Sec. 3.3; FPN, arXiv:1612.03144, Sec. 5.1):
    * single-scale training and testing: each image is rescaled so that its shorter side is
      ``min_size`` (600 in Faster R-CNN, 800 with FPN) unless the longer side would exceed
      ``max_size`` (1000 / 1333), in which case the longer side becomes ``max_size``;
    * the images of a batch are padded at the bottom and right with zeros to a common size
      divisible by 32, the coarsest FPN stride, so every pyramid level lines up.

Deviates, and why:
    * torchvision's arithmetic exactly, so its detections are reproduced: the scale is
      min(min_size / shorter, max_size / longer) in float32, the image is resized by
      ``F.interpolate(scale_factor=scale, recompute_scale_factor=True, mode="bilinear")``
      (output size floor(side * scale)), masks by nearest neighbour with the same factor, and
      boxes and keypoints are multiplied by the ratio of the new size to the old per axis.
    * Normalisation happens here (the image is expected in [0, 1], RGB), not in a data loader,
      so a model takes plain images as torchvision's do.
    * ``min_size`` may be a tuple, from which training picks one side per image at random
      (multi-scale training, Keypoint R-CNN's (640, ..., 800)); evaluation uses the last.
    * ``fixed_size`` (width, height) resizes to one size regardless of aspect ratio (SSD).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canon.models.detection.roi_heads import paste_masks_in_image

__all__ = ["ImageList", "GeneralizedRCNNTransform", "resize_boxes", "resize_keypoints", "resize_image_and_masks",
           "batch_images", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageList:
    """A padded batch ``tensors`` [N, C, H_pad, W_pad] and each image's size before padding, (h, w)."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def resize_boxes(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """Scale xyxy boxes [N, 4] from an image of size (h, w) ``original_size`` to ``new_size``."""
    ratio_height = torch.tensor(float(new_size[0]), dtype=torch.float32) / torch.tensor(float(original_size[0]),
                                                                                          dtype=torch.float32)
    ratio_width = torch.tensor(float(new_size[1]), dtype=torch.float32) / torch.tensor(float(original_size[1]),
                                                                                         dtype=torch.float32)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_width, y1 * ratio_height, x2 * ratio_width, y2 * ratio_height), dim=1)


def resize_keypoints(keypoints: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """Scale keypoints [N, K, 3] (x, y, visibility) between image sizes (h, w); visibility is kept."""
    ratio_height = torch.tensor(float(new_size[0]), dtype=torch.float32) / torch.tensor(float(original_size[0]),
                                                                                          dtype=torch.float32)
    ratio_width = torch.tensor(float(new_size[1]), dtype=torch.float32) / torch.tensor(float(original_size[1]),
                                                                                         dtype=torch.float32)
    resized = keypoints.clone()
    resized[..., 0] *= ratio_width
    resized[..., 1] *= ratio_height
    return resized


def resize_image_and_masks(image: Tensor, min_size: float, max_size: float, masks: Tensor | None = None,
                           fixed_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor | None]:
    """Resize image [C, H, W] so the shorter side is ``min_size`` and the longer at most ``max_size``.

    masks [N, H, W] (uint8) follow by nearest neighbour. ``fixed_size`` (width, height) overrides.
    """
    if fixed_size is not None:
        size, scale_factor, recompute = [fixed_size[1], fixed_size[0]], None, None
    else:
        shape = torch.tensor(image.shape[-2:])
        shorter = torch.min(shape).to(torch.float32)
        longer = torch.max(shape).to(torch.float32)
        scale = torch.min(min_size / shorter, max_size / longer)  # float32, as torchvision
        size, scale_factor, recompute = None, scale.item(), True
    image = F.interpolate(image[None], size=size, scale_factor=scale_factor, mode="bilinear",
                          recompute_scale_factor=recompute, align_corners=False)[0]
    if masks is not None:
        masks = F.interpolate(masks[:, None].float(), size=size, scale_factor=scale_factor,
                              recompute_scale_factor=recompute)[:, 0].byte()
    return image, masks


def batch_images(images: Sequence[Tensor], size_divisible: int = 32) -> Tensor:
    """Zero-pad images [C, H_i, W_i] at the bottom/right into [N, C, H, W], H and W multiples of ``size_divisible``."""
    channels = max(image.shape[0] for image in images)
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    stride = float(size_divisible)
    height = int(math.ceil(float(height) / stride) * stride)
    width = int(math.ceil(float(width) / stride) * stride)
    batch = images[0].new_zeros((len(images), channels, height, width))
    for i, image in enumerate(images):
        batch[i, : image.shape[0], : image.shape[1], : image.shape[2]].copy_(image)
    return batch


class GeneralizedRCNNTransform(nn.Module):
    """Normalise, resize and batch images (and their targets); ``postprocess`` maps detections back.

    forward(images: list of [C, H, W] in [0, 1], targets: list of dicts or None)
        -> (ImageList, targets with "boxes", "masks", "keypoints" in the resized frame)
    postprocess(detections, image_sizes, original_sizes) -> detections in each original image's
        pixels, with "masks" [K, 1, H, W] pasted into the full image (eval mode only).
    """

    def __init__(self, min_size: int | Sequence[int], max_size: int, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, size_divisible: int = 32,
                 fixed_size: tuple[int, int] | None = None):
        super().__init__()
        min_sizes = (min_size,) if isinstance(min_size, (int, float)) else tuple(min_size)
        if not min_sizes or any(not s > 0 for s in min_sizes) or not max_size > 0:
            raise ValueError(f"min_size (an int or a tuple of ints) and max_size must be positive, got "
                             f"{min_size!r} and {max_size!r}")
        if len(image_mean) != len(image_std) or any(s <= 0 for s in image_std):
            raise ValueError(f"image_mean and image_std need one value per channel (std > 0), got {image_mean!r} "
                             f"and {image_std!r}")
        if not isinstance(size_divisible, int) or size_divisible < 1:
            raise ValueError(f"size_divisible must be a positive int, got {size_divisible!r}")
        self.min_size = min_sizes
        self.max_size = max_size
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.size_divisible = size_divisible
        self.fixed_size = tuple(fixed_size) if fixed_size is not None else None

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def _pick_min_size(self) -> float:
        if not self.training:
            return float(self.min_size[-1])
        index = int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())  # torchvision's torch_choice
        return float(self.min_size[index])

    def resize(self, image: Tensor, target: dict | None) -> tuple[Tensor, dict | None]:
        height, width = image.shape[-2:]
        masks = target.get("masks") if target is not None else None
        image, masks = resize_image_and_masks(image, self._pick_min_size(), float(self.max_size), masks,
                                              self.fixed_size)
        if target is None:
            return image, None
        target = dict(target)
        if masks is not None:
            target["masks"] = masks
        target["boxes"] = resize_boxes(target["boxes"], (height, width), image.shape[-2:])
        if "keypoints" in target:
            target["keypoints"] = resize_keypoints(target["keypoints"], (height, width), image.shape[-2:])
        return image, target

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict] | None = None
                ) -> tuple[ImageList, list[dict] | None]:
        resized, resized_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != len(self.image_mean):
                raise ValueError(f"images must be tensors [{len(self.image_mean)}, H, W], got shape "
                                 f"{tuple(image.shape)} at index {i}")
            image, target = self.resize(self.normalize(image), targets[i] if targets is not None else None)
            resized.append(image)
            if resized_targets is not None:
                resized_targets.append(target)
        image_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in resized]
        return ImageList(batch_images(resized, self.size_divisible), image_sizes), resized_targets

    def postprocess(self, detections: list[dict], image_sizes: Sequence[tuple[int, int]],
                    original_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        if self.training:
            return detections
        out = []
        for detection, size, original in zip(detections, image_sizes, original_sizes):
            detection = dict(detection)
            detection["boxes"] = resize_boxes(detection["boxes"], size, original)
            if "masks" in detection:
                detection["masks"] = paste_masks_in_image(detection["masks"], detection["boxes"], original)
            if "keypoints" in detection:
                detection["keypoints"] = resize_keypoints(detection["keypoints"], size, original)
            out.append(detection)
        return out

    def extra_repr(self) -> str:
        return (f"min_size={self.min_size}, max_size={self.max_size}, mean={self.image_mean}, std={self.image_std}, "
                f"size_divisible={self.size_divisible}, fixed_size={self.fixed_size}")


def example_detection_inputs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> tuple[list[Tensor]]:
    """``([image, ...],)``: ``input_shape[0]`` zero images of ``input_shape[1:]`` (default one 3x512x512),
    the detection call contract's list of images, for ``canon info`` and benchmarks."""
    batch, *image_shape = tuple(input_shape or (1, 3, 512, 512))
    device = next(model.parameters()).device
    return ([torch.zeros(*image_shape, device=device) for _ in range(batch)],)
