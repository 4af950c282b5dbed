"""The generative losses against their formulas written out in float64, torch.distributions, and
a direct autograd computation of the gradient penalty (plus a critic whose gradient is known)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

import canon.losses as losses
from canon.losses import generative as GL


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _logits(n, seed):
    return (torch.rand(n, generator=_gen(seed), dtype=torch.float64) - 0.5) * 10  # in [-5, 5]


# --------------------------------------------------------------------------- adversarial
def test_gan_discriminator_loss_is_the_papers_formula():
    real, fake = _logits(7, 0), _logits(5, 1)          # batches of different sizes
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    expected = -torch.log(d_real).mean() - torch.log(1 - d_fake).mean()
    torch.testing.assert_close(GL.gan_discriminator_loss(real, fake), expected)
    # and torch's binary cross-entropy on the probabilities (labels 1 for real, 0 for fake)
    bce = (F.binary_cross_entropy(d_real, torch.ones_like(d_real))
           + F.binary_cross_entropy(d_fake, torch.zeros_like(d_fake)))
    torch.testing.assert_close(GL.gan_discriminator_loss(real, fake), bce)


def test_gan_generator_losses_and_their_gradients():
    fake = _logits(6, 2).requires_grad_(True)
    d = torch.sigmoid(fake.detach())
    ns = GL.gan_generator_loss(fake, "non_saturating")
    mm = GL.gan_generator_loss(fake, "minimax")
    torch.testing.assert_close(ns, -torch.log(d).mean())
    torch.testing.assert_close(mm, torch.log(1 - d).mean())
    # d/dl [-log sigmoid(l)] = sigmoid(l) - 1 ; d/dl [log(1 - sigmoid(l))] = -sigmoid(l)
    (grad_ns,) = torch.autograd.grad(ns, fake)
    (grad_mm,) = torch.autograd.grad(mm, fake)
    torch.testing.assert_close(grad_ns, (d - 1) / 6)
    torch.testing.assert_close(grad_mm, -d / 6)


def test_minimax_gradient_vanishes_where_the_discriminator_wins():
    """Goodfellow et al. Sec. 3: when D confidently rejects the samples, log(1 - D(G(z))) saturates."""
    confident = torch.full((4,), -10.0, dtype=torch.float64, requires_grad=True)
    (grad_mm,) = torch.autograd.grad(GL.gan_generator_loss(confident, "minimax"), confident)
    (grad_ns,) = torch.autograd.grad(GL.gan_generator_loss(confident, "non_saturating"), confident)
    assert grad_mm.abs().max() < 2e-5                  # sigmoid(-10) / N ~ 1.1e-5
    assert grad_ns.abs().min() > 0.99 / 4              # (1 - sigmoid(-10)) / N ~ 0.25


def test_adversarial_losses_stay_finite_for_extreme_logits():
    extreme = torch.tensor([-100.0, 100.0], requires_grad=True)
    for loss in (GL.gan_discriminator_loss(extreme, extreme), GL.gan_generator_loss(extreme),
                 GL.gan_generator_loss(extreme, "minimax")):
        (grad,) = torch.autograd.grad(loss, extreme)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_wasserstein_and_least_squares_losses_are_their_formulas():
    real, fake = _logits(8, 3), _logits(3, 4)
    torch.testing.assert_close(GL.wasserstein_critic_loss(real, fake), fake.mean() - real.mean())
    torch.testing.assert_close(GL.wasserstein_generator_loss(fake), -fake.mean())
    real_map, fake_map = real.view(2, 1, 2, 2), _logits(8, 5).view(2, 1, 2, 2)
    expected_d = 0.5 * (sum((r - 1) ** 2 for r in real_map.flatten()) / 8 + sum(f ** 2 for f in fake_map.flatten()) / 8)
    torch.testing.assert_close(GL.least_squares_discriminator_loss(real_map, fake_map), expected_d)
    torch.testing.assert_close(GL.least_squares_generator_loss(fake_map),
                               F.mse_loss(fake_map, torch.ones_like(fake_map)))


# --------------------------------------------------------------------------- gradient penalty
class _SmallCritic(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5 * 5, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def test_gradient_penalty_equals_a_direct_autograd_computation():
    critic = _SmallCritic().double()
    real = torch.randn(6, 2, 5, 5, generator=_gen(1), dtype=torch.float64)
    fake = torch.randn(6, 2, 5, 5, generator=_gen(2), dtype=torch.float64)
    eps = torch.rand(6, generator=_gen(3), dtype=torch.float64)
    # written out: x_hat = eps x + (1 - eps) x~, one eps per example; penalty = mean (||grad||_2 - 1)^2
    penalties = []
    for i in range(6):
        x_hat = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
        penalties.append((torch.sqrt((g ** 2).sum()) - 1) ** 2)
    expected = torch.stack(penalties).mean()
    torch.testing.assert_close(GL.gradient_penalty(critic, real, fake, epsilon=eps), expected)
    # drawing eps from a generator is the same as passing the same draw
    torch.testing.assert_close(GL.gradient_penalty(critic, real, fake, generator=_gen(3)), expected)


def test_gradient_penalty_of_a_linear_critic_and_its_gradient():
    """f(x) = w . x has grad_x f = w everywhere: penalty (||w|| - 1)^2, d/dw = 2 (||w|| - 1) w / ||w||."""
    w = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    critic = lambda x: x.flatten(1) @ w  # noqa: E731
    real = torch.randn(5, 4, generator=_gen(4), dtype=torch.float64)
    fake = torch.randn(5, 4, generator=_gen(5), dtype=torch.float64)
    penalty = GL.gradient_penalty(critic, real, fake, generator=_gen(6))
    norm = w.detach().norm()
    torch.testing.assert_close(penalty, (norm - 1) ** 2)
    (grad_w,) = torch.autograd.grad(penalty, w)  # needs create_graph=True inside
    torch.testing.assert_close(grad_w, 2 * (norm - 1) * w.detach() / norm)


def test_gradient_penalty_interpolates_between_real_and_fake():
    seen = []

    def critic(x):
        seen.append(x.detach().clone())
        return x.sum(dim=1)

    real, fake = torch.zeros(200, 3), torch.ones(200, 3)
    GL.gradient_penalty(critic, real, fake, generator=_gen(7))
    x_hat = seen[0]
    # x_hat = eps * 0 + (1 - eps) * 1 = 1 - eps, the same in every coordinate, eps ~ U[0, 1]
    assert torch.allclose(x_hat, x_hat[:, :1].expand_as(x_hat))
    assert 0 <= x_hat.min() and x_hat.max() <= 1 and x_hat[:, 0].std() > 0.25


# --------------------------------------------------------------------------- likelihood terms
def test_bernoulli_and_categorical_nll_match_torch_distributions():
    logits = torch.randn(3, 2, 4, 4, generator=_gen(8), dtype=torch.float64)
    target = (torch.rand(3, 2, 4, 4, generator=_gen(9)) > 0.5).double()
    expected = -Bernoulli(logits=logits).log_prob(target).sum((1, 2, 3))
    torch.testing.assert_close(GL.bernoulli_nll(logits, target, reduction="none"), expected)
    torch.testing.assert_close(GL.bernoulli_nll(logits, target), expected.mean())
    torch.testing.assert_close(GL.bernoulli_nll(logits, target, reduction="sum"), expected.sum())

    levels = torch.randn(2, 7, 3, 2, 2, generator=_gen(10), dtype=torch.float64)       # (N, L, C, H, W)
    target = torch.randint(0, 7, (2, 3, 2, 2), generator=_gen(11))
    expected = -Categorical(logits=levels.movedim(1, -1)).log_prob(target).sum((1, 2, 3))
    torch.testing.assert_close(GL.categorical_nll(levels, target, reduction="none"), expected)


def test_gaussian_nll_and_kl_match_torch_distributions():
    mean = torch.randn(4, 6, generator=_gen(12), dtype=torch.float64)
    logvar = torch.randn(4, 6, generator=_gen(13), dtype=torch.float64)
    x = torch.randn(4, 6, generator=_gen(14), dtype=torch.float64)
    q = Normal(mean, torch.exp(0.5 * logvar))
    torch.testing.assert_close(GL.gaussian_nll(mean, logvar, x, reduction="none"), -q.log_prob(x).sum(1))
    prior = Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(GL.gaussian_kl_divergence(mean, logvar, reduction="none"),
                               kl_divergence(q, prior).sum(1))
    torch.testing.assert_close(GL.gaussian_kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.tensor(0.0))


def test_exported_from_canon_losses():
    for name in GL.__all__:
        assert getattr(losses, name) is getattr(GL, name)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        GL.gan_generator_loss(torch.zeros(3), "minmax")
    with pytest.raises(TypeError, match="floating-point"):
        GL.gan_discriminator_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="one score per example"):
        GL.wasserstein_generator_loss(torch.tensor(1.0))
    with pytest.raises(ValueError, match="same shape"):
        GL.gradient_penalty(lambda x: x.sum(1), torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"epsilon must have shape \(3,\)"):
        GL.gradient_penalty(lambda x: x.sum(1), torch.zeros(3, 2), torch.zeros(3, 2), epsilon=torch.zeros(2))
    with pytest.raises(ValueError, match="same shape"):
        GL.bernoulli_nll(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 4\)"):
        GL.categorical_nll(torch.zeros(1, 4, 2), torch.tensor([[0, 4]]))
    with pytest.raises(TypeError, match="integer levels"):
        GL.categorical_nll(torch.zeros(1, 4, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="target shape must be"):
        GL.categorical_nll(torch.zeros(1, 4, 2), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        GL.bernoulli_nll(torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg")
    assert math.isfinite(float(GL.gaussian_nll(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))))
