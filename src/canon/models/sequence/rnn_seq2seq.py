"""An LSTM encoder-decoder with global attention: the recurrent baseline before the Transformer.

Paper: "Effective Approaches to Attention-based Neural Machine Translation", Luong, Pham,
Manning, 2015, arXiv:1508.04025.

Follows the paper:
    - Section 3: stacked LSTMs; the decoder starts from the encoder's final state.
    - Section 3.1, global attention with the "general" score: score(h_t, h̄_s) = h_tᵀ W_a h̄_s over all
      source states h̄_s, a_t = softmax over the source (padded positions masked out), context
      c_t = Σ_s a_t(s) h̄_s, attentional state h̃_t = tanh(W_c [c_t; h_t]), and
      p(y_t | y_<t, x) = softmax(W_s h̃_t).
    - Section 3.3, input feeding: h̃_{t-1} is concatenated with the embedding of y_{t-1} as the
      decoder's input (``input_feeding=True``, the default), so the decoder knows its past alignments.
    - Dropout between the LSTM layers, as the paper's section 4.1 (p = 0.2 there).

Deviates, and why:
    - The encoder is bidirectional (``bidirectional_encoder=True``), with hidden_size / 2 units per
      direction; the decoder's initial state per layer is [forward final; backward final] (OpenNMT's
      "brnn"). Luong et al. use a unidirectional, source-reversed encoder; a bidirectional one is the
      standard improvement (Bahdanau et al. 2014) and needs no reversed input.
    - Dropout also on the embeddings and on h̃_t before the output layer (OpenNMT-py does the same).
    - Weights are torch's defaults (Luong et al.: U(-0.1, 0.1)); embeddings N(0, 1) with the
      padding row zero.
    - ``lstm_attention_small`` is not in the paper: OpenNMT-py's default RNN recipe (2 layers,
      global "general" attention, input feeding, dropout 0.3) with a bidirectional encoder and
      width 256 instead of 500, to train on two CPU cores beside ``transformer_small``.
    - The LSTMs are :class:`canon.layers.LSTM` with ``fused=True`` (torch's kernel on the same
      parameters); ``fused_rnn=False`` runs the layer written from the gate equations instead.

Same decoding interface as :class:`canon.models.sequence.transformer.Transformer`: ``encode``,
``decode`` (teacher forcing), ``decode_step(prefix, encoder_out, cache)``; the cache holds the
decoder's (h, c) and the last attentional state h̃ (batch on dim 0), so a step costs O(1) in the
prefix length; with ``cache=None`` the prefix is decoded again from the start.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from canon.layers.attention import attention_weights
from canon.layers.recurrent import LSTM
from canon.models.sequence.transformer import _check_padding_mask, _check_tokens
from canon.registry import register_model

__all__ = ["GlobalAttention", "LSTMAttentionSeq2Seq", "lstm_attention_small"]

PAPER = "Effective Approaches to Attention-based Neural Machine Translation, 2015, arXiv:1508.04025"


class GlobalAttention(nn.Module):
    """Luong's global attention, "general" score: h̃_t = tanh(W_c [c_t; h_t]), c_t = softmax(h_tᵀ W_a h̄) h̄."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score_projection = nn.Linear(hidden_size, hidden_size, bias=False)   # W_a
        self.output_projection = nn.Linear(2 * hidden_size, hidden_size, bias=False)  # W_c

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """W_a h̄_s for every source state, computed once per sentence: (N, S, H) -> (N, S, H)."""
        return self.score_projection(memory)

    def forward(self, decoder_states: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor,
                padding_mask: torch.Tensor) -> torch.Tensor:
        """decoder_states h_t (N, T, H), memory h̄ (N, S, H), keys W_a h̄ (N, S, H), padding_mask (N, S) -> h̃ (N, T, H)."""
        weights = attention_weights(decoder_states, keys, attn_mask=~padding_mask[:, None, :], scale=1.0)  # (N, T, S)
        context = weights @ memory                                                                      # (N, T, H)
        return torch.tanh(self.output_projection(torch.cat([context, decoder_states], dim=-1)))


class LSTMAttentionSeq2Seq(nn.Module):
    """Encoder-decoder LSTM with global attention and input feeding.

    ``forward(src_tokens, tgt_tokens)``: src_tokens (N, S), tgt_tokens (N, T) the decoder input
    ``[bos, y_1, ..., y_{T-1}]`` -> logits (N, T, tgt_vocab_size). Padding masks (True at padding)
    default to ``tokens == padding_idx``.
    """

    def __init__(self, *, src_vocab_size: int = 37_000, tgt_vocab_size: int = 37_000, padding_idx: int = 0,
                 bos_idx: int = 1, eos_idx: int = 2, embedding_dim: int = 256, hidden_size: int = 256,
                 num_layers: int = 2, bidirectional_encoder: bool = True, dropout: float = 0.3,
                 input_feeding: bool = True, share_embeddings: bool = False, fused_rnn: bool = True):
        super().__init__()
        for name, value in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size),
                            ("embedding_dim", embedding_dim), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LSTMAttentionSeq2Seq: {name} must be a positive integer, got {value!r}")
        if bidirectional_encoder and hidden_size % 2:
            raise ValueError(f"LSTMAttentionSeq2Seq: a bidirectional encoder splits hidden_size in two "
                             f"directions, so it must be even, got {hidden_size}")
        for name, index in (("padding_idx", padding_idx), ("bos_idx", bos_idx), ("eos_idx", eos_idx)):
            if not 0 <= index < min(src_vocab_size, tgt_vocab_size):
                raise ValueError(f"LSTMAttentionSeq2Seq: {name}={index} is outside the vocabulary "
                                 f"[0, {min(src_vocab_size, tgt_vocab_size)})")
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(f"LSTMAttentionSeq2Seq: share_embeddings=True needs one vocabulary, got "
                             f"src_vocab_size={src_vocab_size} and tgt_vocab_size={tgt_vocab_size}")
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.padding_idx, self.bos_idx, self.eos_idx = padding_idx, bos_idx, eos_idx
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.bidirectional_encoder = bidirectional_encoder
        self.input_feeding = input_feeding

        self.src_embedding = nn.Embedding(src_vocab_size, embedding_dim, padding_idx=padding_idx)
        self.tgt_embedding = self.src_embedding if share_embeddings else \
            nn.Embedding(tgt_vocab_size, embedding_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.encoder = LSTM(embedding_dim, hidden_size // 2 if bidirectional_encoder else hidden_size,
                            num_layers=num_layers, bidirectional=bidirectional_encoder, dropout=dropout,
                            batch_first=True, fused=fused_rnn)
        decoder_input = embedding_dim + hidden_size if input_feeding else embedding_dim
        self.decoder = LSTM(decoder_input, hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True,
                            fused=fused_rnn)
        self.attention = GlobalAttention(hidden_size)
        self.output_projection = nn.Linear(hidden_size, tgt_vocab_size)  # W_s

    # --- encoder ---------------------------------------------------------------------------------
    def encode(self, src_tokens: torch.Tensor, src_padding_mask: torch.Tensor | None = None) -> dict:
        """src_tokens (N, S) -> memory (N, S, H), its attention keys, the padding mask and the
        decoder's initial state ``hidden``/``cell`` (N, layers, H) (batch first, for the search)."""
        _check_tokens(src_tokens, self.src_vocab_size, "src_tokens")
        if src_padding_mask is None:
            src_padding_mask = src_tokens == self.padding_idx
        _check_padding_mask(src_padding_mask, src_tokens, "src_padding_mask")
        lengths = (~src_padding_mask).sum(1)
        if int(lengths.min()) < 1:
            raise ValueError("every source sentence needs at least one non-padding token")
        if not torch.equal(src_padding_mask, torch.arange(src_tokens.shape[1], device=lengths.device) >= lengths[:, None]):
            raise ValueError("src_padding_mask must mark padding at the end of each sentence (right padding): "
                             "the LSTM encoder reads the first `length` positions as the sentence")
        embedded = self.dropout(self.src_embedding(src_tokens))                 # (N, S, E)
        memory, (h_n, c_n) = self.encoder(embedded, lengths=lengths.cpu())      # (N, S, H), (L·D, N, H/D)
        if self.bidirectional_encoder:  # per layer: [forward final; backward final]
            n = src_tokens.shape[0]
            h_n = h_n.reshape(self.num_layers, 2, n, -1).permute(0, 2, 1, 3).reshape(self.num_layers, n, -1)
            c_n = c_n.reshape(self.num_layers, 2, n, -1).permute(0, 2, 1, 3).reshape(self.num_layers, n, -1)
        return {"memory": memory, "keys": self.attention.keys(memory), "padding_mask": src_padding_mask,
                "hidden": h_n.transpose(0, 1), "cell": c_n.transpose(0, 1)}

    # --- decoder ---------------------------------------------------------------------------------
    def _attend_and_project(self, decoder_states: torch.Tensor, encoder_out: dict) -> torch.Tensor:
        return self.attention(decoder_states, encoder_out["memory"], encoder_out["keys"], encoder_out["padding_mask"])

    def _step(self, tokens: torch.Tensor, encoder_out: dict, state: dict) -> tuple[torch.Tensor, dict]:
        """One decoder step: tokens (N,) y_{t-1} -> h̃_t (N, H) and the next state (batch first)."""
        x = self.dropout(self.tgt_embedding(tokens))[:, None]                   # (N, 1, E)
        if self.input_feeding:
            x = torch.cat([x, state["attentional"][:, None]], dim=-1)           # (N, 1, E + H)
        hx = (state["hidden"].transpose(0, 1).contiguous(), state["cell"].transpose(0, 1).contiguous())
        output, (h, c) = self.decoder(x, hx)                                     # (N, 1, H)
        attentional = self._attend_and_project(output, encoder_out)[:, 0]       # (N, H)
        return attentional, {"hidden": h.transpose(0, 1), "cell": c.transpose(0, 1), "attentional": attentional}

    def _initial_state(self, encoder_out: dict) -> dict:
        hidden = encoder_out["hidden"]
        return {"hidden": hidden, "cell": encoder_out["cell"],
                "attentional": hidden.new_zeros(hidden.shape[0], self.hidden_size)}

    def decode(self, tgt_tokens: torch.Tensor, encoder_out: dict,
               tgt_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: tgt_tokens (N, T) decoder input -> logits (N, T, tgt_vocab_size).

        Positions after a target's padding start are computed but carry no meaning (the loss ignores
        them); ``tgt_padding_mask`` is accepted for the shared interface and checked, not needed.
        """
        _check_tokens(tgt_tokens, self.tgt_vocab_size, "tgt_tokens")
        if tgt_padding_mask is not None:
            _check_padding_mask(tgt_padding_mask, tgt_tokens, "tgt_padding_mask")
        if encoder_out["memory"].shape[0] != tgt_tokens.shape[0]:
            raise ValueError(f"tgt_tokens has {tgt_tokens.shape[0]} sequences but the encoder output "
                             f"{encoder_out['memory'].shape[0]}")
        state = self._initial_state(encoder_out)
        if self.input_feeding:  # h̃_{t-1} feeds step t: one step at a time
            attentional = []
            for t in range(tgt_tokens.shape[1]):
                h_tilde, state = self._step(tgt_tokens[:, t], encoder_out, state)
                attentional.append(h_tilde)
            attentional = torch.stack(attentional, dim=1)                        # (N, T, H)
        else:  # the decoder LSTM runs over all steps at once, attention over all of them at once
            hx = (state["hidden"].transpose(0, 1).contiguous(), state["cell"].transpose(0, 1).contiguous())
            output, _ = self.decoder(self.dropout(self.tgt_embedding(tgt_tokens)), hx)
            attentional = self._attend_and_project(output, encoder_out)
        return self.output_projection(self.dropout(attentional))                 # (N, T, V)

    def decode_step(self, prefix_tokens: torch.Tensor, encoder_out: dict,
                    cache: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        """Logits (N, V) for the token after ``prefix_tokens`` (N, t). A ``cache`` dict ({} at first)
        carries (h, c, h̃) from step to step; ``cache=None`` decodes the whole prefix again."""
        if cache is None:
            return self.decode(prefix_tokens, encoder_out)[:, -1], None
        _check_tokens(prefix_tokens, self.tgt_vocab_size, "prefix_tokens")
        if not cache:
            if prefix_tokens.shape[1] != 1:
                raise ValueError(f"an empty cache starts at the first step, but the prefix has "
                                 f"{prefix_tokens.shape[1]} tokens; pass cache=None to decode it whole")
            cache.update(self._initial_state(encoder_out))
        attentional, state = self._step(prefix_tokens[:, -1], encoder_out, cache)
        cache.update(state)
        return self.output_projection(self.dropout(attentional)), cache

    def example_inputs(self, input_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(src_tokens, tgt_tokens)`` of shape ``input_shape`` (default (1, 16)) holding an ordinary token
        id, for ``canon info`` and export."""
        batch, length = tuple(input_shape or (1, 16))[:2]
        device = next(self.parameters()).device
        token = min(4, self.tgt_vocab_size - 1, self.src_vocab_size - 1)  # past the special ids 0-3
        tokens = torch.full((batch, length), token, dtype=torch.long, device=device)
        return tokens, tokens.clone()

    def forward(self, src_tokens: torch.Tensor, tgt_tokens: torch.Tensor,
                src_padding_mask: torch.Tensor | None = None,
                tgt_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(tgt_tokens, self.encode(src_tokens, src_padding_mask), tgt_padding_mask)


# --- registered models ------------------------------------------------------------------------------

@register_model(LSTMAttentionSeq2Seq, task="translation", paper=PAPER, input_size=(), num_classes=None)
def lstm_attention_small(**kwargs) -> LSTMAttentionSeq2Seq:
    architecture = dict(embedding_dim=256, hidden_size=256, num_layers=2, bidirectional_encoder=True,
                        dropout=0.3, input_feeding=True)
    return LSTMAttentionSeq2Seq(**{**architecture, **kwargs})
