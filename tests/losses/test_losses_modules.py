"""The nn.Module wrappers: each equals torch's own module where one exists, or a float64 formula;
options are explicit keywords, class weights are buffers, bad options fail at construction."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon.losses as L


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_wrappers_equal_torch_modules():
    x, y = torch.randn(6, 4, generator=_gen()), torch.randn(6, 4, generator=_gen(1))
    t = torch.randint(0, 4, (6,), generator=_gen(2))
    t[0] = 255
    yb = (y > 0).float()
    w = [0.5, 1.0, 2.0, 1.5]
    pairs = [
        (L.MSELoss(reduction="sum"), nn.MSELoss(reduction="sum"), (x, y)),
        (L.MAELoss(), nn.L1Loss(), (x, y)),
        (L.SmoothL1Loss(beta=0.3, reduction="none"), nn.SmoothL1Loss(beta=0.3, reduction="none"), (x, y)),
        (L.CrossEntropyLoss(weight=w, ignore_index=255, label_smoothing=0.1),
         nn.CrossEntropyLoss(weight=torch.tensor(w), ignore_index=255, label_smoothing=0.1), (x, t)),
        (L.BCEWithLogitsLoss(pos_weight=w), nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w)), (x, yb)),
        (L.SoftmaxFocalLoss(gamma=0.0, weight=w, ignore_index=255),
         nn.CrossEntropyLoss(weight=torch.tensor(w), ignore_index=255), (x, t)),
        (L.SigmoidFocalLoss(alpha=None, gamma=0.0), nn.BCEWithLogitsLoss(), (x, yb)),
    ]
    for ours, theirs, args in pairs:
        torch.testing.assert_close(ours(*args), theirs(*args), msg=lambda m: f"{type(ours).__name__}: {m}")
    assert L.RMSELoss()(x, y).item() == pytest.approx(((x - y).double() ** 2).mean().sqrt().item(), rel=1e-6)
    assert L.FocalLoss is L.SigmoidFocalLoss and L.JaccardLoss is L.IoULoss
    assert L.ATLOPLoss is L.AdaptiveThresholdingLoss


def test_segmentation_wrappers():
    x = torch.randn(2, 3, 6, 6, generator=_gen())
    t = torch.randint(0, 3, (2, 6, 6), generator=_gen(1))
    t[1, :2] = 255
    w = torch.tensor([0.5, 1.0, 2.0])
    probs = torch.softmax(x.double(), 1)
    valid = (t != 255)
    dice = []
    for c in range(3):
        p, g = probs[:, c][valid], (t[valid] == c).double()
        dice.append((2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1))
    expected_dice = 1 - torch.stack(dice).mean()
    assert L.DiceLoss(ignore_index=255)(x, t).item() == pytest.approx(expected_dice.item(), rel=1e-5)
    expected = F.cross_entropy(x, t, weight=w, ignore_index=255).item() + expected_dice.item()
    assert L.DiceCELoss(weight=w, ignore_index=255)(x, t).item() == pytest.approx(expected, rel=1e-5)
    xb = torch.randn(2, 1, 6, 6, generator=_gen(2))
    yb = (torch.rand(2, 1, 6, 6, generator=_gen(3)) > 0.5).float()
    p, g = torch.sigmoid(xb.double()), yb.double()
    binary_dice = 1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1)
    expected = F.binary_cross_entropy_with_logits(xb.double(), g).item() + binary_dice.item()
    assert L.BCEDiceLoss()(xb, yb).item() == pytest.approx(expected, rel=1e-5)
    iou = 1 - ((p * g).sum() + 1) / (p.sum() + g.sum() - (p * g).sum() + 1)
    assert L.IoULoss()(xb, yb).item() == pytest.approx(iou.item(), rel=1e-5)


def test_task_wrappers_call_the_functions_with_their_options():
    logits = torch.randn(5, 4, generator=_gen())
    labels = torch.tensor([0, 1, 2, 3, 0])
    boxes, targets = torch.randn(5, 16, generator=_gen(1)), torch.randn(5, 4, generator=_gen(2))
    torch.testing.assert_close(L.FastRCNNLoss(lambda_=2.0, beta=1 / 9)(logits, boxes, labels, targets),
                               L.fast_rcnn_loss(logits, boxes, labels, targets, lambda_=2.0, beta=1 / 9))
    multi_hot = F.one_hot(labels, 4).float()
    atlop = L.AdaptiveThresholdingLoss(reduction="sum")
    torch.testing.assert_close(atlop(logits, multi_hot), L.atlop_loss(logits, multi_hot, reduction="sum"))
    assert atlop.predict(logits).shape == (5, 4)
    other = torch.randn(5, 4, generator=_gen(3))
    p, q = torch.softmax(logits, 1), torch.softmax(other, 1)
    torch.testing.assert_close(L.KLDivergence()(p, q), F.kl_div(q.log(), p, reduction="batchmean"))
    torch.testing.assert_close(L.KLDivergence(from_logits=True)(logits, other), L.KLDivergence()(p, q))
    torch.testing.assert_close(L.JSDivergence(from_logits=True)(logits, other), L.JSDivergence()(p, q))
    cb = L.ClassBalancedFocalLoss(samples_per_class=[50, 20, 5, 1], beta=0.99)
    torch.testing.assert_close(cb.class_weights, L.class_balanced_weights([50, 20, 5, 1], 0.99))
    torch.testing.assert_close(cb(logits, labels), L.class_balanced_focal_loss(logits, labels, [50, 20, 5, 1], 0.99))


def test_class_weights_are_buffers_and_options_are_keyword_only():
    loss = L.CrossEntropyLoss(weight=[1.0, 2.0])
    assert "weight" in dict(loss.named_buffers()) and "weight" in loss.state_dict()
    assert loss.double().weight.dtype == torch.float64
    assert L.CrossEntropyLoss().weight is None
    with pytest.raises(TypeError):
        L.CrossEntropyLoss([1.0, 2.0])          # keyword-only: no positional options
    with pytest.raises(ValueError, match=r"reduction must be one of .* got 'batchmean'"):
        L.DiceLoss(reduction="batchmean")
    with pytest.raises(ValueError, match="gamma must be >= 0, got -1"):
        L.SigmoidFocalLoss(gamma=-1)
    with pytest.raises(ValueError, match="at least one sample"):
        L.ClassBalancedFocalLoss(samples_per_class=[10, 0])


def test_gradients_match_finite_differences():
    """autograd of the focal, Dice, ATLOP and JS losses against central finite differences."""
    z = torch.randn(4, 3, generator=_gen(), dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 2, 1, 2])
    zm = torch.randn(1, 3, 2, 2, generator=_gen(1), dtype=torch.float64, requires_grad=True)
    tm = torch.randint(0, 3, (1, 2, 2), generator=_gen(2))
    multi_hot = torch.tensor([[0, 1, 1], [0, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.float64)
    checks = [(L.SoftmaxFocalLoss(gamma=2.0), (z, t)), (L.SigmoidFocalLoss(), (z, F.one_hot(t, 3).double())),
              (L.DiceLoss(), (zm, tm)), (L.IoULoss(), (zm, tm)), (L.ATLOPLoss(), (z, multi_hot)),
              (L.JSDivergence(from_logits=True), (z, z.detach().flip(0)))]
    for loss_fn, args in checks:
        assert torch.autograd.gradcheck(lambda a: loss_fn(a, *args[1:]), (args[0],)), type(loss_fn).__name__
