"""Pixel RNNs: the Row LSTM and the Diagonal BiLSTM.

Paper: "Pixel Recurrent Neural Networks", van den Oord, Kalchbrenner, Kavukcuoglu, 2016,
arXiv:1601.06759 (Sections 3.1-3.3).

Both model ``p(x) = prod_i p(x_i | x_<i)`` like PixelCNN (:mod:`canon.models.generative.pixelcnn`,
whose masks, output head, likelihood and sampling they share), but their hidden layers are
two-dimensional LSTMs, so each pixel's state can depend on a whole region above it instead of a
fixed receptive field. Each LSTM layer computes ``[o, f, i, g] = sigma(K_ss * h_prev + K_is * x)``,
``c = f ⊙ c_prev + i ⊙ g``, ``h = o ⊙ tanh(c)`` (sigma: the logistic sigmoid for o, f, i and tanh
for g), with a masked input-to-state convolution ``K_is`` precomputed for the whole map and a
state-to-state convolution ``K_ss`` run step by step.

Follows the paper:
- Section 3.1, Row LSTM: the image is processed row by row from the top; ``K_is`` is a k×1
  convolution along the row (k = 3) with mask B, ``K_ss`` a k×1 convolution over the previous
  row's hidden state (unmasked: the whole previous row precedes the current one). Its receptive
  field is a triangle above the pixel.
- Section 3.2, Diagonal BiLSTM: the input map is *skewed* (row r shifted right by r) so that the
  image's diagonals become columns; the LSTM runs over the columns with a 1×1 ``K_is`` (mask B) and
  a 2×1 ``K_ss`` that sees, for each pixel, the states of its left and upper neighbours. A second
  LSTM does the same from the right (on the mirrored image); its output map is shifted down by
  one row before the two are added, so that no pixel sees a future pixel of its own row. The
  receptive field is everything above and to the left — with one exception the 7×7 mask-A
  first layer brings: the last pixel of the row above reaches pixel (i, j) only for j >= W - 4
  (tests/models/test_pixelrnn.py measures it).
- Section 3.3 / Table 1: the first layer is a 7×7 mask-A convolution to 2h features; each LSTM
  layer takes 2h features, has h units and adds a 1×1 convolution of its output back to its
  input (a residual connection); two ReLU + 1×1 mask-B output layers; a sigmoid per pixel for
  binarised MNIST or a 256-way softmax per sub-pixel. MNIST (Table 3): 7 layers, h = 16.

Deviates, and why:
- The gate update is written here (``lstm_update``, gates in the paper's order o, f, i, g):
  :mod:`canon.layers.recurrent`'s cells take a dense state-to-state matrix, these a convolution.
- The masked 1×1 convolution of the residual connection keeps the R -> G -> B grouping (mask B);
  the paper writes only "1×1 convolution". The LSTMs' cell and hidden states start at zero.
- In the skewed map, the states off the image are held at zero, as the states beyond the image
  border are (the paper does not say how it pads).
- Output layers: 32 features for the MNIST forms (our choice, the paper's widths are for its
  large models). Recipe: Adam, lr 1e-3, minibatch 16 (our defaults, as PixelCNN's).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models.generative.gan import check_positive_int
from canon.models.generative.pixelcnn import PAPER, AutoregressiveImageModel, MaskedConv2d, channel_groups
from canon.registry import register_model

__all__ = ["skew", "unskew", "lstm_update", "RowLSTM", "DiagonalLSTM", "DiagonalBiLSTM", "PixelRNN",
           "pixelrnn_row_lstm", "pixelrnn_diagonal_bilstm", "LAYER_TYPES"]

LAYER_TYPES = ("row_lstm", "diagonal_bilstm")


# --------------------------------------------------------------------------- helpers
def skew(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W + H - 1): row r shifted right by r, zeros elsewhere.

    Pixel (r, c) lands at (r, r + c), so each image diagonal r + c = t becomes column t.
    """
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, h, w + h - 1)
    for row in range(h):
        out[:, :, row, row:row + w] = x[:, :, row]
    return out


def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
    """Invert :func:`skew`: (N, C, H, width + H - 1) -> (N, C, H, width)."""
    h = x.shape[2]
    if x.shape[3] != width + h - 1:
        raise ValueError(f"unskew: a skewed map of height {h} and width {width} has {width + h - 1} columns, "
                         f"got {x.shape[3]}")
    return torch.stack([x[:, :, row, row:row + width] for row in range(h)], dim=2)


def lstm_update(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (N, 4h, ...) ordered [o, f, i, g] -> (hidden, cell): ``c = f c + i g``, ``h = o tanh(c)``."""
    o, f, i, g = gates.chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def _gate_groups(hidden: int, num_groups: int) -> torch.Tensor:
    """The colour group of each of the 4h gate channels: unit u's group, for each of the four gates."""
    return channel_groups(hidden, num_groups).repeat(4)


# --------------------------------------------------------------------------- layers
class RowLSTM(nn.Module):
    """One Row LSTM layer with its residual connection: (N, 2h, H, W) -> (N, 2h, H, W)."""

    def __init__(self, channels: int, hidden: int, num_groups: int, kernel_size: int = 3):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(channels, 4 * hidden, (1, kernel_size), "B", num_groups=num_groups,
                                           out_groups=_gate_groups(hidden, num_groups))
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)
        self.residual = MaskedConv2d(hidden, channels, 1, "B", num_groups=num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        input_gates = self.input_to_state(x)                           # K_is * x, (N, 4h, H, W)
        hidden = x.new_zeros(n, self.hidden, width)
        cell = x.new_zeros(n, self.hidden, width)
        rows = []
        for row in range(height):                                      # top to bottom
            gates = input_gates[:, :, row] + self.state_to_state(hidden)  # + K_ss * h_{row-1}, (N, 4h, W)
            hidden, cell = lstm_update(gates, cell)
            rows.append(hidden)
        return x + self.residual(torch.stack(rows, dim=2))             # (N, 2h, H, W)


class DiagonalLSTM(nn.Module):
    """One direction of the Diagonal BiLSTM, left to right: (N, 2h, H, W) -> states (N, h, H, W)."""

    def __init__(self, channels: int, hidden: int, num_groups: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(channels, 4 * hidden, 1, "B", num_groups=num_groups,
                                           out_groups=_gate_groups(hidden, num_groups))
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size=2)  # (upper neighbour, left neighbour)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        input_gates = skew(self.input_to_state(x))                     # (N, 4h, H, W + H - 1)
        inside = skew(x.new_ones(1, 1, height, width))[0, 0]           # (H, W + H - 1): 1 on the image
        hidden = x.new_zeros(n, self.hidden, height)
        cell = x.new_zeros(n, self.hidden, height)
        columns = []
        for column in range(input_gates.shape[3]):                     # diagonal by diagonal
            # row r of the previous column holds the left neighbour, row r - 1 the upper one
            previous = F.pad(hidden, (1, 0))                           # (N, h, H + 1), a zero row above
            gates = input_gates[:, :, :, column] + self.state_to_state(previous)  # (N, 4h, H)
            hidden, cell = lstm_update(gates, cell)
            hidden, cell = hidden * inside[:, column], cell * inside[:, column]  # zero state off the image
            columns.append(hidden)
        return unskew(torch.stack(columns, dim=3), width)              # (N, h, H, W)


class DiagonalBiLSTM(nn.Module):
    """Both diagonal directions, the right-to-left map shifted down one row, plus the residual."""

    def __init__(self, channels: int, hidden: int, num_groups: int):
        super().__init__()
        self.left_to_right = DiagonalLSTM(channels, hidden, num_groups)
        self.right_to_left = DiagonalLSTM(channels, hidden, num_groups)
        self.residual = MaskedConv2d(hidden, channels, 1, "B", num_groups=num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forward_states = self.left_to_right(x)                         # sees left and above
        backward_states = self.right_to_left(x.flip(3)).flip(3)        # sees right and above (and itself)
        backward_states = F.pad(backward_states, (0, 0, 1, 0))[:, :, :-1]  # one row down: rows above only
        return x + self.residual(forward_states + backward_states)     # (N, 2h, H, W)


# --------------------------------------------------------------------------- the model
class PixelRNN(AutoregressiveImageModel):
    """van den Oord et al.'s Pixel RNN with Row LSTM or Diagonal BiLSTM layers; see the module docstring.

    Args:
        layer_type: ``"row_lstm"`` or ``"diagonal_bilstm"``.
        image_size, in_chans: the square images modelled.
        hidden_channels: h, the LSTM units per layer (the maps between layers have 2h channels).
        num_layers: recurrent layers.
        out_hidden_channels: the output layers' width.
        distribution: ``"bernoulli"`` (binarised images) or ``"categorical"``.
        num_levels: levels of the categorical (default 256, for 8-bit images); 2 for the Bernoulli.
    """

    def __init__(self, *, layer_type: str, image_size: int = 28, in_chans: int = 1, hidden_channels: int = 16,
                 num_layers: int = 7, out_hidden_channels: int = 32, distribution: str = "bernoulli",
                 num_levels: int | None = None):
        super().__init__()
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {LAYER_TYPES}, got {layer_type!r}")
        self._configure(image_size=image_size, in_chans=in_chans, distribution=distribution, num_levels=num_levels)
        for name, value in (("hidden_channels", hidden_channels), ("num_layers", num_layers),
                            ("out_hidden_channels", out_hidden_channels)):
            check_positive_int(value, name)
        self.layer_type = layer_type
        features = 2 * hidden_channels
        layer = RowLSTM if layer_type == "row_lstm" else DiagonalBiLSTM
        self.stem = MaskedConv2d(in_chans, features, 7, "A", num_groups=self.num_groups)  # (N, 2h, H, W)
        self.body = nn.Sequential(*[layer(features, hidden_channels, self.num_groups) for _ in range(num_layers)])
        self._build_head(features, out_hidden_channels)


@register_model(PixelRNN, task="generation", paper=PAPER, input_size=(1, 28, 28), num_classes=None)
def pixelrnn_row_lstm(**kwargs) -> PixelRNN:
    """Row LSTM Pixel RNN for binarised MNIST: 7 layers, h = 16, a Bernoulli per pixel."""
    return PixelRNN(**{"layer_type": "row_lstm", **kwargs})


@register_model(PixelRNN, task="generation", paper=PAPER, input_size=(1, 28, 28), num_classes=None)
def pixelrnn_diagonal_bilstm(**kwargs) -> PixelRNN:
    """Diagonal BiLSTM Pixel RNN for binarised MNIST: 7 layers, h = 16 (Table 3), a Bernoulli per pixel."""
    return PixelRNN(**{"layer_type": "diagonal_bilstm", **kwargs})
