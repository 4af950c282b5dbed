"""Wasserstein GANs: weight clipping (WGAN) and the gradient penalty (WGAN-GP).

Papers:
    "Wasserstein GAN", Arjovsky, Chintala, Bottou, 2017, arXiv:1701.07875.
    "Improved Training of Wasserstein GANs", Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville,
    2017, arXiv:1704.00028.

Both use the DCGAN generator and discriminator of :mod:`canon.models.generative.dcgan`; the
discriminator becomes a *critic* f: its output is a raw score (no sigmoid), and the critic is
trained to maximise ``E[f(x)] - E[f(G(z))]``, an estimate of the Wasserstein-1 (earth-mover)
distance when f is 1-Lipschitz. The generator minimises ``-E[f(G(z))]``.

Follows the papers:
- WGAN, Algorithm 1: n_critic = 5 critic steps per generator step, RMSProp with lr 5e-5,
  minibatch 64, and every critic weight clipped to [-c, c] with c = 0.01 after each critic
  update (``clip_weights_``, run by ``after_discriminator_step``); the DCGAN architecture with
  batch norm in the critic (Section 4's LSUN experiments).
- WGAN-GP, Algorithm 1: no clipping; the critic's loss adds ``lambda * E[(||grad f(x_hat)||_2 - 1)^2]``
  with lambda = 10 on random interpolates ``x_hat = eps x + (1 - eps) G(z)``, ``eps ~ U[0, 1]``;
  n_critic = 5; Adam with lr 1e-4, betas (0, 0.9); minibatch 64. Section 4: no batch norm in the
  critic (the penalty is per example) — layer normalisation in its place.

Deviates, and why:
- The WGAN authors' code also runs 100 critic steps for the first 25 generator steps and every
  500th; Algorithm 1 does not, and neither does ``n_critic`` here.
- Layer norm is ``GroupNorm(1, C)``: normalised over (C, H, W) with a per-channel scale and
  shift, so the critic keeps DCGAN's parameter count and works at any image size.
- z ~ N(0, I), as in both papers' code (the papers do not fix the prior).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from canon.losses import generative as GL
from canon.models.generative.dcgan import DCGANDiscriminator, DCGANGenerator, init_dcgan_weights, num_stages
from canon.models.generative.gan import AdversarialModel, check_positive_int
from canon.registry import register_model

__all__ = ["clip_weights_", "WGAN", "WGANGP", "wgan", "wgan_32", "wgan_gp", "wgan_gp_32"]

PAPER_WGAN = "Wasserstein GAN, 2017, arXiv:1701.07875"
PAPER_WGAN_GP = "Improved Training of Wasserstein GANs, 2017, arXiv:1704.00028"


@torch.no_grad()
def clip_weights_(module: nn.Module, clip_value: float) -> None:
    """Clamp every parameter of ``module`` to [-clip_value, clip_value] in place (WGAN, Alg. 1 line 7).

    Buffers (batch-norm running statistics) are not parameters and are left alone.
    """
    if not clip_value > 0:
        raise ValueError(f"clip_value must be > 0, got {clip_value!r}")
    for p in module.parameters():
        p.clamp_(-clip_value, clip_value)


class _WassersteinModel(AdversarialModel):
    """DCGAN players with the Wasserstein losses; the critic's norm is set by the subclass."""

    n_critic = 5
    batch_size = 64
    data_range = (-1.0, 1.0)
    noise_distribution = "normal"
    critic_norm = "batch"

    def _build(self, image_size: int, in_chans: int, latent_dim: int, base_channels: int) -> None:
        num_stages(image_size)
        for name, value in (("in_chans", in_chans), ("latent_dim", latent_dim), ("base_channels", base_channels)):
            check_positive_int(value, name)
        self.image_size, self.in_chans, self.latent_dim = image_size, in_chans, latent_dim
        self.generator = DCGANGenerator(image_size=image_size, out_chans=in_chans, latent_dim=latent_dim,
                                        base_channels=base_channels)
        self.discriminator = DCGANDiscriminator(image_size=image_size, in_chans=in_chans,
                                                base_channels=base_channels, norm=self.critic_norm)
        init_dcgan_weights(self)

    def _critic_terms(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = GL.wasserstein_critic_loss(self.discriminate(real), self.discriminate(fake.detach()))
        return loss, -loss.detach()  # the critic's loss, and the Wasserstein estimate E[f(x)] - E[f(G(z))]

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        loss, estimate = self._critic_terms(real, fake)
        return {"loss": loss, "wasserstein_estimate": estimate}

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": GL.wasserstein_generator_loss(self.discriminate(fake))}


class WGAN(_WassersteinModel):
    """WGAN with weight clipping; see the module docstring.

    Args:
        image_size, in_chans, latent_dim, base_channels: as :class:`~canon.models.generative.dcgan.DCGAN`.
        weight_clip: c, the critic's weights are kept in [-c, c] (0.01).
    """

    optimizers = {
        "generator": {"modules": ("generator",), "name": "rmsprop", "lr": 5e-5},
        "discriminator": {"modules": ("discriminator",), "name": "rmsprop", "lr": 5e-5},
    }
    critic_norm = "batch"

    def __init__(self, *, image_size: int = 64, in_chans: int = 3, latent_dim: int = 100,
                 base_channels: int = 64, weight_clip: float = 0.01):
        super().__init__()
        if not (isinstance(weight_clip, (int, float)) and weight_clip > 0):
            raise ValueError(f"weight_clip must be a number > 0, got {weight_clip!r}")
        self.weight_clip = float(weight_clip)
        self._build(image_size, in_chans, latent_dim, base_channels)

    def after_discriminator_step(self) -> None:
        clip_weights_(self.discriminator, self.weight_clip)


class WGANGP(_WassersteinModel):
    """WGAN-GP: the gradient penalty instead of clipping; see the module docstring.

    Args:
        image_size, in_chans, latent_dim, base_channels: as :class:`~canon.models.generative.dcgan.DCGAN`.
        gradient_penalty_weight: lambda (10).
    """

    optimizers = {
        "generator": {"modules": ("generator",), "name": "adam", "lr": 1e-4, "betas": (0.0, 0.9)},
        "discriminator": {"modules": ("discriminator",), "name": "adam", "lr": 1e-4, "betas": (0.0, 0.9)},
    }
    critic_norm = "layer"

    def __init__(self, *, image_size: int = 64, in_chans: int = 3, latent_dim: int = 100,
                 base_channels: int = 64, gradient_penalty_weight: float = 10.0):
        super().__init__()
        if not (isinstance(gradient_penalty_weight, (int, float)) and gradient_penalty_weight >= 0):
            raise ValueError(f"gradient_penalty_weight must be a number >= 0, got {gradient_penalty_weight!r}")
        self.gradient_penalty_weight = float(gradient_penalty_weight)
        self._build(image_size, in_chans, latent_dim, base_channels)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor,
                           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Critic loss + lambda * penalty; ``generator`` draws the interpolation weights."""
        critic_loss, estimate = self._critic_terms(real, fake)
        penalty = GL.gradient_penalty(self.discriminate, real, fake, generator=generator)
        return {"loss": critic_loss + self.gradient_penalty_weight * penalty,
                "wasserstein_estimate": estimate, "gradient_penalty": penalty.detach()}


@register_model(WGAN, task="generation", paper=PAPER_WGAN, input_size=(3, 64, 64), num_classes=None)
def wgan(**kwargs) -> WGAN:
    """WGAN with the DCGAN players at 64×64×3, weight clipping 0.01, RMSProp 5e-5, n_critic 5."""
    return WGAN(**kwargs)


@register_model(WGAN, task="generation", paper=PAPER_WGAN, input_size=(3, 32, 32), num_classes=None)
def wgan_32(**kwargs) -> WGAN:
    """WGAN for 32×32 images (CIFAR-10; MNIST with in_chans=1)."""
    return WGAN(**{"image_size": 32, **kwargs})


@register_model(WGANGP, task="generation", paper=PAPER_WGAN_GP, input_size=(3, 64, 64), num_classes=None)
def wgan_gp(**kwargs) -> WGANGP:
    """WGAN-GP with the DCGAN players (layer-norm critic) at 64×64×3, lambda 10, Adam 1e-4 (0, 0.9)."""
    return WGANGP(**kwargs)


@register_model(WGANGP, task="generation", paper=PAPER_WGAN_GP, input_size=(3, 32, 32), num_classes=None)
def wgan_gp_32(**kwargs) -> WGANGP:
    """WGAN-GP for 32×32 images (CIFAR-10; MNIST with in_chans=1)."""
    return WGANGP(**{"image_size": 32, **kwargs})
