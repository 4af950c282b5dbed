"""The Transformer: an encoder-decoder built from attention and position-wise feed-forward layers.

Paper: "Attention Is All You Need", Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser,
Polosukhin, 2017, arXiv:1706.03762.

Follows the paper:
    - Section 3.1: an encoder of N identical layers (multi-head self-attention, then a
      position-wise feed-forward network) and a decoder of N identical layers that add a third
      sub-layer, multi-head attention over the encoder's output. Each sub-layer is wrapped as
      LayerNorm(x + Dropout(Sublayer(x))) (post-norm). The decoder's self-attention is masked
      (causal) so that position i depends only on the outputs before it.
    - Section 3.2: scaled dot-product attention softmax(Q Kᵀ / √d_k) V in h heads with
      d_k = d_v = d_model / h, from :class:`canon.layers.MultiHeadAttention`; padded source
      positions are masked out of every attention over the source (the key-padding mask).
    - Section 3.3: FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 with inner size d_ff.
    - Section 3.4: embeddings multiplied by √d_model; with ``share_embeddings=True`` (the default)
      one weight matrix serves the source embedding, the target embedding and the pre-softmax
      projection (the paper's setting with a shared source-target BPE vocabulary). With separate
      vocabularies (``share_embeddings=False``) the target embedding and the pre-softmax weights
      stay tied unless ``tie_output_embedding=False``.
    - Section 3.5: sinusoidal encodings PE(pos, 2i) = sin(pos / 10000^(2i/d_model)),
      PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)) added to the embeddings; learned position
      embeddings as an option (``positional_encoding="learned"``; Table 3 row (E) reports nearly
      identical results).
    - Section 5.4: dropout P_drop on the output of every sub-layer before the residual addition,
      and on the sums of embeddings and positional encodings. Label smoothing ε_ls = 0.1 is the
      loss's part, not the model's: ``canon.losses.cross_entropy(logits.transpose(1, 2), target,
      ignore_index=padding_idx, label_smoothing=0.1)`` (Szegedy et al.'s uniform prior over the
      vocabulary, torch's definition).
    - Table 3: ``transformer_base`` (N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1; 63.1M parameters
      with a shared 37,000-token vocabulary, the paper's "65M") and ``transformer_big`` (N=6,
      d_model=1024, d_ff=4096, h=16, P_drop=0.3, the EN-DE setting; 214.2M, the paper's "213M").

Deviates, and why:
    - ``norm_first=True`` gives the pre-norm layer x + Dropout(Sublayer(LayerNorm(x))) with a final
      LayerNorm after each stack (tensor2tensor's later default; trains without a careful warm-up).
      Not the paper; off by default.
    - ``attention_dropout`` (on the attention probabilities) and ``activation_dropout`` (on the
      FFN's hidden layer) are in tensor2tensor and torch's layers but not in the paper; they are
      0 by default.
    - The paper does not state its initialisation. Linear weights are Xavier-uniform with zero
      biases (tensor2tensor, fairseq), embeddings N(0, d_model^-1/2) with the padding row zero
      (fairseq), so that after the √d_model scaling the inputs have unit variance. LayerNorm
      ε = 1e-5 (torch's default).
    - Parameter names say what each part is (``self_attention``, ``cross_attention``,
      ``feed_forward``, ``*_norm``); :func:`torch_layer_state_dict_to_canon` is the one place that
      maps ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` names onto them
      (same parameters, same shapes; tests/models/test_transformer.py checks equal outputs).
    - ``transformer_small`` is not in the paper: N=3, d_model=256, h=8, d_ff=512, P_drop=0.1, the
      Multi30k setting of Ben Trevett's widely used "pytorch-seq2seq" tutorial 6 ("Attention is All
      You Need"), sized to train on two CPU cores.

Decoding interface (used by :mod:`canon.models.sequence.decoding`, shared with the LSTM model):
    ``encode(src_tokens, src_padding_mask)`` -> ``encoder_out`` (a dict of tensors, batch on dim 0);
    ``decode(tgt_tokens, encoder_out)`` -> logits (N, T, V) for teacher forcing;
    ``decode_step(prefix, encoder_out, cache)`` -> (logits (N, V) for the next token, cache). With a
    ``cache`` dict only the prefix's last token is embedded and run through the decoder, the keys and
    values of the earlier positions coming from the cache (step t costs O(t)); with ``cache=None``
    the whole prefix is decoded again (O(t²)), the reference the cache is tested against.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers.attention import MultiHeadAttention
from canon.registry import register_model

__all__ = ["sinusoidal_positional_encoding", "PositionwiseFeedForward", "TransformerEncoderLayer",
           "TransformerDecoderLayer", "Transformer", "torch_layer_state_dict_to_canon",
           "transformer_small", "transformer_base", "transformer_big"]

PAPER = "Attention Is All You Need, 2017, arXiv:1706.03762"


# --- small helpers ------------------------------------------------------------------------------

def sinusoidal_positional_encoding(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    positions (L,) integer or float -> (L, d_model) float32 (section 3.5). ``d_model`` must be even.
    """
    if d_model % 2:
        raise ValueError(f"sinusoidal positional encoding needs an even d_model, got {d_model}")
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device)
    angles = positions.to(torch.float32)[:, None] / (10000.0 ** (two_i / d_model))  # (L, d_model/2)
    encoding = torch.empty(positions.shape[0], d_model, device=positions.device)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles)
    return encoding


def torch_layer_state_dict_to_canon(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``torch.nn.TransformerEncoderLayer`` or ``TransformerDecoderLayer`` state_dict to canon's names.

    =================  ==========================  ==========================
    torch              canon encoder layer         canon decoder layer
    =================  ==========================  ==========================
    ``self_attn``      ``self_attention``          ``self_attention``
    ``multihead_attn`` (none)                      ``cross_attention``
    ``linear1``        ``feed_forward.linear1``    ``feed_forward.linear1``
    ``linear2``        ``feed_forward.linear2``    ``feed_forward.linear2``
    ``norm1``          ``self_attention_norm``     ``self_attention_norm``
    ``norm2``          ``feed_forward_norm``       ``cross_attention_norm``
    ``norm3``          (none)                      ``feed_forward_norm``
    =================  ==========================  ==========================

    The attention modules share torch's inner names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj.*``), so only the prefixes change. A decoder layer is recognised by its
    ``multihead_attn.*`` keys. A key outside the table raises ``KeyError`` naming it.
    """
    is_decoder = any(k.startswith("multihead_attn.") for k in state_dict)
    prefixes = {"self_attn": "self_attention", "linear1": "feed_forward.linear1",
                "linear2": "feed_forward.linear2", "norm1": "self_attention_norm"}
    if is_decoder:
        prefixes.update({"multihead_attn": "cross_attention", "norm2": "cross_attention_norm",
                         "norm3": "feed_forward_norm"})
    else:
        prefixes["norm2"] = "feed_forward_norm"
    renamed = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head not in prefixes:
            kind = "TransformerDecoderLayer" if is_decoder else "TransformerEncoderLayer"
            raise KeyError(f"{key!r} is not a torch.nn.{kind} parameter; expected prefixes {sorted(prefixes)}")
        renamed[f"{prefixes[head]}.{rest}"] = value
    return renamed


def _check_tokens(tokens: torch.Tensor, vocab_size: int, name: str) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must be a 2-D integer tensor (N, length) of token ids, got "
                         f"{tokens.dtype} of shape {tuple(tokens.shape)}")
    if tokens.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tokens.shape)}); every sequence needs at least one token")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"{name} holds ids in [{int(tokens.min())}, {int(tokens.max())}], outside the "
                         f"vocabulary [0, {vocab_size})")


def _check_padding_mask(mask: torch.Tensor, tokens: torch.Tensor, name: str) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(tokens.shape):
        raise ValueError(f"{name} must be a boolean (N, length) = {tuple(tokens.shape)} mask, True at padding, "
                         f"got {mask.dtype} of shape {tuple(mask.shape)}")


# --- blocks ---------------------------------------------------------------------------------------

class PositionwiseFeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, applied at every position (section 3.3)."""

    def __init__(self, d_model: int, d_ff: int, *, activation_dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.dropout = nn.Dropout(activation_dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))  # (N, L, d_model)


class TransformerEncoderLayer(nn.Module):
    """Self-attention then the FFN, each as LayerNorm(x + Dropout(Sublayer(x))) (pre-norm: x + Dropout(Sublayer(LN(x))))."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, dropout: float = 0.1,
                 attention_dropout: float = 0.0, activation_dropout: float = 0.0, norm_first: bool = False,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.norm_first = norm_first
        self.self_attention = MultiHeadAttention(d_model, num_heads, dropout=attention_dropout)
        self.self_attention_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, activation_dropout=activation_dropout)
        self.feed_forward_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def _attend(self, x, padding_mask):
        return self.self_attention(x, x, x, key_padding_mask=padding_mask)[0]

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, S, d_model), padding_mask (N, S) True at padding -> (N, S, d_model)."""
        if self.norm_first:
            x = x + self.dropout(self._attend(self.self_attention_norm(x), padding_mask))
            return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        x = self.self_attention_norm(x + self.dropout(self._attend(x, padding_mask)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


class TransformerDecoderLayer(nn.Module):
    """Masked self-attention, attention over the encoder output, then the FFN; each wrapped like the encoder's."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, dropout: float = 0.1,
                 attention_dropout: float = 0.0, activation_dropout: float = 0.0, norm_first: bool = False,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.norm_first = norm_first
        self.self_attention = MultiHeadAttention(d_model, num_heads, dropout=attention_dropout)
        self.self_attention_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.cross_attention = MultiHeadAttention(d_model, num_heads, dropout=attention_dropout)
        self.cross_attention_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, activation_dropout=activation_dropout)
        self.feed_forward_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *, padding_mask: torch.Tensor | None = None,
                memory_padding_mask: torch.Tensor | None = None, cache: dict | None = None) -> torch.Tensor:
        """x (N, T, d_model) targets, memory (N, S, d_model) encoder output -> (N, T, d_model).

        ``padding_mask`` (N, T) and ``memory_padding_mask`` (N, S) are True at padding. With ``cache``
        (a dict, filled on the first call), ``x`` holds only the new positions: the self-attention
        appends their keys/values to ``cache["self"]`` and the encoder's keys/values are projected once
        into ``cache["cross"]``.
        """
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache.setdefault("self", {}), cache.setdefault("cross", {})

        def self_attend(h):  # causal: position i sees positions <= i
            return self.self_attention(h, h, h, key_padding_mask=padding_mask, is_causal=True, cache=self_cache)[0]

        def cross_attend(h):
            return self.cross_attention(h, memory, memory, key_padding_mask=memory_padding_mask,
                                        cache=cross_cache, static_kv=True)[0]

        if self.norm_first:
            x = x + self.dropout(self_attend(self.self_attention_norm(x)))
            x = x + self.dropout(cross_attend(self.cross_attention_norm(x)))
            return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        x = self.self_attention_norm(x + self.dropout(self_attend(x)))
        x = self.cross_attention_norm(x + self.dropout(cross_attend(x)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


# --- the model ------------------------------------------------------------------------------------

class Transformer(nn.Module):
    """Encoder-decoder Transformer for translation: token ids in, next-token logits out.

    ``forward(src_tokens, tgt_tokens)``: src_tokens (N, S), tgt_tokens (N, T) the decoder input
    ``[bos, y_1, ..., y_{T-1}]`` -> logits (N, T, tgt_vocab_size) predicting ``[y_1, ..., y_T]``.
    Padding masks (True at padding) default to ``tokens == padding_idx``.
    """

    def __init__(self, *, src_vocab_size: int = 37_000, tgt_vocab_size: int = 37_000, padding_idx: int = 0,
                 bos_idx: int = 1, eos_idx: int = 2, d_model: int = 512, num_heads: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, d_ff: int = 2048,
                 dropout: float = 0.1, attention_dropout: float = 0.0, activation_dropout: float = 0.0,
                 norm_first: bool = False, positional_encoding: str = "sinusoidal", max_positions: int = 1024,
                 share_embeddings: bool = True, tie_output_embedding: bool = True, layer_norm_eps: float = 1e-5):
        super().__init__()
        for name, value in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size),
                            ("d_model", d_model), ("num_heads", num_heads), ("d_ff", d_ff),
                            ("max_positions", max_positions)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Transformer: {name} must be a positive integer, got {value!r}")
        if d_model % num_heads:
            raise ValueError(f"Transformer: d_model={d_model} must be divisible by num_heads={num_heads}")
        for name, index in (("padding_idx", padding_idx), ("bos_idx", bos_idx), ("eos_idx", eos_idx)):
            if not 0 <= index < min(src_vocab_size, tgt_vocab_size):
                raise ValueError(f"Transformer: {name}={index} is outside the vocabulary "
                                 f"[0, {min(src_vocab_size, tgt_vocab_size)})")
        if positional_encoding not in ("sinusoidal", "learned"):
            raise ValueError(f"Transformer: positional_encoding must be 'sinusoidal' or 'learned', "
                             f"got {positional_encoding!r}")
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(f"Transformer: share_embeddings=True needs one shared vocabulary, got "
                             f"src_vocab_size={src_vocab_size} and tgt_vocab_size={tgt_vocab_size}; "
                             f"pass share_embeddings=False for separate vocabularies")
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.padding_idx, self.bos_idx, self.eos_idx = padding_idx, bos_idx, eos_idx
        self.d_model = d_model
        self.positional_encoding = positional_encoding
        self.max_positions = max_positions
        self.norm_first = norm_first

        self.src_embedding = nn.Embedding(src_vocab_size, d_model, padding_idx=padding_idx)
        self.tgt_embedding = self.src_embedding if share_embeddings else \
            nn.Embedding(tgt_vocab_size, d_model, padding_idx=padding_idx)
        # Learned positions (Table 3 (E)): one table for source and target, like fairseq's shared option.
        self.position_embedding = nn.Embedding(max_positions, d_model) if positional_encoding == "learned" else None
        self.embedding_dropout = nn.Dropout(dropout)
        layer_args = dict(dropout=dropout, attention_dropout=attention_dropout, activation_dropout=activation_dropout,
                          norm_first=norm_first, layer_norm_eps=layer_norm_eps)
        self.encoder_layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, num_heads, d_ff, **layer_args) for _ in range(num_encoder_layers))
        self.decoder_layers = nn.ModuleList(
            TransformerDecoderLayer(d_model, num_heads, d_ff, **layer_args) for _ in range(num_decoder_layers))
        # Pre-norm leaves the residual stream unnormalised: one LayerNorm closes each stack.
        self.encoder_norm = nn.LayerNorm(d_model, eps=layer_norm_eps) if norm_first else None
        self.decoder_norm = nn.LayerNorm(d_model, eps=layer_norm_eps) if norm_first else None
        self.output_projection = nn.Linear(d_model, tgt_vocab_size, bias=False)
        self._reset_parameters()
        if share_embeddings or tie_output_embedding:  # section 3.4: the pre-softmax weights = the embedding
            self.output_projection.weight = self.tgt_embedding.weight

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, MultiHeadAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                if module.in_proj_bias is not None:
                    nn.init.zeros_(module.in_proj_bias)
        for embedding in {id(e): e for e in (self.src_embedding, self.tgt_embedding)}.values():
            nn.init.normal_(embedding.weight, mean=0.0, std=self.d_model ** -0.5)
            with torch.no_grad():
                embedding.weight[self.padding_idx].zero_()
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding.weight, mean=0.0, std=self.d_model ** -0.5)

    # --- pieces ---------------------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor, embedding: nn.Embedding, start: int = 0) -> torch.Tensor:
        """Dropout(√d_model · E[tokens] + PE[start : start + L]): (N, L) -> (N, L, d_model)."""
        length = tokens.shape[1]
        if start + length > self.max_positions and self.position_embedding is not None:
            raise ValueError(f"sequence of {start + length} positions is longer than max_positions="
                             f"{self.max_positions} of the learned position embeddings")
        positions = torch.arange(start, start + length, device=tokens.device)
        if self.position_embedding is not None:
            position_encoding = self.position_embedding(positions)
        else:
            position_encoding = sinusoidal_positional_encoding(positions, self.d_model)
        x = embedding(tokens) * math.sqrt(self.d_model) + position_encoding.to(embedding.weight.dtype)
        return self.embedding_dropout(x)

    def _padding_mask(self, tokens: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
        if mask is None:
            return tokens == self.padding_idx
        _check_padding_mask(mask, tokens, name)
        return mask

    def encode(self, src_tokens: torch.Tensor, src_padding_mask: torch.Tensor | None = None) -> dict:
        """src_tokens (N, S) -> ``{"memory": (N, S, d_model), "padding_mask": (N, S)}``."""
        _check_tokens(src_tokens, self.src_vocab_size, "src_tokens")
        src_padding_mask = self._padding_mask(src_tokens, src_padding_mask, "src_padding_mask")
        x = self._embed(src_tokens, self.src_embedding)  # (N, S, d_model)
        for layer in self.encoder_layers:
            x = layer(x, src_padding_mask)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return {"memory": x, "padding_mask": src_padding_mask}

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return self.output_projection(x)  # (N, T, tgt_vocab_size)

    def decode(self, tgt_tokens: torch.Tensor, encoder_out: dict,
               tgt_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: tgt_tokens (N, T) decoder input -> logits (N, T, tgt_vocab_size)."""
        _check_tokens(tgt_tokens, self.tgt_vocab_size, "tgt_tokens")
        tgt_padding_mask = self._padding_mask(tgt_tokens, tgt_padding_mask, "tgt_padding_mask")
        memory = encoder_out["memory"]
        if memory.shape[0] != tgt_tokens.shape[0]:
            raise ValueError(f"tgt_tokens has {tgt_tokens.shape[0]} sequences but the encoder output "
                             f"{memory.shape[0]}")
        x = self._embed(tgt_tokens, self.tgt_embedding)  # (N, T, d_model)
        for layer in self.decoder_layers:
            x = layer(x, memory, padding_mask=tgt_padding_mask, memory_padding_mask=encoder_out["padding_mask"])
        return self._logits(x)

    def decode_step(self, prefix_tokens: torch.Tensor, encoder_out: dict,
                    cache: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        """Logits (N, tgt_vocab_size) for the token after ``prefix_tokens`` (N, t), and the cache.

        ``cache=None``: the whole prefix is decoded again. A dict (``{}`` on the first step): only the
        last token goes through the decoder; the cache must hold the t - 1 positions before it.
        """
        if cache is None:
            return self.decode(prefix_tokens, encoder_out)[:, -1], None
        _check_tokens(prefix_tokens, self.tgt_vocab_size, "prefix_tokens")
        position = prefix_tokens.shape[1] - 1
        cached = cache["layer0"]["self"]["key"].shape[2] if "layer0" in cache else 0
        if cached != position:
            raise ValueError(f"the cache holds {cached} positions but the prefix has {position} before its "
                             f"last token; pass the same cache at every step, starting from {{}}")
        x = self._embed(prefix_tokens[:, -1:], self.tgt_embedding, start=position)  # (N, 1, d_model)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, encoder_out["memory"], memory_padding_mask=encoder_out["padding_mask"],
                      cache=cache.setdefault(f"layer{i}", {}))
        return self._logits(x)[:, -1], cache

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
        encoder_out = self.encode(src_tokens, src_padding_mask)
        return self.decode(tgt_tokens, encoder_out, tgt_padding_mask)  # (N, T, tgt_vocab_size)


# --- registered models ------------------------------------------------------------------------------

# Architecture arguments as in timm: a later keyword (e.g. dropout=0.3, share_embeddings=False) overrides them.

@register_model(Transformer, task="translation", paper=PAPER, input_size=(), num_classes=None)
def transformer_small(**kwargs) -> Transformer:
    architecture = dict(num_encoder_layers=3, num_decoder_layers=3, d_model=256, num_heads=8, d_ff=512, dropout=0.1)
    return Transformer(**{**architecture, **kwargs})


@register_model(Transformer, task="translation", paper=PAPER, input_size=(), num_classes=None)
def transformer_base(**kwargs) -> Transformer:
    architecture = dict(num_encoder_layers=6, num_decoder_layers=6, d_model=512, num_heads=8, d_ff=2048, dropout=0.1)
    return Transformer(**{**architecture, **kwargs})


@register_model(Transformer, task="translation", paper=PAPER, input_size=(), num_classes=None)
def transformer_big(**kwargs) -> Transformer:
    architecture = dict(num_encoder_layers=6, num_decoder_layers=6, d_model=1024, num_heads=16, d_ff=4096, dropout=0.3)
    return Transformer(**{**architecture, **kwargs})
