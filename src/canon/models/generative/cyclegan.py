"""CycleGAN: unpaired image-to-image translation with cycle consistency.

Paper: "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks", Zhu,
Park, Isola, Efros, 2017, arXiv:1703.10593.

Two generators translate between domains A and B (``generator_ab``: A → B, ``generator_ba``:
B → A) and two discriminators judge each domain (``discriminator_a``, ``discriminator_b``).

Follows the paper:
- Section 4 and Appendix 7.2: the ResNet generator of Johnson et al. — c7s1-64, d128, d256,
  nine residual blocks R256, u128, u64, c7s1-3 — with reflection padding and instance norm, tanh
  output; 11,378,179 parameters at 64 base channels. The 70×70 PatchGAN discriminator C64-C128-
  C256-C512 (4×4 convolutions, LeakyReLU 0.2, instance norm except on C64) and a final 4×4
  convolution to one score per patch: 2,764,737 parameters.
- Section 7.1: the least-squares GAN loss (D minimises ``((D(y) - 1)^2 + D(G(x))^2) / 2``, the
  objective halved while optimising D; G minimises ``(D(G(x)) - 1)^2``); the cycle-consistency
  loss ``||G_BA(G_AB(a)) - a||_1 + ||G_AB(G_BA(b)) - b||_1`` with lambda = 10; the identity loss
  ``||G_AB(b) - b||_1 + ||G_BA(a) - a||_1`` weighted 0.5·lambda (Section 5.2); an image history of
  the 50 last generated images for the discriminator updates (Shrivastava et al.'s trick);
  Adam with lr 2e-4, betas (0.5, 0.999), batch size 1; the same lr for 100 epochs, then a linear
  decay to zero over the next 100 (``lr_schedule``, ``linear_decay_factor``); weights from
  N(0, 0.02).

Deviates, and why:
- Convolutions before instance norm keep their bias (as the authors' code, which the parameter
  counts above assume); instance norm has no affine parameters, again as that code.
- ``cyclegan_32`` is our small form for 32×32 images (e.g. CIFAR-10 horse ↔ deer): 6 residual
  blocks (the paper's choice for 128×128 training images), 32 base channels, and a PatchGAN with
  two stride-2 layers (34×34 receptive field) so that a 32×32 image still gives a 6×6 patch map.
- The history pools live on the model as plain Python state (not in ``state_dict``): a resumed
  run starts with empty pools, which refill within 50 steps.
"""
from __future__ import annotations

import random

import torch
import torch.nn as nn

from canon.losses import generative as GL
from canon.losses.functional import mae_loss
from canon.models._validate import check_image_input
from canon.models.generative.dcgan import init_dcgan_weights
from canon.models.generative.gan import check_positive_int
from canon.registry import register_model

__all__ = ["ResidualBlock", "ResnetGenerator", "PatchDiscriminator", "ImagePool", "linear_decay_factor",
           "CycleGAN", "cyclegan", "cyclegan_32"]

PAPER = "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks, 2017, arXiv:1703.10593"


def linear_decay_factor(epoch: int, constant_epochs: int = 100, decay_epochs: int = 100) -> float:
    """The lr multiplier at ``epoch`` (0-based): 1 for ``constant_epochs`` epochs, then falling
    linearly by ``1 / (decay_epochs + 1)`` per epoch, so the last of the ``decay_epochs`` epochs
    runs at ``1 / (decay_epochs + 1)`` and the next would run at 0 (a ``LambdaLR`` function)."""
    if epoch < 0 or constant_epochs < 0 or decay_epochs < 1:
        raise ValueError(f"need epoch >= 0, constant_epochs >= 0 and decay_epochs >= 1, got "
                         f"{epoch}, {constant_epochs}, {decay_epochs}")
    return max(0.0, 1.0 - max(0, epoch - constant_epochs + 1) / (decay_epochs + 1))


class ImagePool:
    """The history of generated images a discriminator is trained on (Section 4, "we update the
    discriminators using a history of generated images rather than the ones produced by the latest
    generators").

    ``query(images)``: until ``size`` images are stored, each image is stored and returned; then
    each image is, with probability 1/2, swapped for a random stored one (which is returned and
    replaced by the new image) and otherwise returned itself. ``size = 0`` turns the pool off.
    """

    def __init__(self, size: int = 50, seed: int | None = None):
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"ImagePool size must be an int >= 0, got {size!r}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) freshly generated -> (N, C, H, W), a mix of them and older ones."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                index = self.rng.randrange(self.size)
                out.append(self.images[index])
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)


class ResidualBlock(nn.Module):
    """R256: reflect-pad, 3×3 conv, IN, ReLU, reflect-pad, 3×3 conv, IN, plus the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """c7s1-b, d2b, d4b, num_blocks × R4b, u2b, ub, c7s1-C (tanh): (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, in_chans: int = 3, base_channels: int = 64, num_blocks: int = 9):
        super().__init__()
        b = base_channels
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_chans, b, 7),
                                  nn.InstanceNorm2d(b), nn.ReLU(True))                      # (N, b, H, W)
        self.down = nn.Sequential(
            nn.Conv2d(b, 2 * b, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * b), nn.ReLU(True),      # H/2
            nn.Conv2d(2 * b, 4 * b, 3, stride=2, padding=1), nn.InstanceNorm2d(4 * b), nn.ReLU(True))  # H/4
        self.blocks = nn.Sequential(*[ResidualBlock(4 * b) for _ in range(num_blocks)])        # (N, 4b, H/4, W/4)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * b, 2 * b, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(2 * b), nn.ReLU(True),                                            # H/2
            nn.ConvTranspose2d(2 * b, b, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(b), nn.ReLU(True))                                                # H
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(b, in_chans, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


class PatchDiscriminator(nn.Module):
    """PatchGAN: C_b (no norm), then ``num_layers`` 4×4 convs (the last at stride 1), then a 4×4 conv
    to one score per patch. ``num_layers = 3`` is the 70×70 PatchGAN: (N, C, 256, 256) -> (N, 1, 30, 30)."""

    def __init__(self, in_chans: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        b = base_channels
        layers: list[nn.Module] = [nn.Conv2d(in_chans, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = b
        for index in range(1, num_layers + 1):
            out = b * min(2 ** index, 8)
            stride = 1 if index == num_layers else 2
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out),
                       nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, 1, h, w) least-squares scores, one per patch


class CycleGAN(nn.Module):
    """Zhu et al.'s CycleGAN; see the module docstring.

    Training contract (``real`` and ``fake`` are pairs ``(a, b)``)::

        fake = model.fake_batch((real_a, real_b))     # (G_BA(b), G_AB(a)): fakes in A and in B
        g = model.generator_loss((real_a, real_b), fake)       # adversarial + cycle + identity
        d = model.discriminator_loss((real_a, real_b), fake)   # on fakes drawn from the pools

    Args:
        in_chans: channels of both domains' images.
        base_channels, num_blocks: the generators' width and residual blocks (64, 9).
        discriminator_channels, discriminator_layers: the PatchGAN's width and depth (64, 3 = 70×70).
        cycle_weight: lambda (10).
        identity_weight: the identity loss's weight as a fraction of lambda (0.5; 0 turns it off).
        pool_size: the image history per domain (50; 0 turns it off).

    Inputs: (N, in_chans, H, W) with H, W divisible by 4 (the generators' two stride-2 steps) and
    at least ``3 · 2^discriminator_layers`` (a patch map of at least 1×1): 24 for the 70×70 PatchGAN.
    """

    optimizers = {
        "generator": {"modules": ("generator_ab", "generator_ba"), "name": "adam", "lr": 2e-4,
                      "betas": (0.5, 0.999)},
        "discriminator": {"modules": ("discriminator_a", "discriminator_b"), "name": "adam", "lr": 2e-4,
                          "betas": (0.5, 0.999)},
    }
    lr_schedule = {"name": "linear_decay", "constant_epochs": 100, "decay_epochs": 100}
    n_critic = 1
    batch_size = 1
    data_range = (-1.0, 1.0)

    def __init__(self, *, in_chans: int = 3, base_channels: int = 64, num_blocks: int = 9,
                 discriminator_channels: int = 64, discriminator_layers: int = 3, cycle_weight: float = 10.0,
                 identity_weight: float = 0.5, pool_size: int = 50):
        super().__init__()
        for name, value in (("in_chans", in_chans), ("base_channels", base_channels),
                            ("num_blocks", num_blocks), ("discriminator_channels", discriminator_channels),
                            ("discriminator_layers", discriminator_layers)):
            check_positive_int(value, name)
        if cycle_weight < 0 or identity_weight < 0:
            raise ValueError(f"cycle_weight and identity_weight must be >= 0, got {cycle_weight}, {identity_weight}")
        self.in_chans = in_chans
        # the smallest side whose patch map is still 1×1: the stride-2 layers, then two 4×4 stride-1 convs
        self.min_size = 3 * 2 ** discriminator_layers
        self.cycle_weight, self.identity_weight = float(cycle_weight), float(identity_weight)
        self.generator_ab = ResnetGenerator(in_chans, base_channels, num_blocks)
        self.generator_ba = ResnetGenerator(in_chans, base_channels, num_blocks)
        self.discriminator_a = PatchDiscriminator(in_chans, discriminator_channels, discriminator_layers)
        self.discriminator_b = PatchDiscriminator(in_chans, discriminator_channels, discriminator_layers)
        self.pool_a, self.pool_b = ImagePool(pool_size), ImagePool(pool_size)
        init_dcgan_weights(self)

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def _check(self, x: torch.Tensor, what: str) -> None:
        check_image_input(x, in_chans=self.in_chans, min_size=self.min_size,
                          model_name=f"{self._model_name} ({what})", multiple_of=4)

    def _check_pair(self, pair, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{self._model_name}: {what} must be a pair (images of A, images of B)")
        self._check(pair[0], f"{what} of domain A")
        self._check(pair[1], f"{what} of domain B")
        return pair[0], pair[1]

    def translate_ab(self, a: torch.Tensor) -> torch.Tensor:
        """G_AB: images of A (N, C, H, W), H and W divisible by 4 -> images of B, same shape."""
        self._check(a, "input of generator_ab")
        return self.generator_ab(a)

    def translate_ba(self, b: torch.Tensor) -> torch.Tensor:
        """G_BA: images of B -> images of A, same shape."""
        self._check(b, "input of generator_ba")
        return self.generator_ba(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.translate_ab(x)

    def fake_batch(self, real, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fake_a, fake_b) = (G_BA(real_b), G_AB(real_a))``; ``generator`` is unused (no noise)."""
        real_a, real_b = self._check_pair(real, "real")
        return self.generator_ba(real_b), self.generator_ab(real_a)

    def generator_loss(self, real, fake) -> dict[str, torch.Tensor]:
        """LSGAN + lambda·cycle + (identity_weight·lambda)·identity for both generators."""
        real_a, real_b = self._check_pair(real, "real")
        fake_a, fake_b = self._check_pair(fake, "fake")
        parts = {
            "adversarial_ab": GL.least_squares_generator_loss(self.discriminator_b(fake_b)),
            "adversarial_ba": GL.least_squares_generator_loss(self.discriminator_a(fake_a)),
            "cycle_a": mae_loss(self.generator_ba(fake_b), real_a),    # a -> b -> a
            "cycle_b": mae_loss(self.generator_ab(fake_a), real_b),    # b -> a -> b
        }
        loss = (parts["adversarial_ab"] + parts["adversarial_ba"]
                + self.cycle_weight * (parts["cycle_a"] + parts["cycle_b"]))
        if self.identity_weight > 0:
            parts["identity_a"] = mae_loss(self.generator_ba(real_a), real_a)
            parts["identity_b"] = mae_loss(self.generator_ab(real_b), real_b)
            loss = loss + self.identity_weight * self.cycle_weight * (parts["identity_a"] + parts["identity_b"])
        return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}

    def discriminator_loss(self, real, fake) -> dict[str, torch.Tensor]:
        """Both PatchGANs' halved LSGAN losses, each on fakes drawn from its domain's history pool."""
        real_a, real_b = self._check_pair(real, "real")
        fake_a, fake_b = self._check_pair(fake, "fake")
        fake_a, fake_b = self.pool_a.query(fake_a.detach()), self.pool_b.query(fake_b.detach())
        loss_a = GL.least_squares_discriminator_loss(self.discriminator_a(real_a), self.discriminator_a(fake_a))
        loss_b = GL.least_squares_discriminator_loss(self.discriminator_b(real_b), self.discriminator_b(fake_b))
        return {"loss": loss_a + loss_b, "discriminator_a": loss_a.detach(), "discriminator_b": loss_b.detach()}

    def after_discriminator_step(self) -> None:
        """Nothing to do after a discriminator update (kept for the shared contract)."""


@register_model(CycleGAN, task="generation", paper=PAPER, input_size=(3, 256, 256), num_classes=None)
def cyclegan(**kwargs) -> CycleGAN:
    """CycleGAN at 256×256: 9-block ResNet generators (11,378,179), 70×70 PatchGANs (2,764,737)."""
    return CycleGAN(**kwargs)


@register_model(CycleGAN, task="generation", paper=PAPER, input_size=(3, 32, 32), num_classes=None)
def cyclegan_32(**kwargs) -> CycleGAN:
    """A small CycleGAN for 32×32 images: 6 blocks, 32 base channels, a 2-layer PatchGAN."""
    return CycleGAN(**{"base_channels": 32, "num_blocks": 6, "discriminator_layers": 2, **kwargs})
