"""The variational auto-encoder.

Paper: "Auto-Encoding Variational Bayes", Kingma & Welling, 2013, arXiv:1312.6114.

An encoder q(z|x) = N(mu(x), diag(sigma^2(x))) and a decoder p(x|z) are trained together by
maximising the evidence lower bound (ELBO)
``L(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) <= log p(x)`` with ``p(z) = N(0, I)``, the
expectation estimated through the reparameterisation ``z = mu + sigma ⊙ eps``, ``eps ~ N(0, I)``.

Follows the paper:
- Appendix C: MLP encoder and decoder with one tanh hidden layer (500 units for MNIST); the
  encoder outputs mu and log sigma^2; a Bernoulli MLP decoder (sigmoid outputs) for binary data
  and a Gaussian MLP decoder (mean through a sigmoid, and log sigma^2) for real-valued data.
- Section 2.4 / Appendix B: the SGVB estimator with the KL term in closed form,
  ``-KL = 0.5 sum(1 + log sigma^2 - mu^2 - sigma^2)``, and L = 1 sample of z per example.
- Section 5: minibatch M = 100, Adagrad (lr 0.01, from the paper's {0.01, 0.02, 0.1}),
  weights drawn from N(0, 0.01) (read as the standard deviation).

Deviates, and why:
- The test log-likelihood is the importance-weighted estimate of Burda, Grosse & Salakhutdinov,
  "Importance Weighted Autoencoders", 2015, arXiv:1509.00519:
  ``log p(x) ~= log (1/k) sum_j p(x, z_j) / q(z_j|x)``, z_j ~ q(z|x), with k = 100 or more; it is
  a lower bound that tightens as k grows (k = 1 is the ELBO). The paper estimates the marginal
  likelihood with an HMC-based estimator instead (Appendix D), which is much slower.
- The paper's weight decay (a N(0, I) prior on the parameters) is not part of the recipe.
- ``vae_gaussian`` (CIFAR-10, 32×32×3, Gaussian decoder, 1000 hidden units, 100 latents) is our
  form for colour images; the paper's Gaussian decoder was trained on Frey Face. Its likelihood
  is a density on [0, 1]^D, not comparable with discrete models' NLL.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from canon.losses import generative as GL
from canon.models.generative.gan import check_image_size, check_latent, check_positive_int, random_tensor
from canon.registry import register_model

__all__ = ["reparameterize", "log_standard_normal", "log_diagonal_normal", "MLP", "VAE", "vae", "vae_gaussian",
           "DECODERS"]

PAPER = "Auto-Encoding Variational Bayes, 2013, arXiv:1312.6114"
DECODERS = ("bernoulli", "gaussian")


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z = mu + exp(logvar / 2) * eps``, eps ~ N(0, I): a sample of q that is differentiable in mu, logvar."""
    eps = random_tensor(torch.randn, mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension: (..., D) -> (...)."""
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)


def log_diagonal_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension: (..., D) -> (...)."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


class MLP(nn.Module):
    """Linear layers with tanh between them: in -> hidden... -> out (no activation at the end)."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VAE(nn.Module):
    """Kingma & Welling's VAE with MLP encoder and decoder; see the module docstring.

    Data: x is (N, in_chans, image_size, image_size) in [0, 1] (binary for the Bernoulli decoder).
    ``forward(x)`` returns ``{"mu", "logvar", "z", "logits"}`` (Bernoulli) or ``{"mu", "logvar",
    "z", "mean", "decoder_logvar"}`` (Gaussian): everything the ELBO needs.

    Args:
        image_size, in_chans: the square images modelled.
        latent_dim: the dimension of z.
        hidden_dims: the tanh hidden layers of the encoder and (mirrored) the decoder.
        decoder: ``"bernoulli"`` or ``"gaussian"``.
        init_std: the standard deviation of the initial weights (the paper's N(0, 0.01)).
    """

    optimizers = {"model": {"name": "adagrad", "lr": 0.01}}
    batch_size = 100
    data_range = (0.0, 1.0)

    def __init__(self, *, image_size: int = 28, in_chans: int = 1, latent_dim: int = 20,
                 hidden_dims: Sequence[int] = (500,), decoder: str = "bernoulli", init_std: float = 0.01):
        super().__init__()
        for name, value in (("image_size", image_size), ("in_chans", in_chans), ("latent_dim", latent_dim)):
            check_positive_int(value, name)
        for h in hidden_dims:
            check_positive_int(h, "each of hidden_dims")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std!r}")
        self.image_size, self.in_chans, self.latent_dim, self.decoder_type = image_size, in_chans, latent_dim, decoder
        self.num_dims = in_chans * image_size * image_size
        self.encoder = MLP(self.num_dims, hidden_dims, 2 * latent_dim)                 # -> (mu, log sigma^2)
        outputs = self.num_dims if decoder == "bernoulli" else 2 * self.num_dims       # logits | (mean, log var)
        self.decoder = MLP(latent_dim, tuple(reversed(tuple(hidden_dims))), outputs)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, init_std)
                nn.init.normal_(m.bias, 0.0, init_std)

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def _check(self, x: torch.Tensor) -> None:
        check_image_size(x, in_chans=self.in_chans, image_size=self.image_size, model_name=self._model_name)

    def _check_values(self, x: torch.Tensor) -> None:
        if not torch.is_floating_point(x):
            raise TypeError(f"{self._model_name} expects float images in [0, 1], got dtype {x.dtype}")
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise ValueError(f"{self._model_name} expects images in [0, 1], got values in "
                             f"[{float(x.min()):.4g}, {float(x.max()):.4g}]; undo the normalisation first")

    # ----------------------------------------------------------------- the two networks
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x): (mu, logvar), each (N, latent_dim)."""
        self._check(x)
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """p(x|z): ``{"logits"}`` (N, C, H, W) for Bernoulli, ``{"mean", "decoder_logvar"}`` for Gaussian."""
        check_latent(z, self.latent_dim, self._model_name)
        shape = (z.shape[0], self.in_chans, self.image_size, self.image_size)
        out = self.decoder(z)
        if self.decoder_type == "bernoulli":
            return {"logits": out.view(shape)}
        mean, logvar = out.chunk(2, dim=1)
        return {"mean": torch.sigmoid(mean).view(shape), "decoder_logvar": logvar.view(shape)}

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return {"mu": mu, "logvar": logvar, "z": z, **self.decode(z)}

    # ----------------------------------------------------------------- the likelihood
    def reconstruction_log_likelihood(self, x: torch.Tensor, decoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(x|z) per example, (N,), for the decoder outputs of :meth:`decode`."""
        if self.decoder_type == "bernoulli":
            return -GL.bernoulli_nll(decoded["logits"], x, reduction="none")
        return -GL.gaussian_nll(decoded["mean"], decoded["decoder_logvar"], x, reduction="none")

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The evidence lower bound per example in nats, (N,): one-sample log p(x|z) minus the analytic KL."""
        self._check(x)
        self._check_values(x)
        out = self.forward(x, generator)
        kl = GL.gaussian_kl_divergence(out["mu"], out["logvar"], reduction="none")
        return self.reconstruction_log_likelihood(x, out) - kl

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss: the mean negative ELBO per example, nats."""
        return -self.elbo(x, generator).mean()

    def log_likelihood(self, x: torch.Tensor, num_samples: int = 100,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """The importance-weighted estimate of log p(x) per example with k = ``num_samples``, (N,).

        ``log (1/k) sum_j exp(log p(x|z_j) + log p(z_j) - log q(z_j|x))``, z_j ~ q(z|x).
        """
        check_positive_int(num_samples, "num_samples")
        self._check(x)
        self._check_values(x)
        mu, logvar = self.encode(x)                                            # (N, D)
        log_weights = []
        for _ in range(num_samples):
            z = reparameterize(mu, logvar, generator)                          # (N, D)
            log_joint = self.reconstruction_log_likelihood(x, self.decode(z)) + log_standard_normal(z)
            log_weights.append(log_joint - log_diagonal_normal(z, mu, logvar))
        log_weights = torch.stack(log_weights)                                 # (k, N)
        return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)

    def nll(self, x: torch.Tensor, num_samples: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p(x) per example in nats from :meth:`log_likelihood`, (N,)."""
        return -self.log_likelihood(x, num_samples, generator)

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None, mean: bool = True) -> torch.Tensor:
        """``num`` images from z ~ N(0, I): the decoder's mean (default) or a draw from p(x|z)."""
        check_positive_int(num, "num")
        p = next(self.parameters())
        z = random_tensor(torch.randn, (num, self.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        decoded = self.decode(z)
        if self.decoder_type == "bernoulli":
            probs = torch.sigmoid(decoded["logits"])
            uniform = random_tensor(torch.rand, probs.shape, generator=generator, device=p.device, dtype=p.dtype)
            return probs if mean else (uniform < probs).to(probs.dtype)
        if mean:
            return decoded["mean"]
        noise = random_tensor(torch.randn, decoded["mean"].shape, generator=generator, device=p.device, dtype=p.dtype)
        return (decoded["mean"] + torch.exp(0.5 * decoded["decoder_logvar"]) * noise).clamp(0, 1)


@register_model(VAE, task="generation", paper=PAPER, input_size=(1, 28, 28), num_classes=None)
def vae(**kwargs) -> VAE:
    """VAE for binarised MNIST: 500 tanh hidden units, 20 latents, a Bernoulli decoder."""
    return VAE(**kwargs)


@register_model(VAE, task="generation", paper=PAPER, input_size=(3, 32, 32), num_classes=None)
def vae_gaussian(**kwargs) -> VAE:
    """VAE with a Gaussian decoder for CIFAR-10 32×32×3: 1000 tanh hidden units, 100 latents."""
    return VAE(**{"image_size": 32, "in_chans": 3, "latent_dim": 100, "hidden_dims": (1000,),
                  "decoder": "gaussian", **kwargs})
