"""PixelCNN: an autoregressive image model built from masked convolutions, and Gated PixelCNN.

Papers:
    "Pixel Recurrent Neural Networks", van den Oord, Kalchbrenner, Kavukcuoglu, 2016,
    arXiv:1601.06759 (Sections 2-3.5; PixelCNN is its Section 3.4).
    "Conditional Image Generation with PixelCNN Decoders" (Gated PixelCNN), van den Oord,
    Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu, 2016, arXiv:1606.05328.

The model writes ``p(x) = prod_i p(x_i | x_1 ... x_{i-1})`` over the pixels in raster order
(rows top to bottom, each row left to right) and, within a pixel, over the colour channels in the
order R, G, B: ``p(x_i,R | x_<i) p(x_i,G | x_<i, x_i,R) p(x_i,B | x_<i, x_i,R, x_i,G)``. Every
conditional is computed at once, in parallel over the image, by convolutions whose kernels are
*masked* so that no output sees the inputs it must not depend on; sampling runs one sub-pixel at
a time.

This file also holds what the Pixel RNNs (:mod:`canon.models.generative.pixelrnn`) share: the
masks, ``MaskedConv2d``, the output head and ``AutoregressiveImageModel`` (input checks, the
likelihood, sampling).

Follows the paper:
- Section 3.4 / Figure 4: mask A on the first layer (a 7×7 convolution) — a pixel's features
  see only the pixels above and to its left and, for colour channel c, the channels before c of
  the same pixel; mask B on every later layer — it also lets a channel group see its own group at
  the same position (the features there are already causal). The feature maps are split into
  three groups for R, G and B.
- Table 1 / Figure 5: residual blocks ``ReLU - 1×1 conv (2h -> h) - ReLU - 3×3 conv mask B -
  ReLU - 1×1 conv (h -> 2h)``, added to the block's input; output layers ``ReLU - 1×1 conv mask B``
  twice (1024 features for CIFAR-10); a 256-way softmax per sub-pixel (Section 2.2), or a sigmoid
  (Bernoulli) per pixel for binarised MNIST. CIFAR-10 form: h = 128, 15 layers.
- Section 5.1: the negative log-likelihood in nats (MNIST) or bits per dimension (CIFAR-10).
- Gated PixelCNN (arXiv:1606.05328, Section 2.1-2.2, Figure 2): the gated activation
  ``tanh(W_f * x) ⊙ sigmoid(W_g * x)``; a *vertical* stack (a convolution over the rows above
  and the current row, full width) and a *horizontal* stack (a 1×k convolution over the current
  row, masked), the vertical stack's pre-activations fed into the horizontal one through a 1×1
  convolution after a one-row shift, so the horizontal stack sees every row above — the "blind
  spot" of the masked 3×3 stack is gone; a residual connection around each horizontal layer.

Deviates, and why:
- The network's input is ``2 x - 1`` for ``x`` in [0, 1] (the levels ``k / (L - 1)``); the paper
  does not state its input scaling.
- Features are split into groups as ``floor(i · G / n)`` (contiguous, near-equal), so 2h = 256
  features need not be divisible by 3; the 1×1 convolutions inside the blocks and heads are
  masked too (type B) — without that they would mix a pixel's R, G and B features.
- ``pixelcnn_mnist`` (h = 64, 12 residual blocks, 128 output features) is our size for binarised
  MNIST; the paper reports its MNIST result without that model's hyper-parameters.
- ``num_levels`` lets the categorical head use fewer than 256 levels (e.g. for small tests).
- Recipe: Adam, lr 1e-3, minibatch 16 (our defaults; not taken from the paper).
- ``gated_pixelcnn``: no conditioning vector (the paper's class- and embedding-conditional
  variants are not built); a 7×7 first layer and 3×3 layers after it, 15 layers of h = 128 (our
  sizes); the horizontal kernel is a masked 1×k (its right half zero) instead of a 1×(k/2 + 1)
  kernel with a shift, which is the same function with unused weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.losses import generative as GL
from canon.models.generative.gan import check_image_size, check_positive_int, random_tensor
from canon.registry import register_model

__all__ = ["channel_groups", "causal_mask", "MaskedConv2d", "PixelCNNResidualBlock", "OutputHead",
           "AutoregressiveImageModel", "PixelCNN", "gated_activation", "GatedLayer", "GatedPixelCNN", "pixelcnn",
           "pixelcnn_mnist", "gated_pixelcnn", "DISTRIBUTIONS"]

PAPER = "Pixel Recurrent Neural Networks, 2016, arXiv:1601.06759"
PAPER_GATED = "Conditional Image Generation with PixelCNN Decoders, 2016, arXiv:1606.05328"
DISTRIBUTIONS = ("categorical", "bernoulli")
MASK_TYPES = ("A", "B")


# --------------------------------------------------------------------------- masks
def channel_groups(num_channels: int, num_groups: int) -> torch.Tensor:
    """The colour group of each of ``num_channels`` features: ``floor(i · G / n)``, contiguous, (n,)."""
    if num_channels < num_groups:
        raise ValueError(f"{num_channels} feature channels cannot be split into {num_groups} colour groups; "
                         f"use at least {num_groups} channels")
    return torch.arange(num_channels) * num_groups // num_channels


def causal_mask(kernel_size: tuple[int, int], in_groups: torch.Tensor, out_groups: torch.Tensor,
                mask_type: str) -> torch.Tensor:
    """The (out, in, kh, kw) 0/1 mask of a raster-order causal convolution.

    Rows above the centre: all ones; the centre row left of the centre: ones; right of it and all
    rows below: zeros. At the centre, output group g sees input groups < g (mask "A") or <= g
    (mask "B").
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"masked convolutions need odd kernel sizes (a centre), got {kernel_size}")
    mask = torch.zeros(len(out_groups), len(in_groups), kh, kw)
    cy, cx = kh // 2, kw // 2
    mask[:, :, :cy, :] = 1
    mask[:, :, cy, :cx] = 1
    out_g, in_g = out_groups[:, None], in_groups[None, :]
    allowed = out_g > in_g if mask_type == "A" else out_g >= in_g
    mask[:, :, cy, cx] = allowed.float()
    return mask


class MaskedConv2d(nn.Module):
    """A 'same'-padded convolution whose kernel is multiplied by a :func:`causal_mask`.

    ``num_groups``: colour groups (1 for grey, 3 for RGB); ``out_groups``: the output channels'
    groups when not the default contiguous split (an LSTM's gates: each unit's group, four times).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int | tuple[int, int], mask_type: str, *,
                 num_groups: int = 1, out_groups: torch.Tensor | None = None, bias: bool = True):
        super().__init__()
        kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        in_groups = channel_groups(in_chans, num_groups)
        out_groups = channel_groups(out_chans, num_groups) if out_groups is None else out_groups
        if len(out_groups) != out_chans:
            raise ValueError(f"out_groups must name a group for each of the {out_chans} outputs, got {len(out_groups)}")
        self.in_chans, self.out_chans, self.kernel_size, self.mask_type = in_chans, out_chans, kernel, mask_type
        self.padding = (kernel[0] // 2, kernel[1] // 2)
        self.register_buffer("mask", causal_mask(kernel, in_groups, out_groups, mask_type), persistent=False)
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans, *kernel))
        self.bias = nn.Parameter(torch.empty(out_chans)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # torch's Conv2d default
        if self.bias is not None:
            bound = 1 / math.sqrt(in_chans * kernel[0] * kernel[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return f"{self.in_chans}, {self.out_chans}, kernel_size={self.kernel_size}, mask={self.mask_type}"


# --------------------------------------------------------------------------- blocks
class PixelCNNResidualBlock(nn.Module):
    """Figure 5: ReLU, 1×1 (2h -> h), ReLU, 3×3 mask B, ReLU, 1×1 (h -> 2h), plus the input."""

    def __init__(self, hidden: int, num_groups: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), MaskedConv2d(2 * hidden, hidden, 1, "B", num_groups=num_groups),
            nn.ReLU(), MaskedConv2d(hidden, hidden, 3, "B", num_groups=num_groups),
            nn.ReLU(), MaskedConv2d(hidden, 2 * hidden, 1, "B", num_groups=num_groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)  # (N, 2h, H, W)


class OutputHead(nn.Module):
    """ReLU, 1×1 mask B (-> out_hidden), ReLU, 1×1 mask B (-> one logit per level and sub-pixel)."""

    def __init__(self, in_chans: int, out_hidden: int, out_chans: int, num_groups: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), MaskedConv2d(in_chans, out_hidden, 1, "B", num_groups=num_groups),
            nn.ReLU(), MaskedConv2d(out_hidden, out_chans, 1, "B", num_groups=num_groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- the shared contract
class AutoregressiveImageModel(nn.Module):
    """What PixelCNN and the Pixel RNNs share: checks, the likelihood and pixel-by-pixel sampling.

    Subclasses build ``self.stem`` (the 7×7 mask-A convolution) and ``self.body`` (a module mapping
    (N, 2h, H, W) to (N, 2h, H, W) causally), or override :meth:`forward_features`, and build
    ``self.head`` (an :class:`OutputHead`) through :meth:`_build_head`.

    Data: x is (N, C, image_size, image_size) in [0, 1] holding the levels ``k / (L - 1)`` —
    ``ToTensor``'s output ``k / 255`` for 8-bit images, 0 or 1 for binarised ones.
    ``forward(x)`` returns the logits: (N, L, C, H, W) for ``"categorical"``, (N, C, H, W) for
    ``"bernoulli"``; ``nll(x)`` the negative log-likelihood per image in nats, (N,).
    """

    optimizers = {"model": {"name": "adam", "lr": 1e-3}}
    batch_size = 16
    data_range = (0.0, 1.0)

    def _configure(self, *, image_size: int, in_chans: int, distribution: str, num_levels: int | None) -> None:
        check_positive_int(image_size, "image_size")
        check_positive_int(in_chans, "in_chans")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if num_levels is None:
            num_levels = 2 if distribution == "bernoulli" else 256
        if not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
        if distribution == "bernoulli" and num_levels != 2:
            raise ValueError(f"a Bernoulli output models 2 levels (binarised images), got num_levels={num_levels}; "
                             f"use distribution='categorical' for more")
        self.image_size, self.in_chans, self.distribution = image_size, in_chans, distribution
        self.num_levels = num_levels
        self.num_groups = in_chans  # one colour group per input channel: R -> G -> B

    def _build_head(self, features: int, out_hidden: int) -> None:
        per_subpixel = 1 if self.distribution == "bernoulli" else self.num_levels
        self.head = OutputHead(features, out_hidden, self.in_chans * per_subpixel, self.num_groups)

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", type(self).__name__)  # set by canon.create_model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Causal features (N, F, H, W) of the network input ``2 x - 1``."""
        return self.body(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x, in_chans=self.in_chans, image_size=self.image_size, model_name=self._model_name)
        out = self.head(self.forward_features(2 * x - 1))                  # (N, C·L or C, H, W)
        if self.distribution == "bernoulli":
            return out                                                     # (N, C, H, W) logits
        n, _, h, w = out.shape
        return out.view(n, self.in_chans, self.num_levels, h, w).transpose(1, 2)  # (N, L, C, H, W)

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """The integer level of each sub-pixel, (N, C, H, W); raises unless x lies on the level grid."""
        check_image_size(x, in_chans=self.in_chans, image_size=self.image_size, model_name=self._model_name)
        if not torch.is_floating_point(x):
            raise TypeError(f"{self._model_name} expects float images in [0, 1] (levels k / {self.num_levels - 1}), "
                            f"got dtype {x.dtype}; divide by {self.num_levels - 1}")
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise ValueError(f"{self._model_name} expects images in [0, 1], got values in "
                             f"[{float(x.min()):.4g}, {float(x.max()):.4g}]; undo the normalisation first")
        scaled = x * (self.num_levels - 1)
        levels = scaled.round()
        if x.numel() and float((scaled - levels).abs().max()) > 1e-3:
            kind = ("binarised (0 or 1)" if self.distribution == "bernoulli"
                    else f"quantised to {self.num_levels} levels")
            raise ValueError(f"{self._model_name} expects images {kind}, got values between the levels")
        return levels.long()

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) per image in nats, (N,)."""
        target = self.levels(x)
        logits = self.forward(x)
        if self.distribution == "bernoulli":
            return GL.bernoulli_nll(logits, target.to(logits.dtype), reduction="none")
        return GL.categorical_nll(logits, target, reduction="none")

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per image in nats, (N,)."""
        return -self.nll(x)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The training loss: the mean NLL per image in nats."""
        return self.nll(x).mean()

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` images drawn one sub-pixel at a time in raster order, R -> G -> B within a pixel:
        (num, C, image_size, image_size) in [0, 1]. Costs H · W · C forward passes."""
        check_positive_int(num, "num")
        was_training = self.training
        self.eval()
        p = next(self.parameters())
        x = torch.zeros(num, self.in_chans, self.image_size, self.image_size, device=p.device, dtype=p.dtype)
        try:
            for row in range(self.image_size):
                for col in range(self.image_size):
                    for channel in range(self.in_chans):
                        logits = self.forward(x)
                        uniform = random_tensor(torch.rand, (num, 1), generator=generator, device=p.device,
                                                dtype=p.dtype)
                        if self.distribution == "bernoulli":
                            value = (uniform[:, 0] < torch.sigmoid(logits[:, channel, row, col])).to(x.dtype)
                        else:  # inverse-CDF draw: the first level whose cumulative probability exceeds u
                            cdf = torch.softmax(logits[:, :, channel, row, col], dim=1).cumsum(1)
                            level = (cdf < uniform).sum(1).clamp_max(self.num_levels - 1)
                            value = level.to(x.dtype) / (self.num_levels - 1)
                        x[:, channel, row, col] = value
        finally:
            self.train(was_training)
        return x


# --------------------------------------------------------------------------- the model
class PixelCNN(AutoregressiveImageModel):
    """van den Oord et al.'s PixelCNN; see the module docstring.

    Args:
        image_size, in_chans: the square images modelled.
        hidden_channels: h; the feature maps between blocks have 2h channels.
        num_blocks: residual blocks after the 7×7 mask-A layer.
        out_hidden_channels: the output layers' width.
        distribution: ``"categorical"`` (a softmax over ``num_levels`` per sub-pixel) or ``"bernoulli"``.
        num_levels: levels of the categorical (default 256, for 8-bit images); 2 for the Bernoulli.
    """

    def __init__(self, *, image_size: int = 32, in_chans: int = 3, hidden_channels: int = 128,
                 num_blocks: int = 15, out_hidden_channels: int = 1024, distribution: str = "categorical",
                 num_levels: int | None = None):
        super().__init__()
        self._configure(image_size=image_size, in_chans=in_chans, distribution=distribution, num_levels=num_levels)
        check_positive_int(hidden_channels, "hidden_channels")
        check_positive_int(out_hidden_channels, "out_hidden_channels")
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be an int >= 0, got {num_blocks!r}")
        features = 2 * hidden_channels
        self.stem = MaskedConv2d(in_chans, features, 7, "A", num_groups=self.num_groups)     # (N, 2h, H, W)
        self.body = nn.Sequential(*[PixelCNNResidualBlock(hidden_channels, self.num_groups)
                                    for _ in range(num_blocks)])                             # (N, 2h, H, W)
        self._build_head(features, out_hidden_channels)


# --------------------------------------------------------------------------- Gated PixelCNN
def gated_activation(x: torch.Tensor) -> torch.Tensor:
    """(N, 2c, H, W) -> (N, c, H, W): ``tanh(first half) ⊙ sigmoid(second half)`` (eq. 2)."""
    features, gates = x.chunk(2, dim=1)
    return torch.tanh(features) * torch.sigmoid(gates)


class GatedLayer(nn.Module):
    """One Gated PixelCNN layer (Figure 2): the vertical and horizontal stacks, (v, h) -> (v, h).

    The vertical convolution covers the k/2 rows above and the current row, full width; its
    output at row i therefore sees row i itself and reaches the horizontal stack only shifted down
    one row. The horizontal 1×k convolution is masked ("A" in the first layer, "B" after it).
    """

    def __init__(self, in_chans: int, channels: int, kernel_size: int, num_groups: int, mask_type: str,
                 residual: bool):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size, self.residual = kernel_size, residual
        gate_groups = channel_groups(channels, num_groups).repeat(2)  # unit u's group for its tanh and its gate
        self.vertical = nn.Conv2d(in_chans, 2 * channels, (kernel_size // 2 + 1, kernel_size))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal = MaskedConv2d(in_chans, 2 * channels, (1, kernel_size), mask_type, num_groups=num_groups,
                                       out_groups=gate_groups)
        self.horizontal_out = MaskedConv2d(channels, channels, 1, "B", num_groups=num_groups)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.kernel_size // 2
        v_pre = self.vertical(F.pad(v, (half, half, half, 0)))        # rows i - k/2 .. i: (N, 2c, H, W)
        above = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]                 # one row down: rows < i only
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(above)
        h_out = self.horizontal_out(gated_activation(h_pre))          # (N, c, H, W)
        return gated_activation(v_pre), (h + h_out if self.residual else h_out)


class GatedPixelCNN(AutoregressiveImageModel):
    """van den Oord et al.'s Gated PixelCNN without conditioning; see the module docstring.

    Args:
        image_size, in_chans: the square images modelled.
        hidden_channels: the channels of both stacks.
        num_layers: gated layers (the first with a mask-A horizontal convolution).
        first_kernel_size, kernel_size: the first layer's and the later layers' kernel sizes.
        out_hidden_channels, distribution, num_levels: as :class:`PixelCNN`.
    """

    def __init__(self, *, image_size: int = 32, in_chans: int = 3, hidden_channels: int = 128, num_layers: int = 15,
                 first_kernel_size: int = 7, kernel_size: int = 3, out_hidden_channels: int = 1024,
                 distribution: str = "categorical", num_levels: int | None = None):
        super().__init__()
        self._configure(image_size=image_size, in_chans=in_chans, distribution=distribution, num_levels=num_levels)
        for name, value in (("hidden_channels", hidden_channels), ("num_layers", num_layers),
                            ("first_kernel_size", first_kernel_size), ("kernel_size", kernel_size),
                            ("out_hidden_channels", out_hidden_channels)):
            check_positive_int(value, name)
        self.layers = nn.ModuleList(
            [GatedLayer(in_chans, hidden_channels, first_kernel_size, self.num_groups, "A", residual=False)]
            + [GatedLayer(hidden_channels, hidden_channels, kernel_size, self.num_groups, "B", residual=True)
               for _ in range(num_layers - 1)])
        self._build_head(hidden_channels, out_hidden_channels)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        vertical = horizontal = x
        for layer in self.layers:
            vertical, horizontal = layer(vertical, horizontal)
        return horizontal                                             # (N, hidden, H, W)


@register_model(PixelCNN, task="generation", paper=PAPER, input_size=(3, 32, 32), num_classes=None)
def pixelcnn(**kwargs) -> PixelCNN:
    """PixelCNN for CIFAR-10: h = 128, 15 residual blocks, 1024 output features, 256-way softmax."""
    return PixelCNN(**kwargs)


@register_model(PixelCNN, task="generation", paper=PAPER, input_size=(1, 28, 28), num_classes=None)
def pixelcnn_mnist(**kwargs) -> PixelCNN:
    """PixelCNN for binarised MNIST: a Bernoulli per pixel, h = 64, 12 residual blocks."""
    return PixelCNN(**{"image_size": 28, "in_chans": 1, "hidden_channels": 64, "num_blocks": 12,
                       "out_hidden_channels": 128, "distribution": "bernoulli", **kwargs})


@register_model(GatedPixelCNN, task="generation", paper=PAPER_GATED, input_size=(3, 32, 32), num_classes=None)
def gated_pixelcnn(**kwargs) -> GatedPixelCNN:
    """Gated PixelCNN for CIFAR-10: 15 gated layers of 128 channels, 256-way softmax (no conditioning)."""
    return GatedPixelCNN(**kwargs)
