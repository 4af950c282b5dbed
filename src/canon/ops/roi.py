"""Region-of-interest feature extraction: RoI max pooling, RoIAlign, and multi-scale (FPN) RoIAlign.

Papers:
    * Fast R-CNN, Girshick, 2015, arXiv:1504.08083 — RoI max pooling over an M x N grid of bins.
    * Mask R-CNN, He et al., 2017, arXiv:1703.06870 — RoIAlign: no quantisation, bilinear
      sampling at regularly spaced points in each bin, averaged.
    * Feature Pyramid Networks for Object Detection, Lin et al., 2017, arXiv:1612.03144 —
      eq. (1): a box of size w x h goes to level k = floor(k0 + log2(sqrt(wh) / 224)).

Follows the paper:
    * ``roi_pool``: the max over each of output_size bins of the (quantised) box.
    * ``roi_align``: ``sampling_ratio`` x ``sampling_ratio`` bilinear samples per bin (adaptive
      ceil(roi_size / output_size) when <= 0), averaged; ``aligned=True`` shifts box
      coordinates by -0.5 pixel so that pixel centres line up (the half-pixel fix detectron2
      introduced after the paper).
    * ``assign_fpn_levels``: eq. (1) with k0 = 4 and canonical size 224, clamped to the
      levels present.

Deviates, and why:
    * ``roi_pool`` follows the Caffe/torchvision quantisation (box corners rounded half away
      from zero, "+1" in the box size, bin edges floor/ceil) because that is what Fast R-CNN's
      released code, torchvision and onnxruntime's ``MaxRoiPool`` compute.
    * ``roi_align`` with ``aligned=False`` keeps the original implementation's quirks (boxes
      at least 1 x 1, samples up to one pixel outside the map read the border) so it equals
      torchvision and onnxruntime's ``RoiAlign``; samples further outside count as zero.
    * ``roi_align`` is written as one weighted gather: every output bin is a sum over its
      bilinear samples' four corner pixels, computed with ``embedding_bag`` on a channels-last
      view of the feature map; its backward is the transposed gather (entries sorted by
      pixel, again one ``embedding_bag``), checked by float64 gradcheck. The result [K, C, P, Q] is
      returned in channels_last memory format (a permuted view of the gathered rows), which
      saves a copy; call ``.contiguous()`` if NCHW strides are needed.
    * ``roi_pool`` is the same gather with ``embedding_bag(mode='max')`` whose bags are the
      bins' pixels; an empty bin (box off the map) gives 0, as in the original.
    * ``assign_fpn_levels`` adds 1e-6 inside the log, as torchvision does, so a box of exactly
      224 px is not pushed down a level by rounding.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["roi_align", "roi_pool", "assign_fpn_levels", "MultiScaleRoIAlign"]


# --------------------------------------------------------------------------- inputs


def _pair(output_size, name: str = "output_size") -> tuple[int, int]:
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    output_size = tuple(int(v) for v in output_size)
    if len(output_size) != 2 or min(output_size) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {output_size}")
    return output_size


def _rois_from_boxes(boxes, feature: Tensor) -> Tensor:
    """[K, 5] (batch index, x1, y1, x2, y2) from a [K, 5] tensor or a list of [K_i, 4] tensors."""
    if not isinstance(feature, Tensor) or feature.ndim != 4:
        raise ValueError(f"input must be a [N, C, H, W] tensor, got "
                         f"{tuple(feature.shape) if isinstance(feature, Tensor) else type(feature).__name__}")
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes[{i}] must be a [K_i, 4] tensor, got "
                                 f"{tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__}")
        if len(boxes) > feature.shape[0]:
            raise ValueError(f"got boxes for {len(boxes)} images but input has batch size {feature.shape[0]}")
        parts = [torch.cat([torch.full_like(b[:, :1], i, dtype=feature.dtype), b.to(feature.dtype)], dim=1)
                 for i, b in enumerate(boxes)]
        return torch.cat(parts) if parts else feature.new_zeros(0, 5)
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be a [K, 5] tensor (batch index, x1, y1, x2, y2) or a list of [K_i, 4] "
                         f"tensors, got {tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
    rois = boxes.to(feature.dtype)
    if rois.shape[0]:
        batch = rois[:, 0]
        if (batch != batch.round()).any() or batch.min() < 0 or batch.max() >= feature.shape[0]:
            raise ValueError(f"box batch indices must be integers in [0, {feature.shape[0] - 1}], got values in "
                             f"[{batch.min().item()}, {batch.max().item()}]")
    return rois


# --------------------------------------------------------------------------- RoIAlign


def _channels_last_rows(input: Tensor) -> Tensor:
    """[N, C, H, W] -> contiguous [N*H*W, C], one row of channels per pixel (per-image 2-D transposes,
    which torch copies several times faster than a 4-D permute)."""
    n, channels = input.shape[:2]
    planes = [image.reshape(channels, -1).t() for image in input]
    return planes[0].contiguous() if n == 1 else torch.cat(planes)


def _bilinear_corners(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Along one axis: (low index, high index, weight of low, weight of high, valid) for sample coords."""
    valid = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().to(torch.int64)
    at_border = low >= size - 1
    low = torch.where(at_border, torch.full_like(low, size - 1), low)
    high = torch.where(at_border, low, low + 1)
    coord = torch.where(at_border, low.to(coord.dtype), coord)
    frac_high = coord - low.to(coord.dtype)  # l = y - y_low
    return low, high, 1 - frac_high, frac_high, valid


def _argsort_small_ints(values: Tensor, upper: int) -> Tensor:
    """Stable argsort of int64 values in [0, upper) (CPU: numpy's radix sort when they fit in 16 bits,
    several times faster than torch.argsort here)."""
    if values.device.type != "cpu":
        return torch.argsort(values, stable=True)
    array = values.numpy()
    array = array.astype(np.uint16) if upper <= 1 << 16 else array
    return torch.from_numpy(np.argsort(array, kind="stable"))


class _WeightedGather(torch.autograd.Function):
    """out[b] = sum_j weight[b, j] * pixels[index[b, j]]: pixels [M, C], index/weight [B, J] -> [B, C].

    The backward is the same kind of gather run the other way: the entries are sorted by
    pixel, and each pixel's gradient is the weighted sum of the output gradients of the bags
    that read it (one more ``embedding_bag``), far faster than autograd's scatter-add.
    """

    @staticmethod
    def forward(ctx, pixels: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(pixels, index, weight)
        return F.embedding_bag(index, pixels, mode="sum", per_sample_weights=weight)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pixels, index, weight = ctx.saved_tensors
        grad_pixels = grad_weight = None
        if ctx.needs_input_grad[0]:
            flat_index = index.reshape(-1)
            order = _argsort_small_ints(flat_index, pixels.shape[0])
            bag_of_entry = torch.div(order, index.shape[1], rounding_mode="floor")
            counts = torch.bincount(flat_index, minlength=pixels.shape[0])
            offsets = torch.cumsum(counts, 0) - counts
            grad_pixels = F.embedding_bag(bag_of_entry, grad_out.contiguous(), offsets, mode="sum",
                                          per_sample_weights=weight.reshape(-1)[order])
        if ctx.needs_input_grad[2]:  # d out[b] / d weight[b, j] = pixels[index[b, j]]
            grad_weight = (pixels[index] * grad_out[:, None, :]).sum(-1)
        return grad_pixels, None, grad_weight


def _roi_align_group(pixels: Tensor, rois: Tensor, start_x: Tensor, start_y: Tensor, bin_w: Tensor, bin_h: Tensor,
                     grid_w: Tensor, grid_h: Tensor, pooled: tuple[int, int], height: int, width: int) -> Tensor:
    """RoIAlign for rois whose sample grids fit in (max grid_h, max grid_w); -> (K, P, Q, C)."""
    pooled_h, pooled_w = pooled
    num_rois, dtype = rois.shape[0], pixels.dtype
    max_gh, max_gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)

    def axis(start: Tensor, bin_size: Tensor, grid: Tensor, pooled_n: int, max_g: int, size: int, stride: int):
        """Per (roi, bin, sample) along one axis: corner offsets (K, P, G, 2) and weights (K, P, G, 2)."""
        p = torch.arange(pooled_n, dtype=dtype)[None, :, None]
        i = torch.arange(max_g, dtype=dtype)[None, None, :]
        g = grid.to(dtype)[:, None, None]
        # y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
        coord = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g.clamp(min=1)
        low, high, w_low, w_high, valid = _bilinear_corners(coord, size)
        used = valid & (i < g)  # padding samples beyond this roi's grid weigh nothing
        scale = used.to(dtype) / g.clamp(min=1)  # 1 / count, split over the two axes
        return torch.stack((low, high), -1) * stride, torch.stack((w_low, w_high), -1) * scale[..., None]

    rows, weight_y = axis(start_y, bin_h, grid_h, pooled_h, max_gh, height, width)  # (K, P, GH, 2)
    cols, weight_x = axis(start_x, bin_w, grid_w, pooled_w, max_gw, width, 1)  # (K, Q, GW, 2)
    base = rois[:, 0].detach().to(torch.int64) * (height * width)
    # every (roi, ph, pw) bag: GH x GW samples x 2 x 2 corners -> (K, P, Q, GH, GW, 2, 2)
    index = (base[:, None, None, None, None, None, None] + rows[:, :, None, :, None, :, None]
             + cols[:, None, :, None, :, None, :])
    weight = weight_y[:, :, None, :, None, :, None] * weight_x[:, None, :, None, :, None, :]
    bag = max_gh * max_gw * 4
    out = _WeightedGather.apply(pixels, index.reshape(-1, bag), weight.reshape(-1, bag))  # (K*P*Q, C)
    return out.reshape(num_rois, pooled_h, pooled_w, -1)


def roi_align(input: Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """RoIAlign. input [N, C, H, W]; boxes [K, 5] or list of [K_i, 4] (xyxy, image coords) -> [K, C, *output_size]."""
    pooled_h, pooled_w = _pair(output_size)
    rois = _rois_from_boxes(boxes, input)
    num_rois = rois.shape[0]
    n, channels, height, width = input.shape
    if num_rois == 0 or channels == 0:
        return input.new_zeros(num_rois, channels, pooled_h, pooled_w)
    offset = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * spatial_scale - offset
    start_y = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - start_x
    roi_h = rois[:, 4] * spatial_scale - offset - start_y
    if not aligned:  # the original implementation forces boxes to be at least 1 x 1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
    if sampling_ratio > 0:
        grid_h = torch.full((num_rois,), int(sampling_ratio), dtype=torch.int64)
        grid_w = grid_h
    else:  # adaptive: ceil(roi_size / output_size) samples per bin side
        grid_h = torch.ceil(roi_h.detach() / pooled_h).clamp(min=0).to(torch.int64)
        grid_w = torch.ceil(roi_w.detach() / pooled_w).clamp(min=0).to(torch.int64)
    pixels = _channels_last_rows(input)  # (N*H*W, C)
    # Rois are padded to the largest sample grid of their group; grouping by the power of two
    # above each grid side keeps the padding under 4x when adaptive grids differ widely.
    if sampling_ratio > 0:  # one grid for all rois: no padding, one group
        part = _roi_align_group(pixels, rois, start_x, start_y, bin_w, bin_h, grid_w, grid_h, (pooled_h, pooled_w),
                                height, width)
        return part.permute(0, 3, 1, 2)  # (K, C, P, Q), in channels_last memory format
    group_key = _bit_length(grid_h) * 64 + _bit_length(grid_w)
    out = None
    for key in torch.unique(group_key).tolist():
        members = torch.where(group_key == key)[0]
        part = _roi_align_group(pixels, rois[members], start_x[members], start_y[members], bin_w[members],
                                bin_h[members], grid_w[members], grid_h[members], (pooled_h, pooled_w), height, width)
        if members.numel() == num_rois:
            out = part
        else:
            if out is None:
                out = input.new_zeros(num_rois, pooled_h, pooled_w, channels)
            out = out.index_copy(0, members, part)
    return out.permute(0, 3, 1, 2)  # (K, C, P, Q), in channels_last memory format


def _bit_length(values: Tensor) -> Tensor:
    """Number of bits of non-negative int64 values (0 -> 0, 1 -> 1, 2..3 -> 2, ...)."""
    return torch.where(values > 0, torch.floor(torch.log2(values.clamp(min=1).double())).to(torch.int64) + 1,
                       torch.zeros_like(values))


# --------------------------------------------------------------------------- RoI max pooling


def _round_half_away(x: Tensor) -> Tensor:
    """C's round(): halves go away from zero (torch.round goes to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _ragged_arange(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For counts [B] -> (owner [S], position [S]): the concatenation of arange(counts[b]), and each one's b."""
    owner = torch.repeat_interleave(torch.arange(counts.shape[0]), counts)
    starts = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(owner.shape[0]) - starts[owner]


def roi_pool(input: Tensor, boxes, output_size, spatial_scale: float = 1.0) -> Tensor:
    """Fast R-CNN RoI max pooling. input [N, C, H, W]; boxes [K, 5] or list of [K_i, 4] -> [K, C, *output_size].

    The box is quantised to the pixels round(x1 * s) .. round(x2 * s) inclusive (h = y2 - y1 + 1
    rows); bin (i, j) covers rows floor(i * h / P) .. ceil((i + 1) * h / P) - 1 of it, clipped
    to the map; an empty bin gives 0. Computed as one ``embedding_bag(mode='max')`` whose bags
    are the bins' pixels, so the backward routes each gradient to its bin's argmax.
    """
    pooled_h, pooled_w = _pair(output_size)
    rois = _rois_from_boxes(boxes, input)
    n, channels, height, width = input.shape
    num_rois = rois.shape[0]
    if num_rois == 0 or channels == 0:
        return input.new_zeros(num_rois, channels, pooled_h, pooled_w)
    dtype = input.dtype
    corners = _round_half_away(rois[:, 1:].detach() * spatial_scale).to(torch.int64)  # (K, 4)
    roi_w = (corners[:, 2] - corners[:, 0] + 1).clamp(min=1)
    roi_h = (corners[:, 3] - corners[:, 1] + 1).clamp(min=1)

    def edges(start: Tensor, extent: Tensor, pooled_n: int, size: int) -> tuple[Tensor, Tensor]:
        """Bin edges (K, pooled_n) along one axis, in the input's floating type as the original code."""
        bin_size = extent.to(dtype)[:, None] / pooled_n
        p = torch.arange(pooled_n, dtype=dtype)[None, :]
        lo = torch.floor(p * bin_size).to(torch.int64) + start[:, None]
        hi = torch.ceil((p + 1) * bin_size).to(torch.int64) + start[:, None]
        return lo.clamp(0, size), hi.clamp(0, size)

    row_lo, row_hi = edges(corners[:, 1], roi_h, pooled_h, height)  # (K, P)
    col_lo, col_hi = edges(corners[:, 0], roi_w, pooled_w, width)  # (K, Q)
    bin_rows = (row_hi - row_lo)[:, :, None].expand(-1, -1, pooled_w)  # (K, P, Q)
    bin_cols = (col_hi - col_lo)[:, None, :].expand(-1, pooled_h, -1)
    first_pixel = (rois[:, 0].detach().to(torch.int64)[:, None, None] * (height * width)
                   + row_lo[:, :, None] * width + col_lo[:, None, :])  # (K, P, Q)
    counts = (bin_rows * bin_cols).reshape(-1)
    owner, position = _ragged_arange(counts)
    cols_of_owner = bin_cols.reshape(-1)[owner]
    index = first_pixel.reshape(-1)[owner] + (position // cols_of_owner) * width + position % cols_of_owner
    offsets = torch.cumsum(counts, 0) - counts
    pixels = _channels_last_rows(input)  # (N*H*W, C)
    out = F.embedding_bag(index, pixels, offsets, mode="max")  # (K*P*Q, C); empty bags give 0
    return out.reshape(num_rois, pooled_h, pooled_w, channels).permute(0, 3, 1, 2)  # channels_last memory format


# --------------------------------------------------------------------------- FPN level assignment


def assign_fpn_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224.0,
                      canonical_level: int = 4, eps: float = 1e-6) -> Tensor:
    """FPN eq. (1): level k = floor(k0 + log2(sqrt(w h) / 224)) clamped to [k_min, k_max]; boxes [K, 4] -> [K] int64.

    ``eps`` is added after the logarithm, as torchvision's ``LevelMapper`` does (a zero-area box
    has log2(0) = -inf and goes to ``k_min``).
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [K, 4], got {tuple(boxes.shape)}")
    if k_min > k_max:
        raise ValueError(f"k_min must be <= k_max, got {k_min} > {k_max}")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.floor(canonical_level + torch.log2(torch.sqrt(area.clamp(min=0)) / canonical_scale) + eps)
    return levels.clamp(min=k_min, max=k_max).to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over an FPN pyramid: each box is pooled from the level eq. (1) assigns it.

    forward(features, boxes, image_sizes): ``features`` a list of [N, C, H_l, W_l] maps,
    finest first, each 2x coarser than the previous; ``boxes`` a list of [K_i, 4] (image
    coordinates); ``image_sizes`` a list of (height, width). Returns [sum K_i, C, *output_size]
    in the order of the boxes. Level scales are 2 ** round(log2(H_l / H_image)).
    """

    def __init__(self, output_size=7, sampling_ratio: int = 2, canonical_scale: float = 224.0,
                 canonical_level: int = 4, aligned: bool = False):
        super().__init__()
        self.output_size = _pair(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = float(canonical_scale)
        self.canonical_level = int(canonical_level)
        self.aligned = bool(aligned)

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        if not features:
            raise ValueError("features must be a non-empty list of [N, C, H, W] maps")
        max_h = max(int(s[0]) for s in image_sizes)
        max_w = max(int(s[1]) for s in image_sizes)
        scales = []
        for level, feature in enumerate(features):
            scale_h = 2.0 ** round(math.log2(feature.shape[-2] / max_h))
            scale_w = 2.0 ** round(math.log2(feature.shape[-1] / max_w))
            if scale_h != scale_w:
                raise ValueError(f"feature {level} of size {tuple(feature.shape[-2:])} has different height and "
                                 f"width strides for images up to {(max_h, max_w)}")
            scales.append(scale_h)
        k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
        if k_max - k_min + 1 != len(features):
            raise ValueError(f"features must be consecutive pyramid levels (strides x2), got scales {scales}")
        rois = _rois_from_boxes(list(boxes), features[0])
        levels = assign_fpn_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level)
        first = features[0]
        out = first.new_zeros(rois.shape[0], first.shape[1], *self.output_size)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            members = torch.where(levels == k_min + level)[0]
            if members.numel():
                out[members] = roi_align(feature, rois[members], self.output_size, spatial_scale=scale,
                                         sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        return out
