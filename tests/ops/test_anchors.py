"""Anchor generator, IoU matcher and balanced sampler against per-element transcriptions of Faster R-CNN's rules."""
from __future__ import annotations

import math

import pytest
import torch

from canon.ops import AnchorGenerator, BalancedPositiveNegativeSampler, Matcher, box_iou


def test_faster_rcnn_nine_anchors_per_location():
    generator = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    assert generator.num_anchors_per_location() == [9]
    (anchors,) = generator((600, 800), [(38, 50)])  # stride 600 // 38 = 15, 800 // 50 = 16
    assert anchors.shape == (38 * 50 * 9, 4)
    want = []
    for y in range(38):
        for x in range(50):
            for ratio in (0.5, 1.0, 2.0):
                for size in (128, 256, 512):
                    w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)  # area size², h / w = ratio
                    cx, cy = x * 16, y * 15
                    want.append([cx + round(-w / 2), cy + round(-h / 2), cx + round(w / 2), cy + round(h / 2)])
    torch.testing.assert_close(anchors, torch.tensor(want, dtype=torch.float32))
    widths, heights = anchors[:9, 2] - anchors[:9, 0], anchors[:9, 3] - anchors[:9, 1]
    torch.testing.assert_close((widths * heights).sqrt(), torch.tensor([128, 256, 512.0] * 3), rtol=0.01, atol=0)


def test_multi_level_anchors():
    generator = AnchorGenerator(sizes=((32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    levels = generator((256, 256), [(64, 64), (32, 32), (16, 16)])
    assert [a.shape[0] for a in levels] == [64 * 64 * 3, 32 * 32 * 3, 16 * 16 * 3]
    centres = (levels[1][:, :2] + levels[1][:, 2:]) / 2
    assert set(centres[:, 0].unique().tolist()) == {8.0 * i for i in range(32)}
    with pytest.raises(ValueError, match="levels"):
        generator((256, 256), [(64, 64)])


def naive_match(iou, high, low, allow_low_quality):
    num_gt, num_anchors = iou.shape
    out = []
    for a in range(num_anchors):
        column = iou[:, a].tolist()
        best = max(column)
        g = column.index(best)
        label = g if best >= high else (-1 if best < low else -2)
        if allow_low_quality:
            for j in range(num_gt):
                row_best = max(iou[j].tolist())
                if row_best > 0 and iou[j, a].item() == row_best:
                    label = g
        out.append(label)
    return out


@pytest.mark.parametrize("allow_low_quality", [True, False])
def test_matcher_rules(allow_low_quality):
    g = torch.Generator().manual_seed(0)
    gt = torch.tensor([[10.0, 10.0, 60.0, 60.0], [50.0, 40.0, 120.0, 90.0], [400.0, 400.0, 405.0, 404.0]])
    corner = torch.rand(300, 2, generator=g) * 150
    anchors = torch.cat([corner, corner + torch.rand(300, 2, generator=g) * 80 + 10], dim=1)
    anchors = torch.cat([anchors, gt[:2] + torch.tensor([2.0, -1.0, 3.0, 1.0])])  # two clear positives
    iou = box_iou(gt, anchors)
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=allow_low_quality)
    got = matcher(iou)
    assert got.tolist() == naive_match(iou, 0.7, 0.3, allow_low_quality)
    assert (got == -1).any() and (got == -2).any() and (got >= 0).any()
    assert torch.equal(matcher.match_boxes(gt, anchors), got)
    if allow_low_quality:  # every ground truth that overlaps an anchor has one; box 2 overlaps none
        assert set(got[got >= 0].tolist()) == {0, 1}


def test_matcher_no_ground_truth():
    assert Matcher()(torch.zeros(0, 5)).tolist() == [-1] * 5


def test_sampler_balances_and_respects_labels():
    labels = torch.full((1000,), -1)
    labels[:40] = 1
    labels[100:900] = 0
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    pos, neg = sampler(labels, generator=torch.Generator().manual_seed(1))
    assert pos.sum() == 40 and neg.sum() == 216  # few positives: negatives fill the batch
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all() and not (pos & neg).any()
    labels[:600] = 1
    pos, neg = sampler(labels, generator=torch.Generator().manual_seed(2))
    assert pos.sum() == 128 and neg.sum() == 128
    # uniform: over many draws each positive is picked about 128/600 of the time
    hits = torch.zeros(1000)
    for seed in range(200):
        hits += sampler(labels, generator=torch.Generator().manual_seed(seed))[0].float()
    rate = hits[:600] / 200
    assert abs(rate.mean().item() - 128 / 600) < 1e-6 and rate.min() > 0.08 and rate.max() < 0.36
