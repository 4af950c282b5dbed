"""Metrics for generative models: the Fréchet distance between feature statistics, the share of
samples per class (mode coverage), and bits per dimension.

Papers:
- Fréchet distance between Gaussians: Dowson & Landau, "The Fréchet distance between
  multivariate normal distributions", J. Multivariate Analysis 1982; used on Inception features
  as FID by Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", 2017, arXiv:1706.08500.
- Bits per dimension: van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent Neural
  Networks", 2016, arXiv:1601.06759 (Section 5.1): the negative log-likelihood in base 2,
  divided by the number of sub-pixels.

Follows the papers:
- ``d^2 = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))``, with the feature
  covariances estimated with the ``N - 1`` denominator (``numpy.cov``, as the FID reference code).

Deviates, and why:
- ``tr((S_1 S_2)^(1/2))`` is computed as the sum of the square roots of the eigenvalues of the
  symmetric matrix ``S_1^(1/2) S_2 S_1^(1/2)`` (same eigenvalues as ``S_1 S_2``), in float64, with
  tiny negative eigenvalues from round-off clipped to 0. The FID code takes ``scipy.linalg.sqrtm``
  of the non-symmetric product and drops an imaginary part; the symmetric route gives the same
  number without complex arithmetic or scipy at run time (the tests check it against sqrtm).
- canon has no Inception weights, so "FID" here is the Fréchet distance on the features of a
  canon classifier trained on the same data: comparable between canon runs on one dataset with
  one feature extractor, *not* with published Inception-feature FID figures.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features", "class_shares",
           "mode_coverage", "bits_per_dimension"]


def _as_float64(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x.detach().to("cpu", torch.float64)


def feature_statistics(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D, D) of features (N, D), covariance with the N - 1 denominator."""
    f = _as_float64(features, "feature_statistics: features")
    if f.dim() != 2:
        raise ValueError(f"feature_statistics expects features of shape (N, D), got {tuple(f.shape)}; "
                         f"flatten each example's features first")
    if f.shape[0] < 2:
        raise ValueError(f"feature_statistics needs at least 2 examples to estimate a covariance, got {f.shape[0]}")
    if not torch.isfinite(f).all():
        raise ValueError("feature_statistics: features contain NaN or infinite values")
    mean = f.mean(0)
    centred = f - mean
    return mean, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix through its eigendecomposition."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mean_1, cov_1, mean_2, cov_2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mean_1, cov_1) and N(mean_2, cov_2).

    mean_i: (D,); cov_i: (D, D) symmetric positive semi-definite. Returns a float >= 0 (the
    squared distance, as FID reports it).
    """
    m1, m2 = _as_float64(mean_1, "frechet_distance: mean_1"), _as_float64(mean_2, "frechet_distance: mean_2")
    s1, s2 = _as_float64(cov_1, "frechet_distance: cov_1"), _as_float64(cov_2, "frechet_distance: cov_2")
    if m1.dim() != 1 or m1.shape != m2.shape:
        raise ValueError(f"frechet_distance: means must be vectors of one length (D,), "
                         f"got {tuple(m1.shape)} and {tuple(m2.shape)}")
    d = m1.shape[0]
    for name, s in (("cov_1", s1), ("cov_2", s2)):
        if tuple(s.shape) != (d, d):
            raise ValueError(f"frechet_distance: {name} must be ({d}, {d}) for means of length {d}, "
                             f"got {tuple(s.shape)}")
        if not torch.allclose(s, s.T, rtol=1e-6, atol=1e-8 * max(1.0, float(s.abs().max()))):
            raise ValueError(f"frechet_distance: {name} must be symmetric (a covariance matrix)")
    root_1 = _psd_sqrt(s1)
    middle = root_1 @ s2 @ root_1                                   # same eigenvalues as S1 S2
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (m1 - m2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt
    return max(float(distance), 0.0)


def frechet_distance_from_features(features_1, features_2) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features_1), *feature_statistics(features_2))


def _labels(predictions, num_classes: int, name: str) -> torch.Tensor:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be an int >= 1, got {num_classes!r}")
    p = torch.as_tensor(predictions)
    if torch.is_floating_point(p):
        if p.dim() != 2 or p.shape[1] != num_classes:
            raise ValueError(f"{name}: class scores must be (N, {num_classes}), got {tuple(p.shape)}; "
                             f"or pass integer labels of shape (N,)")
        p = p.argmax(1)
    elif p.dim() != 1:
        raise ValueError(f"{name}: labels must be (N,) integers, got shape {tuple(p.shape)}")
    if p.numel() == 0:
        raise ValueError(f"{name}: no predictions given")
    if int(p.min()) < 0 or int(p.max()) >= num_classes:
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got [{int(p.min())}, {int(p.max())}]")
    return p.long()


def class_shares(predictions, num_classes: int) -> torch.Tensor:
    """The share of samples a classifier assigns to each class, (num_classes,) summing to 1.

    predictions: (N,) integer labels, or (N, num_classes) scores (their argmax is taken).
    """
    labels = _labels(predictions, num_classes, "class_shares")
    return torch.bincount(labels, minlength=num_classes).double() / labels.numel()


def mode_coverage(predictions, num_classes: int, min_share: float = 0.05) -> dict:
    """How many classes hold at least ``min_share`` of the samples: a mode-collapse check.

    Returns ``{"shares": [...], "covered": int, "num_classes": int, "min_share": float,
    "all_covered": bool}``; a uniform generator over 10 classes has every share near 0.1.
    """
    if not 0 <= min_share <= 1:
        raise ValueError(f"mode_coverage: min_share must lie in [0, 1], got {min_share!r}")
    shares = class_shares(predictions, num_classes)
    covered = int((shares >= min_share).sum())
    return {"shares": shares.tolist(), "covered": covered, "num_classes": num_classes,
            "min_share": float(min_share), "all_covered": covered == num_classes}


def bits_per_dimension(nll_nats, num_dims: int):
    """A negative log-likelihood per example in nats -> bits per dimension: ``nll / (D ln 2)``.

    num_dims: the dimensions (sub-pixels) per example, e.g. 28 * 28 for MNIST, 3 * 32 * 32 for
    CIFAR-10. Works on floats and tensors alike; a discrete model's NLL is needed (a density's
    needs its discretisation term first).
    """
    if not isinstance(num_dims, int) or num_dims < 1:
        raise ValueError(f"bits_per_dimension: num_dims must be an int >= 1, got {num_dims!r}")
    return nll_nats / (num_dims * math.log(2.0))
