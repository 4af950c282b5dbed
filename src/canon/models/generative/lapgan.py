"""LAPGAN: a Laplacian pyramid of generative adversarial networks.

Paper: "Deep Generative Image Models using a Laplacian Pyramid of Adversarial Networks", Denton,
Chintala, Szlam, Fergus, 2015, arXiv:1506.05751.

An image I is written as a Laplacian pyramid: the low-pass residual ``I_K = d^K(I)`` and the
band-pass images ``h_k = I_k - u(I_{k+1})`` (``d`` halves the resolution, ``u`` doubles it), and
``I_k = u(I_{k+1}) + h_k`` rebuilds it exactly. LAPGAN has one conditional GAN per level: the
coarsest generator draws the low-pass image from noise; each finer one draws the band-pass image
``h~_k = G_k(z_k, u(I_{k+1}))`` from noise and the upsampled coarser image. Sampling runs coarse
to fine: ``I~_k = u(I~_{k+1}) + h~_k``.

Levels here are numbered **coarse to fine** (level 0 is the 8×8 image of a 32×32 model); the
paper numbers them fine to coarse (k = 0 is the full image).

Follows the paper:
- Section 3.3: levels are trained independently — the fakes of level k are conditioned on the
  *real* coarser image ``l_k = u(I_{k+1})``, and ``D_k`` sees ``h_k`` or ``h~_k`` together with
  ``l_k``, "explicitly added to h_k or h~_k before the first convolution layer".
- Section 4, CIFAR-10 (three levels, 8 → 16 → 32): the coarsest G and D are fully connected nets
  with two ReLU hidden layers, 1200 units for G and 600 with dropout for D, and z is 100-d
  uniform in [-1, 1]; the finer generators are three-layer convolutional ReLU nets with batch
  norm, the noise given as a fourth "colour plane"; the finer discriminators are convolutional.
- Trained with SGD (lr 0.02, decayed by a factor 1 + 4e-5 per step; momentum 0.5 rising by 8e-4
  per epoch to 0.8), recorded in ``optimizers``, ``lr_schedule`` and ``momentum_schedule``.

Deviates, and why:
- The pyramid's ``d`` is a 2×2 average and ``u`` bilinear upsampling (align_corners=False), not
  Burt & Adelson's Gaussian blur and decimation: any ``d``, ``u`` pair gives an exactly
  invertible pyramid, and these two are torch built-ins.
- The finer levels' widths (128 channels, 5×5 kernels, a stride-2 second convolution in D) are
  our choice where the paper gives none; the coarsest generator ends in tanh (the low-pass of
  images in [-1, 1] stays in [-1, 1]) and the band-pass generators are linear.
- ``batch_size = 128`` is our default (not taken from the paper).
- The paper's random 28×28 crops of CIFAR-10 are a data choice left to the task; the model
  works on full 32×32 images (any side divisible by 2^(levels-1)).
- Discriminators return logits; the sigmoid is inside the loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.losses import generative as GL
from canon.models._validate import check_image_input
from canon.models.generative.gan import (AdversarialModel, check_image_size, check_latent, check_positive_int,
                                         random_tensor)
from canon.registry import register_model

__all__ = ["downsample", "upsample", "gaussian_pyramid", "build_laplacian_pyramid",
           "reconstruct_from_laplacian_pyramid", "CoarseGenerator", "CoarseDiscriminator",
           "BandPassGenerator", "BandPassDiscriminator", "LAPGAN", "lapgan"]

PAPER = "Deep Generative Image Models using a Laplacian Pyramid of Adversarial Networks, 2015, arXiv:1506.05751"


# --------------------------------------------------------------------------- the pyramid
def downsample(x: torch.Tensor) -> torch.Tensor:
    """d(.): (N, C, H, W) -> (N, C, H/2, W/2), the mean of each 2×2 block."""
    return F.avg_pool2d(x, 2)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """u(.): (N, C, H, W) -> (N, C, 2H, 2W), bilinear."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _check_pyramid_input(x: torch.Tensor, num_levels: int, name: str) -> None:
    check_positive_int(num_levels, "num_levels")
    channels = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 4 else 1
    check_image_input(x, in_chans=channels, min_size=2 ** (num_levels - 1), model_name=name,
                      multiple_of=2 ** (num_levels - 1))


def gaussian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """``[d^(L-1)(x), ..., d(x), x]``: the image at every level's size, coarse to fine."""
    _check_pyramid_input(x, num_levels, "gaussian_pyramid")
    images = [x]
    for _ in range(num_levels - 1):
        images.append(downsample(images[-1]))
    return images[::-1]


def build_laplacian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """``[I_K, h_{K-1}, ..., h_0]``, coarse to fine: the low-pass image, then the band-pass images
    ``h_k = I_k - u(I_{k+1})``. x: (N, C, H, W) with H, W divisible by 2^(num_levels-1)."""
    images = gaussian_pyramid(x, num_levels)
    return [images[0]] + [fine - upsample(coarse) for coarse, fine in zip(images[:-1], images[1:])]


def reconstruct_from_laplacian_pyramid(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Invert :func:`build_laplacian_pyramid`: ``I_k = u(I_{k+1}) + h_k`` from the coarsest up."""
    if not pyramid:
        raise ValueError("reconstruct_from_laplacian_pyramid: the pyramid is empty")
    image = pyramid[0]
    for level, band in enumerate(pyramid[1:], start=1):
        if tuple(band.shape[-2:]) != (2 * image.shape[-2], 2 * image.shape[-1]):
            raise ValueError(f"reconstruct_from_laplacian_pyramid: level {level} must be twice the size of "
                             f"level {level - 1} ({tuple(image.shape[-2:])}), got {tuple(band.shape[-2:])}")
        image = upsample(image) + band
    return image


# --------------------------------------------------------------------------- the players of each level
class CoarseGenerator(nn.Module):
    """Level 0: z (N, latent_dim) -> two ReLU layers -> tanh low-pass image (N, C, s, s)."""

    def __init__(self, latent_dim: int, hidden: int, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = image_shape
        c, h, w = image_shape
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, c * h * w), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)  # (N, C, s, s)


class CoarseDiscriminator(nn.Module):
    """Level 0: flattened low-pass image -> two ReLU layers with dropout -> one logit (N, 1)."""

    def __init__(self, in_features: int, hidden: int, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BandPassGenerator(nn.Module):
    """Level k >= 1: [l_k, noise plane] (N, C + 1, s, s) -> 3 conv layers -> band-pass image (N, C, s, s)."""

    def __init__(self, in_chans: int, hidden_channels: int, kernel_size: int = 5):
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(
            nn.Conv2d(in_chans + 1, hidden_channels, kernel_size, padding=pad, bias=False),
            nn.BatchNorm2d(hidden_channels), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size, padding=pad, bias=False),
            nn.BatchNorm2d(hidden_channels), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, in_chans, kernel_size, padding=pad))

    def forward(self, noise_plane: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, noise_plane], dim=1))  # (N, C, s, s), unbounded


class BandPassDiscriminator(nn.Module):
    """Level k >= 1: h + l_k (N, C, s, s) -> conv 5×5, conv 5×5 /2 (ReLU) -> dropout -> one logit (N, 1)."""

    def __init__(self, in_chans: int, size: int, hidden_channels: int, kernel_size: int = 5, dropout: float = 0.5):
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, hidden_channels, kernel_size, padding=pad), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size, stride=2, padding=pad), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Flatten(), nn.Linear(hidden_channels * (size // 2) ** 2, 1))

    def forward(self, band: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.net(band + condition)  # the low-pass image added before the first convolution


# --------------------------------------------------------------------------- the model
class LAPGAN(AdversarialModel):
    """Denton et al.'s LAPGAN; see the module docstring.

    ``generators[k]`` and ``discriminators[k]`` are the players of level k (coarse to fine).
    A "fake batch" is a list with one ``(generated, condition)`` pair per level: level 0's
    generated low-pass image with condition ``None``, then each finer level's generated band-pass
    image and the real upsampled coarser image it was conditioned on.

    Args:
        image_size: the finest level's side (32); levels have sides image_size / 2^(L-1-k).
        in_chans: image channels.
        num_levels: pyramid levels (3: 8 → 16 → 32).
        latent_dim: the coarsest level's z (100).
        coarse_generator_hidden, coarse_discriminator_hidden: the fully connected widths (1200, 600).
        hidden_channels: the convolutional levels' width.
    """

    optimizers = {
        "generator": {"modules": ("generators",), "name": "sgd", "lr": 0.02, "momentum": 0.5},
        "discriminator": {"modules": ("discriminators",), "name": "sgd", "lr": 0.02, "momentum": 0.5},
    }
    # lr_t = lr_0 / (1 + 4e-5)^t per step; momentum 0.5 + 8e-4 per epoch, at most 0.8 (Section 4).
    lr_schedule = {"name": "exponential_per_step", "gamma": 1 / (1 + 4e-5)}
    momentum_schedule = {"start": 0.5, "increase_per_epoch": 8e-4, "max": 0.8}
    n_critic = 1
    batch_size = 128
    data_range = (-1.0, 1.0)
    noise_distribution = "uniform"

    def __init__(self, *, image_size: int = 32, in_chans: int = 3, num_levels: int = 3, latent_dim: int = 100,
                 coarse_generator_hidden: int = 1200, coarse_discriminator_hidden: int = 600,
                 hidden_channels: int = 128):
        super().__init__()
        for name, value in (("image_size", image_size), ("in_chans", in_chans), ("num_levels", num_levels),
                            ("latent_dim", latent_dim), ("coarse_generator_hidden", coarse_generator_hidden),
                            ("coarse_discriminator_hidden", coarse_discriminator_hidden),
                            ("hidden_channels", hidden_channels)):
            check_positive_int(value, name)
        factor = 2 ** (num_levels - 1)
        if image_size % factor or image_size // factor < 2:
            raise ValueError(f"image_size must be divisible by 2^(num_levels-1) = {factor} with a coarsest "
                             f"side of at least 2, got image_size={image_size}, num_levels={num_levels}")
        self.image_size, self.in_chans, self.num_levels, self.latent_dim = image_size, in_chans, num_levels, latent_dim
        self.level_sizes = tuple(image_size // 2 ** (num_levels - 1 - k) for k in range(num_levels))
        coarse = self.level_sizes[0]
        self.generators = nn.ModuleList(
            [CoarseGenerator(latent_dim, coarse_generator_hidden, (in_chans, coarse, coarse))]
            + [BandPassGenerator(in_chans, hidden_channels) for _ in self.level_sizes[1:]])
        self.discriminators = nn.ModuleList(
            [CoarseDiscriminator(in_chans * coarse * coarse, coarse_discriminator_hidden)]
            + [BandPassDiscriminator(in_chans, size, hidden_channels) for size in self.level_sizes[1:]])

    # ----------------------------------------------------------------- generation
    def noise(self, num: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """One noise tensor per level, U(-1, 1): (num, latent_dim), then (num, 1, s_k, s_k) planes."""
        check_positive_int(num, "num")
        shapes = [(num, self.latent_dim)] + [(num, 1, s, s) for s in self.level_sizes[1:]]
        placement = self._placement()
        return [random_tensor(torch.rand, shape, generator=generator, **placement) * 2 - 1 for shape in shapes]

    def _check_noises(self, noises: list[torch.Tensor]) -> None:
        if not isinstance(noises, (list, tuple)) or len(noises) != self.num_levels:
            raise ValueError(f"{self._model_name} expects one noise tensor per level ({self.num_levels}), "
                             f"as model.noise(num) returns")
        check_latent(noises[0], self.latent_dim, self._model_name)
        n = noises[0].shape[0]
        for level, (z, size) in enumerate(zip(noises[1:], self.level_sizes[1:]), start=1):
            if tuple(z.shape) != (n, 1, size, size):
                raise ValueError(f"{self._model_name}: the noise of level {level} must be ({n}, 1, {size}, {size}), "
                                 f"got {tuple(z.shape)}")

    def generate(self, noises: list[torch.Tensor]) -> torch.Tensor:
        """Coarse-to-fine sampling: ``I~_0 = G_0(z_0)``, ``I~_k = u(I~_{k-1}) + G_k(z_k, u(I~_{k-1}))``."""
        self._check_noises(noises)
        image = self.generators[0](noises[0])                      # (N, C, 8, 8)
        for generator, z in zip(self.generators[1:], noises[1:]):
            condition = upsample(image)                            # l_k, (N, C, 2s, 2s)
            image = condition + generator(z, condition)            # I~_k = l_k + h~_k
        return image                                               # (N, C, image_size, image_size)

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generate(self.noise(num, generator))

    # ----------------------------------------------------------------- training
    def _real_levels(self, real: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Per level: the real target (low-pass, then band-pass images) and its condition l_k."""
        check_image_size(real, in_chans=self.in_chans, image_size=self.image_size, model_name=self._model_name)
        images = gaussian_pyramid(real, self.num_levels)
        conditions = [None] + [upsample(coarse) for coarse in images[:-1]]
        targets = [images[0]] + [fine - cond for fine, cond in zip(images[1:], conditions[1:])]
        return targets, conditions

    def fake_batch(self, real: torch.Tensor, generator: torch.Generator | None = None):
        """Per level ``(generated, condition)``, each finer level conditioned on the real coarser image."""
        _, conditions = self._real_levels(real)
        noises = self.noise(real.shape[0], generator)
        fakes = [(self.generators[0](noises[0]), None)]
        for gen, z, condition in zip(self.generators[1:], noises[1:], conditions[1:]):
            fakes.append((gen(z, condition), condition))
        return fakes

    def _level_logits(self, level: int, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if level == 0:
            return self.discriminators[0](x).reshape(x.shape[0])
        return self.discriminators[level](x, condition).reshape(x.shape[0])

    def _check_fakes(self, fake) -> None:
        if not isinstance(fake, (list, tuple)) or len(fake) != self.num_levels:
            raise ValueError(f"{self._model_name}: fake must be the per-level list model.fake_batch(real) returns")

    def discriminator_loss(self, real: torch.Tensor, fake) -> dict[str, torch.Tensor]:
        """Each level's GAN discriminator loss (``"level_k"``) and their sum (``"loss"``)."""
        self._check_fakes(fake)
        targets, conditions = self._real_levels(real)
        losses = {}
        for level, (target, condition, (generated, _)) in enumerate(zip(targets, conditions, fake)):
            losses[f"level_{level}"] = GL.gan_discriminator_loss(
                self._level_logits(level, target, condition), self._level_logits(level, generated.detach(), condition))
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}

    def generator_loss(self, real: torch.Tensor, fake) -> dict[str, torch.Tensor]:
        """Each level's non-saturating generator loss (``"level_k"``) and their sum (``"loss"``)."""
        self._check_fakes(fake)
        losses = {f"level_{level}": GL.gan_generator_loss(self._level_logits(level, generated, condition))
                  for level, (generated, condition) in enumerate(fake)}
        return {"loss": sum(losses.values()), **{k: v.detach() for k, v in losses.items()}}

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """Each level's logit for the pyramid of x, (N, num_levels): ``D_k(h_k + l_k)``."""
        targets, conditions = self._real_levels(x)
        return torch.stack([self._level_logits(level, t, c) for level, (t, c) in
                            enumerate(zip(targets, conditions))], dim=1)


@register_model(LAPGAN, task="generation", paper=PAPER, input_size=(3, 32, 32), num_classes=None)
def lapgan(**kwargs) -> LAPGAN:
    """LAPGAN for CIFAR-10 32×32: three levels, 8 → 16 → 32."""
    return LAPGAN(**kwargs)
