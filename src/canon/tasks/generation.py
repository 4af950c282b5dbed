"""Generation: adversarial players, CycleGAN's translators and likelihood models, trained on images.

The models (:mod:`canon.models.generative`) come in three kinds, told apart by what they offer
(:func:`model_kind`):

- **adversarial** (``gan_mlp``, ``dcgan``, ``dcgan_32``, ``wgan*``, ``wgan_gp*``, ``lapgan``):
  one module holding a generator and a discriminator (critic), with ``fake_batch``,
  ``discriminator_loss``, ``generator_loss``, ``after_discriminator_step``, ``noise``, ``sample``
  and the paper's recipe as class data (``optimizers``, ``n_critic``, ``batch_size``,
  ``data_range``; LAPGAN's ``lr_schedule`` and ``momentum_schedule``);
- **translation** (``cyclegan``, ``cyclegan_32``): two generators and two discriminators between
  two image domains, trained on unpaired images;
- **likelihood** (``pixelcnn*``, ``gated_pixelcnn``, ``pixelrnn_*``, ``vae*``): ``loss``, ``nll``,
  ``sample``, and one optimizer.

Data
----
Any labelled image spec of :func:`canon.data.build_dataset` (``mnist``, ``digits``,
``imagefolder:PATH[?val=N]``, ...). Every image is resized to the model's side with
:func:`canon.data.transforms.resize` (bilinear, antialiased: the same resize the classification
task feeds a classifier with, so MNIST's 28×28 digits reach the 32×32 models, and a classifier of
the same data, as the same 32×32 images), then

- **binarised** for models with a Bernoulli likelihood (``pixelcnn_mnist``, ``pixelrnn_*``,
  ``vae``), by ``--binarize``: ``stochastic`` (default) draws each pixel once as a Bernoulli of
  its grey level, with a generator seeded by the image's position (``2·index`` for the training
  split, ``2·index + 1`` for the test split), so every run and every epoch sees the same binary
  images (a fixed binarisation in the manner of Salakhutdinov & Murray's, not their file);
  ``threshold`` keeps the pixels above 0.5;
- **quantised** to the model's levels for 256-way (categorical) pixel models;
- mapped to the model's ``data_range`` ([-1, 1] for the DCGAN family, [0, 1] for the others).

``--classes A,B`` keeps only those classes. CycleGAN needs exactly two: domain A is the first
class, domain B the second (``--classes horse,deer`` on ``imagefolder:../shared/data/cifar10?val=5000``).
Two classes never share an image, so the two sets are disjoint by construction (the task checks
it); training item ``i`` pairs the ``i``-th image of A with image ``perm(i)`` of B for one fixed
random permutation — every loss of CycleGAN is a sum of one-domain terms, so which images share a
batch does not matter. The held-out images of both classes (the spec's test split: ``?val=N``
holds out a class-stratified N) are the test set.

Optimisation
------------
``--recipe paper`` (default): one optimizer per player, built from the model's ``optimizers``
recipe (optimizer, lr, betas, momentum; no weight decay), with the paper's schedule where the
model states one (LAPGAN: the lr divided by 1 + 4e-5 every step and the momentum rising by 8e-4
an epoch from 0.5 to 0.8; CycleGAN: a constant lr for the first half of the run, then a linear
decay, the paper's 100 + 100 epochs scaled to ``--epochs``); the optimisation flags of ``canon
train`` (``--lr``, ``--optimizer``, ...) must then stay at their defaults, or the task says which
one would be ignored. ``--recipe flags`` builds every player's optimizer and schedule from those
flags instead. ``--batch-size`` is the engine's; the papers' batch sizes are the models'
``batch_size`` attribute (e.g. 64 for the WGANs, 128 for DCGAN), to pass by hand.

The step (``train_step``), one batch of real images:

- adversarial, the schedule of Algorithm 1 of the GAN and WGAN papers: one discriminator (critic)
  step on a fresh fake batch, then ``after_discriminator_step`` (WGAN's weight clipping); after
  every ``n_critic``-th batch (``step.step_count % n_critic == n_critic - 1``) one generator step
  on another fresh fake batch, with the discriminator's parameters frozen so that the
  generator's loss leaves no gradient on them;
- translation, in the order of the CycleGAN authors' code: the generators' step (adversarial +
  cycle + identity losses), then the discriminators' step on the same fakes drawn through the
  history pools;
- likelihood: ``model.loss(x)`` (mean NLL per image, or the negative ELBO), one optimizer.

``--ema DECAY`` keeps an exponential moving average of the generator's weights,
``ema <- DECAY·ema + (1 - DECAY)·weights`` after each generator step (Yazıcı et al. 2018,
"The Unusual Effectiveness of Averaging in GAN Training", arXiv:1806.04498). The averages live
in the state of an optimizer-shaped object named ``generator_ema`` (:class:`WeightAverage`), so
the engine's checkpoints hold them and ``--resume`` restores them exactly; sample grids and the
evaluation then use the averaged weights, and ``RUN/ema.safetensors`` holds the model with them
(``canon sample`` prefers it). Buffers (batch-norm statistics) are not averaged.

Players with two steps per batch cannot split a batch into micro-batches (``--accumulate``): the
second player must see the first one's update.

Every epoch
-----------
- ``RUN/samples/epoch_NNN.png``: a grid of samples from the same fixed noise all run
  (``--sample-seed``; a translation grid of the same held-out images for CycleGAN), also sent to
  TensorBoard with ``logger.image``; ``--sample-grid 0`` turns it off (the default for the
  pixel-by-pixel models, whose sampling costs H·W·C forward passes: use ``canon sample``);
- ``history.csv``: ``train_discriminator_loss`` and ``train_generator_loss`` (and their parts:
  the Wasserstein estimate, the gradient penalty, LAPGAN's levels, CycleGAN's cycle and identity
  terms), each player's gradient norm before its step, the test metrics; ``curves.png`` is
  redrawn with both players' losses and the test metrics.

Evaluation (``test_...`` columns, and ``canon eval``)
------------------------------------------------------
- likelihood: ``test_nll`` (nats per image) and ``test_bits_per_dim``; for the VAE the NLL is the
  importance-weighted estimate with k = ``--importance-samples`` (Burda et al. 2015) and
  ``test_elbo`` the evidence lower bound, both with a fixed generator of draws;
- adversarial, with ``--fid-classifier RUN_DIR`` (a canon classifier trained on the same data):
  ``test_fid``, the Fréchet distance (:func:`canon.metrics.frechet_distance`) between the
  classifier's penultimate features (the input of its last linear layer) of ``--fid-samples``
  samples from fixed noise and of the test images. **It is not Inception FID** (the weights for
  that are not available here): it compares canon runs on one dataset with one classifier, never
  published FID figures. And the mode coverage: the share of the samples the classifier puts in
  each class (``test_min_class_share``; ``test_classes_covered`` counts the classes holding at
  least ``--min-class-share``), :func:`canon.metrics.mode_coverage`;
- translation: ``test_cycle_error``, the mean absolute error per sub-pixel on the [0, 1] scale of
  ``G_BA(G_AB(a))`` against ``a`` and ``G_AB(G_BA(b))`` against ``b`` over the held-out images;
  with ``--fid-classifier``, ``test_translated_rate``: the share of translated held-out images the
  classifier puts in the other domain's class (``test_real_rate`` is the same share for the
  untranslated images, the baseline).

Commands: ``canon sample RUN --num 64 --out grid.png [--seed S]`` draws a grid of samples;
``canon predict RUN IMAGE...`` translates images both ways with a CycleGAN (and gives the NLL of
each image under a likelihood model).
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from canon.engine.checkpoint import CheckpointError, atomic_write_bytes, load_model, save_weights
from canon.engine.config import TrainConfig
from canon.engine.options import option
from canon.engine.trainer import TaskData
from canon.tasks.base import CliCommand, Task

__all__ = ["GenerationOptions", "GenerationTask", "GenerationImages", "UnpairedDomains", "DomainImages",
           "WeightAverage", "ClassifierFeatures", "model_kind", "binarize", "to_unit_range", "from_unit_range",
           "image_grid", "save_png", "plot_generation_curves", "sample_images", "KINDS", "BINARIZE", "RECIPES"]

KINDS = ("adversarial", "translation", "likelihood")
BINARIZE = ("stochastic", "threshold")
RECIPES = ("paper", "flags")
TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD,
                    "adagrad": torch.optim.Adagrad}
# The flags --recipe paper must leave alone (each would be ignored): TrainConfig field names.
_OPTIMISATION_FLAGS = ("optimizer", "lr", "momentum", "betas", "eps", "weight_decay", "scheduler", "warmup_epochs",
                       "warmup_steps", "milestones", "gamma")


@dataclass
class GenerationOptions:
    binarize: str = option("stochastic", "how models with a Bernoulli likelihood see grey images: one fixed "
                                         "Bernoulli draw per pixel, or pixels > 0.5", choices=BINARIZE)
    classes: str | None = option(None, "keep only these classes of the data, comma-separated (CycleGAN: exactly "
                                       "two, domain A then domain B, e.g. horse,deer)", metavar="A,B")
    recipe: str = option("paper", "each player's optimizer and schedule: the model's paper recipe, or the "
                                  "--optimizer/--lr/--scheduler flags for every player", choices=RECIPES)
    n_critic: int | None = option(None, "discriminator (critic) steps per generator step (default: the model's "
                                        "recipe, 5 for the WGANs, 1 for the others)")
    ema: float | None = option(None, "keep an exponential moving average of the generator's weights with this "
                                     "decay (e.g. 0.999) for samples and evaluation", metavar="DECAY")
    sample_grid: int | None = option(None, "images in the per-epoch sample grid (default 64; 0 for the "
                                           "pixel-by-pixel models, 8 per domain for CycleGAN; 0 turns it off)")
    sample_seed: int = option(0, "seed of the fixed noise behind the sample grids and the evaluation's samples")
    fid_classifier: str | None = option(None, "a canon classifier trained on the same data: its features give the "
                                              "Fréchet distance and its predictions the mode coverage (not "
                                              "Inception FID)", metavar="RUN_DIR")
    fid_samples: int = option(10000, "samples drawn for the Fréchet distance and the mode coverage")
    min_class_share: float = option(0.05, "mode coverage: a class counts as covered with at least this share of "
                                          "the samples")
    importance_samples: int = option(100, "VAE: importance samples k behind the test NLL")

    def __post_init__(self):
        if self.binarize not in BINARIZE:
            raise ValueError(f"--binarize must be one of {', '.join(BINARIZE)}, got {self.binarize!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.classes is not None:
            if isinstance(self.classes, (list, tuple)):
                self.classes = ",".join(str(c) for c in self.classes)
            names = [c.strip() for c in str(self.classes).split(",")]
            if not all(names) or len(set(names)) != len(names):
                raise ValueError(f"--classes must name distinct classes separated by commas, got {self.classes!r}")
        for name in ("n_critic", "sample_grid", "fid_samples", "importance_samples"):
            value = getattr(self, name)
            if value is None and name in ("n_critic", "sample_grid"):
                continue
            least = 0 if name == "sample_grid" else (2 if name == "fid_samples" else 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= {least}, got {value!r}")
        if self.ema is not None and not 0.0 < float(self.ema) < 1.0:
            raise ValueError(f"--ema must be a decay in (0, 1), e.g. 0.999, got {self.ema!r}")
        if not 0.0 <= self.min_class_share <= 1.0:
            raise ValueError(f"--min-class-share must lie in [0, 1], got {self.min_class_share!r}")

    @property
    def class_list(self) -> list[str] | None:
        return None if self.classes is None else [c.strip() for c in str(self.classes).split(",")]


# ----------------------------------------------------------------------------- small pure helpers
def model_kind(model: nn.Module) -> str:
    """``"translation"`` (CycleGAN), ``"adversarial"`` (a GAN's players) or ``"likelihood"``."""
    if hasattr(model, "translate_ab"):
        return "translation"
    if hasattr(model, "discriminator_loss") and hasattr(model, "generator_loss"):
        return "adversarial"
    if hasattr(model, "nll") and hasattr(model, "loss"):
        return "likelihood"
    raise TypeError(f"{type(model).__name__} is not a generation model: it has neither the players' losses "
                    "(fake_batch, discriminator_loss, generator_loss) nor a likelihood (nll, loss)")


def _needs_binary(model: nn.Module) -> bool:
    return getattr(model, "distribution", None) == "bernoulli" or getattr(model, "decoder_type", None) == "bernoulli"


def _quantised_levels(model: nn.Module) -> int | None:
    return model.num_levels if getattr(model, "distribution", None) == "categorical" else None


def binarize(image: torch.Tensor, mode: str, seed: int | None = None) -> torch.Tensor:
    """A grey image in [0, 1] -> 0/1 floats: ``threshold`` (pixels > 0.5), or ``stochastic``: one
    Bernoulli draw per pixel with probability its grey level, from a generator seeded with ``seed``."""
    if mode == "threshold":
        return (image > 0.5).to(image.dtype)
    if mode == "stochastic":
        if seed is None:
            raise ValueError("stochastic binarisation needs the seed of its draw")
        generator = torch.Generator().manual_seed(int(seed))
        return (torch.rand(image.shape, generator=generator) < image).to(image.dtype)
    raise ValueError(f"binarize mode must be one of {BINARIZE}, got {mode!r}")


def from_unit_range(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """[0, 1] -> the model's pixel range ``(lo, hi)``: ``lo + (hi - lo) x``."""
    lo, hi = data_range
    return lo + (hi - lo) * x


def to_unit_range(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """The model's pixel range -> [0, 1] (clamped: a generator may overshoot its range slightly)."""
    lo, hi = data_range
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] -> one (C, rows·(H+p)+p, nrow·(W+p)+p) image, row by row."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"image_grid expects a non-empty (N, C, H, W) batch, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = max(1, min(nrow, n))
    rows = math.ceil(n / nrow)
    grid = images.new_full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for k in range(n):
        r, col = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = images[k]
    return grid


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a (C, H, W) image in [0, 1] (C = 1 or 3) as an 8-bit PNG, atomically."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_png expects a (1 or 3, H, W) image, got shape {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _grad_norm(params: Iterable[torch.Tensor]) -> float:
    """The global L2 norm of the parameters' gradients (0 when none has one)."""
    total = 0.0
    for p in params:
        if p.grad is not None:
            total += float(p.grad.detach().float().pow(2).sum())
    return math.sqrt(total)


@contextlib.contextmanager
def _frozen(params: list[torch.Tensor]):
    """Parameters that take no gradient inside the block (the other player's, during one's step)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- data
class GenerationImages(Dataset):
    """A labelled image dataset as a generative model sees it: ``(image, label)`` with the image
    resized to ``image_size``, binarised or quantised as the model's likelihood needs, and mapped
    to ``data_range``.

    ``indices``: the samples of ``dataset`` kept (a class selection), in order; ``split_offset``
    (0 train, 1 test) and the sample's index in ``dataset`` seed its stochastic binarisation.
    """

    def __init__(self, dataset, *, image_size: int, data_range: tuple[float, float], binarize_mode: str | None,
                 num_levels: int | None, indices: list[int] | None = None, split_offset: int = 0):
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.image_size = int(image_size)
        self.data_range = tuple(float(v) for v in data_range)
        self.binarize_mode = binarize_mode
        self.num_levels = num_levels
        self.split_offset = split_offset

    @property
    def info(self):
        return self.dataset.info

    @property
    def targets(self) -> torch.Tensor:
        return torch.as_tensor(self.dataset.targets)[torch.tensor(self.indices, dtype=torch.long)]

    def __len__(self) -> int:
        return len(self.indices)

    def unit_image(self, index: int) -> tuple[torch.Tensor, int]:
        """The ``index``-th image in [0, 1] after resizing, binarising or quantising, and its label."""
        from canon.data import transforms as T

        source = self.indices[index]
        image, label = self.dataset[source]
        size = (self.image_size, self.image_size)
        if tuple(image.shape[-2:]) != size:
            image = T.resize(image, size)
        if self.binarize_mode is not None:
            image = binarize(image, self.binarize_mode, seed=2 * source + self.split_offset)
        elif self.num_levels is not None:  # a categorical likelihood needs the levels k / (L - 1) exactly
            image = (image.clamp(0, 1) * (self.num_levels - 1)).round() / (self.num_levels - 1)
        return image, int(label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.unit_image(index)
        return from_unit_range(image, self.data_range), label


class UnpairedDomains(Dataset):
    """CycleGAN's training pairs: item ``i`` is ``(a[i mod |A|], b[perm(i) mod |B|])`` for one fixed
    random permutation (seed 0) of ``max(|A|, |B|)``; every image of the larger set once an epoch."""

    def __init__(self, a: GenerationImages, b: GenerationImages, seed: int = 0):
        if not len(a) or not len(b):
            raise ValueError(f"CycleGAN needs images of both domains, got {len(a)} and {len(b)}")
        self.a, self.b = a, b
        self.length = max(len(a), len(b))
        self.permutation = torch.randperm(self.length, generator=torch.Generator().manual_seed(seed)).tolist()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a[index % len(self.a)][0], self.b[self.permutation[index] % len(self.b)][0]


class DomainImages(Dataset):
    """Held-out images of both domains, each once: ``(image, 0)`` for A's, then ``(image, 1)`` for B's."""

    def __init__(self, a: GenerationImages, b: GenerationImages):
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < len(self.a):
            return self.a[index][0], 0
        return self.b[index - len(self.a)][0], 1


# ----------------------------------------------------------------------------- the generator's average
class WeightAverage(torch.optim.Optimizer):
    """Not an optimizer: ``step()`` moves an exponential moving average of the parameters towards
    their current values, ``average <- decay·average + (1 - decay)·parameter``, starting from the
    parameters' values at construction. It is shaped as a ``torch.optim.Optimizer`` so that the
    engine saves its state (the averages) in every checkpoint and ``--resume`` restores it; its
    ``lr`` is 0 (the engine's history reads one)."""

    def __init__(self, params, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"WeightAverage decay must lie in (0, 1), got {decay!r}")
        super().__init__(params, {"lr": 0.0, "decay": float(decay)})
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["average"] = p.detach().clone()

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["average"].mul_(group["decay"]).add_(p.detach(), alpha=1.0 - group["decay"])

    def parameters_and_averages(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(p, self.state[p]["average"]) for group in self.param_groups for p in group["params"]]

    @contextlib.contextmanager
    def swapped_in(self):
        """The averages in place of the parameters inside the block, the parameters restored after."""
        pairs = self.parameters_and_averages()
        saved = [p.detach().clone() for p, _ in pairs]
        with torch.no_grad():
            for p, average in pairs:
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for (p, _), value in zip(pairs, saved):
                    p.copy_(value)


# ----------------------------------------------------------------------------- the classifier's view
class ClassifierFeatures:
    """A trained canon classifier as the feature extractor behind the Fréchet distance and the mode
    coverage: images in [0, 1] are resized to its input size (bilinear, antialiased, as its
    training data was), normalised with its statistics, and classified; the features are the
    input of its last ``nn.Linear`` layer (the penultimate activations: 84 for LeNet-5, 64 for a
    CIFAR ResNet), captured with a forward pre-hook."""

    def __init__(self, model: nn.Module, *, input_size, mean, std, class_names: list[str], in_chans: int,
                 source: str = "classifier"):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{source}: the classifier has no nn.Linear layer whose input could serve as features")
        self.model = model.eval().requires_grad_(False)
        self.last_linear = linears[-1]
        self.input_size = tuple(int(s) for s in input_size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.class_names = list(class_names)
        self.in_chans = int(in_chans)
        self.source = source

    @classmethod
    def load(cls, path: str, device: torch.device | None = None) -> "ClassifierFeatures":
        model, meta = load_model(path)
        extra = meta.get("extra", {})
        if extra.get("task", "classification") != "classification":
            raise ValueError(f"--fid-classifier {meta['path']} is a {extra.get('task')} checkpoint; it must be a "
                             "canon classifier (canon train lenet5 / resnet20_cifar ...) trained on the same data")
        in_chans = getattr(model, "canon_kwargs", {}).get("in_chans", getattr(model, "in_chans", 3))
        size = extra.get("input_size") or [32, 32]
        mean = extra.get("mean") or [0.0] * in_chans
        std = extra.get("std") or [1.0] * in_chans
        if device is not None:
            model.to(device)
        return cls(model, input_size=size, mean=mean, std=std, class_names=extra.get("class_names") or [],
                   in_chans=in_chans, source=f"--fid-classifier {meta['path']}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, chunk: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) in [0, 1] -> (features (N, D) float64 on the CPU, logits (N, K) on the CPU)."""
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"{self.source} takes {self.in_chans}-channel images, got shape {tuple(images.shape)}; "
                             "train the classifier on the same data as the generator")
        device = next(self.model.parameters()).device
        features, logits = [], []
        captured: list[torch.Tensor] = []
        handle = self.last_linear.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            for start in range(0, images.shape[0], chunk):
                x = images[start:start + chunk].to(device, torch.float32)
                if tuple(x.shape[-2:]) != self.input_size:
                    x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
                x = (x - self.mean.to(device)) / self.std.to(device)
                captured.clear()
                out = self.model(x)
                features.append(captured[-1].flatten(1).double().cpu())
                logits.append(out.float().cpu())
        finally:
            handle.remove()
        return torch.cat(features), torch.cat(logits)


# ----------------------------------------------------------------------------- the task
class GenerationTask(Task):
    name = "generation"
    Options = GenerationOptions
    primary_metric = "test_nll"
    higher_is_better = False
    sample_unit = "images"
    data_parallel = "allreduce"  # the players step separately: the engine averages each optimizer's gradients

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        self.kind: str | None = None
        self.image_size: int | None = None
        self.in_chans: int | None = None
        self.data_range: tuple[float, float] = (0.0, 1.0)
        self.binarize_mode: str | None = None
        self.class_names: list[str] = []
        self.domain_names: list[str] = []
        self.classifier: ClassifierFeatures | None = None
        self.classifier_path: str | None = None
        self.ema: WeightAverage | None = None
        self.players: dict[str, list[torch.Tensor]] = {}
        self.n_critic = 1
        self.momentum_schedule: dict | None = None
        self.num_levels: int | None = None
        self._test_set = None
        self._reference: tuple[int, torch.Tensor, float] | None = None
        self._grid_images: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ data
    def _set_kind(self, kind: str) -> None:
        self.kind = kind
        self.primary_metric, self.higher_is_better = {
            "likelihood": ("test_nll", False), "adversarial": ("test_fid", False),
            "translation": ("test_translated_rate", True)}[kind]

    def _probe(self, model_name: str, in_chans: int, model_kwargs: dict) -> nn.Module:
        """The model built on the meta device: its kind, size, range and likelihood, without weights."""
        from canon.registry import create_model

        with torch.device("meta"):
            return create_model(model_name, **{"in_chans": in_chans, **model_kwargs})

    def _configure_from_model(self, probe: nn.Module, model_name: str) -> None:
        from canon.registry import model_info

        self._set_kind(model_kind(probe))
        self.image_size = int(getattr(probe, "image_size", None) or model_info(model_name).input_size[-1])
        self.in_chans = int(probe.in_chans)
        self.data_range = tuple(float(v) for v in getattr(probe, "data_range", (0.0, 1.0)))
        self.binarize_mode = self.options.binarize if _needs_binary(probe) else None
        self.num_levels = _quantised_levels(probe)

    def _class_indices(self, info, classes: list[str] | None) -> list[int] | None:
        if classes is None:
            return None
        names = list(info.class_names)
        missing = [c for c in classes if c not in names]
        if missing:
            import difflib

            hints = [f"{c!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(c, names, 1))
                                 else "") for c in missing]
            raise ValueError(f"--classes: {', '.join(hints)} not among the data's classes {', '.join(names)}")
        return [names.index(c) for c in classes]

    def _images(self, dataset, split_offset: int, keep: list[int] | None) -> GenerationImages:
        targets = torch.as_tensor(dataset.targets)
        indices = None if keep is None else torch.nonzero(torch.isin(targets, torch.tensor(keep))).flatten().tolist()
        return GenerationImages(dataset, image_size=self.image_size, data_range=self.data_range,
                                binarize_mode=self.binarize_mode, num_levels=self.num_levels, indices=indices,
                                split_offset=split_offset)

    def _domain_images(self, dataset, split_offset: int, keep: list[int]) -> tuple[GenerationImages, GenerationImages]:
        a = self._images(dataset, split_offset, [keep[0]])
        b = self._images(dataset, split_offset, [keep[1]])
        if set(a.indices) & set(b.indices):  # two classes never share an image; say so if a dataset did
            raise ValueError("the two CycleGAN domains share images; pick two different classes")
        return a, b

    def _datasets(self, spec: str, data_dir: str | None, train: bool = True, configure=None) -> TaskData:
        """The wrapped train and test splits of ``spec``; ``configure(info)`` runs once the data's facts are known."""
        from canon.data import build_dataset

        train_set = build_dataset(spec, split="train", data_dir=data_dir) if train else None
        test_set = build_dataset(spec, split="test", data_dir=data_dir)
        info = (train_set or test_set).info
        if getattr(info, "task", "classification") != "classification":
            raise ValueError(f"{spec!r} is a {info.task} dataset; generation models learn from labelled images "
                             "(mnist, digits, imagefolder:PATH[?val=N], ...)")
        if configure is not None:
            configure(info)
        if info.in_chans != self.in_chans:
            raise ValueError(f"the model takes {self.in_chans}-channel images, {spec!r} has {info.in_chans}; "
                             f"leave in_chans to the data (it is set from it)")
        classes = self.options.class_list
        if self.kind == "translation" and (classes is None or len(classes) != 2):
            raise ValueError("CycleGAN translates between two classes of the data: pass --classes A,B "
                             f"(e.g. --classes horse,deer), got {self.options.classes!r}; the data has "
                             f"{', '.join(info.class_names)}")
        keep = self._class_indices(info, classes)
        self.class_names = list(info.class_names)
        if self.kind == "translation":
            self.domain_names = list(classes)
            test = DomainImages(*self._domain_images(test_set, 1, keep))
            train_ds = UnpairedDomains(*self._domain_images(train_set, 0, keep)) if train_set is not None else None
        else:
            test = self._images(test_set, 1, keep)
            train_ds = self._images(train_set, 0, keep) if train_set is not None else None
        self._test_set = test
        return TaskData(train=train_ds, test=test, info=info)

    def build_data(self, run) -> TaskData:
        cfg = run.config

        def configure(info):
            self._configure_from_model(self._probe(cfg.model, info.in_chans, cfg.model_kwargs), cfg.model)

        return self._datasets(cfg.data, cfg.data_dir, configure=configure)

    def model_kwargs(self, data: TaskData) -> dict[str, Any]:
        return {"in_chans": data.info.in_chans}

    def build_model(self, run, data: TaskData) -> nn.Module:
        model = super().build_model(run, data)
        if self.kind == "translation":  # the history pools draw from the run's seed, not the OS
            model.pool_a.rng, model.pool_b.rng = random.Random(run.config.seed), random.Random(run.config.seed + 1)
        self._load_classifier(run.device)
        return model

    def _load_classifier(self, device) -> None:
        if not self.options.fid_classifier:
            return
        from canon.engine.checkpoint import resolve_weights_path

        self.classifier_path = str(resolve_weights_path(self.options.fid_classifier).resolve())
        self.classifier = ClassifierFeatures.load(self.classifier_path, device)
        self._check_classifier()

    def _check_classifier(self) -> None:
        c = self.classifier
        if c.in_chans != self.in_chans:
            raise ValueError(f"{c.source} takes {c.in_chans}-channel images, the generator makes {self.in_chans}")
        if self.kind == "translation":
            missing = [d for d in self.domain_names if d not in c.class_names]
            if missing:
                raise ValueError(f"{c.source} does not know the classes {missing} (its classes: "
                                 f"{', '.join(c.class_names)}); train it on the data the domains come from")
        elif self.class_names and c.class_names != self.class_names:
            raise ValueError(f"{c.source} was trained on the classes {c.class_names}, the data has "
                             f"{self.class_names}: train the classifier on the same data")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self, model: nn.Module, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        kind = model_kind(model)
        if self.kind is None:
            self._set_kind(kind)
        recipe = getattr(type(model), "optimizers", None) or {}
        if not recipe:
            raise ValueError(f"{type(model).__name__} states no optimizer recipe (an `optimizers` class attribute)")
        if kind != "likelihood" and config.accumulate > 1:
            raise ValueError(f"--accumulate {config.accumulate}: a {kind} model's players step one after the other "
                             "within a batch, so a batch cannot be split into micro-batches; use --accumulate 1")
        if self.options.recipe == "paper":
            self._refuse_ignored_flags(config, model)
        self.players = {}
        optimizers: dict[str, torch.optim.Optimizer] = {}
        for name, spec in recipe.items():
            params = self._recipe_params(model, name, spec)
            self.players[name] = params
            if self.options.recipe == "paper":
                kwargs = {k: v for k, v in spec.items() if k not in ("modules", "name")}
                if spec["name"] not in TORCH_OPTIMIZERS:
                    raise ValueError(f"recipe optimizer {spec['name']!r} is not one of {', '.join(TORCH_OPTIMIZERS)}")
                optimizers[name] = TORCH_OPTIMIZERS[spec["name"]](params, **kwargs)
            else:
                from canon.engine.optim import build_optimizer

                optimizers[name] = build_optimizer(config.optimizer, params, lr=config.lr,
                                                   weight_decay=config.weight_decay, momentum=config.momentum,
                                                   betas=config.betas, eps=config.eps)
        self._check_players_cover(model)
        self.n_critic = self.options.n_critic or int(getattr(model, "n_critic", 1))
        self.momentum_schedule = getattr(model, "momentum_schedule", None) if self.options.recipe == "paper" else None
        self.ema = None
        if self.options.ema is not None:
            if "generator" not in self.players:
                raise ValueError(f"--ema averages a generator's weights; {type(model).__name__} has no generator "
                                 f"(its optimizers: {', '.join(self.players)})")
            self.ema = WeightAverage(self.players["generator"], self.options.ema)
            optimizers["generator_ema"] = self.ema
        return optimizers

    def _recipe_params(self, model: nn.Module, name: str, spec: dict) -> list[torch.Tensor]:
        modules = spec.get("modules")
        if modules is None:
            if len(getattr(type(model), "optimizers", {})) > 1:
                raise ValueError(f"recipe optimizer {name!r} names no modules, but the model has several players")
            return list(model.parameters())
        params = []
        for module_name in modules:
            part = getattr(model, module_name, None)
            if not isinstance(part, nn.Module):
                raise ValueError(f"recipe optimizer {name!r} names {module_name!r}, which is no submodule of "
                                 f"{type(model).__name__}")
            params += list(part.parameters())
        return params

    def _check_players_cover(self, model: nn.Module) -> None:
        seen: dict[int, str] = {}
        for name, params in self.players.items():
            for p in params:
                if id(p) in seen:
                    raise ValueError(f"the optimizers {seen[id(p)]!r} and {name!r} share parameters")
                seen[id(p)] = name
        left = [n for n, p in model.named_parameters() if id(p) not in seen]
        if left:
            raise ValueError(f"no optimizer of the recipe updates {left[:3]}...")

    def _refuse_ignored_flags(self, config: TrainConfig, model: nn.Module) -> None:
        defaults = TrainConfig(model=config.model)
        changed = [name for name in _OPTIMISATION_FLAGS if getattr(config, name) != getattr(defaults, name)]
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise ValueError(f"{flags} would be ignored: --recipe paper builds each player's optimizer from "
                             f"{type(model).__name__}'s recipe ({_describe_recipe(model)}); pass --recipe flags to "
                             "use the optimisation flags for every player")

    def configure_schedulers(self, optimizers, config, steps_per_epoch, model) -> dict[str, Any]:
        players = {name: o for name, o in optimizers.items() if name != "generator_ema"}
        if self.options.recipe == "flags":
            return super().configure_schedulers(players, config, steps_per_epoch, model)
        schedule = getattr(model, "lr_schedule", None)
        if not schedule:
            return {}
        if schedule.get("name") == "exponential_per_step":  # LAPGAN: lr_t = lr_0 · gamma^t
            gamma = float(schedule["gamma"])
            return {name: torch.optim.lr_scheduler.LambdaLR(o, lambda s, g=gamma: g ** s)
                    for name, o in players.items()}
        if schedule.get("name") == "linear_decay":  # CycleGAN: constant, then linear to 0; scaled to --epochs
            from canon.models.generative.cyclegan import linear_decay_factor

            paper_total = schedule["constant_epochs"] + schedule["decay_epochs"]
            constant = int(round(config.epochs * schedule["constant_epochs"] / paper_total))
            decay = max(1, config.epochs - constant)
            per_epoch = max(steps_per_epoch, 1)
            return {name: torch.optim.lr_scheduler.LambdaLR(
                        o, lambda s, c=constant, d=decay: linear_decay_factor(s // per_epoch, c, d))
                    for name, o in players.items()}
        raise ValueError(f"unknown lr_schedule {schedule!r} in {type(model).__name__}'s recipe")

    # ------------------------------------------------------------------ the step
    def train_step(self, model: nn.Module, batch: Any, step) -> None:
        module = step.module
        kind = self.kind or model_kind(module)
        if self.momentum_schedule:  # LAPGAN: momentum 0.5, + 8e-4 an epoch, at most 0.8
            s = self.momentum_schedule
            momentum = min(s["start"] + s["increase_per_epoch"] * step.epoch, s["max"])
            for name in self.players:
                for group in step.optimizers[name].param_groups:
                    group["momentum"] = momentum
        if kind == "likelihood":
            self._likelihood_step(module, batch, step)
        elif kind == "translation":
            self._translation_step(module, batch, step)
        else:
            self._adversarial_step(module, batch, step)

    def _likelihood_step(self, module, batch, step) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        with step.autocast():
            loss = module.loss(x)
        step.backward(loss)
        step.step("model")
        values = {"loss": loss.item()}  # nats per image: the NLL, or the VAE's negative ELBO
        if not hasattr(module, "elbo"):
            from canon.metrics.generative import bits_per_dimension

            values["bits_per_dim"] = bits_per_dimension(loss.item(), int(x[0].numel()))
        step.log(**values)

    def _log_player(self, step, player: str, losses: dict[str, torch.Tensor], n: int) -> None:
        values = {f"{player}_{key}": float(value.detach()) for key, value in losses.items() if value.numel() == 1}
        values[f"{player}_grad_norm"] = _grad_norm(self.players[player])
        step.log(n, **values)

    def _generator_step(self, step, n: int, loss: dict[str, torch.Tensor]) -> None:
        step.backward(loss["loss"])
        self._log_player(step, "generator", loss, n)
        step.step("generator")
        if self.ema is not None:
            step.step("generator_ema")

    def _adversarial_step(self, module, batch, step) -> None:
        real = batch[0]
        n = real.shape[0]
        with step.autocast():
            with torch.no_grad():  # the discriminator's loss detaches the fakes anyway
                fake = module.fake_batch(real)
            d = module.discriminator_loss(real, fake)
        step.backward(d["loss"])
        self._log_player(step, "discriminator", d, n)
        step.step("discriminator")
        module.after_discriminator_step()
        if step.step_count % self.n_critic == self.n_critic - 1:
            with _frozen(self.players["discriminator"]):
                with step.autocast():
                    fake = module.fake_batch(real)  # a fresh batch of noise, as Algorithm 1 draws
                    g = module.generator_loss(real, fake)
                self._generator_step(step, n, g)

    def _translation_step(self, module, batch, step) -> None:
        real = (batch[0], batch[1])
        n = real[0].shape[0]
        with _frozen(self.players["discriminator"]):
            with step.autocast():
                fake = module.fake_batch(real)
                g = module.generator_loss(real, fake)
            self._generator_step(step, n, g)
        with step.autocast():
            d = module.discriminator_loss(real, (fake[0].detach(), fake[1].detach()))
        step.backward(d["loss"])
        self._log_player(step, "discriminator", d, n)
        step.step("discriminator")
        module.after_discriminator_step()

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def _sampling(self, module: nn.Module):
        """Eval mode, no gradients, and the averaged generator weights when ``--ema`` is on."""
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), (self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()):
                yield
        finally:
            module.train(was_training)

    def _noise_generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.options.sample_seed + offset)

    def evaluate(self, model: nn.Module, loader, *, full: bool = False) -> dict[str, Any]:
        kind = self.kind or model_kind(model)
        with self._sampling(model):
            if kind == "likelihood":
                return self._evaluate_likelihood(model, loader)
            if kind == "translation":
                return self._evaluate_translation(model, loader, full)
            return self._evaluate_adversarial(model, loader, full)

    def _evaluate_likelihood(self, model, loader) -> dict[str, Any]:
        from canon.metrics.generative import bits_per_dimension

        is_vae = hasattr(model, "elbo")
        generator = self._noise_generator(1)  # the VAE's draws of z: the same every evaluation
        nll_sum = elbo_sum = 0.0
        count, dims = 0, None
        for x, _ in loader:
            dims = int(x[0].numel())
            if is_vae:
                elbo_sum += float(model.elbo(x, generator=generator).double().sum())
                nll = model.nll(x, num_samples=self.options.importance_samples, generator=generator)
            else:
                nll = model.nll(x)
            nll_sum += float(nll.double().sum())
            count += x.shape[0]
        if not count:
            raise ValueError("the test split is empty")
        result = {"test_nll": nll_sum / count}
        if _needs_binary(model) or _quantised_levels(model):  # a probability mass: bits per sub-pixel
            result["test_bits_per_dim"] = bits_per_dimension(result["test_nll"], dims)
        if is_vae:
            result["test_elbo"] = elbo_sum / count
            result["test_importance_samples"] = self.options.importance_samples
        return result

    def _reference_features(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's features and logits of the test images (computed once)."""
        size = len(loader.dataset)
        if self._reference is None or self._reference[0] != size:
            images = torch.cat([to_unit_range(x, self.data_range).cpu() for x, _ in loader])
            features, logits = self.classifier(images)
            labels = torch.cat([torch.as_tensor(y).cpu() for _, y in loader])
            accuracy = float((logits.argmax(1) == labels).double().mean())
            self._reference = (size, features, accuracy)
        return self._reference[1], self._reference[2]

    def draw_samples(self, model: nn.Module, num: int, generator: torch.Generator, chunk: int = 500) -> torch.Tensor:
        """``num`` samples in [0, 1] on the CPU, drawn in chunks from one generator of noise."""
        images = []
        for start in range(0, num, chunk):
            images.append(to_unit_range(model.sample(min(chunk, num - start), generator=generator),
                                        self.data_range).float().cpu())
        return torch.cat(images)

    def _evaluate_adversarial(self, model, loader, full: bool) -> dict[str, Any]:
        if self.classifier is None:
            return {}
        from canon.metrics.generative import frechet_distance_from_features, mode_coverage

        real_features, real_accuracy = self._reference_features(loader)
        fake = self.draw_samples(model, self.options.fid_samples, self._noise_generator(1))
        features, logits = self.classifier(fake)
        coverage = mode_coverage(logits.argmax(1), self.classifier.num_classes, self.options.min_class_share)
        result = {"test_fid": frechet_distance_from_features(real_features, features),
                  "test_classes_covered": coverage["covered"], "test_min_class_share": min(coverage["shares"]),
                  "test_max_class_share": max(coverage["shares"]),
                  "test_classifier_accuracy_real": real_accuracy}
        if full:
            result["class_shares"] = dict(zip(self.classifier.class_names, coverage["shares"]))
            result["fid_samples"] = self.options.fid_samples
            result["fid_classifier"] = self.classifier_path
            result["fid_note"] = ("Fréchet distance on a canon classifier's penultimate features, not Inception FID: "
                                  "comparable only between canon runs on this data with this classifier")
        return result

    def _evaluate_translation(self, model, loader, full: bool) -> dict[str, Any]:
        scale = self.data_range[1] - self.data_range[0]
        errors = {0: [], 1: []}
        translated_hits = {0: 0, 1: 0}
        real_hits = {0: 0, 1: 0}
        counts = {0: 0, 1: 0}
        other = None
        if self.classifier is not None:
            names = self.classifier.class_names
            other = {0: names.index(self.domain_names[1]), 1: names.index(self.domain_names[0])}
        for x, domain in loader:
            domain = torch.as_tensor(domain, device=x.device)
            for d in (0, 1):
                images = x[domain == d]
                if not len(images):
                    continue
                forward, backward = ((model.translate_ab, model.translate_ba) if d == 0
                                     else (model.translate_ba, model.translate_ab))
                translated = forward(images)
                cycled = backward(translated)
                errors[d].append(((cycled - images).abs().flatten(1).mean(1) / scale).double().cpu())
                counts[d] += len(images)
                if other is not None:
                    _, logits = self.classifier(to_unit_range(translated, self.data_range))
                    translated_hits[d] += int((logits.argmax(1) == other[d]).sum())
                    _, logits = self.classifier(to_unit_range(images, self.data_range))
                    real_hits[d] += int((logits.argmax(1) == other[d]).sum())
        if not counts[0] or not counts[1]:
            raise ValueError(f"the held-out set needs images of both domains, got {counts[0]} and {counts[1]}")
        a_err, b_err = torch.cat(errors[0]), torch.cat(errors[1])
        result = {"test_cycle_error": float(torch.cat([a_err, b_err]).mean()),
                  "test_cycle_error_a": float(a_err.mean()), "test_cycle_error_b": float(b_err.mean())}
        if other is not None:
            total = counts[0] + counts[1]
            result.update({
                "test_translated_rate": (translated_hits[0] + translated_hits[1]) / total,
                "test_translated_rate_ab": translated_hits[0] / counts[0],
                "test_translated_rate_ba": translated_hits[1] / counts[1],
                "test_real_rate": (real_hits[0] + real_hits[1]) / total})
        if full:
            result["domains"] = {"a": self.domain_names[0], "b": self.domain_names[1],
                                 "held_out_a": counts[0], "held_out_b": counts[1]}
        return result

    # ------------------------------------------------------------------ figures
    def sample_grid_images(self, model: nn.Module, data_test=None) -> torch.Tensor | None:
        """The per-epoch grid's images in [0, 1]: samples of the fixed noise, or CycleGAN's rows
        (A, G_AB(A), G_BA(G_AB(A)), B, G_BA(B), G_AB(G_BA(B))) for the first held-out images."""
        kind = self.kind or model_kind(model)
        default = 0 if hasattr(model, "levels") else (8 if kind == "translation" else 64)
        count = default if self.options.sample_grid is None else self.options.sample_grid
        if count == 0:
            return None
        with self._sampling(model):
            if kind == "translation":
                a, b = self._held_out_grid_images(data_test, count)
                device = next(model.parameters()).device
                a, b = a.to(device), b.to(device)
                ab = model.translate_ab(a)
                ba = model.translate_ba(b)
                rows = [a, ab, model.translate_ba(ab), b, ba, model.translate_ab(ba)]
                return torch.cat([to_unit_range(r, self.data_range).cpu() for r in rows])
            return self.draw_samples(model, count, self._noise_generator(0))

    def _held_out_grid_images(self, data_test, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._grid_images is None:
            if data_test is None:
                raise ValueError("a translation grid needs the held-out images")
            a = torch.stack([data_test.a[i][0] for i in range(min(count, len(data_test.a)))])
            b = torch.stack([data_test.b[i][0] for i in range(min(count, len(data_test.b)))])
            self._grid_images = (a, b)
        return self._grid_images

    def on_epoch_end(self, model: nn.Module, epoch: int, logger) -> None:
        run_dir = getattr(logger, "run_dir", None)
        if run_dir is None:
            return
        run_dir = Path(run_dir)
        images = self.sample_grid_images(model, self._test_set)
        if images is not None:
            nrow = min(8, images.shape[0]) if self.kind == "translation" else 8
            grid = image_grid(images, nrow=nrow)
            save_png(grid, run_dir / "samples" / f"epoch_{epoch + 1:03d}.png")
            logger.image("samples", grid, epoch + 1)
        if self.ema is not None:
            with self.ema.swapped_in():
                save_weights(run_dir / "ema.safetensors", model,
                             extra={"epoch": epoch + 1, "task": self.name, "ema_decay": self.options.ema,
                                    **self.checkpoint_meta()})
        history = run_dir / "history.csv"
        if history.is_file():
            try:
                with history.open() as f:
                    rows = list(csv.DictReader(f))
                plot_generation_curves(rows, run_dir / "curves.png")
            except Exception as e:  # a figure must never stop a run
                logger.info(f"warning: could not redraw curves.png: {e}")

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "input_size": [self.image_size, self.image_size] if self.image_size else [],
                "in_chans": self.in_chans, "data_range": list(self.data_range), "binarize": self.binarize_mode,
                "classes": self.options.class_list, "class_names": self.class_names, "domains": self.domain_names,
                "fid_classifier": self.classifier_path, "fid_samples": self.options.fid_samples,
                "min_class_share": self.options.min_class_share,
                "importance_samples": self.options.importance_samples, "sample_seed": self.options.sample_seed}

    # ------------------------------------------------------------------ canon eval
    def _configure_from_meta(self, meta: dict, model: nn.Module) -> None:
        extra = meta.get("extra", {})
        self._set_kind(extra.get("kind") or model_kind(model))
        size = extra.get("input_size") or []
        from canon.registry import model_info

        self.image_size = int(size[-1]) if size else int(getattr(model, "image_size", None)
                                                         or model_info(meta["model"]).input_size[-1])
        self.in_chans = int(extra.get("in_chans") or getattr(model, "in_chans"))
        self.data_range = tuple(extra.get("data_range") or getattr(model, "data_range", (0.0, 1.0)))
        self.binarize_mode = extra.get("binarize") if _needs_binary(model) else None
        self.num_levels = _quantised_levels(model)
        options = self.options
        options.classes = ",".join(extra["classes"]) if extra.get("classes") else None
        for key in ("fid_samples", "min_class_share", "importance_samples", "sample_seed"):
            if extra.get(key) is not None:
                setattr(options, key, extra[key])
        if extra.get("binarize"):
            options.binarize = extra["binarize"]
        options.fid_classifier = extra.get("fid_classifier")

    def build_eval_data(self, data, data_dir, meta, model) -> TaskData:
        self._configure_from_meta(meta, model)
        out = self._datasets(data, data_dir, train=False)
        self._load_classifier(next(model.parameters()).device)
        return out

    def write_figures(self, model, data, result, out_dir: Path) -> dict[str, Any]:
        images = self.sample_grid_images(model, data.test)
        if images is None:
            return {}
        path = save_png(image_grid(images, nrow=8), Path(out_dir) / "samples.png")
        return {"samples_png": str(path)}

    # ------------------------------------------------------------------ canon predict
    @torch.no_grad()
    def predict(self, model, meta, inputs, *, save_dir=None, topk: int = 5, device=None):
        from canon.data import load_image
        from canon.data import transforms as T
        from canon.metrics.generative import bits_per_dimension

        if not inputs:
            raise CheckpointError("no input images given")
        self._configure_from_meta(meta, model)
        device = device or torch.device("cpu")
        kind = self.kind
        if kind == "adversarial":
            raise ValueError(f"{meta['model']} generates images from noise: draw them with `canon sample "
                             f"{Path(meta['path']).parent}` (canon predict translates with a CycleGAN, or scores "
                             "images under a likelihood model)")
        size = (self.image_size, self.image_size)
        results = []
        out_dir = Path(save_dir) if save_dir else Path(meta["path"]).parent / "translations"
        for path in inputs:
            image = load_image(path, self.in_chans)
            original_size = tuple(image.shape[-2:])
            image = T.resize(image, size) if original_size != size else image
            if kind == "translation":
                x = from_unit_range(image, self.data_range)[None].to(device)
                domains = meta.get("extra", {}).get("domains") or ["a", "b"]
                entry = {"input": str(path), "translated": {}}
                for name, translate in ((domains[1], model.translate_ab), (domains[0], model.translate_ba)):
                    target = out_dir / f"{Path(path).stem}_to_{name}.png"
                    save_png(to_unit_range(translate(x)[0], self.data_range), target)
                    entry["translated"][name] = str(target)
                results.append(entry)
                continue
            if self.binarize_mode is not None:
                image = binarize(image, self.binarize_mode, seed=0)
            elif self.num_levels is not None:
                image = (image * (self.num_levels - 1)).round() / (self.num_levels - 1)
            x = image[None].to(device)
            generator = torch.Generator().manual_seed(self.options.sample_seed + 1)
            if hasattr(model, "elbo"):
                nll = float(model.nll(x, num_samples=self.options.importance_samples, generator=generator)[0])
            else:
                nll = float(model.nll(x)[0])
            entry = {"input": str(path), "nll_nats": nll}
            if self.binarize_mode is not None or self.num_levels is not None:
                entry["bits_per_dim"] = float(bits_per_dimension(nll, int(x[0].numel())))
            results.append(entry)
        return results

    # ------------------------------------------------------------------ canon sample
    @classmethod
    def cli_commands(cls) -> list[CliCommand]:
        return [CliCommand("sample", "draw a grid of samples from a trained generation model "
                                     "(canon sample RUN --num 64 --out grid.png --seed 0)",
                           _sample_arguments, _sample_command)]


def _describe_recipe(model: nn.Module) -> str:
    parts = []
    for name, spec in getattr(type(model), "optimizers", {}).items():
        extras = ", ".join(f"{k} {v}" for k, v in spec.items() if k not in ("modules", "name"))
        parts.append(f"{name}: {spec['name']} {extras}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- canon sample
def _sample_arguments(parser) -> None:
    from canon.engine.config import DEVICES

    parser.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("--num", type=int, default=64, help="samples to draw (default 64)")
    parser.add_argument("--out", default="samples.png", help="the grid's PNG file (default samples.png)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (the same seed, the same grid)")
    parser.add_argument("--nrow", type=int, default=8, help="images per row of the grid (default 8)")
    parser.add_argument("--weights", choices=("auto", "ema", "best", "last"), default="auto",
                        help="a run folder's weights: auto = ema.safetensors when the run kept an average of the "
                             "generator, else best, else last")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--json", action="store_true")


def _sample_weights(run: str, which: str) -> Path:
    from canon.engine.checkpoint import resolve_weights_path

    path = Path(run)
    if not path.is_dir():
        return resolve_weights_path(path)
    if which in ("auto", "ema") and (path / "ema.safetensors").is_file():
        return path / "ema.safetensors"
    if which == "ema":
        raise CheckpointError(f"{path} holds no ema.safetensors (train with --ema DECAY to keep one)")
    return resolve_weights_path(path, prefer="last" if which == "last" else "best")


def sample_images(checkpoint: str, *, num: int = 64, seed: int = 0, weights: str = "auto",
                  device: str = "auto") -> tuple[torch.Tensor, dict]:
    """``num`` samples in [0, 1], (num, C, H, W) on the CPU, from a generation checkpoint or run folder."""
    from canon.engine.trainer import resolve_device

    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"--num must be a whole number >= 1, got {num!r}")
    path = _sample_weights(checkpoint, weights)
    model, meta = load_model(path)
    extra = meta.get("extra", {})
    if extra.get("task") != "generation":
        raise CheckpointError(f"{path} is a {extra.get('task', 'classification')} checkpoint; canon sample draws "
                              "from generation models")
    if model_kind(model) == "translation":
        raise ValueError(f"{meta['model']} translates images instead of drawing them: canon predict "
                         f"{Path(path).parent} IMAGE...")
    model.to(resolve_device(device))
    data_range = tuple(extra.get("data_range") or getattr(model, "data_range", (0.0, 1.0)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = to_unit_range(model.sample(num, generator=generator), data_range).float().cpu()
    return images, meta


def _sample_command(args) -> int:
    import json
    import sys

    if args.nrow < 1:
        raise ValueError(f"--nrow must be >= 1, got {args.nrow}")
    images, meta = sample_images(args.run, num=args.num, seed=args.seed, weights=args.weights, device=args.device)
    path = save_png(image_grid(images, nrow=args.nrow), args.out)
    result = {"checkpoint": meta["path"], "model": meta["model"], "num": args.num, "seed": args.seed,
              "out": str(path)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {path}: {args.num} samples of {meta['model']} ({meta['path']}), seed {args.seed}")
    print(f"canon sample: {meta['path']}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- curves
def plot_generation_curves(history: list[dict], path: str | Path) -> None:
    """Both players' losses (or the likelihood's) on the left, the test metrics on the right, by epoch."""
    from canon.engine.plots import _figure_bytes, _pyplot

    plt = _pyplot()

    def series(key):
        points = [(float(row["epoch"]), float(row[key])) for row in history if row.get(key) not in (None, "")]
        return list(zip(*points)) if points else None

    keys = list(history[-1]) if history else []
    loss_keys = [k for k in keys if k.startswith("train_") and (k.endswith("_loss") or k == "train_loss"
                                                                or k.endswith("wasserstein_estimate"))]
    metric_keys = [k for k in keys if k.startswith("test_") and k not in ("test_importance_samples",)
                   and not k.endswith(("_share", "_covered"))]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in loss_keys:
        points = series(key)
        if points:
            left.plot(*points, marker="o", label=key.removeprefix("train_"))
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (epoch mean)")
    if loss_keys:
        left.legend(fontsize=8)
    for key in metric_keys:
        points = series(key)
        if points:
            right.plot(*points, marker="o", label=key)
    right.set_xlabel("epoch")
    right.set_ylabel("test metric")
    if metric_keys:
        right.legend(fontsize=8)
    fig.suptitle("canon generation curves")
    atomic_write_bytes(path, _figure_bytes(fig))
