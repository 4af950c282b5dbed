"""DCGAN: deep convolutional generator and discriminator.

Paper: "Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
Networks", Radford, Metz, Chintala, 2015, arXiv:1511.06434.

Follows the paper:
- Section 3's guidelines: no pooling — strided convolutions in the discriminator, fractionally
  strided (transposed) convolutions in the generator; batch normalisation in both, except at the
  generator's output and the discriminator's input; no fully connected hidden layers; ReLU in the
  generator with tanh at its output; LeakyReLU with slope 0.2 in the discriminator.
- Figure 1: z (100-d, uniform) is projected to a 4×4×1024 map, then 8×8×512 → 16×16×256 →
  32×32×128 → 64×64×3 through 4×4 stride-2 transposed convolutions; the discriminator mirrors it.
- Section 4: weights from N(0, 0.02); Adam with lr 2e-4 and β1 = 0.5; minibatch 128; images
  scaled to the tanh range [-1, 1].

Deviates, and why:
- ``dcgan`` has 64 base channels (4×4×512 after the projection), the width of the authors'
  released code and of PyTorch's DCGAN example: generator 3,576,704 and discriminator 2,765,568
  parameters. Figure 1's width is ``base_channels=128`` (4×4×1024).
- The "project and reshape" is a 4×4 transposed convolution of the 1×1 noise map, i.e. a linear
  layer without bias; the convolutions have no bias (batch norm's shift replaces it).
- Batch-norm scales start at N(1, 0.02) and shifts at 0 (the paper says only "all weights").
- ``dcgan_32`` drops one stage for 32×32 images (4×4×256 → 8×8×128 → 16×16×64 → 32×32×C), the
  common form for MNIST (padded to 32) and CIFAR-10; the paper trains at 64×64.
- The discriminator returns a logit; the sigmoid is inside the loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from canon.models.generative.gan import AdversarialModel, check_adversarial_options, check_positive_int
from canon.registry import register_model

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "DCGAN", "init_dcgan_weights", "num_stages", "dcgan", "dcgan_32"]

PAPER = "Unsupervised Representation Learning with Deep Convolutional Generative Adversarial Networks, " \
        "2015, arXiv:1511.06434"
NORMS = ("batch", "layer", "none")


def num_stages(image_size: int) -> int:
    """The number of ×2 resolution steps between a 4×4 map and ``image_size`` (a power of 2 >= 8)."""
    if not isinstance(image_size, int) or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of 2 >= 8 (e.g. 32 or 64), got {image_size!r}")
    return int(math.log2(image_size)) - 2


def _norm(kind: str, channels: int) -> nn.Module:
    """Batch norm (DCGAN), layer norm over (C, H, W) with per-channel affine (WGAN-GP), or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def init_dcgan_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for every convolution's weight; N(1, std) scale and 0 shift for the norms."""
    for m in module.modules():
        if getattr(m, "weight", None) is not None and m.weight.is_meta:
            continue  # a shapes-only build on the meta device has no values to initialise
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) -> project to 4×4 -> ×2 transposed-conv stages -> tanh image (N, C, S, S)."""

    def __init__(self, *, image_size: int, out_chans: int, latent_dim: int, base_channels: int):
        super().__init__()
        stages = num_stages(image_size)
        widths = [base_channels * 2 ** (stages - 1 - i) for i in range(stages)]  # 64: 8b, 4b, 2b, b
        self.latent_dim = latent_dim
        self.project = nn.Sequential(  # "project and reshape": (N, 8b, 4, 4) at 64×64
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*[  # each doubles the size and halves the width
            nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                          nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
            for c_in, c_out in zip(widths[:-1], widths[1:])])
        self.to_image = nn.Sequential(  # no batch norm at the output
            nn.ConvTranspose2d(widths[-1], out_chans, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z.view(z.shape[0], self.latent_dim, 1, 1))  # (N, 8b, 4, 4)
        return self.to_image(self.stages(x))                          # (N, C, S, S) in [-1, 1]


class DCGANDiscriminator(nn.Module):
    """Image (N, C, S, S) -> stride-2 conv stages (LeakyReLU 0.2) -> 4×4 conv to one logit (N, 1, 1, 1)."""

    def __init__(self, *, image_size: int, in_chans: int, base_channels: int, norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        stages = num_stages(image_size)
        widths = [base_channels * 2 ** i for i in range(stages)]  # 64: b, 2b, 4b, 8b
        self.from_image = nn.Sequential(  # no norm at the input
            nn.Conv2d(in_chans, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True))
        self.stages = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), _norm(norm, c_out),
                          nn.LeakyReLU(0.2, inplace=True))
            for c_in, c_out in zip(widths[:-1], widths[1:])])
        self.to_logit = nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)  # (N, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_logit(self.stages(self.from_image(x)))


class DCGAN(AdversarialModel):
    """Radford et al.'s DCGAN; see the module docstring.

    Args:
        image_size: square image side, a power of 2 >= 8 (64 in the paper).
        in_chans: image channels (the generator's output, the discriminator's input).
        latent_dim: the dimension of z (100).
        base_channels: the width of the generator's last and the discriminator's first stage.
        generator_loss: ``"non_saturating"`` (default) or ``"minimax"``.
    """

    optimizers = {
        "generator": {"modules": ("generator",), "name": "adam", "lr": 2e-4, "betas": (0.5, 0.999)},
        "discriminator": {"modules": ("discriminator",), "name": "adam", "lr": 2e-4, "betas": (0.5, 0.999)},
    }
    n_critic = 1
    batch_size = 128
    data_range = (-1.0, 1.0)
    discriminator_norm = "batch"

    def __init__(self, *, image_size: int = 64, in_chans: int = 3, latent_dim: int = 100,
                 base_channels: int = 64, generator_loss: str = "non_saturating"):
        super().__init__()
        num_stages(image_size)
        for name, value in (("in_chans", in_chans), ("latent_dim", latent_dim), ("base_channels", base_channels)):
            check_positive_int(value, name)
        check_adversarial_options(self.noise_distribution, generator_loss)
        self.image_size, self.in_chans, self.latent_dim = image_size, in_chans, latent_dim
        self.generator_loss_mode = generator_loss
        self.generator = DCGANGenerator(image_size=image_size, out_chans=in_chans, latent_dim=latent_dim,
                                        base_channels=base_channels)
        self.discriminator = DCGANDiscriminator(image_size=image_size, in_chans=in_chans,
                                                base_channels=base_channels, norm=self.discriminator_norm)
        init_dcgan_weights(self)


@register_model(DCGAN, task="generation", paper=PAPER, input_size=(3, 64, 64), num_classes=None)
def dcgan(**kwargs) -> DCGAN:
    """DCGAN at 64×64×3, z of 100, 64 base channels (G 3,576,704, D 2,765,568 parameters)."""
    return DCGAN(**kwargs)


@register_model(DCGAN, task="generation", paper=PAPER, input_size=(3, 32, 32), num_classes=None)
def dcgan_32(**kwargs) -> DCGAN:
    """DCGAN for 32×32 images (CIFAR-10; MNIST with in_chans=1, padded to 32)."""
    return DCGAN(**{"image_size": 32, **kwargs})
