"""Pixel RNNs against van den Oord et al.: the skew / unskew trick, the Row LSTM and Diagonal BiLSTM
layers against per-pixel transcriptions of Section 3's equations, causality on the full Jacobian
over every position of a small image, and the likelihood summing to one over every image."""
from __future__ import annotations

import itertools

import pytest
import torch

import canon
from canon.models.generative.pixelrnn import DiagonalBiLSTM, RowLSTM, lstm_update, skew, unskew

from test_pixelcnn import _all_images, check_causality


def test_skew_moves_row_r_right_by_r_and_unskew_inverts_it():
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    skewed = skew(x)
    assert skewed.shape == (2, 3, 4, 5 + 4 - 1)
    expected = torch.zeros_like(skewed)
    for r, c in itertools.product(range(4), range(5)):
        expected[:, :, r, r + c] = x[:, :, r, c]          # pixel (r, c) -> (r, r + c): diagonals become columns
    assert torch.equal(skewed, expected)
    assert torch.equal(unskew(skewed, 5), x)
    with pytest.raises(ValueError, match="columns"):
        unskew(skewed, 4)


def test_lstm_update_is_the_papers_equations():
    gates = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(1))
    cell = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(2))
    o, f, i, g = gates[:, 0:2], gates[:, 2:4], gates[:, 4:6], gates[:, 6:8]
    c = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    h, c_new = lstm_update(gates, cell)
    torch.testing.assert_close(c_new, c)
    torch.testing.assert_close(h, torch.sigmoid(o) * torch.tanh(c))


def _lstm_step(gates_at_pixel, cell):
    """One LSTM update at one pixel: gates (N, 4h) -> (h, c)."""
    o, f, i, g = gates_at_pixel.chunk(4, dim=1)
    c = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _residual(layer, states, x):
    w = (layer.residual.weight * layer.residual.mask)[:, :, 0, 0]
    return x + torch.einsum("oc,nchw->nohw", w, states) + layer.residual.bias.view(1, -1, 1, 1)


def row_lstm_reference(layer: RowLSTM, x: torch.Tensor) -> torch.Tensor:
    """Section 3.1 pixel by pixel: gates(r, c) = sum_d K_is[d] x(r, c + d) + K_ss[d] h(r - 1, c + d)."""
    n, _, height, width = x.shape
    k = layer.input_to_state.kernel_size[1]
    w_is = (layer.input_to_state.weight * layer.input_to_state.mask)[:, :, 0]      # (4h, 2h, k)
    w_ss, hidden = layer.state_to_state.weight, layer.hidden                         # (4h, h, k)
    h = torch.zeros(n, hidden, height, width, dtype=x.dtype)
    c = torch.zeros_like(h)
    for r, col in itertools.product(range(height), range(width)):
        gates = layer.input_to_state.bias + layer.state_to_state.bias
        for d in range(k):
            cc = col + d - k // 2
            if 0 <= cc < width:
                gates = gates + x[:, :, r, cc] @ w_is[:, :, d].T
                if r > 0:
                    gates = gates + h[:, :, r - 1, cc] @ w_ss[:, :, d].T
        previous_cell = c[:, :, r - 1, col] if r > 0 else torch.zeros(n, hidden, dtype=x.dtype)
        h[:, :, r, col], c[:, :, r, col] = _lstm_step(gates, previous_cell)
    return _residual(layer, h, x)


def diagonal_lstm_reference(lstm, x: torch.Tensor) -> torch.Tensor:
    """Section 3.2 pixel by pixel: gates(r, c) = K_is x(r, c) + K_ss [h(r - 1, c), h(r, c - 1)].

    The cell state carried along is the left neighbour's (the skewed map's previous column, same row).
    """
    n, _, height, width = x.shape
    w_is = (lstm.input_to_state.weight * lstm.input_to_state.mask)[:, :, 0, 0]      # (4h, 2h)
    w_up, w_left = lstm.state_to_state.weight[:, :, 0], lstm.state_to_state.weight[:, :, 1]
    h = torch.zeros(n, lstm.hidden, height, width, dtype=x.dtype)
    c = torch.zeros_like(h)
    zero = torch.zeros(n, lstm.hidden, dtype=x.dtype)
    for r, col in itertools.product(range(height), range(width)):   # raster order: up and left come first
        up = h[:, :, r - 1, col] if r > 0 else zero
        left = h[:, :, r, col - 1] if col > 0 else zero
        gates = x[:, :, r, col] @ w_is.T + lstm.input_to_state.bias + up @ w_up.T + left @ w_left.T \
            + lstm.state_to_state.bias
        h[:, :, r, col], c[:, :, r, col] = _lstm_step(gates, c[:, :, r, col - 1] if col > 0 else zero)
    return h


def bilstm_reference(layer: DiagonalBiLSTM, x: torch.Tensor) -> torch.Tensor:
    forward_states = diagonal_lstm_reference(layer.left_to_right, x)
    backward_states = diagonal_lstm_reference(layer.right_to_left, x.flip(3)).flip(3)
    shifted = torch.zeros_like(backward_states)
    shifted[:, :, 1:] = backward_states[:, :, :-1]                  # one row down
    return _residual(layer, forward_states + shifted, x)


@pytest.mark.parametrize("num_groups", [1, 3])
def test_row_lstm_layer_matches_a_per_pixel_transcription(num_groups):
    torch.manual_seed(0)
    layer = RowLSTM(6, 3, num_groups).double()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), row_lstm_reference(layer, x))


@pytest.mark.parametrize("num_groups", [1, 3])
def test_diagonal_bilstm_layer_matches_a_per_pixel_transcription(num_groups):
    torch.manual_seed(0)
    layer = DiagonalBiLSTM(6, 3, num_groups).double()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), bilstm_reference(layer, x))


@pytest.mark.parametrize("name", ["pixelrnn_row_lstm", "pixelrnn_diagonal_bilstm"])
def test_rgb_pixel_rnns_are_causal_over_every_position(name):
    torch.manual_seed(0)
    model = canon.create_model(name, image_size=7, in_chans=3, hidden_channels=12, num_layers=2,
                               out_hidden_channels=48, distribution="categorical", num_levels=4)
    check_causality(model, 3, 7, levels=4)


@pytest.mark.parametrize("name", ["pixelrnn_row_lstm", "pixelrnn_diagonal_bilstm"])
def test_binary_pixel_rnns_are_causal_over_every_position(name):
    torch.manual_seed(0)
    size = 7
    model = canon.create_model(name, image_size=size, hidden_channels=4, num_layers=2, out_hidden_channels=16)
    depends, places = check_causality(model, 1, size)
    if name == "pixelrnn_diagonal_bilstm":
        # Section 3.2: the whole context, with one exception the 7×7 mask-A first layer implies: the last
        # pixel of the row above, x(i-1, W-1), enters no feature of row i-1 (it is the row's last) and the
        # features of row i only from column W-4 on (the kernel reaches 3 columns), so pixels (i, j < W-4)
        # cannot see it.
        expected = places[None, :] < places[:, None]
        for i in range(1, size):
            for j in range(size - 4):
                expected[i * size + j, (i - 1) * size + size - 1] = False
        assert torch.equal(depends, expected)


@pytest.mark.parametrize("name", ["pixelrnn_row_lstm", "pixelrnn_diagonal_bilstm"])
def test_likelihood_sums_to_one_over_every_image(name):
    torch.manual_seed(0)
    model = canon.create_model(name, image_size=3, hidden_channels=3, num_layers=1, out_hidden_channels=8)
    model = model.double().eval()
    with torch.no_grad():
        total = torch.logsumexp(model.log_likelihood(_all_images(1, 3)), 0).exp()
    assert total.item() == pytest.approx(1.0, abs=1e-9)


def test_paper_sizes_and_sampling():
    model = canon.create_model("pixelrnn_diagonal_bilstm")
    assert len(model.body) == 7 and model.body[0].left_to_right.hidden == 16      # Table 3: 7 layers, h = 16
    assert model.stem.kernel_size == (7, 7) and model.stem.mask_type == "A"
    row = canon.create_model("pixelrnn_row_lstm")
    assert row.body[0].input_to_state.kernel_size == (1, 3) and row.body[0].state_to_state.kernel_size == (3,)
    small = canon.create_model("pixelrnn_row_lstm", image_size=4, hidden_channels=2, num_layers=1,
                               out_hidden_channels=4)
    samples = small.sample(3, torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 4, 4) and set(samples.unique().tolist()) <= {0.0, 1.0}


def test_bad_input():
    model = canon.create_model("pixelrnn_row_lstm", hidden_channels=2, num_layers=1, out_hidden_channels=4)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="binarised"):
        model.nll(torch.full((1, 1, 28, 28), 0.3))
    with pytest.raises(ValueError, match="layer_type"):
        canon.create_model("pixelrnn_row_lstm", layer_type="gru")
    with pytest.raises(ValueError, match="colour groups"):
        canon.create_model("pixelrnn_diagonal_bilstm", in_chans=3, hidden_channels=1)
