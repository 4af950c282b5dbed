"""Every loss at logits of ±100: finite value, finite gradient, and the right value (compared with
float64 evaluations or torch built-ins); empty inputs behave as torch does; any batch size."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from canon.losses import functional as LF


def _extreme(shape, seed=0):
    """Logits of exactly ±100, requiring grad."""
    sign = torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return (sign * 100.0).float().requires_grad_()


def _labels(shape, high, seed=1):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# (name, builder returning (loss_fn taking logits, logits), float64 reference or None)
def _cases():
    n, c = 6, 4
    t = _labels((n,), c)
    tm = _labels((2, 5, 5), c)
    tm[0, 0] = 255
    y = (torch.rand(n, c, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    yb = (torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    boxes = torch.randn(n, 4 * c) * 100
    reg_t = torch.randn(n, 4)
    multi_hot = (torch.rand(n, c, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    return {
        "cross_entropy": ((n, c), lambda z: LF.cross_entropy(z, t, weight=w, label_smoothing=0.1),
                          lambda z: F.cross_entropy(z, t, weight=w.double(), label_smoothing=0.1)),
        "bce": ((n, c), lambda z: LF.binary_cross_entropy_with_logits(z, y),
                lambda z: F.binary_cross_entropy_with_logits(z, y.double())),
        "soft_target_ce": ((n, c), lambda z: LF.soft_target_cross_entropy(z, LF.smooth_one_hot(t, c, 0.1)),
                           lambda z: F.cross_entropy(z, t, label_smoothing=0.1)),
        "sigmoid_focal": ((n, c), lambda z: LF.sigmoid_focal_loss(z, y), None),
        "sigmoid_focal_gamma_half": ((n, c), lambda z: LF.sigmoid_focal_loss(z, y, gamma=0.5), None),
        "softmax_focal": ((n, c), lambda z: LF.softmax_focal_loss(z, t, gamma=2.0), None),
        "softmax_focal_gamma0": ((n, c), lambda z: LF.softmax_focal_loss(z, t, gamma=0.0),
                                 lambda z: F.cross_entropy(z, t)),
        "cb_focal": ((n, c), lambda z: LF.class_balanced_focal_loss(z, t, [100, 10, 5, 1], beta=0.99), None),
        "dice_multiclass": ((2, c, 5, 5), lambda z: LF.dice_loss(z, tm, ignore_index=255), None),
        "iou_multiclass": ((2, c, 5, 5), lambda z: LF.iou_loss(z, tm, ignore_index=255), None),
        "dice_binary": ((2, 1, 5, 5), lambda z: LF.dice_loss(z, yb), None),
        "dice_ce": ((2, c, 5, 5), lambda z: LF.dice_ce_loss(z, tm, ignore_index=255), None),
        "bce_dice": ((2, 1, 5, 5), lambda z: LF.bce_dice_loss(z, yb), None),
        "fast_rcnn": ((n, c), lambda z: LF.fast_rcnn_loss(z, boxes, t, reg_t), None),
        "atlop": ((n, c), lambda z: LF.atlop_loss(z, multi_hot), None),
        "kl_logits": ((n, c), lambda z: LF.kl_divergence_with_logits(z, z.detach().flip(0)), None),
        "js_logits": ((n, c), lambda z: LF.js_divergence_with_logits(z, z.detach().flip(0)), None),
        "mse": ((n, c), lambda z: LF.mse_loss(z, -z.detach()), lambda z: F.mse_loss(z, -z.detach())),
        "rmse": ((n, c), lambda z: LF.rmse_loss(z, z.detach()), None),
        "mae": ((n, c), lambda z: LF.mae_loss(z, torch.zeros_like(z)), None),
        "smooth_l1": ((n, c), lambda z: LF.smooth_l1_loss(z, torch.zeros_like(z)), None),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_extreme_logits_give_finite_value_and_gradient(name):
    shape, loss_fn, reference = CASES[name]
    z = _extreme(shape)
    loss = loss_fn(z)
    loss.backward()
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    assert torch.isfinite(z.grad).all(), f"{name}: non-finite gradient"
    # float32 at ±100 agrees with the same loss evaluated in float64
    z64 = z.detach().double()
    value64 = loss_fn(z64) if reference is None else reference(z64)
    assert loss.item() == pytest.approx(value64.item(), rel=1e-4, abs=1e-5)


def test_extreme_logits_values_are_the_limits():
    """At ±100 a wrong confident prediction costs ~100 nats and a right one ~0."""
    z = torch.tensor([[100.0, -100.0]])
    assert LF.cross_entropy(z, torch.tensor([1])).item() == pytest.approx(200.0, rel=1e-6)
    assert LF.cross_entropy(z, torch.tensor([0])).item() == pytest.approx(0.0, abs=1e-30)
    assert LF.binary_cross_entropy_with_logits(torch.tensor([-100.0]), torch.tensor([1.0])).item() == \
        pytest.approx(100.0, rel=1e-6)
    assert LF.sigmoid_focal_loss(torch.tensor([-100.0]), torch.tensor([1.0])).item() == \
        pytest.approx(0.25 * 100.0, rel=1e-6)
    assert LF.js_divergence_with_logits(z, z.flip(1)).item() == pytest.approx(math.log(2), rel=1e-6)
    assert LF.kl_divergence_with_logits(z.flip(1), z).item() == pytest.approx(200.0, rel=1e-6)


# --------------------------------------------------------------------------- empty inputs
def test_empty_inputs_follow_torch():
    """mean of nothing is nan (0/0, as torch), sum is 0, none is empty."""
    z, t = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    for fn, ref in [(lambda r: LF.cross_entropy(z, t, reduction=r), lambda r: F.cross_entropy(z, t, reduction=r)),
                    (lambda r: LF.mse_loss(z, z, reduction=r), lambda r: F.mse_loss(z, z, reduction=r)),
                    (lambda r: LF.mae_loss(z, z, reduction=r), lambda r: F.l1_loss(z, z, reduction=r)),
                    (lambda r: LF.smooth_l1_loss(z, z, reduction=r), lambda r: F.smooth_l1_loss(z, z, reduction=r)),
                    (lambda r: LF.binary_cross_entropy_with_logits(z, z, reduction=r),
                     lambda r: F.binary_cross_entropy_with_logits(z, z, reduction=r))]:
        assert math.isnan(fn("mean").item()) and math.isnan(ref("mean").item())
        assert fn("sum").item() == 0 == ref("sum").item()
        assert fn("none").shape == ref("none").shape
    others = [lambda r: LF.sigmoid_focal_loss(z, z, reduction=r),
              lambda r: LF.softmax_focal_loss(z, t, reduction=r),
              lambda r: LF.class_balanced_focal_loss(z, t, [3, 2, 1], reduction=r),
              lambda r: LF.fast_rcnn_loss(z, torch.zeros(0, 12), t, torch.zeros(0, 4), reduction=r),
              lambda r: LF.atlop_loss(z, z, reduction=r),
              lambda r: LF.kl_divergence(z, z, reduction=r),
              lambda r: LF.js_divergence_with_logits(z, z, reduction=r),
              lambda r: LF.rmse_loss(z, z, reduction=r) ** 2]   # rmse: sqrt of nan / of 0
    for fn in others:
        assert math.isnan(fn("mean").item())
        assert fn("sum").item() == pytest.approx(0.0, abs=1e-18)
        assert fn("none").numel() == 0


def test_empty_and_all_ignored_dice_is_zero_loss():
    """Dice pools a set; an empty set has every class absent in prediction and target, which the
    smoothing term scores 1 (loss 0) — the documented exception to 'mean of nothing is nan'."""
    assert LF.dice_loss(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)).item() == 0.0
    all_ignored = torch.full((2, 4, 4), 255)
    assert LF.dice_loss(torch.randn(2, 3, 4, 4), all_ignored, ignore_index=255).item() == 0.0
    assert LF.iou_loss(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4)).item() == 0.0
    # cross-entropy with every pixel ignored is nan for the mean, as torch
    assert math.isnan(LF.cross_entropy(torch.randn(2, 3, 4, 4), all_ignored, ignore_index=255).item())


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_any_batch_size(batch):
    z = torch.randn(batch, 5)
    t = _labels((batch,), 5)
    torch.testing.assert_close(LF.cross_entropy(z, t), F.cross_entropy(z, t))
    assert LF.sigmoid_focal_loss(z, F.one_hot(t, 5).float(), reduction="none").shape == (batch, 5)
    assert LF.softmax_focal_loss(z, t, reduction="none").shape == (batch,)
    assert LF.atlop_loss(z, F.one_hot(t, 5).float(), reduction="none").shape == (batch,)
    assert LF.kl_divergence_with_logits(z, z.flip(1), reduction="none").shape == (batch,)
    assert LF.dice_loss(torch.randn(batch, 5, 3, 3), _labels((batch, 3, 3), 5), reduction="none").shape == (5,)
