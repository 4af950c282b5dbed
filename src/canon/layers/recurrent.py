"""Recurrent layers written from their gate equations: Elman RNN, LSTM and GRU.

Papers: Elman, "Finding Structure in Time", Cognitive Science, 1990 (no arXiv id);
Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation, 1997, with the forget
gate of Gers, Schmidhuber & Cummins, "Learning to Forget", 2000 (no arXiv ids);
Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
Translation", 2014, arXiv:1406.1078 (the GRU).

At each step t, with x_t the input, h_{t-1} the previous hidden state, σ the logistic sigmoid
and ⊙ the elementwise product (W_i· act on x_t, W_h· on h_{t-1}; each has its own bias)::

    RNN   h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)            (or ReLU instead of tanh)

    LSTM  i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)               input gate
          f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)               forget gate
          g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)            candidate cell
          o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)               output gate
          c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
          h_t = o_t ⊙ tanh(c_t)

    GRU   r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)               reset gate
          z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)               update gate
          n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))    candidate state
          h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Why sigmoid for the gates and tanh for the state: a gate is a soft switch that multiplies
what passes through it, so it must lie in [0, 1] (0 = closed, 1 = open), which is σ's range.
The state itself is information that must be able to go up or down, so it takes a
zero-centred, bounded squashing function: tanh's range (-1, 1) keeps h (and the candidate
g or n) from growing step after step, and its slope is 1 at 0, so small signals pass
unattenuated. Why the gates help: in a plain RNN, ∂h_t/∂h_{t-k} is a product of k Jacobians
diag(tanh'(·)) W_hh, which shrinks or grows geometrically with k (the vanishing / exploding
gradient); in the LSTM the cell is updated additively, ∂c_t/∂c_{t-1} = diag(f_t), so the
gradient along the cell is scaled by the forget gate only and lasts as long as f_t stays near 1
(the GRU's z_t plays the same part). tests/layers/test_recurrent.py measures this.

Follows the papers / torch:
    - the equations above, with torch's gate order in the stacked matrices: (i, f, g, o) for the
      LSTM, (r, z, n) for the GRU; ``weight_ih_l{k}`` is (gates·hidden, input), ``weight_hh_l{k}``
      (gates·hidden, hidden), two biases per layer (``bias_ih_l{k}``, ``bias_hh_l{k}``) and the
      ``_reverse`` copies for the backward direction, i.e. ``torch.nn.RNN/LSTM/GRU``'s exact
      ``state_dict``: their weights load with ``strict=True`` and give the same outputs;
    - torch's initialisation: every weight and bias uniform in (-1/√hidden, 1/√hidden);
    - stacked layers (layer k > 0 reads the concatenated directions of layer k - 1), dropout on
      the outputs of every layer but the last (training mode only), initial states ``hx``.
    - Padded batches: with ``lengths`` (one per sequence), a sequence's outputs past its length
      are zero, its final state is the state at its last real step, and the reverse direction
      starts at its last real step — what ``torch.nn.utils.rnn.pack_padded_sequence`` gives.

Deviates, and why:
    - ``batch_first=True`` is the default (canon is batch-first everywhere, as in
      :class:`canon.layers.MultiHeadAttention`; torch defaults to False). Pass
      ``batch_first=False`` for (T, N, F) inputs.
    - lengths are a keyword argument (``forward(x, hx, lengths=...)``) instead of a
      ``PackedSequence``: the readable loop masks the finished sequences instead of shrinking the
      batch. Every length must be in [1, T], as torch's packing requires.
    - The LSTM's ``proj_size`` is not offered.
    - ``fused=True`` runs torch's fused kernel (``torch.nn.LSTM`` etc., through
      ``torch.func.functional_call`` on this module's own parameters, so the ``state_dict`` is
      unchanged and gradients reach the same tensors). The loop written from the equations is the
      readable reference and is slower (``benchmarks/bench_sequence.py`` measures by how much);
      canon's sequence models (``lstm_attention_*``) build their LSTMs with ``fused=True``.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["rnn_tanh_cell", "rnn_relu_cell", "lstm_cell", "gru_cell", "RNN", "LSTM", "GRU"]

State = tuple[torch.Tensor, ...]  # (h,) for the RNN and the GRU, (h, c) for the LSTM


# --- one step of each cell, from the equations ------------------------------------------------
# ``input_gates`` is W_ih x_t + b_ih, computed for every step at once before the loop (one large
# matrix product instead of T small ones); the cell adds W_hh h_{t-1} + b_hh and applies the gates.

def rnn_tanh_cell(input_gates: torch.Tensor, state: State, weight_hh: torch.Tensor,
                  bias_hh: torch.Tensor | None) -> State:
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). input_gates (N, H), state (h,) with h (N, H)."""
    (h,) = state
    return (torch.tanh(input_gates + F.linear(h, weight_hh, bias_hh)),)


def rnn_relu_cell(input_gates: torch.Tensor, state: State, weight_hh: torch.Tensor,
                  bias_hh: torch.Tensor | None) -> State:
    """h_t = max(0, W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""
    (h,) = state
    return (torch.relu(input_gates + F.linear(h, weight_hh, bias_hh)),)


def lstm_cell(input_gates: torch.Tensor, state: State, weight_hh: torch.Tensor,
              bias_hh: torch.Tensor | None) -> State:
    """One LSTM step. input_gates (N, 4H) in torch's order (i, f, g, o); state (h, c), each (N, H)."""
    h, c = state
    gates = input_gates + F.linear(h, weight_hh, bias_hh)  # (N, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)  # gates in [0, 1]
    g = torch.tanh(g)                                              # candidate in (-1, 1)
    c = f * c + i * g                                              # c_t = f ⊙ c_{t-1} + i ⊙ g
    h = o * torch.tanh(c)                                          # h_t = o ⊙ tanh(c_t)
    return h, c


def gru_cell(input_gates: torch.Tensor, state: State, weight_hh: torch.Tensor,
             bias_hh: torch.Tensor | None) -> State:
    """One GRU step. input_gates (N, 3H) in torch's order (r, z, n); state (h,) with h (N, H)."""
    (h,) = state
    x_r, x_z, x_n = input_gates.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)                 # reset gate
    z = torch.sigmoid(x_z + h_z)                 # update gate
    n = torch.tanh(x_n + r * h_n)                # candidate: the reset gate scales W_hn h + b_hn
    return ((1 - z) * n + z * h,)                # h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}


# --- the shared layer ---------------------------------------------------------------------------

class _RecurrentLayer(nn.Module):
    """Multi-layer, optionally bidirectional recurrence over one cell, with torch's parameter names."""

    gates_per_unit: int = 1
    state_count: int = 1  # 2 for the LSTM (h, c)
    torch_class: type = nn.RNN

    def __init__(self, input_size: int, hidden_size: int, *, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, dropout: float = 0.0, bidirectional: bool = False,
                 fused: bool = False):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1], got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.fused = fused
        gate_size = self.gates_per_unit * hidden_size
        # Registered in torch's order: per layer, per direction, w_ih, w_hh, b_ih, b_hh.
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._direction_suffixes():
                self.register_parameter(f"weight_ih_l{layer}{suffix}", nn.Parameter(torch.empty(gate_size, layer_input)))
                self.register_parameter(f"weight_hh_l{layer}{suffix}", nn.Parameter(torch.empty(gate_size, hidden_size)))
                if bias:
                    self.register_parameter(f"bias_ih_l{layer}{suffix}", nn.Parameter(torch.empty(gate_size)))
                    self.register_parameter(f"bias_hh_l{layer}{suffix}", nn.Parameter(torch.empty(gate_size)))
        self.reset_parameters()
        # The fused kernel runs through a shape-only twin (on the meta device, so it holds no memory)
        # that is NOT a submodule: it adds nothing to parameters() or the state_dict.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "dropout with num_layers=1" warning
            twin = self.torch_class(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                                    dropout=self.dropout, bidirectional=bidirectional, **self._torch_kwargs())
        object.__setattr__(self, "_torch_twin", twin)

    def _torch_kwargs(self) -> dict:
        return {}

    def _direction_suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """torch's initialisation: U(-1/√hidden, 1/√hidden) for every weight and bias."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _cell(self, input_gates: torch.Tensor, state: State, weight_hh, bias_hh) -> State:
        raise NotImplementedError

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, batch_first={self.batch_first}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if not self.bias:
            s += ", bias=False"
        return s + (", fused=True" if self.fused else "")

    # --- input checks: expected and actual, where the value enters ---------------------------
    def _check_input(self, input: torch.Tensor, lengths) -> tuple[bool, torch.Tensor | None]:
        name = type(self).__name__
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{name} expects a torch.Tensor input, got {type(input).__name__}")
        layout = "(N, T, input_size)" if self.batch_first else "(T, N, input_size)"
        if input.dim() not in (2, 3):
            raise ValueError(f"{name} expects a 3-D input {layout} (or 2-D (T, input_size) for one sequence), "
                             f"got shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name} was built with input_size={self.input_size}, got an input with "
                             f"{input.shape[-1]} features (shape {tuple(input.shape)})")
        if not input.is_floating_point():
            raise TypeError(f"{name} expects a floating-point input, got {input.dtype}")
        unbatched = input.dim() == 2
        seq_len = input.shape[0] if unbatched or not self.batch_first else input.shape[1]
        if seq_len == 0:
            raise ValueError(f"{name} got an empty sequence (shape {tuple(input.shape)})")
        if lengths is None:
            return unbatched, None
        if unbatched:
            raise ValueError(f"{name}: lengths need a batched 3-D input {layout}, got shape {tuple(input.shape)}")
        batch = input.shape[0] if self.batch_first else input.shape[1]
        lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.dim() != 1 \
                or lengths.numel() != batch:
            raise ValueError(f"{name}: lengths must be a 1-D integer tensor with one length per sequence "
                             f"({batch}), got {lengths.dtype} of shape {tuple(lengths.shape)}")
        if batch and (int(lengths.min()) < 1 or int(lengths.max()) > seq_len):
            raise ValueError(f"{name}: every length must be in [1, T={seq_len}], got min {int(lengths.min())} "
                             f"and max {int(lengths.max())}")
        return unbatched, lengths.to(device="cpu", dtype=torch.long)

    def _check_state(self, hx, batch: int, unbatched: bool, input: torch.Tensor) -> tuple[torch.Tensor, ...]:
        name = type(self).__name__
        layers = self.num_layers * self.num_directions
        expected = (layers, self.hidden_size) if unbatched else (layers, batch, self.hidden_size)
        if hx is None:
            return tuple(input.new_zeros(expected) for _ in range(self.state_count))
        states = (hx,) if isinstance(hx, torch.Tensor) else tuple(hx)
        if len(states) != self.state_count or not all(isinstance(s, torch.Tensor) for s in states):
            what = "a tuple (h_0, c_0)" if self.state_count == 2 else "one tensor h_0"
            raise TypeError(f"{name} expects hx as {what}, got {type(hx).__name__}")
        for s in states:
            if tuple(s.shape) != expected:
                raise ValueError(f"{name}: initial state must be (num_layers·num_directions, N, hidden_size) = "
                                 f"{expected}, got {tuple(s.shape)}")
        return states

    # --- forward --------------------------------------------------------------------------------
    def _forward(self, input: torch.Tensor, hx, lengths):
        unbatched, lengths = self._check_input(input, lengths)
        if unbatched:  # one sequence (T, F): a batch of one, then drop the batch dimension again
            input = input.unsqueeze(0 if self.batch_first else 1)
        batch = input.shape[0] if self.batch_first else input.shape[1]
        states = self._check_state(hx, batch, unbatched, input)
        if unbatched:
            states = tuple(s.unsqueeze(1) for s in states)
        if self.fused:
            output, final = self._forward_fused(input, states, lengths)
        else:
            output, final = self._forward_loop(input, states, lengths)
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            final = tuple(s.squeeze(1) for s in final)
        return output, final

    def _forward_loop(self, input: torch.Tensor, states: State, lengths: torch.Tensor | None):
        x = input.transpose(0, 1) if self.batch_first else input  # (T, N, F)
        seq_len = x.shape[0]
        # mask[t, n] is True while step t is a real step of sequence n.
        mask = None
        if lengths is not None:
            mask = (torch.arange(seq_len)[:, None] < lengths[None, :]).to(x.device)[..., None]  # (T, N, 1)
        finals: list[State] = []
        layer_input = x
        for layer in range(self.num_layers):
            direction_outputs = []
            for direction, suffix in enumerate(self._direction_suffixes()):
                index = layer * self.num_directions + direction
                weight_ih = getattr(self, f"weight_ih_l{layer}{suffix}")
                weight_hh = getattr(self, f"weight_hh_l{layer}{suffix}")
                bias_ih = getattr(self, f"bias_ih_l{layer}{suffix}") if self.bias else None
                bias_hh = getattr(self, f"bias_hh_l{layer}{suffix}") if self.bias else None
                input_gates = F.linear(layer_input, weight_ih, bias_ih)  # (T, N, gates·H), all steps at once
                state = tuple(s[index] for s in states)
                output, state = self._run_direction(input_gates, state, weight_hh, bias_hh, mask,
                                                    reverse=direction == 1)
                direction_outputs.append(output)
                finals.append(state)
            layer_input = torch.cat(direction_outputs, dim=-1) if self.bidirectional else direction_outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, p=self.dropout, training=True)
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        final = tuple(torch.stack([state[k] for state in finals]) for k in range(self.state_count))
        return output, final

    def _run_direction(self, input_gates: torch.Tensor, state: State, weight_hh, bias_hh,
                       mask: torch.Tensor | None, reverse: bool):
        """The recurrence over T steps: input_gates (T, N, gates·H) -> outputs (T, N, H), final state."""
        seq_len = input_gates.shape[0]
        outputs = []
        for t in (range(seq_len - 1, -1, -1) if reverse else range(seq_len)):
            new_state = self._cell(input_gates[t], state, weight_hh, bias_hh)
            if mask is None:
                output = new_state[0]
            else:  # past a sequence's end: keep its state, output zero
                real = mask[t]  # (N, 1)
                new_state = tuple(torch.where(real, new, old) for new, old in zip(new_state, state))
                output = new_state[0] * real
            state = new_state
            outputs.append(output)
        if reverse:
            outputs.reverse()
        return torch.stack(outputs), state

    def _forward_fused(self, input: torch.Tensor, states: State, lengths: torch.Tensor | None):
        twin = self._torch_twin
        twin.train(self.training)
        hx = states if self.state_count == 2 else states[0]
        params = dict(self.named_parameters())
        if lengths is None:
            output, final = functional_call(twin, params, (input, hx))
        else:
            seq_len = input.shape[1] if self.batch_first else input.shape[0]
            packed = pack_padded_sequence(input, lengths, batch_first=self.batch_first, enforce_sorted=False)
            output, final = functional_call(twin, params, (packed, hx))
            output, _ = pad_packed_sequence(output, batch_first=self.batch_first, total_length=seq_len)
        return output, (final if self.state_count == 2 else (final,))


class RNN(_RecurrentLayer):
    """Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) (``nonlinearity="relu"``: ReLU).

    input (N, T, input_size) (batch_first) or (T, N, input_size); ``hx`` (layers·directions, N, H);
    ``lengths`` (N,). Returns ``(output, h_n)``: output (N, T, directions·H), h_n (layers·directions, N, H).
    """

    def __init__(self, input_size: int, hidden_size: int, *, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = True, dropout: float = 0.0, bidirectional: bool = False,
                 fused: bool = False):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, fused=fused)

    def _torch_kwargs(self) -> dict:
        return {"nonlinearity": self.nonlinearity}

    def _cell(self, input_gates, state, weight_hh, bias_hh):
        cell = rnn_tanh_cell if self.nonlinearity == "tanh" else rnn_relu_cell
        return cell(input_gates, state, weight_hh, bias_hh)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None, *,
                lengths: torch.Tensor | Sequence[int] | None = None):
        output, (h_n,) = self._forward(input, hx, lengths)
        return output, h_n


class LSTM(_RecurrentLayer):
    """LSTM with a forget gate, gates (i, f, g, o) stacked in torch's order.

    input (N, T, input_size) (batch_first) or (T, N, input_size); ``hx`` a tuple (h_0, c_0), each
    (layers·directions, N, H); ``lengths`` (N,). Returns ``(output, (h_n, c_n))``.
    """

    gates_per_unit = 4
    state_count = 2
    torch_class = nn.LSTM

    def _cell(self, input_gates, state, weight_hh, bias_hh):
        return lstm_cell(input_gates, state, weight_hh, bias_hh)

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None, *,
                lengths: torch.Tensor | Sequence[int] | None = None):
        output, (h_n, c_n) = self._forward(input, hx, lengths)
        return output, (h_n, c_n)


class GRU(_RecurrentLayer):
    """GRU, gates (r, z, n) stacked in torch's order; same inputs and outputs as :class:`RNN`."""

    gates_per_unit = 3
    torch_class = nn.GRU

    def _cell(self, input_gates, state, weight_hh, bias_hh):
        return gru_cell(input_gates, state, weight_hh, bias_hh)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None, *,
                lengths: torch.Tensor | Sequence[int] | None = None):
        output, (h_n,) = self._forward(input, hx, lengths)
        return output, h_n

