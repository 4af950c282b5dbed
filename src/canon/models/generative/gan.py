"""The original GAN: a multilayer-perceptron generator and discriminator on flattened MNIST.

Paper: "Generative Adversarial Nets", Goodfellow, Pouget-Abadie, Mirza, Xu, Warde-Farley, Ozair,
Courville, Bengio, 2014, arXiv:1406.2661.

This file also holds what every adversarial model in canon shares (``AdversarialModel``): one
``nn.Module`` with its players as named submodules, so one checkpoint holds them all, and the few
methods a training step needs::

    fake = model.fake_batch(real, generator=g)            # what both losses see this step
    d = model.discriminator_loss(real, fake)              # dict: "loss" to back-propagate + parts
    d["loss"].backward(); d_optimizer.step(); model.after_discriminator_step()
    g = model.generator_loss(real, fake)                  # (run n_critic critic steps per G step)
    g["loss"].backward(); g_optimizer.step()
    images = model.sample(64, generator=torch.Generator().manual_seed(0))

The paper's recipe is data on the class: ``optimizers`` maps each optimiser's name to
``{"modules": (submodule names whose parameters it updates), "name": "adam" | "rmsprop" | "sgd" |
"adagrad", "lr": ..., **other keyword arguments of that torch.optim class}``; ``n_critic`` is the
number of discriminator steps per generator step (the paper's k); ``batch_size`` the paper's
minibatch; ``data_range`` the pixel range the generator's output (and so the data) lives in.

``forward(x)`` is ``discriminate(x)``: like every canon model, the module's input is an image
batch of the registered ``input_size``; ``generate(z)`` and ``sample(num)`` are the generator's
entry points.

Follows the paper:
- Section 3's game ``min_G max_D E[log D(x)] + E[log(1 - D(G(z)))]`` with the *non-saturating*
  generator loss ``-log D(G(z))`` the paper recommends ("rather than training G to minimize
  log(1 - D(G(z))) we can train G to maximize log D(G(z))"); ``generator_loss="minimax"`` keeps the
  original objective, whose gradient vanishes when D rejects the samples confidently.
- Section 5 on MNIST: the generator "used a mixture of rectifier linear activations and sigmoid
  activations", the discriminator "maxout activations", with dropout in the discriminator;
  here G: z (100) -> 1200 ReLU -> 1200 ReLU -> 784 sigmoid, and D: 784 -> maxout 240 units x 5
  pieces -> maxout 240 x 5 -> 1 logit, dropout 0.2 on D's input and 0.5 on its hidden layers.
- k = 1 discriminator step per generator step ("we used k = 1, the least expensive option"),
  minibatch stochastic gradient descent with momentum (Algorithm 1).

Deviates, and why:
- The layer widths, dropout rates and SGD settings (lr 0.1, momentum 0.5, minibatch 100) follow
  the authors' released MNIST configuration as we recall it — the paper does not print them, and
  they were not re-checked against that file here; its momentum ramp and learning-rate decay are
  not recorded (``optimizers`` holds the starting values).
- z ~ U(-1, 1)^100: the paper leaves the prior's form open.
- The discriminator returns a logit; the sigmoid is inside the loss (stable for any logit).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from canon.losses import generative as GL
from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["AdversarialModel", "Maxout", "MLPGenerator", "MaxoutDiscriminator", "MLPGAN", "gan_mlp",
           "check_latent", "check_image_size", "check_positive_int", "check_adversarial_options", "random_tensor"]

PAPER = "Generative Adversarial Nets, 2014, arXiv:1406.2661"
NOISE_DISTRIBUTIONS = ("uniform", "normal")


# --------------------------------------------------------------------------- input checks
def check_latent(z: torch.Tensor, latent_dim: int, model_name: str) -> None:
    """Raise unless ``z`` is a (N, latent_dim) float tensor."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{model_name} expects the noise z as a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"{model_name} expects noise of shape (N, {latent_dim}), got {tuple(z.shape)}")


def check_image_size(x: torch.Tensor, *, in_chans: int, image_size: int, model_name: str) -> None:
    """Raise unless ``x`` is (N, in_chans, image_size, image_size)."""
    check_image_input(x, in_chans=in_chans, min_size=1, model_name=model_name)
    if tuple(x.shape[2:]) != (image_size, image_size):
        raise ValueError(f"{model_name} expects images of shape (N, {in_chans}, {image_size}, {image_size}), "
                         f"got {tuple(x.shape)}; resize the data or build the model with "
                         f"image_size={x.shape[2]}" + ("" if x.shape[2] == x.shape[3] else " (square images only)"))


def random_tensor(sampler, shape: tuple[int, ...], *, generator: torch.Generator | None,
                  device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``sampler(shape)`` (``torch.rand`` or ``torch.randn``) drawn on the generator's device, then
    moved to ``device``: a CPU generator gives the same numbers whatever device the model is on."""
    source = generator.device if generator is not None else device
    return sampler(shape, generator=generator, device=source, dtype=dtype).to(device)


def check_positive_int(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


# --------------------------------------------------------------------------- the shared contract
class AdversarialModel(nn.Module):
    """A generator and a discriminator held as ``self.generator`` and ``self.discriminator``.

    Subclasses build the two players and set ``latent_dim``, ``in_chans``, ``image_size``,
    ``noise_distribution`` and ``generator_loss_mode``; they override the loss methods when their
    paper's losses differ (WGAN, LAPGAN).
    """

    optimizers: dict = {}
    n_critic: int = 1
    batch_size: int = 64
    data_range: tuple[float, float] = (-1.0, 1.0)

    latent_dim: int
    in_chans: int
    image_size: int
    noise_distribution: str = "uniform"
    generator_loss_mode: str = "non_saturating"

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def _placement(self) -> dict:
        """The device and dtype of the model's parameters, for the tensors it creates."""
        p = next(self.parameters())
        return {"device": p.device, "dtype": p.dtype}

    def noise(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z for ``num`` samples, (num, latent_dim), from U(-1, 1) or N(0, 1) per the paper."""
        check_positive_int(num, "num")
        shape = (num, self.latent_dim)
        if self.noise_distribution == "normal":
            return random_tensor(torch.randn, shape, generator=generator, **self._placement())
        return random_tensor(torch.rand, shape, generator=generator, **self._placement()) * 2 - 1

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images G(z), (N, in_chans, image_size, image_size), for noise z of shape (N, latent_dim)."""
        check_latent(z, self.latent_dim, self._model_name)
        return self.generator(z)

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` generated images, (num, in_chans, image_size, image_size)."""
        return self.generate(self.noise(num, generator))

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit (or critic score) per image, (N,)."""
        check_image_size(x, in_chans=self.in_chans, image_size=self.image_size, model_name=self._model_name)
        return self.discriminator(x).reshape(x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminate(x)

    def fake_batch(self, real: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The generated batch one training step shows both players: as many samples as ``real``."""
        return self.sample(real.shape[0], generator)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss": -E[log D(x)] - E[log(1 - D(G(z)))]}``; ``fake`` is detached (trains D only)."""
        loss = GL.gan_discriminator_loss(self.discriminate(real), self.discriminate(fake.detach()))
        return {"loss": loss}

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss": ...}`` with the non-saturating or minimax loss; ``real`` is unused here."""
        return {"loss": GL.gan_generator_loss(self.discriminate(fake), self.generator_loss_mode)}

    def after_discriminator_step(self) -> None:
        """Called after each discriminator update (WGAN clips the critic's weights here)."""


def check_adversarial_options(noise_distribution: str, generator_loss: str) -> None:
    if noise_distribution not in NOISE_DISTRIBUTIONS:
        raise ValueError(f"noise_distribution must be one of {NOISE_DISTRIBUTIONS}, got {noise_distribution!r}")
    if generator_loss not in GL.GENERATOR_LOSS_MODES:
        raise ValueError(f"generator_loss must be one of {GL.GENERATOR_LOSS_MODES}, got {generator_loss!r}")


# --------------------------------------------------------------------------- blocks
class Maxout(nn.Module):
    """Maxout units (Goodfellow et al. 2013): ``max_k (W_k x + b_k)`` over ``pieces`` linear maps."""

    def __init__(self, in_features: int, units: int, pieces: int):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(x.shape[0], self.units, self.pieces).amax(-1)  # (N, units)


class MLPGenerator(nn.Module):
    """z -> ReLU hidden layers -> sigmoid pixels, reshaped to (N, C, H, W)."""

    def __init__(self, latent_dim: int, hidden: tuple[int, ...], image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = image_shape
        layers, width = [], latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers += [nn.Linear(width, image_shape[0] * image_shape[1] * image_shape[2]), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)  # (N, C, H, W) in (0, 1)


class MaxoutDiscriminator(nn.Module):
    """Flattened image -> dropout -> maxout hidden layers (with dropout) -> one logit."""

    def __init__(self, in_features: int, units: int, pieces: int, num_layers: int,
                 input_dropout: float, hidden_dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(input_dropout)]
        width = in_features
        for index in range(num_layers):
            layers += [Maxout(width, units, pieces), nn.Dropout(hidden_dropout)]
            width = units
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, 1) logits


# --------------------------------------------------------------------------- the model
class MLPGAN(AdversarialModel):
    """Goodfellow et al.'s MNIST GAN: MLP generator, maxout discriminator; see the module docstring.

    Args:
        image_size, in_chans: the square images modelled (28, 1 for MNIST).
        latent_dim: the dimension of z.
        generator_hidden: widths of the generator's ReLU layers.
        discriminator_units, discriminator_pieces, discriminator_layers: the maxout layers.
        input_dropout, hidden_dropout: the discriminator's dropout rates.
        generator_loss: ``"non_saturating"`` (default) or ``"minimax"``.
    """

    optimizers = {
        "generator": {"modules": ("generator",), "name": "sgd", "lr": 0.1, "momentum": 0.5},
        "discriminator": {"modules": ("discriminator",), "name": "sgd", "lr": 0.1, "momentum": 0.5},
    }
    n_critic = 1
    batch_size = 100
    data_range = (0.0, 1.0)

    def __init__(self, *, image_size: int = 28, in_chans: int = 1, latent_dim: int = 100,
                 generator_hidden: tuple[int, ...] = (1200, 1200), discriminator_units: int = 240,
                 discriminator_pieces: int = 5, discriminator_layers: int = 2, input_dropout: float = 0.2,
                 hidden_dropout: float = 0.5, generator_loss: str = "non_saturating"):
        super().__init__()
        for name, value in (("image_size", image_size), ("in_chans", in_chans), ("latent_dim", latent_dim),
                            ("discriminator_units", discriminator_units),
                            ("discriminator_pieces", discriminator_pieces),
                            ("discriminator_layers", discriminator_layers)):
            check_positive_int(value, name)
        for h in generator_hidden:
            check_positive_int(h, "each of generator_hidden")
        for name, p in (("input_dropout", input_dropout), ("hidden_dropout", hidden_dropout)):
            if not 0 <= p < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {p!r}")
        check_adversarial_options("uniform", generator_loss)
        self.image_size, self.in_chans, self.latent_dim = image_size, in_chans, latent_dim
        self.noise_distribution, self.generator_loss_mode = "uniform", generator_loss
        pixels = in_chans * image_size * image_size
        self.generator = MLPGenerator(latent_dim, tuple(generator_hidden), (in_chans, image_size, image_size))
        self.discriminator = MaxoutDiscriminator(pixels, discriminator_units, discriminator_pieces,
                                                 discriminator_layers, input_dropout, hidden_dropout)


@register_model(MLPGAN, task="generation", paper=PAPER, input_size=(1, 28, 28), num_classes=None)
def gan_mlp(**kwargs) -> MLPGAN:
    """Goodfellow et al. 2014 on flattened MNIST: MLP generator, maxout discriminator."""
    return MLPGAN(**kwargs)
