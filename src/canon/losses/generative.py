"""Losses of the generative models: adversarial losses, the gradient penalty, and the
log-likelihood terms (Bernoulli, categorical, Gaussian, Gaussian KL) of the likelihood models.

Papers:
- GAN: Goodfellow et al., "Generative Adversarial Nets", 2014, arXiv:1406.2661 — the
  discriminator's ``-log D(x) - log(1 - D(G(z)))``, the minimax generator loss
  ``log(1 - D(G(z)))`` and the non-saturating one ``-log D(G(z))`` (Section 3).
- WGAN: Arjovsky, Chintala, Bottou, "Wasserstein GAN", 2017, arXiv:1701.07875 — the critic
  maximises ``E[f(x)] - E[f(G(z))]`` (Algorithm 1).
- WGAN-GP: Gulrajani et al., "Improved Training of Wasserstein GANs", 2017, arXiv:1704.00028 —
  the penalty ``E[(||grad f(x_hat)||_2 - 1)^2]`` on ``x_hat = eps x + (1 - eps) G(z)``,
  ``eps ~ U[0, 1]`` per sample (Algorithm 1).
- LSGAN: Mao et al., "Least Squares Generative Adversarial Networks", 2016, arXiv:1611.04076,
  in the form CycleGAN uses (Zhu et al., 2017, arXiv:1703.10593, Section 7): the discriminator
  minimises ``((D(y) - 1)^2 + D(G(x))^2) / 2``, the generator ``(D(G(x)) - 1)^2``.
- VAE: Kingma & Welling, "Auto-Encoding Variational Bayes", 2013, arXiv:1312.6114 — the KL of a
  diagonal Gaussian from N(0, I) in closed form (Appendix B).

Conventions:
- Discriminator outputs are *logits* (the sigmoid lives in the loss, computed with ``softplus``
  so that logits of +-100 stay finite); critic outputs (WGAN) and least-squares outputs are raw
  scores. Real and fake batches may differ in size; each expectation is a mean over its own batch,
  so the adversarial losses return a scalar and take no ``reduction``.
- The likelihood terms return one value *per example* in nats, summed over every non-batch
  dimension (an image's negative log-likelihood), then reduced over the batch with ``reduction``
  (``"none"`` | ``"mean"`` | ``"sum"``, as everywhere in :mod:`canon.losses`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from canon.losses.functional import reduce_loss

__all__ = [
    # adversarial
    "GENERATOR_LOSS_MODES", "gan_discriminator_loss", "gan_generator_loss",
    "wasserstein_critic_loss", "wasserstein_generator_loss",
    "least_squares_discriminator_loss", "least_squares_generator_loss", "gradient_penalty",
    # likelihood
    "bernoulli_nll", "categorical_nll", "gaussian_nll", "gaussian_kl_divergence",
]

GENERATOR_LOSS_MODES = ("non_saturating", "minimax")


def _check_scores(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{what} must hold one score per example, shape (N,) or (N, ...), got a scalar")


def _per_example_sum(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N,): the sum over every non-batch dimension."""
    return x.reshape(x.shape[0], -1).sum(1)


# =========================================================================== adversarial
def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The GAN discriminator's loss ``-E[log D(x)] - E[log(1 - D(G(z)))]``, ``D = sigmoid(logit)``.

    real_logits: (N, ...) logits on data; fake_logits: (M, ...) logits on generated samples.
    ``-log sigmoid(l) = softplus(-l)`` and ``-log(1 - sigmoid(l)) = softplus(l)``. Scalar.
    """
    _check_scores(real_logits, "gan_discriminator_loss: real_logits")
    _check_scores(fake_logits, "gan_discriminator_loss: fake_logits")
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def gan_generator_loss(fake_logits: torch.Tensor, mode: str = "non_saturating") -> torch.Tensor:
    """The generator's loss on the discriminator's logits for generated samples. Scalar.

    ``"non_saturating"``: ``-E[log D(G(z))] = E[softplus(-l)]`` — the paper's practical choice,
    strong gradients early in training when D rejects the samples confidently.
    ``"minimax"``: ``E[log(1 - D(G(z)))] = -E[softplus(l)]`` — the game's own value; its gradient
    ``-sigmoid(l)`` vanishes as ``l -> -inf``, i.e. exactly when D wins (Goodfellow et al., Sec. 3).
    """
    _check_scores(fake_logits, "gan_generator_loss: fake_logits")
    if mode not in GENERATOR_LOSS_MODES:
        raise ValueError(f"gan_generator_loss: mode must be one of {GENERATOR_LOSS_MODES}, got {mode!r}")
    if mode == "non_saturating":
        return F.softplus(-fake_logits).mean()
    return -F.softplus(fake_logits).mean()


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The WGAN critic's loss ``E[f(G(z))] - E[f(x)]``: minus the Wasserstein-1 estimate. Scalar."""
    _check_scores(real_scores, "wasserstein_critic_loss: real_scores")
    _check_scores(fake_scores, "wasserstein_critic_loss: fake_scores")
    return fake_scores.mean() - real_scores.mean()


def wasserstein_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The WGAN generator's loss ``-E[f(G(z))]``. Scalar."""
    _check_scores(fake_scores, "wasserstein_generator_loss: fake_scores")
    return -fake_scores.mean()


def least_squares_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """LSGAN discriminator loss as CycleGAN uses it: ``(E[(D(y) - 1)^2] + E[D(G(x))^2]) / 2``.

    Scores of any shape (N, ...) — a PatchGAN's (N, 1, h, w) map averages over its patches.
    The halving is CycleGAN's "we divide the objective by 2 while optimizing D". Scalar.
    """
    _check_scores(real_scores, "least_squares_discriminator_loss: real_scores")
    _check_scores(fake_scores, "least_squares_discriminator_loss: fake_scores")
    return 0.5 * ((real_scores - 1).pow(2).mean() + fake_scores.pow(2).mean())


def least_squares_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """LSGAN generator loss as CycleGAN uses it: ``E[(D(G(x)) - 1)^2]``. Scalar."""
    _check_scores(fake_scores, "least_squares_generator_loss: fake_scores")
    return (fake_scores - 1).pow(2).mean()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, *,
                     epsilon: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP's penalty ``E[(||grad_x f(x_hat)||_2 - 1)^2]``, without the weight lambda. Scalar.

    real, fake: (N, ...) batches of one shape. ``x_hat = eps * real + (1 - eps) * fake`` with one
    ``eps ~ U[0, 1]`` per example (drawn from ``generator``, or given as ``epsilon`` of shape (N,)).
    ``fake`` is detached: the penalty trains the critic only. The gradient is taken with
    ``create_graph=True``, so the penalty itself can be back-propagated into the critic's weights.
    """
    _check_scores(real, "gradient_penalty: real")
    _check_scores(fake, "gradient_penalty: fake")
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real and fake must have the same shape, "
                         f"got {tuple(real.shape)} and {tuple(fake.shape)}")
    n = real.shape[0]
    if epsilon is None:
        source = generator.device if generator is not None else real.device  # a CPU generator works for any device
        epsilon = torch.rand(n, generator=generator, dtype=real.dtype, device=source).to(real.device)
    elif tuple(epsilon.shape) != (n,):
        raise ValueError(f"gradient_penalty: epsilon must have shape ({n},), one per example, "
                         f"got {tuple(epsilon.shape)}")
    eps = epsilon.to(real.dtype).view(n, *([1] * (real.dim() - 1)))
    interpolates = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(interpolates)
    (gradients,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    norms = gradients.reshape(n, -1).norm(2, dim=1)                # ||grad f(x_hat)||_2, (N,)
    return (norms - 1).pow(2).mean()


# =========================================================================== likelihood
def bernoulli_nll(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``-log p(x)`` under independent Bernoullis ``p = sigmoid(logits)``, summed per example, nats.

    logits, target: (N, ...) of one shape; target in [0, 1] (binary for a true likelihood).
    ``"none"`` returns (N,).
    """
    _check_scores(logits, "bernoulli_nll: logits")
    if logits.shape != target.shape:
        raise ValueError(f"bernoulli_nll: logits and target must have the same shape, "
                         f"got {tuple(logits.shape)} and {tuple(target.shape)}")
    per_element = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return reduce_loss(_per_example_sum(per_element), reduction)


def categorical_nll(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``-log p(x)`` under independent categoricals over ``L`` levels, summed per example, nats.

    logits: (N, L, d1, ...) — e.g. (N, 256, C, H, W) for a 256-way softmax per sub-pixel;
    target: (N, d1, ...) integer levels in [0, L). ``"none"`` returns (N,).
    """
    _check_scores(logits, "categorical_nll: logits")
    if logits.dim() < 2:
        raise ValueError(f"categorical_nll: logits must be (N, L, ...), got shape {tuple(logits.shape)}")
    if torch.is_floating_point(target) or target.dtype == torch.bool:
        raise TypeError(f"categorical_nll: target must hold integer levels, got dtype {target.dtype}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"categorical_nll: target shape must be {expected} for logits "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    levels = logits.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= levels):
        raise ValueError(f"categorical_nll: levels must lie in [0, {levels}), "
                         f"got values in [{int(target.min())}, {int(target.max())}]")
    per_element = F.cross_entropy(logits, target.long(), reduction="none")
    return reduce_loss(_per_example_sum(per_element), reduction)


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
    """``-log N(x; mean, diag(exp(logvar)))`` summed per example, nats (a density, not a mass).

    ``0.5 * sum(log(2 pi) + logvar + (x - mean)^2 / exp(logvar))``. All (N, ...) of one shape.
    """
    _check_scores(mean, "gaussian_nll: mean")
    if not (mean.shape == logvar.shape == target.shape):
        raise ValueError(f"gaussian_nll: mean, logvar and target must have one shape, got "
                         f"{tuple(mean.shape)}, {tuple(logvar.shape)} and {tuple(target.shape)}")
    per_element = 0.5 * (math.log(2 * math.pi) + logvar + (target - mean).pow(2) * torch.exp(-logvar))
    return reduce_loss(_per_example_sum(per_element), reduction)


def gaussian_kl_divergence(mean: torch.Tensor, logvar: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``KL(N(mean, diag(exp(logvar))) || N(0, I))`` per example, in closed form (Kingma & Welling,
    Appendix B): ``-0.5 * sum(1 + logvar - mean^2 - exp(logvar))``. mean, logvar: (N, D)."""
    _check_scores(mean, "gaussian_kl_divergence: mean")
    if mean.shape != logvar.shape:
        raise ValueError(f"gaussian_kl_divergence: mean and logvar must have the same shape, "
                         f"got {tuple(mean.shape)} and {tuple(logvar.shape)}")
    per_element = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp())
    return reduce_loss(_per_example_sum(per_element), reduction)
