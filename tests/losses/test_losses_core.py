"""Regression, classification and segmentation losses against float64 transcriptions of their
formulas and against a second library (torch.nn.functional, sklearn.metrics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from canon.losses import functional as LF

REDUCE = {"none": lambda a: a, "mean": np.mean, "sum": np.sum}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- regression
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_mse_mae_match_formula_and_torch(reduction):
    x, y = torch.randn(5, 3, generator=_gen()), torch.randn(5, 3, generator=_gen(1))
    xn, yn = x.double().numpy(), y.double().numpy()
    np.testing.assert_allclose(LF.mse_loss(x, y, reduction).numpy(), REDUCE[reduction]((xn - yn) ** 2), rtol=1e-6)
    np.testing.assert_allclose(LF.mae_loss(x, y, reduction).numpy(), REDUCE[reduction](np.abs(xn - yn)), rtol=1e-6)
    torch.testing.assert_close(LF.mse_loss(x, y, reduction), F.mse_loss(x, y, reduction=reduction))
    torch.testing.assert_close(LF.mae_loss(x, y, reduction), F.l1_loss(x, y, reduction=reduction))


def test_regression_losses_match_sklearn():
    x, y = torch.randn(50, generator=_gen()).double(), torch.randn(50, generator=_gen(1)).double()
    assert LF.mse_loss(x, y).item() == pytest.approx(skm.mean_squared_error(y.numpy(), x.numpy()), rel=1e-12)
    assert LF.mae_loss(x, y).item() == pytest.approx(skm.mean_absolute_error(y.numpy(), x.numpy()), rel=1e-12)
    assert LF.rmse_loss(x, y).item() == pytest.approx(
        math.sqrt(skm.mean_squared_error(y.numpy(), x.numpy())), rel=1e-12)


def test_rmse_reductions_and_zero_error_gradient():
    x, y = torch.randn(4, 3, generator=_gen()), torch.randn(4, 3, generator=_gen(1))
    d = (x - y).double().numpy()
    np.testing.assert_allclose(LF.rmse_loss(x, y, "none").numpy(), np.abs(d), rtol=1e-6)
    assert LF.rmse_loss(x, y, "sum").item() == pytest.approx(np.sqrt((d ** 2).sum()), rel=1e-6)
    z = torch.zeros(3, requires_grad=True)
    loss = LF.rmse_loss(z, torch.zeros(3))
    loss.backward()
    assert loss.item() < 1e-18 and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.0, 2.5])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_smooth_l1_matches_paper_formula_and_torch(beta, reduction):
    x = torch.randn(6, 4, generator=_gen()) * 3
    y = torch.randn(6, 4, generator=_gen(1))
    d = np.abs((x - y).double().numpy())
    if beta == 0:
        expected = d
    else:
        expected = np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta)  # Fast R-CNN eq. 3 with beta
    np.testing.assert_allclose(LF.smooth_l1_loss(x, y, beta, reduction).numpy(), REDUCE[reduction](expected),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(LF.smooth_l1_loss(x, y, beta, reduction),
                               F.smooth_l1_loss(x, y, beta=beta, reduction=reduction))


# --------------------------------------------------------------------------- cross-entropy family
def _ce_reference(logits, target, weight=None, ignore_index=-100, eps=0.0, reduction="mean"):
    """Direct float64 transcription, one element at a time."""
    z = logits.double().numpy()
    t = target.numpy()
    n, c = z.shape
    w = np.ones(c) if weight is None else weight.double().numpy()
    losses, norm = [], 0.0
    for i in range(n):
        if t[i] == ignore_index:
            losses.append(0.0)
            continue
        logp = z[i] - np.log(np.sum(np.exp(z[i] - z[i].max()))) - z[i].max()
        q = np.full(c, eps / c)
        q[t[i]] += 1 - eps                              # smoothed one-hot
        # weighted: the true-class term carries w_y, the uniform part carries each w_c
        loss = -(1 - eps) * w[t[i]] * logp[t[i]] - eps / c * np.sum(w * logp)
        losses.append(loss)
        norm += w[t[i]]
    losses = np.array(losses)
    return {"none": losses, "sum": losses.sum(), "mean": losses.sum() / norm}[reduction]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_matches_formula_and_torch(reduction, weighted, eps):
    logits = torch.randn(12, 5, generator=_gen()) * 3
    target = torch.randint(0, 5, (12,), generator=_gen(1))
    target[[2, 7]] = -100
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5, 2.0]) if weighted else None
    ours = LF.cross_entropy(logits, target, weight=weight, label_smoothing=eps, reduction=reduction)
    np.testing.assert_allclose(ours.numpy(), _ce_reference(logits, target, weight, -100, eps, reduction), rtol=1e-5)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target, weight=weight, label_smoothing=eps,
                                                     reduction=reduction))


def test_cross_entropy_dense_ignore_255_matches_torch():
    logits = torch.randn(2, 4, 6, 7, generator=_gen())
    target = torch.randint(0, 4, (2, 6, 7), generator=_gen(1))
    target[0, :2] = 255
    weight = torch.tensor([1.0, 2.0, 0.5, 4.0])
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(
            LF.cross_entropy(logits, target, weight=weight, ignore_index=255, label_smoothing=0.05,
                             reduction=reduction),
            F.cross_entropy(logits, target, weight=weight, ignore_index=255, label_smoothing=0.05,
                            reduction=reduction))


def test_weighted_cross_entropy_matches_sklearn_log_loss():
    logits = torch.randn(40, 3, generator=_gen()).double()
    target = torch.randint(0, 3, (40,), generator=_gen(1))
    target[:3] = torch.tensor([0, 1, 2])
    weight = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)
    probs = torch.softmax(logits, 1).numpy()
    expected = skm.log_loss(target.numpy(), probs, sample_weight=weight[target].numpy(), labels=[0, 1, 2])
    assert LF.cross_entropy(logits, target, weight=weight).item() == pytest.approx(expected, rel=1e-10)
    assert LF.cross_entropy(logits, target).item() == pytest.approx(
        skm.log_loss(target.numpy(), probs, labels=[0, 1, 2]), rel=1e-10)


def test_label_smoothing_equals_soft_target_cross_entropy():
    logits = torch.randn(8, 6, generator=_gen())
    target = torch.randint(0, 6, (8,), generator=_gen(1))
    soft = LF.smooth_one_hot(target, 6, 0.2)
    np.testing.assert_allclose(soft.sum(1).numpy(), 1.0, rtol=1e-6)
    assert soft[0, target[0]].item() == pytest.approx(0.8 + 0.2 / 6)
    torch.testing.assert_close(LF.cross_entropy(logits, target, label_smoothing=0.2),
                               LF.soft_target_cross_entropy(logits, soft))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_bce_with_logits_matches_formula_torch_and_sklearn(reduction):
    x = torch.randn(7, 3, generator=_gen()) * 4
    y = (torch.rand(7, 3, generator=_gen(1)) > 0.5).float()
    pos_weight = torch.tensor([1.0, 3.0, 0.5])
    weight = torch.rand(7, 3, generator=_gen(2))
    p = 1 / (1 + np.exp(-x.double().numpy()))
    yn = y.double().numpy()
    expected = -weight.double().numpy() * (pos_weight.double().numpy() * yn * np.log(p) + (1 - yn) * np.log(1 - p))
    ours = LF.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight, reduction=reduction)
    np.testing.assert_allclose(ours.numpy(), REDUCE[reduction](expected), rtol=1e-5)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, y, weight=weight, pos_weight=pos_weight,
                                                                        reduction=reduction))
    plain = LF.binary_cross_entropy_with_logits(x.double(), y).item()
    assert plain == pytest.approx(skm.log_loss(yn.ravel(), p.ravel()), rel=1e-10)


# --------------------------------------------------------------------------- focal family
def _sigmoid_focal_reference(x, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss's formula, transcribed in float64 numpy."""
    x, y = x.double().numpy(), y.double().numpy()
    p = 1 / (1 + np.exp(-x))
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 2.0), (0.5, 0.5), (0.25, 0.0)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_matches_retinanet_formula(alpha, gamma, reduction):
    x = torch.randn(9, 4, generator=_gen()) * 3
    y = (torch.rand(9, 4, generator=_gen(1)) > 0.7).float()
    ours = LF.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction=reduction)
    np.testing.assert_allclose(ours.numpy(), REDUCE[reduction](_sigmoid_focal_reference(x, y, alpha, gamma)),
                               rtol=1e-5, atol=1e-8)


def test_sigmoid_focal_defaults_are_the_papers():
    import inspect
    sig = inspect.signature(LF.sigmoid_focal_loss)
    assert sig.parameters["alpha"].default == 0.25 and sig.parameters["gamma"].default == 2.0


def test_focal_with_gamma_zero_is_cross_entropy():
    x = torch.randn(10, 5, generator=_gen()) * 2
    t = torch.randint(0, 5, (10,), generator=_gen(1))
    w = torch.tensor([1.0, 0.3, 2.0, 1.0, 0.7])
    torch.testing.assert_close(LF.softmax_focal_loss(x, t, gamma=0.0), F.cross_entropy(x, t))
    torch.testing.assert_close(LF.softmax_focal_loss(x, t, gamma=0.0, weight=w), F.cross_entropy(x, t, weight=w))
    y = (torch.rand(10, 5, generator=_gen(2)) > 0.5).float()
    torch.testing.assert_close(LF.sigmoid_focal_loss(x, y, alpha=None, gamma=0.0),
                               F.binary_cross_entropy_with_logits(x, y))


def test_softmax_focal_matches_formula_with_ignore():
    x = torch.randn(3, 4, 5, 5, generator=_gen())
    t = torch.randint(0, 4, (3, 5, 5), generator=_gen(1))
    t[1, 0] = 255
    ours = LF.softmax_focal_loss(x, t, gamma=2.0, ignore_index=255, reduction="none")
    logp = torch.log_softmax(x.double(), 1).numpy()
    tn = t.numpy()
    expected = np.zeros(tn.shape)
    for n, i, j in np.ndindex(*tn.shape):
        if tn[n, i, j] != 255:
            lp = logp[n, tn[n, i, j], i, j]
            expected[n, i, j] = -(1 - np.exp(lp)) ** 2 * lp
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-8)
    mean = LF.softmax_focal_loss(x, t, gamma=2.0, ignore_index=255)
    assert mean.item() == pytest.approx(expected.sum() / (tn != 255).sum(), rel=1e-5)


def test_focal_down_weights_easy_examples():
    """The paper's claim (section 3.2): with gamma > 0 a well-classified example (p_t = 0.9) loses
    a factor (1 - p_t)^gamma = 100x relative to CE, while a hard one (p_t = 0.1) barely changes."""
    easy, hard = math.log(0.9 / 0.1), math.log(0.1 / 0.9)          # sigmoid -> p = 0.9 and 0.1
    x, y = torch.tensor([easy, hard]), torch.ones(2)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    fl = LF.sigmoid_focal_loss(x, y, alpha=None, gamma=2.0, reduction="none")
    ratio = (fl / ce).tolist()
    assert ratio[0] == pytest.approx(0.01, rel=1e-4) and ratio[1] == pytest.approx(0.81, rel=1e-4)


def test_class_balanced_weights_formula_and_limits():
    counts = [1000, 100, 10, 1]
    beta = 0.99
    raw = np.array([(1 - beta) / (1 - beta ** n) for n in counts])
    np.testing.assert_allclose(LF.class_balanced_weights(counts, beta, normalize=False).numpy(), raw, rtol=1e-6)
    np.testing.assert_allclose(LF.class_balanced_weights(counts, beta).numpy(), raw / raw.sum() * 4, rtol=1e-6)
    np.testing.assert_allclose(LF.class_balanced_weights(counts, 0.0).numpy(), np.ones(4), rtol=1e-6)
    inv = 1 / np.array(counts, dtype=float)
    np.testing.assert_allclose(LF.class_balanced_weights(counts, 1 - 1e-9).numpy(), inv / inv.sum() * 4, rtol=1e-4)
    with pytest.raises(ValueError, match="at least one sample"):
        LF.class_balanced_weights([3, 0], 0.9)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        LF.class_balanced_weights([3, 1], 1.0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_class_balanced_focal_matches_paper_formula(reduction):
    counts, beta, gamma = [500, 50, 5], 0.999, 2.0
    x = torch.randn(8, 3, generator=_gen()) * 2
    t = torch.randint(0, 3, (8,), generator=_gen(1))
    w = np.array([(1 - beta) / (1 - beta ** n) for n in counts])
    w = w / w.sum() * 3
    z = x.double().numpy()
    expected = []
    for i, y in enumerate(t.tolist()):
        total = 0.0
        for c in range(3):
            p = 1 / (1 + np.exp(-z[i, c]))
            p_t = p if c == y else 1 - p                 # one-vs-all sigmoid
            total += -(1 - p_t) ** gamma * np.log(p_t)
        expected.append(w[y] * total)
    ours = LF.class_balanced_focal_loss(x, t, counts, beta=beta, gamma=gamma, reduction=reduction)
    np.testing.assert_allclose(ours.numpy(), REDUCE[reduction](np.array(expected)), rtol=1e-5)


# --------------------------------------------------------------------------- Dice and IoU
def _soft_region_reference(probs, onehot, valid, smooth):
    """probs, onehot (N, C, M) float64 numpy, valid (N, M) bool: per-class dice and IoU."""
    dice, iou = [], []
    for c in range(probs.shape[1]):
        p, g = probs[:, c][valid], onehot[:, c][valid]
        inter = float(np.sum(p * g))
        dice.append((2 * inter + smooth) / (p.sum() + g.sum() + smooth))
        iou.append((inter + smooth) / (p.sum() + g.sum() - inter + smooth))
    return np.array(dice), np.array(iou)


@pytest.mark.parametrize("smooth", [1.0, 0.0])
def test_multiclass_dice_iou_match_formula_with_ignore(smooth):
    x = torch.randn(2, 3, 6, 5, generator=_gen()) * 2
    t = torch.randint(0, 3, (2, 6, 5), generator=_gen(1))
    t[0, :2] = 255
    probs = torch.softmax(x.double(), 1).reshape(2, 3, -1).numpy()
    tn = t.reshape(2, -1).numpy()
    valid = tn != 255
    onehot = np.stack([(tn == c) for c in range(3)], 1).astype(float)
    dice, iou = _soft_region_reference(probs, onehot, valid, smooth)
    np.testing.assert_allclose(LF.dice_loss(x, t, ignore_index=255, smooth=smooth, reduction="none").numpy(),
                               1 - dice, rtol=1e-5)
    assert LF.dice_loss(x, t, ignore_index=255, smooth=smooth).item() == pytest.approx(1 - dice.mean(), rel=1e-5)
    assert LF.dice_loss(x, t, ignore_index=255, smooth=smooth, reduction="sum").item() == pytest.approx(
        (1 - dice).sum(), rel=1e-5)
    np.testing.assert_allclose(LF.iou_loss(x, t, ignore_index=255, smooth=smooth, reduction="none").numpy(),
                               1 - iou, rtol=1e-5)
    assert LF.jaccard_loss is LF.iou_loss


def test_dice_per_image_matches_formula():
    x = torch.randn(3, 2, 4, 4, generator=_gen())
    t = torch.randint(0, 2, (3, 4, 4), generator=_gen(1))
    ours = LF.dice_loss(x, t, per_image=True, reduction="none")
    assert ours.shape == (3, 2)
    probs = torch.softmax(x.double(), 1).reshape(3, 2, -1).numpy()
    tn = t.reshape(3, -1).numpy()
    for n in range(3):
        onehot = np.stack([(tn[n:n + 1] == c) for c in range(2)], 1).astype(float)
        dice, _ = _soft_region_reference(probs[n:n + 1], onehot, np.ones((1, 16), bool), 1.0)
        np.testing.assert_allclose(ours[n].numpy(), 1 - dice, rtol=1e-5)


def test_hard_dice_and_iou_equal_sklearn_f1_and_jaccard():
    """Logits of ±100 make the softmax one-hot, so soft Dice (smooth=0) is the per-class F1 score
    and soft IoU the per-class Jaccard index of the argmax prediction."""
    pred = torch.randint(0, 4, (3, 8, 8), generator=_gen())
    target = torch.randint(0, 4, (3, 8, 8), generator=_gen(1))
    logits = (F.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 200 - 100)
    f1 = skm.f1_score(target.ravel(), pred.ravel(), average=None, labels=[0, 1, 2, 3])
    jac = skm.jaccard_score(target.ravel(), pred.ravel(), average=None, labels=[0, 1, 2, 3])
    np.testing.assert_allclose(LF.dice_score(logits, target, smooth=0.0).numpy(), f1, rtol=1e-5)
    np.testing.assert_allclose(LF.iou_score(logits, target, smooth=0.0).numpy(), jac, rtol=1e-5)


@pytest.mark.parametrize("shape", [(4, 1, 6, 6), (4, 6, 6)])
def test_binary_dice_iou_match_formula_and_sklearn(shape):
    x = torch.randn(*shape, generator=_gen()) * 2
    y = (torch.rand(*shape, generator=_gen(1)) > 0.6).float()
    p = torch.sigmoid(x.double()).numpy().ravel()
    g = y.double().numpy().ravel()
    inter = (p * g).sum()
    assert LF.dice_loss(x, y).item() == pytest.approx(1 - (2 * inter + 1) / (p.sum() + g.sum() + 1), rel=1e-5)
    assert LF.iou_loss(x, y).item() == pytest.approx(1 - (inter + 1) / (p.sum() + g.sum() - inter + 1), rel=1e-5)
    if len(shape) == 4:   # (N, 1, H, W) logits with (N, H, W) integer target is the same thing
        assert LF.dice_loss(x, y[:, 0].long()).item() == pytest.approx(LF.dice_loss(x, y).item(), rel=1e-6)
    hard = x.sign() * 100
    f1 = skm.f1_score(g, (hard.numpy().ravel() > 0))
    assert LF.dice_score(hard, y, smooth=0.0).item() == pytest.approx(f1, rel=1e-5)


def test_combined_segmentation_losses_are_the_sums():
    x = torch.randn(2, 3, 5, 5, generator=_gen())
    t = torch.randint(0, 3, (2, 5, 5), generator=_gen(1))
    t[0, 0] = 255
    w = torch.tensor([0.5, 1.0, 2.0])
    expected = 0.7 * F.cross_entropy(x, t, weight=w, ignore_index=255) + 0.3 * LF.dice_loss(x, t, ignore_index=255)
    torch.testing.assert_close(LF.dice_ce_loss(x, t, weight=w, ignore_index=255, ce_weight=0.7, dice_weight=0.3),
                               expected)
    xb = torch.randn(2, 1, 5, 5, generator=_gen(2))
    yb = (torch.rand(2, 1, 5, 5, generator=_gen(3)) > 0.5).float()
    torch.testing.assert_close(LF.bce_dice_loss(xb, yb),
                               F.binary_cross_entropy_with_logits(xb, yb) + LF.dice_loss(xb, yb))


def test_engine_calling_convention():
    """src/canon/tasks/segmentation.py calls dice_loss(logits, target, ignore_index=..., smooth=...)."""
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.randint(0, 4, (2, 8, 8))
    t[:, :3] = 255
    loss = LF.dice_loss(x, t, ignore_index=255, smooth=1.0)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(x.grad).all()
    assert torch.all(x.grad[:, :, :3] == 0)            # ignored pixels get no gradient


# --------------------------------------------------------------------------- errors
def test_errors_name_expected_and_actual():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"reduction must be one of .* got 'avg'"):
        LF.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"same shape.*\(4, 3\).*\(3,\)"):
        LF.mse_loss(x, torch.randn(3))
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\)"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="integer class indices"):
        LF.cross_entropy(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"weight must have one entry per class, shape \(3,\)"):
        LF.cross_entropy(x, torch.tensor([0, 1, 2, 0]), weight=torch.ones(4))
    with pytest.raises(ValueError, match="binary targets must be 0 or 1"):
        LF.dice_loss(torch.randn(2, 1, 3, 3), torch.full((2, 1, 3, 3), 2.0))


def test_any_integer_target_dtype():
    x = torch.randn(5, 3, generator=_gen())
    t = torch.tensor([0, 2, 1, 1, 0])
    for dtype in (torch.int32, torch.uint8):
        torch.testing.assert_close(LF.cross_entropy(x, t.to(dtype), ignore_index=-100), F.cross_entropy(x, t))
        torch.testing.assert_close(LF.softmax_focal_loss(x, t.to(dtype), gamma=0.0), F.cross_entropy(x, t))
        torch.testing.assert_close(LF.class_balanced_focal_loss(x, t.to(dtype), [3, 2, 1]),
                                   LF.class_balanced_focal_loss(x, t, [3, 2, 1]))
