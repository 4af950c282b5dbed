"""roi_align / roi_pool against onnxruntime (RoiAlign opset 16, MaxRoiPool), slow per-bin loops written from
the definitions, and float64 gradcheck; multi-scale RoIAlign against the FPN level rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from canon.ops import MultiScaleRoIAlign, assign_fpn_levels, roi_align, roi_pool
from ops_references import ort_max_roi_pool, ort_roi_align


def random_rois(k, batch, seed, extent=(100.0, 80.0), max_wh=60.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor(extent, dtype=torch.float64) - 10
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * max_wh
    batch_idx = torch.randint(0, batch, (k, 1), generator=g).to(torch.float64)
    return torch.cat([batch_idx, corner, corner + wh], dim=1).to(dtype)


def bilinear(feature, y, x):
    """The original implementation's bilinear read at (y, x) of a [H, W] map, scalar by scalar."""
    height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    f = feature.tolist()
    return ((1 - ly) * (1 - lx) * f[y_low][x_low] + (1 - ly) * lx * f[y_low][x_high]
            + ly * (1 - lx) * f[y_high][x_low] + ly * lx * f[y_high][x_high])


def naive_roi_align(feature, rois, output_size, scale, sampling_ratio, aligned):
    p_h, p_w = output_size
    out = torch.zeros(rois.shape[0], feature.shape[1], p_h, p_w, dtype=torch.float64)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        w, h = x2 - x1, y2 - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(h / p_h)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(w / p_w)
        for c in range(feature.shape[1]):
            for i in range(p_h):
                for j in range(p_w):
                    total = 0.0
                    for iy in range(gh):
                        for ix in range(gw):
                            y = y1 + i * h / p_h + (iy + 0.5) * h / p_h / gh
                            x = x1 + j * w / p_w + (ix + 0.5) * w / p_w / gw
                            total += bilinear(feature[int(b), c], y, x)
                    out[r, c, i, j] = total / max(gh * gw, 1)
    return out


def naive_roi_pool(feature, rois, output_size, scale):
    p_h, p_w = output_size
    height, width = feature.shape[-2:]
    out = torch.zeros(rois.shape[0], feature.shape[1], p_h, p_w, dtype=feature.dtype)
    for r, (b, *box) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (int(math.floor(abs(v * scale) + 0.5)) * (1 if v >= 0 else -1) for v in box)
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        for i in range(p_h):
            for j in range(p_w):
                hs = min(max(math.floor(i * h / p_h) + y1, 0), height)
                he = min(max(math.ceil((i + 1) * h / p_h) + y1, 0), height)
                ws = min(max(math.floor(j * w / p_w) + x1, 0), width)
                we = min(max(math.ceil((j + 1) * w / p_w) + x1, 0), width)
                if he > hs and we > ws:
                    out[r, :, i, j] = feature[int(b), :, hs:he, ws:we].amax(dim=(-1, -2))
    return out


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_align_equals_onnxruntime(aligned, sampling_ratio, dtype):
    g = torch.Generator().manual_seed(1)
    feature = torch.randn(3, 4, 21, 26, generator=g, dtype=dtype)
    rois = random_rois(40, 3, seed=2, dtype=dtype)
    rois[0, 3:] = rois[0, 1:3]  # a zero-size box
    got = roi_align(feature, rois, (7, 5), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned)
    want = ort_roi_align(feature.numpy(), rois[:, 1:].numpy(), rois[:, 0].numpy().astype(np.int64), (7, 5), 0.25,
                         sampling_ratio, aligned)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_equals_naive_loop(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(3)
    feature = torch.randn(2, 2, 9, 11, generator=g, dtype=torch.float64)
    rois = random_rois(6, 2, seed=4, extent=(40.0, 30.0), max_wh=40.0, dtype=torch.float64)
    got = roi_align(feature, rois, (3, 2), spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=aligned)
    torch.testing.assert_close(got, naive_roi_align(feature, rois, (3, 2), 0.5, sampling_ratio, aligned))


def test_roi_align_list_of_boxes_and_empty():
    g = torch.Generator().manual_seed(5)
    feature = torch.randn(2, 3, 10, 10, generator=g)
    b0, b1 = torch.tensor([[1.0, 1.0, 6.0, 7.0]]), torch.tensor([[0.0, 2.0, 9.0, 5.0], [3.0, 3.0, 4.0, 8.0]])
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 7.0], [1, 0.0, 2.0, 9.0, 5.0], [1, 3.0, 3.0, 4.0, 8.0]])
    torch.testing.assert_close(roi_align(feature, [b0, b1], 3, sampling_ratio=2), roi_align(feature, rois, 3, sampling_ratio=2))
    assert roi_align(feature, torch.zeros(0, 5), (2, 4)).shape == (0, 3, 2, 4)
    assert roi_align(feature, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)
    assert roi_pool(feature, torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(feature, torch.tensor([[2, 0.0, 0.0, 1.0, 1.0]]), 2)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_align(feature, torch.zeros(3, 4), 2)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_gradcheck(aligned):
    g = torch.Generator().manual_seed(6)
    feature = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = random_rois(5, 2, seed=7, extent=(14.0, 12.0), max_wh=10.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (3, 2), 0.5, -1, aligned), (feature,))
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, 2, 0.5, 2, aligned), (feature,))


def test_roi_pool_equals_onnxruntime_and_naive_loop():
    g = torch.Generator().manual_seed(8)
    feature = torch.randn(2, 5, 19, 23, generator=g)
    rois = random_rois(60, 2, seed=9, extent=(120.0, 100.0), max_wh=70.0)
    rois[1, 3:] = rois[1, 1:3]  # zero-size box
    rois[2, 1:] = torch.tensor([130.0, 2.0, 150.0, 20.0])  # outside the map
    rois[3, 1:] = torch.tensor([2.5, 6.5, 10.5, 17.5])  # exact halves: round half away from zero
    for output_size, scale in (((7, 7), 0.2), ((3, 4), 0.25), ((2, 2), 0.5)):
        got = roi_pool(feature, rois, output_size, scale)
        np.testing.assert_array_equal(got.numpy(), ort_max_roi_pool(feature.numpy(), rois.numpy(), output_size, scale))
        torch.testing.assert_close(got, naive_roi_pool(feature, rois, output_size, scale), rtol=0, atol=0)


def test_roi_pool_gradcheck():
    # well-separated distinct values so the finite differences never change a bin's argmax
    values = torch.randperm(2 * 1 * 7 * 8, generator=torch.Generator().manual_seed(10)).to(torch.float64)
    feature = values.reshape(2, 1, 7, 8).requires_grad_(True)
    rois = random_rois(6, 2, seed=11, extent=(16.0, 14.0), max_wh=12.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, (3, 2), 0.5), (feature,), eps=1e-3)


def test_fpn_level_rule():
    sides = torch.tensor([10.0, 111.9, 112.0, 223.9, 224.0, 448.0, 896.0, 5000.0], dtype=torch.float64)
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    want = [min(max(math.floor(4 + math.log2(s / 224)), 2), 5) for s in sides.tolist()]
    assert assign_fpn_levels(boxes, 2, 5).tolist() == want
    assert want == [2, 2, 3, 3, 4, 5, 5, 5]


def test_fpn_level_rule_adds_eps_after_the_log_as_torchvision():
    """torchvision's LevelMapper: floor(k0 + log2(s / s0) + eps); a side just under 112 stays on level 2."""
    side = 112.0 * (1 - 1.5e-6)  # log2(side / 224) = -1 - 2.2e-6: + 1e-6 is still below -1
    boxes = torch.tensor([[0.0, 0.0, side, side], [5.0, 5.0, 5.0, 9.0]], dtype=torch.float64)
    want = [min(max(math.floor(4 + math.log2(side / 224) + 1e-6), 2), 5), 2]  # zero area -> k_min
    assert assign_fpn_levels(boxes, 2, 5).tolist() == want == [2, 2]


def test_multi_scale_roi_align_pools_each_box_from_its_level():
    g = torch.Generator().manual_seed(12)
    image_size = (256, 320)
    features = [torch.randn(2, 3, 256 // s, 320 // s, generator=g, dtype=torch.float64) for s in (4, 8, 16, 32)]
    boxes = [random_rois(9, 1, 13, extent=(250.0, 200.0), max_wh=240.0, dtype=torch.float64)[:, 1:].clamp(min=0),
             random_rois(4, 1, 14, extent=(250.0, 200.0), max_wh=60.0, dtype=torch.float64)[:, 1:].clamp(min=0)]
    pooler = MultiScaleRoIAlign(output_size=(5, 4), sampling_ratio=2)
    got = pooler(features, boxes, [image_size, image_size])
    rows = 0
    for image, image_boxes in enumerate(boxes):
        for box in image_boxes:
            side = math.sqrt((box[2] - box[0]).item() * (box[3] - box[1]).item())
            level = min(max(math.floor(4 + math.log2(side / 224 + 1e-6)), 2), 5)
            rois = torch.cat([torch.tensor([float(image)], dtype=torch.float64), box])[None]
            want = roi_align(features[level - 2], rois, (5, 4), 1 / 2**level, 2)
            torch.testing.assert_close(got[rows:rows + 1], want)
            rows += 1
    assert rows == got.shape[0] == 13


def test_roi_align_gradcheck_through_box_coordinates():
    """Box coordinates get gradients too (through the bilinear weights); compared with finite differences."""
    g = torch.Generator().manual_seed(15)
    feature = torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = random_rois(3, 1, seed=16, extent=(12.0, 10.0), max_wh=9.0, dtype=torch.float64)[:, 1:]
    boxes = (boxes + 0.123).requires_grad_(True)  # samples off integer positions, where the weights have kinks
    assert torch.autograd.gradcheck(lambda f, b: roi_align(f, [b], 2, 1.0, 2, True), (feature, boxes))


@pytest.mark.parametrize("upper", [300, 70000])
def test_backward_sort_helper_is_a_stable_argsort(upper):
    from canon.ops.roi import _argsort_small_ints

    values = torch.randint(0, upper, (5000,), generator=torch.Generator().manual_seed(17))
    assert torch.equal(_argsort_small_ints(values, upper), torch.sort(values, stable=True)[1])
