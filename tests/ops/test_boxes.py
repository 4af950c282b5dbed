"""Box utilities and the R-CNN box coder against direct formula transcriptions (per-pair Python loops)."""
from __future__ import annotations

import math

import pytest
import torch

from canon.ops import (BoxCoder, box_area, box_convert, box_iou, clip_boxes_to_image, complete_box_iou,
                       distance_box_iou, generalized_box_iou, remove_small_boxes)


def random_boxes(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


def pair_terms(a, b):
    """Everything about one pair from the definitions, in plain Python floats."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / union
    cw, ch = max(ax2, bx2) - min(ax1, bx1), max(ay2, by2) - min(ay1, by1)
    giou = iou - (cw * ch - union) / (cw * ch)
    rho2 = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2) ** 2 + ((ay1 + ay2) / 2 - (by1 + by2) / 2) ** 2
    diou = iou - rho2 / (cw**2 + ch**2)
    v = 4 / math.pi**2 * (math.atan((ax2 - ax1) / (ay2 - ay1)) - math.atan((bx2 - bx1) / (by2 - by1))) ** 2
    ciou = diou - v / (1 - iou + v) * v
    return iou, giou, diou, ciou


def test_pairwise_overlaps_match_definitions():
    a, b = random_boxes(7, 0), random_boxes(5, 1)
    got = [f(a, b) for f in (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou)]
    for i in range(7):
        for j in range(5):
            want = pair_terms(a[i].tolist(), b[j].tolist())
            for g, w in zip(got, want):
                assert g[i, j].item() == pytest.approx(w, rel=1e-6, abs=1e-9)
    assert (box_iou(a, b) > 0).any() and (box_iou(a, b) == 0).any()  # both overlapping and disjoint pairs


def test_iou_identical_disjoint_and_empty():
    box = torch.tensor([[0.0, 0.0, 2.0, 3.0]])
    far = torch.tensor([[10.0, 10.0, 11.0, 11.0]])
    assert box_iou(box, box).item() == 1.0
    assert box_iou(box, far).item() == 0.0
    assert generalized_box_iou(box, far).item() < 0
    assert box_iou(box, torch.zeros(0, 4)).shape == (1, 0)
    zero = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert torch.isnan(box_iou(zero, zero)).all()  # undefined IoU stays undefined


def test_box_convert_round_trips_and_formulas():
    boxes = random_boxes(10)
    xywh = box_convert(boxes, "xyxy", "xywh")
    cxcywh = box_convert(boxes, "xyxy", "cxcywh")
    torch.testing.assert_close(xywh[:, 2], boxes[:, 2] - boxes[:, 0])
    torch.testing.assert_close(cxcywh[:, 0], (boxes[:, 0] + boxes[:, 2]) / 2)
    torch.testing.assert_close(box_convert(xywh, "xywh", "cxcywh"), cxcywh)
    torch.testing.assert_close(box_convert(cxcywh, "cxcywh", "xyxy"), boxes)
    with pytest.raises(ValueError, match="in_fmt"):
        box_convert(boxes, "xyz", "xyxy")


def test_area_clip_and_small_boxes():
    boxes = torch.tensor([[-5.0, 2.0, 30.0, 8.0], [1.0, 1.0, 1.5, 9.0], [3.0, 3.0, 2.0, 4.0]])
    assert box_area(boxes).tolist() == [35 * 6, 0.5 * 8, 0.0]
    assert clip_boxes_to_image(boxes, (7, 20))[0].tolist() == [0.0, 2.0, 20.0, 7.0]
    assert remove_small_boxes(boxes, 1.0).tolist() == [0]
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        box_area(torch.zeros(3, 5))


def test_box_coder_matches_rcnn_formulas():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    proposals, targets = random_boxes(6, 2), random_boxes(6, 3)
    deltas = coder.encode(targets, proposals)
    for k in range(6):
        px1, py1, px2, py2 = proposals[k].tolist()
        gx1, gy1, gx2, gy2 = targets[k].tolist()
        pw, ph, gw, gh = px2 - px1, py2 - py1, gx2 - gx1, gy2 - gy1
        want = [10 * ((gx1 + gx2) / 2 - (px1 + px2) / 2) / pw, 10 * ((gy1 + gy2) / 2 - (py1 + py2) / 2) / ph,
                5 * math.log(gw / pw), 5 * math.log(gh / ph)]
        assert deltas[k].tolist() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_box_coder_encode_decode_is_identity(seed):
    """Property: decode(encode(G, P), P) == G, and encode(decode(t, P), P) == t (inside the clamp)."""
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    proposals, targets = random_boxes(50, seed), random_boxes(50, seed + 100)
    torch.testing.assert_close(coder.decode(coder.encode(targets, proposals), proposals), targets)
    deltas = torch.randn(50, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(coder.encode(coder.decode(deltas, proposals), proposals), deltas)


def test_box_coder_clamps_the_exponent():
    coder = BoxCoder()
    proposal = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    decoded = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), proposal)
    width = decoded[0, 2] - decoded[0, 0]
    assert torch.isfinite(decoded).all() and width.item() == pytest.approx(1000.0, rel=1e-5)
