"""Activations and dropout: the properties the notes state, and agreement with torch's built-ins."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from canon.layers import Dropout, LeakyReLU, ReLU6, dropout, leaky_relu, relu, relu6, sigmoid, tanh

# a grid that includes the kinks (0, 6), large magnitudes and values where naive exp overflows
X = torch.cat([torch.linspace(-12, 12, 241, dtype=torch.float64),
               torch.tensor([-1000.0, -100.0, -6.0, 0.0, 6.0, 100.0, 1000.0], dtype=torch.float64)])


def values_and_grads(fn, x):
    x = x.clone().requires_grad_()
    y = fn(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), grad


@pytest.mark.parametrize("ours,ref", [(sigmoid, torch.sigmoid), (tanh, torch.tanh), (relu, torch.relu),
                                      (relu6, F.relu6), (leaky_relu, F.leaky_relu),
                                      (lambda t: leaky_relu(t, 0.2), lambda t: F.leaky_relu(t, 0.2))])
def test_matches_torch_values_and_gradients(ours, ref):
    y, g = values_and_grads(ours, X)
    y_ref, g_ref = values_and_grads(ref, X)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g, g_ref)  # including the subgradient chosen at kinks
    assert torch.isfinite(g).all()


def test_sigmoid_derivative_is_sigma_times_one_minus_sigma():
    s, g = values_and_grads(sigmoid, X)
    torch.testing.assert_close(g, s * (1 - s))
    assert g.max() == pytest.approx(0.25)  # at x = 0: why deep sigmoid stacks vanish gradients


def test_tanh_is_rescaled_sigmoid_and_odd():
    torch.testing.assert_close(tanh(X), 2 * sigmoid(2 * X) - 1)
    torch.testing.assert_close(tanh(-X), -tanh(X))
    direct = (torch.exp(X[:241]) - torch.exp(-X[:241])) / (torch.exp(X[:241]) + torch.exp(-X[:241]))
    torch.testing.assert_close(tanh(X[:241]), direct)  # the textbook definition where it does not overflow


def test_relu6_caps_at_six_and_leaky_relu_keeps_a_negative_slope():
    y = ReLU6()(X)
    assert y.max() == 6 and y.min() == 0
    torch.testing.assert_close(y, X.clamp(0, 6))
    torch.testing.assert_close(relu(X), torch.maximum(X, torch.zeros_like(X)))
    torch.testing.assert_close(LeakyReLU(0.1)(torch.tensor([-10.0, 3.0])), torch.tensor([-1.0, 3.0]))


def test_dropout_keeps_the_expectation_and_rescales_by_one_over_keep():
    p = 0.3
    x = torch.full((400_000,), 2.0)
    out = dropout(x, p, training=True, generator=torch.Generator().manual_seed(0))
    kept = out != 0
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 2.0 / 0.7))
    # fraction dropped ~ p (binomial s.e. 0.0007) and mean ~ x (s.e. 2·sqrt(p/(1-p))/sqrt(n) ~ 0.002)
    assert abs((~kept).float().mean().item() - p) < 0.004
    assert abs(out.mean().item() - 2.0) < 0.01
    # torch's dropout obeys the same rule: dropped are 0, kept are x / (1-p)
    ref = F.dropout(x, p, training=True)
    torch.testing.assert_close(ref[ref != 0], torch.full_like(ref[ref != 0], 2.0 / 0.7))


def test_dropout_gradient_is_the_scaled_mask_and_eval_is_identity():
    x = torch.randn(1000, requires_grad=True)
    out = dropout(x, 0.5, training=True, generator=torch.Generator().manual_seed(1))
    out.backward(torch.ones_like(out))
    mask = (out.detach() != 0).float()
    torch.testing.assert_close(x.grad, mask * 2.0)
    layer = Dropout(0.5).eval()
    assert layer(x) is x
    assert (dropout(x, 1.0, training=True) == 0).all()
    assert dropout(x, 0.0, training=True) is x
    torch.testing.assert_close(F.dropout(x, 0.5, training=False), layer(x))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        Dropout(1.5)
