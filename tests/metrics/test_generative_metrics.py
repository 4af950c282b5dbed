"""Generative metrics: the Fréchet distance against scipy.linalg.sqrtm and against Gaussians whose
distance is known in closed form; class shares against numpy's bincount; bits per dimension
against the uniform distribution's known entropy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import canon.metrics as metrics
from canon.metrics.generative import (bits_per_dimension, class_shares, feature_statistics, frechet_distance,
                                      frechet_distance_from_features, mode_coverage)


def _random_covariance(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def _scipy_frechet(mu1, s1, mu2, s2):
    """The FID reference formula: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("seed", range(4))
def test_frechet_distance_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    d = 6 + seed
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_covariance(rng, d), _random_covariance(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)
    # torch inputs, and symmetry in the two distributions
    t = [torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*t) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_with_singular_covariances_matches_scipy():
    rng = np.random.default_rng(10)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    s1, s2 = _random_covariance(rng, 8, rank=3), _random_covariance(rng, 8, rank=5)  # fewer samples than dims
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-5, abs=1e-6)


def test_frechet_distance_of_diagonal_gaussians_in_closed_form():
    """Diagonal (and commonly rotated) covariances: d^2 = ||mu1 - mu2||^2 + sum (sigma1 - sigma2)^2."""
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    sigma1, sigma2 = rng.uniform(0.2, 2.0, 5), rng.uniform(0.2, 2.0, 5)
    closed_form = ((mu1 - mu2) ** 2).sum() + ((sigma1 - sigma2) ** 2).sum()
    diagonal = frechet_distance(mu1, np.diag(sigma1 ** 2), mu2, np.diag(sigma2 ** 2))
    assert diagonal == pytest.approx(closed_form, rel=1e-10)
    rotation, _ = np.linalg.qr(rng.standard_normal((5, 5)))  # the same eigenvectors for both
    s1 = rotation @ np.diag(sigma1 ** 2) @ rotation.T
    s2 = rotation @ np.diag(sigma2 ** 2) @ rotation.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed_form, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_from_sampled_features_approaches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    n, d = 200_000, 4
    mu1, mu2 = torch.tensor([0.0, 1.0, -1.0, 0.5]), torch.tensor([0.5, 1.0, 0.0, 0.0])
    sigma1, sigma2 = torch.tensor([1.0, 0.5, 2.0, 1.0]), torch.tensor([0.5, 0.5, 1.0, 1.5])
    a = mu1 + sigma1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    b = mu2 + sigma2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    closed_form = float(((mu1 - mu2) ** 2).sum() + ((sigma1 - sigma2) ** 2).sum())  # 1.5 + 1.5 = 3.0
    assert frechet_distance_from_features(a, b) == pytest.approx(closed_form, abs=0.03)


def test_feature_statistics_match_numpy():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((50, 7))
    mean, cov = feature_statistics(f)
    np.testing.assert_allclose(mean.numpy(), f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12)


def test_class_shares_and_mode_coverage_match_bincount():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 10_000)
    labels[:600] = 3                     # class 3 over-represented
    labels[labels == 7] = 2              # class 7 missing: a dropped mode
    expected = np.bincount(labels, minlength=10) / labels.size
    np.testing.assert_allclose(class_shares(torch.from_numpy(labels), 10).numpy(), expected, rtol=1e-12)
    coverage = mode_coverage(torch.from_numpy(labels), 10, min_share=0.05)
    assert coverage["covered"] == int((expected >= 0.05).sum()) == 9
    assert not coverage["all_covered"] and coverage["shares"][7] == 0.0
    scores = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).double() + 0.01  # argmax = the label
    np.testing.assert_allclose(class_shares(scores, 10).numpy(), expected, rtol=1e-12)
    assert mode_coverage(torch.arange(10).repeat(10), 10)["all_covered"]


def test_bits_per_dimension_of_uniform_models():
    # a uniform 256-way model gives every image of D sub-pixels probability 256^-D: 8 bits per dimension
    d = 3 * 32 * 32
    assert bits_per_dimension(d * math.log(256), d) == pytest.approx(8.0, rel=1e-12)
    assert bits_per_dimension(torch.tensor([28 * 28 * math.log(2)]), 28 * 28).item() == pytest.approx(1.0)


def test_exported_from_canon_metrics():
    for name in ("feature_statistics", "frechet_distance", "frechet_distance_from_features", "class_shares",
                 "mode_coverage", "bits_per_dimension"):
        assert name in metrics.__all__ and callable(getattr(metrics, name))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        feature_statistics(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="one length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(TypeError, match="numpy array"):
        frechet_distance([0, 0], np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        class_shares(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        class_shares(torch.zeros(5, 3), 4)
    with pytest.raises(ValueError, match="min_share"):
        mode_coverage(torch.tensor([0, 1]), 2, min_share=5)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dimension(1.0, 0)
