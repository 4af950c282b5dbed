"""The VAE against Kingma & Welling and an exact marginal likelihood: the analytic KL against a
Monte-Carlo estimate, the ELBO against torch.distributions, and the importance-weighted bound
against log p(x) computed by quadrature over a one-dimensional latent (it lies between the ELBO
and log p(x), and tightens as k grows)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import canon
from canon.losses.generative import gaussian_kl_divergence


def _binary(n, size=28, seed=0):
    return (torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def test_layer_sizes_and_parameter_count():
    model = canon.create_model("vae")
    # encoder 784 -> 500 -> 2·20, decoder 20 -> 500 -> 784 (Appendix C, MNIST)
    expected = (784 + 1) * 500 + (500 + 1) * 40 + (20 + 1) * 500 + (500 + 1) * 784
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.optimizers == {"model": {"name": "adagrad", "lr": 0.01}} and model.batch_size == 100
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert weights.std() == pytest.approx(0.01, rel=0.02)              # N(0, 0.01) initialisation


def test_analytic_kl_matches_a_monte_carlo_estimate():
    torch.manual_seed(0)
    model = canon.create_model("vae", init_std=0.1)
    mu, logvar = model.encode(_binary(3))
    mu, logvar = mu.detach().double(), logvar.detach().double()
    analytic = gaussian_kl_divergence(mu, logvar, reduction="none")
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((100_000,))                                            # (S, N, D)
    terms = (q.log_prob(z) - p.log_prob(z)).sum(-1)                     # log q(z|x) - log p(z)
    standard_error = terms.std(0) / math.sqrt(terms.shape[0])
    assert ((terms.mean(0) - analytic).abs() < 4 * standard_error + 1e-6).all()
    assert (analytic > 0).all()


def test_elbo_is_the_one_sample_sgvb_estimator():
    torch.manual_seed(0)
    model = canon.create_model("vae", init_std=0.1)
    x = _binary(4, seed=1)
    elbo = model.elbo(x, generator=torch.Generator().manual_seed(5))
    mu, logvar = model.encode(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    z = mu + torch.exp(0.5 * logvar) * eps                              # the reparameterisation
    reconstruction = Bernoulli(logits=model.decode(z)["logits"]).log_prob(x).sum((1, 2, 3))
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1)
    torch.testing.assert_close(elbo, reconstruction - kl)
    torch.testing.assert_close(model.loss(x, generator=torch.Generator().manual_seed(5)), -(reconstruction - kl).mean())


def test_gaussian_decoder_likelihood():
    torch.manual_seed(0)
    model = canon.create_model("vae_gaussian", hidden_dims=(16,), latent_dim=4)
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert 0 < out["mean"].min() and out["mean"].max() < 1             # the mean goes through a sigmoid
    expected = Normal(out["mean"], torch.exp(0.5 * out["decoder_logvar"])).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(model.reconstruction_log_likelihood(x, out), expected)


def _tiny_vae():
    torch.manual_seed(4)
    return canon.create_model("vae", image_size=3, latent_dim=1, hidden_dims=(8,), init_std=0.7).double()


def _exact_log_likelihood(model, x):
    """log p(x) = log ∫ p(x|z) N(z; 0, 1) dz as a Riemann sum over a fine grid of z in [-12, 12]."""
    z = torch.linspace(-12, 12, 24_001, dtype=torch.float64)[:, None]
    step = float(z[1] - z[0])
    logits = model.decode(z)["logits"].flatten(1)                      # (G, 9)
    log_px_given_z = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, None, :].expand(-1, x.shape[0], -1), x.flatten(1)[None].expand(z.shape[0], -1, -1),
        reduction="none").sum(-1)                                       # (G, N)
    log_prior = Normal(0.0, 1.0).log_prob(z)                            # (G, 1)
    return torch.logsumexp(log_px_given_z + log_prior, 0) + math.log(step)


def test_importance_weighted_bound_lies_between_the_elbo_and_log_p_x_and_tightens_with_k():
    model = _tiny_vae()
    x = (torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(4)) > 0.5).double()
    with torch.no_grad():
        exact = _exact_log_likelihood(model, x)                         # (3,)
        repeats = 1600
        xs = x.repeat(repeats, 1, 1, 1)                                 # independent estimates per copy
        g = torch.Generator().manual_seed(0)
        elbo = model.elbo(xs, generator=g).view(repeats, 3)
        bounds = {k: model.log_likelihood(xs, num_samples=k, generator=g).view(repeats, 3) for k in (1, 10, 100)}
        tight = model.log_likelihood(x.repeat(20, 1, 1, 1), num_samples=2000, generator=g).view(20, 3).mean(0)

    def mean_and_error(t):
        return t.mean(0), t.std(0) / math.sqrt(t.shape[0])

    m_elbo, se_elbo = mean_and_error(elbo)
    means = {k: mean_and_error(v) for k, v in bounds.items()}
    # k = 1 is the ELBO in expectation
    assert ((means[1][0] - m_elbo).abs() < 4 * (means[1][1] ** 2 + se_elbo ** 2).sqrt()).all()
    # E[L_1] < E[L_10] < E[L_100] <= log p(x), each gap beyond the noise
    for small, large in ((1, 10), (10, 100)):
        gap, noise = means[large][0] - means[small][0], (means[large][1] ** 2 + means[small][1] ** 2).sqrt()
        assert (gap > 3 * noise).all(), (small, large, gap, noise)
    assert (means[100][0] <= exact + 4 * means[100][1]).all()
    assert (m_elbo < exact - 4 * se_elbo).all()                        # the ELBO is strictly below log p(x)
    torch.testing.assert_close(tight, exact, rtol=0, atol=0.03)        # k = 2000 reaches log p(x)
    torch.testing.assert_close(model.nll(x, 5, generator=torch.Generator().manual_seed(1)),
                               -model.log_likelihood(x, 5, generator=torch.Generator().manual_seed(1)))


def test_samples():
    model = canon.create_model("vae")
    means = model.sample(4, torch.Generator().manual_seed(0))
    draws = model.sample(4, torch.Generator().manual_seed(0), mean=False)
    assert means.shape == draws.shape == (4, 1, 28, 28) and 0 < means.min() and means.max() < 1
    assert set(draws.unique().tolist()) <= {0.0, 1.0}


def test_bad_input():
    model = canon.create_model("vae")
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.elbo(torch.full((2, 1, 28, 28), 2.0))
    with pytest.raises(ValueError, match=r"\(N, 20\)"):
        model.decode(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="num_samples"):
        model.log_likelihood(_binary(1), num_samples=0)
    with pytest.raises(ValueError, match="decoder must be one of"):
        canon.create_model("vae", decoder="poisson")
