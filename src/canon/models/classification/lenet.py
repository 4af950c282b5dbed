"""LeNet-5.

Paper: "Gradient-Based Learning Applied to Document Recognition", LeCun, Bottou, Bengio,
Haffner, Proceedings of the IEEE 1998 (no arXiv id). Section II-B describes the network.

Two registered forms:

``lenet5_paper`` follows the paper:
    - a 32x32 input; C1: 6 feature maps from 5x5 convolutions (28x28); S2: 2x2 subsampling (14x14);
      C3: 16 maps from 5x5 convolutions (10x10); S4: 2x2 subsampling (5x5); C5: 120 maps from 5x5
      convolutions (1x1); F6: 84 units; an output of 10 units;
    - *trainable subsampling*: each S unit adds its four inputs, multiplies the sum by a trainable
      coefficient and adds a trainable bias (one of each per feature map);
    - C3's *partial connection table* (Table I): 6 maps see 3 contiguous S2 maps, 6 see 4
      contiguous, 3 see 4 discontinuous, 1 sees all 6, i.e. 60 of the 96 possible kernels;
    - the *scaled tanh* squashing f(a) = 1.7159 tanh(2a/3) after every layer up to F6;
    - *Euclidean RBF output units*: y_i = sum_j (x_j - w_ij)^2 with fixed +-1 centres; the logits
      are -y_i, so the most likely class is the nearest centre;
    - per-layer parameters as in the paper: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164.

    Deviates, and why:
    - the RBF centres are drawn at random in {-1, +1} (seeded) and kept fixed: the paper's are
      hand-drawn 7x12 bitmaps of the characters, which it does not publish;
    - trained with cross-entropy on the negated distances instead of the paper's MAP criterion
      (eq. 9): the same "pull the right centre close, push the others away" with torch's loss;
    - the input is normalised by the data's mean and std, not to the paper's [-0.1, 1.175].

``lenet5`` keeps the paper's C1-S2-C3-S4-C5-F6-output layout and sizes, with modern defaults:
    ReLU instead of the scaled tanh, 2x2 max-pooling instead of trainable subsampling, full C3
    connections (the table existed to save computation and break symmetry, which random
    initialisation already does) and a linear output layer trained with cross-entropy. It is the
    form used in most courses and the one ``canon demo`` trains.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["LeNet5", "LeNet5Paper", "ScaledTanh", "TrainableSubsampling", "PartialConv2d",
           "EuclideanRBF", "C3_CONNECTIONS", "lenet5", "lenet5_paper"]

PAPER = "Gradient-Based Learning Applied to Document Recognition, LeCun et al., Proc. IEEE 1998"
INPUT_SIZE = 32  # the only size at which C5 sees a 5x5 map, as in the paper

# Table I: for each of C3's 16 maps, the S2 maps it is connected to.
C3_CONNECTIONS = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


def _check_sizes(num_classes, in_chans) -> None:
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")


def _check_input_size(x: torch.Tensor, model_name: str) -> None:
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"{model_name} expects a {INPUT_SIZE}x{INPUT_SIZE} input (N, C, 32, 32), got shape "
                         f"{tuple(x.shape)}; resize or pad the images (MNIST's 28x28 are padded to 32 in the paper)")


# --- blocks of the paper's form -----------------------------------------------------------------

class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a) with A = 1.7159 and S = 2/3, so that f(1) = 1 and f(-1) = -1 (Appendix A)."""

    def __init__(self, amplitude: float = 1.7159, slope: float = 2.0 / 3.0):
        super().__init__()
        self.amplitude, self.slope = amplitude, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.tanh(self.slope * x)


class TrainableSubsampling(nn.Module):
    """S2/S4: the sum of each non-overlapping 2x2 window times a per-map coefficient, plus a bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window_sum = F.avg_pool2d(x, 2) * 4.0  # (N, C, H/2, W/2)
        return window_sum * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class PartialConv2d(nn.Module):
    """A convolution in which output map ``o`` sees only the input maps ``connections[o]``.

    Only the connected kernels are parameters (``weight`` holds them one after another), so the
    parameter count is the paper's; the full kernel tensor is assembled for each forward.
    """

    def __init__(self, in_chans: int, connections: tuple[tuple[int, ...], ...], kernel_size: int):
        super().__init__()
        self.in_chans, self.out_chans, self.kernel_size = in_chans, len(connections), kernel_size
        pairs = [(o, i) for o, inputs in enumerate(connections) for i in inputs]
        if any(not 0 <= i < in_chans for _, i in pairs):
            raise ValueError(f"connections must name input maps in [0, {in_chans - 1}], got {connections}")
        self.register_buffer("out_index", torch.tensor([o for o, _ in pairs]), persistent=False)
        self.register_buffer("in_index", torch.tensor([i for _, i in pairs]), persistent=False)
        fan_in = torch.tensor([len(c) for c in connections], dtype=torch.float)[self.out_index] * kernel_size ** 2
        bound = (1.0 / fan_in).sqrt().view(-1, 1, 1)
        self.weight = nn.Parameter((torch.rand(len(pairs), kernel_size, kernel_size) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(self.out_chans))

    def full_weight(self) -> torch.Tensor:
        """The (out, in, k, k) kernel tensor with zeros where the table has no connection."""
        k = self.kernel_size
        weight = self.weight.new_zeros(self.out_chans, self.in_chans, k, k)
        return weight.index_put((self.out_index, self.in_index), self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.full_weight(), self.bias)


class EuclideanRBF(nn.Module):
    """Output units y_i = sum_j (x_j - c_ij)^2 around fixed centres; returns the logits -y."""

    def __init__(self, in_features: int, num_classes: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        centres = torch.randint(0, 2, (num_classes, in_features), generator=g).float() * 2 - 1
        self.register_buffer("centres", centres)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x.unsqueeze(1) - self.centres.unsqueeze(0)).pow(2).sum(-1)  # (N, num_classes)
        return -distance


# --- the models -----------------------------------------------------------------------------------

class LeNet5(nn.Module):
    """LeNet-5 with modern defaults (ReLU, max-pooling, full C3, linear output); see the module docstring."""

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        _check_sizes(num_classes, in_chans)
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 84
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, kernel_size=5), nn.ReLU(inplace=True),  # C1: (N, 6, 28, 28)
            nn.MaxPool2d(2),                                               # S2: (N, 6, 14, 14)
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(inplace=True),        # C3: (N, 16, 10, 10)
            nn.MaxPool2d(2),                                               # S4: (N, 16, 5, 5)
            nn.Conv2d(16, 120, kernel_size=5), nn.ReLU(inplace=True),      # C5: (N, 120, 1, 1)
        )
        self.f6 = nn.Sequential(nn.Linear(120, 84), nn.ReLU(inplace=True))  # F6: (N, 84)
        self.classifier: nn.Module = nn.Linear(84, num_classes) if num_classes else nn.Identity()

    @property
    def _model_name(self) -> str:
        return getattr(self, "canon_name", "lenet5")  # set by canon.create_model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.f6(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, in_chans=self.in_chans, min_size=INPUT_SIZE, model_name=self._model_name)
        _check_input_size(x, self._model_name)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear output with ``num_classes`` units (0: identity, the 84 F6 features)."""
        _check_sizes(num_classes, self.in_chans)
        self.num_classes = num_classes
        self.classifier = nn.Linear(84, num_classes) if num_classes else nn.Identity()


class LeNet5Paper(nn.Module):
    """LeNet-5 as the 1998 paper builds it; see the module docstring for what follows it and what not."""

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        _check_sizes(num_classes, in_chans)
        if num_classes < 1:
            raise ValueError(f"lenet5_paper's RBF output needs num_classes >= 1, got {num_classes!r}")
        self.num_classes, self.in_chans, self.num_features = num_classes, in_chans, 84
        self.c1 = nn.Conv2d(in_chans, 6, kernel_size=5)      # (N, 6, 28, 28)
        self.s2 = TrainableSubsampling(6)                    # (N, 6, 14, 14)
        self.c3 = PartialConv2d(6, C3_CONNECTIONS, 5)        # (N, 16, 10, 10)
        self.s4 = TrainableSubsampling(16)                   # (N, 16, 5, 5)
        self.c5 = nn.Conv2d(16, 120, kernel_size=5)          # (N, 120, 1, 1)
        self.f6 = nn.Linear(120, 84)                         # (N, 84)
        self.act = ScaledTanh()
        self.output = EuclideanRBF(84, num_classes)          # (N, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.c1, self.s2, self.c3, self.s4, self.c5):
            x = self.act(layer(x))
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.act(self.f6(torch.flatten(x, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = getattr(self, "canon_name", "lenet5_paper")  # set by canon.create_model
        check_image_input(x, in_chans=self.in_chans, min_size=INPUT_SIZE, model_name=name)
        _check_input_size(x, name)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh fixed RBF centres for ``num_classes`` classes (the layer has no trainable weights)."""
        _check_sizes(num_classes, self.in_chans)
        if num_classes < 1:
            raise ValueError(f"lenet5_paper's RBF output needs num_classes >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.output = EuclideanRBF(84, num_classes)


@register_model(LeNet5, task="classification", paper=PAPER, input_size=(1, 32, 32), num_classes=10)
def lenet5(**kwargs) -> LeNet5:
    """LeNet-5 layout with ReLU, max-pooling, full C3 and a linear output (61,706 parameters)."""
    return LeNet5(**kwargs)


@register_model(LeNet5Paper, task="classification", paper=PAPER, input_size=(1, 32, 32), num_classes=10)
def lenet5_paper(**kwargs) -> LeNet5Paper:
    """LeNet-5 as in the paper: trainable subsampling, Table I for C3, scaled tanh, RBF output."""
    return LeNet5Paper(**kwargs)
