"""Fast R-CNN multi-task loss, ATLOP adaptive-thresholding loss, KL and JS divergences against
float64 transcriptions and scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import special, stats
from scipy.spatial import distance

from canon.losses import functional as LF

REDUCE = {"none": lambda a: a, "mean": np.mean, "sum": np.sum}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- Fast R-CNN
def _fast_rcnn_reference(logits, boxes, labels, targets, lam, beta, layout):
    """Eq. 1 of Fast R-CNN, per RoI, float64."""
    z, b, u, v = logits.double().numpy(), boxes.double().numpy(), labels.numpy(), targets.double().numpy()
    out = []
    for i in range(len(u)):
        logp = z[i] - np.log(np.exp(z[i]).sum())
        l_cls = -logp[u[i]]
        if layout == "agnostic":
            t = b[i]
        elif layout == "with_background":
            t = b[i, 4 * u[i]: 4 * u[i] + 4]
        else:
            t = b[i, 4 * (u[i] - 1): 4 * u[i]] if u[i] > 0 else np.zeros(4)
        d = np.abs(t - v[i])
        l_loc = np.sum(np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta))
        out.append(l_cls + lam * (u[i] >= 1) * l_loc)
    return np.array(out)


@pytest.mark.parametrize("layout,width", [("agnostic", 4), ("with_background", 16), ("foreground_only", 12)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_fast_rcnn_loss_matches_paper_eq1(layout, width, reduction):
    n, k1 = 10, 4                                   # 3 object classes + background
    logits = torch.randn(n, k1, generator=_gen())
    boxes = torch.randn(n, width, generator=_gen(1))
    labels = torch.randint(0, k1, (n,), generator=_gen(2))
    labels[:3] = 0
    targets = torch.randn(n, 4, generator=_gen(3))
    ours = LF.fast_rcnn_loss(logits, boxes, labels, targets, lambda_=2.0, beta=0.5, reduction=reduction)
    expected = REDUCE[reduction](_fast_rcnn_reference(logits, boxes, labels, targets, 2.0, 0.5, layout))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)


def test_fast_rcnn_mean_is_torchvision_normalisation():
    """torchvision's fastrcnn_loss: CE mean + smooth_l1(sum over foreground) / N."""
    n = 12
    logits = torch.randn(n, 3, generator=_gen())
    boxes = torch.randn(n, 12, generator=_gen(1))
    labels = torch.randint(0, 3, (n,), generator=_gen(2))
    targets = torch.randn(n, 4, generator=_gen(3))
    pos = torch.where(labels > 0)[0]
    box_loss = F.smooth_l1_loss(boxes.reshape(n, -1, 4)[pos, labels[pos]], targets[pos], beta=1 / 9,
                                reduction="sum") / n
    expected = F.cross_entropy(logits, labels) + box_loss
    torch.testing.assert_close(LF.fast_rcnn_loss(logits, boxes, labels, targets, beta=1 / 9), expected)


def test_fast_rcnn_background_gets_no_localisation_gradient():
    logits = torch.randn(4, 3)
    boxes = torch.randn(4, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2])
    LF.fast_rcnn_loss(logits, boxes, labels, torch.randn(4, 4)).backward()
    assert torch.all(boxes.grad[[0, 2]] == 0) and torch.all(boxes.grad[[1, 3]] != 0)
    cls, loc = LF.fast_rcnn_loss_terms(logits, boxes, labels, torch.randn(4, 4))
    assert loc[0].item() == 0 and loc[2].item() == 0


def test_fast_rcnn_shape_errors():
    with pytest.raises(ValueError, match=r"box_regression must be \(2, 4\), \(2, 12\) or \(2, 8\)"):
        LF.fast_rcnn_loss(torch.randn(2, 3), torch.randn(2, 5), torch.tensor([0, 1]), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"regression_targets must be \(2, 4\)"):
        LF.fast_rcnn_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]), torch.randn(2, 3))


# --------------------------------------------------------------------------- ATLOP
def _atlop_reference(logits, labels):
    """Section 2.3 of ATLOP, transcribed set by set in float64."""
    z, y = logits.double().numpy(), labels.numpy()
    out = []
    for i in range(z.shape[0]):
        pos = [r for r in range(1, z.shape[1]) if y[i, r]]
        neg = [r for r in range(1, z.shape[1]) if not y[i, r]]
        denom1 = np.log(sum(np.exp(z[i, r]) for r in pos + [0]))
        l1 = -sum(z[i, r] - denom1 for r in pos)
        l2 = -(z[i, 0] - np.log(sum(np.exp(z[i, r]) for r in neg + [0])))
        out.append(l1 + l2)
    return np.array(out)


def _atlop_authors_code(logits, labels):
    """The authors' formulation (masks by subtracting 1e30 and multiplying), float64 torch."""
    logits, labels = logits.double(), labels.double().clone()
    th_label = torch.zeros_like(labels)
    th_label[:, 0] = 1.0
    labels[:, 0] = 0.0
    p_mask, n_mask = labels + th_label, 1 - labels
    loss1 = -(F.log_softmax(logits - (1 - p_mask) * 1e30, dim=-1) * labels).sum(1)
    loss2 = -(F.log_softmax(logits - (1 - n_mask) * 1e30, dim=-1) * th_label).sum(1)
    return loss1 + loss2


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_atlop_matches_paper_and_authors_formulation(reduction):
    logits = torch.randn(6, 5, generator=_gen()) * 2
    labels = (torch.rand(6, 5, generator=_gen(1)) > 0.6).float()
    labels[0] = 0                                  # a pair with no relation
    labels[1, 1:] = 1                              # every relation positive
    ours = LF.adaptive_thresholding_loss(logits, labels, reduction=reduction)
    np.testing.assert_allclose(ours.numpy(), REDUCE[reduction](_atlop_reference(logits, labels)), rtol=1e-5)
    np.testing.assert_allclose(ours.numpy(), REDUCE[reduction](_atlop_authors_code(logits, labels).numpy()),
                               rtol=1e-5)
    assert LF.atlop_loss is LF.adaptive_thresholding_loss


def test_atlop_property_positives_above_threshold_above_negatives():
    """The loss vanishes exactly when positives score far above TH and TH far above negatives,
    and the decision rule then recovers the labels (TH column for 'no relation')."""
    labels = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float)
    good = torch.tensor([[0.0, 30.0, -30.0, -30.0], [0.0, -30.0, -30.0, -30.0]])
    bad = torch.tensor([[0.0, -30.0, 30.0, 30.0], [0.0, 30.0, -30.0, -30.0]])
    assert LF.atlop_loss(good, labels).item() < 1e-10
    # several positives share one softmax in L1, so its floor is k log k (k positives tied)
    two = LF.atlop_loss(torch.tensor([[0.0, 30.0, 30.0, -30.0]]), torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    assert two.item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert LF.atlop_loss(bad, labels, reduction="none").min().item() > 25
    predicted = LF.adaptive_thresholding_predict(good)
    expected = labels.clone()
    expected[1, 0] = 1                              # no relation -> TH
    torch.testing.assert_close(predicted, expected)
    top1 = LF.adaptive_thresholding_predict(torch.tensor([[0.0, 3.0, -1.0, 2.0]]), top_k=1)
    torch.testing.assert_close(top1, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_atlop_gradients_finite_with_masks():
    logits = (torch.randn(4, 6, generator=_gen()) * 100).requires_grad_()
    labels = (torch.rand(4, 6, generator=_gen(1)) > 0.5).float()
    loss = LF.atlop_loss(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------- KL and JS
def _probs(shape, seed, zeros=False):
    p = torch.rand(*shape, generator=_gen(seed), dtype=torch.float64) + 0.05
    if zeros:
        p[0, 0] = 0.0
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_kl_matches_scipy_and_torch(reduction):
    p, q = _probs((5, 7), 0, zeros=True), _probs((5, 7), 1)
    expected = special.rel_entr(p.numpy(), q.numpy()).sum(-1)
    np.testing.assert_allclose(stats.entropy(p.numpy(), q.numpy(), axis=-1), expected, rtol=1e-12)
    ours = LF.kl_divergence(p, q, reduction=reduction)
    np.testing.assert_allclose(ours.numpy(), REDUCE[reduction](expected), rtol=1e-10)
    if reduction == "mean":
        torch.testing.assert_close(ours, F.kl_div(q.log(), p, reduction="batchmean"))


def test_kl_with_logits_matches_probability_form_and_inf_where_q_is_zero():
    a, b = torch.randn(4, 6, generator=_gen(), dtype=torch.float64), torch.randn(4, 6, generator=_gen(1),
                                                                               dtype=torch.float64)
    for temperature in (1.0, 4.0):
        expected = special.rel_entr(torch.softmax(a / temperature, -1).numpy(),
                                    torch.softmax(b / temperature, -1).numpy()).sum(-1)
        np.testing.assert_allclose(LF.kl_divergence_with_logits(a, b, temperature=temperature,
                                                                reduction="none").numpy(), expected, rtol=1e-10)
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])
    assert math.isinf(LF.kl_divergence(p, q).item())            # true value, as scipy's rel_entr
    assert LF.kl_divergence(q, p).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_js_matches_scipy_jensenshannon(reduction):
    p, q = _probs((5, 7), 0, zeros=True), _probs((5, 7), 1)
    expected = distance.jensenshannon(p.numpy(), q.numpy(), axis=-1) ** 2      # scipy returns the sqrt
    m = (p + q) / 2
    direct = 0.5 * special.rel_entr(p.numpy(), m.numpy()).sum(-1) + 0.5 * special.rel_entr(q.numpy(), m.numpy()).sum(-1)
    np.testing.assert_allclose(direct, expected, rtol=1e-10)
    np.testing.assert_allclose(LF.js_divergence(p, q, reduction=reduction).numpy(), REDUCE[reduction](expected),
                               rtol=1e-10)
    a, b = torch.randn(5, 7, generator=_gen(3), dtype=torch.float64), torch.randn(5, 7, generator=_gen(4),
                                                                                dtype=torch.float64)
    expected_logits = distance.jensenshannon(torch.softmax(a, -1).numpy(), torch.softmax(b, -1).numpy(),
                                             axis=-1) ** 2
    np.testing.assert_allclose(LF.js_divergence_with_logits(a, b, reduction=reduction).numpy(),
                               REDUCE[reduction](expected_logits), rtol=1e-9)


def test_js_properties_symmetric_bounded_by_log2():
    p, q = _probs((3, 4), 0), _probs((3, 4), 1)
    torch.testing.assert_close(LF.js_divergence(p, q, reduction="none"), LF.js_divergence(q, p, reduction="none"))
    disjoint = LF.js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert disjoint.item() == pytest.approx(math.log(2), rel=1e-6)
    assert LF.js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_dim_argument():
    p, q = _probs((3, 4), 0), _probs((3, 4), 1)
    torch.testing.assert_close(LF.kl_divergence(p.T, q.T, dim=0, reduction="none"),
                               LF.kl_divergence(p, q, reduction="none"))
