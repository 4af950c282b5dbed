"""QANet: reading comprehension without recurrence — local convolution plus global self-attention.

Paper: "QANet: Combining Local Convolution with Global Self-Attention for Reading Comprehension",
Yu, Dohan, Luong, Zhao, Chen, Norouzi, Le, 2018, arXiv:1804.09541.

Forward contract (shared by every reading model, see :mod:`canon.models.reading._common`)::

    start_logits, end_logits = model(context_words, context_chars, question_words, question_chars,
                                     context_mask, question_mask)      # (N, Lc) each, -inf off the context

Follows the paper (section 2.2; d = ``hidden_size``):
    - Encoder block (figure 1): sinusoidal position encoding added at its start, then
      ``num_convs`` depthwise-separable convolutions (``canon.layers.DepthwiseSeparableConv1d``),
      multi-head self-attention (``canon.layers.MultiHeadAttention``, padding keys masked) and a
      feed-forward layer, each sublayer wrapped as f(layernorm(x)) + x.
    - Stochastic depth (layer dropout) inside every stack of blocks: sublayer l of L survives with
      probability p_l = 1 - (l / L)(1 - p_L), p_L = 0.9.
    - 1. Input embedding: word vectors and character vectors (max-pooled over the word),
      [x_w; x_c] through a two-layer highway network.
    - 2. Embedding encoder: a one-dimensional convolution (kernel 1) maps the embedding to d = 128,
      then one encoder block of 4 convolutions of kernel 7, 8 heads; shared by context and question.
    - 3. Context-query attention: the trilinear similarity S_ij = w₀ᵀ[c_i; q_j; c_i ∘ q_j],
      S̄ = softmax over the question, S̄̄ = softmax over the context, A = S̄ Q, B = S̄ S̄̄ᵀ C
      (the DCN form); output [c; a; c ∘ a; c ∘ b].
    - 4. Model encoder: 7 blocks of 2 convolutions of kernel 5, run three times with shared
      weights: M₀, M₁, M₂ (``model_blocks`` / ``model_convs`` make it smaller).
    - 5. Output: p¹ = softmax(W₁[M₀; M₁]), p² = softmax(W₂[M₀; M₂]); loss and decoding as BiDAF's.
    - Dropout 0.1 between layers, 0.1 on words, 0.05 on characters (section 3.1.2).

Deviates, and why:
    - Characters pass through the shared character CNN (64-d characters, 200 filters of width 5,
      then the max over the word) instead of taking the max of the raw 200-d character vectors.
    - The [c; a; c ∘ a; c ∘ b] input of the model encoder (4d wide) is mapped to d by a kernel-1
      convolution (a linear map) before the first block; the paper leaves this step implicit.
    - The feed-forward sublayer is Linear(d, d) - ReLU - Linear(d, d); the paper does not give its
      width. A ReLU follows every convolution. Dropout acts on each sublayer's output (before the
      residual sum), not on the attention weights: the paper names dropout between layers only,
      and on CPU the (N, heads, n, n) dropout mask alone took a third of a training step.
    - Stochastic depth as Huang et al. 2016 define it (arXiv:1603.09382): in training a sublayer
      is skipped (x stays x) with probability 1 - p_l, one draw per batch; in evaluation it is
      scaled, p_l f(layernorm(x)) + x.
    - Word vectors are trained from scratch by default (the paper keeps 300-d GloVe fixed);
      ``model.embedding.set_word_vectors(vectors)`` loads and freezes pretrained ones.
    - Training concerns are left to the task: Adam (β₁ 0.8, β₂ 0.999, ε 1e-7), the inverse-
      exponential learning-rate warm-up to 0.001 over 1,000 steps, L2 weight decay 3e-7, and the
      exponential moving average of all weights (decay 0.9999) used at evaluation.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers.attention import MultiHeadAttention
from canon.layers.conv import DepthwiseSeparableConv1d
from canon.models.reading._common import (
    example_reading_inputs, Highway, TrilinearSimilarity, WordCharEmbedding, check_reading_inputs, mask_logits, masked_softmax,
)
from canon.registry import register_model

__all__ = ["QANet", "EncoderBlock", "EncoderStack", "sinusoidal_positions", "survival_probabilities",
           "context_query_attention", "qanet"]

PAPER = ("QANet: Combining Local Convolution with Global Self-Attention for Reading Comprehension, 2018, "
         "arXiv:1804.09541")
SQUAD_WORDS, SQUAD_CHARS = 49_865, 227


# ----------------------------------------------------------------------------- small functions
def sinusoidal_positions(length: int, dim: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^{2i/d}), PE(pos, 2i+1) = cos(pos / 10000^{2i/d}): (length, dim)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # (L, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = position * frequency  # (L, ceil(d/2))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, :dim // 2])
    return table.to(dtype)


def survival_probabilities(num_sublayers: int, final_survival: float) -> list[float]:
    """p_l = 1 - (l / L)(1 - p_L) for l = 1..L (stochastic depth's linear decay)."""
    return [1.0 - (l / num_sublayers) * (1.0 - final_survival) for l in range(1, num_sublayers + 1)]


def context_query_attention(similarity: torch.Tensor, context: torch.Tensor, question: torch.Tensor,
                            context_mask: torch.Tensor, question_mask: torch.Tensor) -> torch.Tensor:
    """QANet section 2.2.3: [C; A; C ∘ A; C ∘ B] with A = S̄ Q, B = S̄ S̄̄ᵀ C.

    similarity (N, n, m), context (N, n, d), question (N, m, d) -> (N, n, 4d).
    """
    row = masked_softmax(similarity, question_mask[:, None, :], dim=2)  # S̄: over the question (N, n, m)
    column = masked_softmax(similarity, context_mask[:, :, None], dim=1)  # S̄̄: over the context (N, n, m)
    context_to_query = row @ question  # A (N, n, d)
    query_to_context = row @ (column.transpose(1, 2) @ context)  # B (N, n, d)
    return torch.cat([context, context_to_query, context * context_to_query, context * query_to_context], dim=-1)


# ----------------------------------------------------------------------------- blocks
class EncoderBlock(nn.Module):
    """Position encoding, ``num_convs`` × conv, self-attention, feed-forward; each f(layernorm(x)) + x.

    x (N, L, d), mask (N, L) -> (N, L, d). ``survival``: one probability per sublayer
    (num_convs + 2 of them).
    """

    def __init__(self, dim: int, *, num_convs: int, kernel_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.conv_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_convs))
        self.convs = nn.ModuleList(DepthwiseSeparableConv1d(dim, dim, kernel_size) for _ in range(num_convs))
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, num_heads)  # no dropout on the attention weights
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    @property
    def num_sublayers(self) -> int:
        return len(self.convs) + 2

    def _residual(self, x: torch.Tensor, sublayer, survival: float) -> torch.Tensor:
        """Stochastic depth around f(x) = dropout(sublayer(x)): skip, f(x) + x, or p·f(x) + x."""
        if self.training:
            if survival < 1.0 and float(torch.rand(())) >= survival:
                return x
            return F.dropout(sublayer(x), self.dropout, True) + x
        return survival * sublayer(x) + x

    def forward(self, x: torch.Tensor, mask: torch.Tensor, survival: Sequence[float]) -> torch.Tensor:
        if len(survival) != self.num_sublayers:
            raise ValueError(f"EncoderBlock needs {self.num_sublayers} survival probabilities, got {len(survival)}")
        keep = mask[..., None]  # (N, L, 1)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype)
        for norm, conv, p in zip(self.conv_norms, self.convs, survival):
            # padding is zeroed before each convolution, so it never leaks into the real tokens
            x = self._residual(x, lambda y: F.relu(conv((norm(y) * keep).transpose(1, 2))).transpose(1, 2),
                               p)  # (N, L, d)
        x = self._residual(x, lambda y: self.attention(self.attention_norm(y), key_padding_mask=~mask)[0],
                           survival[-2])
        x = self._residual(x, lambda y: self.feed_forward(self.feed_forward_norm(y)), survival[-1])
        return x * keep


class EncoderStack(nn.Module):
    """``num_blocks`` encoder blocks with stochastic depth decaying linearly over all their sublayers."""

    def __init__(self, dim: int, *, num_blocks: int, num_convs: int, kernel_size: int, num_heads: int,
                 dropout: float, final_survival: float):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(dim, num_convs=num_convs, kernel_size=kernel_size,
                                                 num_heads=num_heads, dropout=dropout) for _ in range(num_blocks))
        self.survival = survival_probabilities(num_blocks * (num_convs + 2), final_survival)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        start = 0
        for block in self.blocks:
            x = block(x, mask, self.survival[start:start + block.num_sublayers])
            start += block.num_sublayers
        return x


# ----------------------------------------------------------------------------- the model
class QANet(nn.Module):
    """QANet (Yu et al. 2018); sizes default to the paper's."""

    def __init__(self, *, word_vocab_size: int = SQUAD_WORDS, char_vocab_size: int = SQUAD_CHARS,
                 word_dim: int = 300, char_dim: int = 64, char_channels: int = 200, char_kernel_size: int = 5,
                 hidden_size: int = 128, num_heads: int = 8, embedding_convs: int = 4, embedding_kernel_size: int = 7,
                 model_blocks: int = 7, model_convs: int = 2, model_kernel_size: int = 5, dropout: float = 0.1,
                 word_dropout: float = 0.1, char_dropout: float = 0.05, final_survival: float = 0.9):
        super().__init__()
        for name, value in (("dropout", dropout), ("word_dropout", word_dropout), ("char_dropout", char_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0.0 < final_survival <= 1.0:
            raise ValueError(f"final_survival must be in (0, 1], got {final_survival}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        self.word_vocab_size, self.char_vocab_size = word_vocab_size, char_vocab_size
        self.dropout, self.word_dropout, self.char_dropout = dropout, word_dropout, char_dropout
        d = hidden_size
        # 1. input embedding.
        self.embedding = WordCharEmbedding(word_vocab_size=word_vocab_size, word_dim=word_dim,
                                           char_vocab_size=char_vocab_size, char_dim=char_dim,
                                           char_channels=char_channels, char_kernel_size=char_kernel_size)
        self.highway = Highway(self.embedding.output_dim, num_layers=2)
        # 2. embedding encoder (shared by context and question).
        self.embedding_projection = nn.Linear(self.embedding.output_dim, d)
        self.embedding_encoder = EncoderStack(d, num_blocks=1, num_convs=embedding_convs,
                                              kernel_size=embedding_kernel_size, num_heads=num_heads,
                                              dropout=dropout, final_survival=final_survival)
        # 3. context-query attention.
        self.similarity = TrilinearSimilarity(d)
        # 4. model encoder (one stack, three passes).
        self.model_projection = nn.Linear(4 * d, d)
        self.model_encoder = EncoderStack(d, num_blocks=model_blocks, num_convs=model_convs,
                                          kernel_size=model_kernel_size, num_heads=num_heads, dropout=dropout,
                                          final_survival=final_survival)
        # 5. output.
        self.start_output = nn.Linear(2 * d, 1, bias=False)
        self.end_output = nn.Linear(2 * d, 1, bias=False)

    def _encode(self, words, chars, mask):
        x = self.embedding(words, chars, word_dropout=self.word_dropout, char_dropout=self.char_dropout)
        x = self.embedding_projection(F.dropout(self.highway(x), self.dropout, self.training))  # (N, L, d)
        return self.embedding_encoder(x, mask)

    def example_inputs(self, input_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
        """One question's six inputs for ``canon info`` (see ``example_reading_inputs``)."""
        return example_reading_inputs(self, input_shape)

    def forward(self, context_words: torch.Tensor, context_chars: torch.Tensor, question_words: torch.Tensor,
                question_chars: torch.Tensor, context_mask: torch.Tensor, question_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_reading_inputs("QANet", context_words, context_chars, question_words, question_chars, context_mask,
                             question_mask, word_vocab_size=self.word_vocab_size,
                             char_vocab_size=self.char_vocab_size)
        drop = lambda x: F.dropout(x, self.dropout, self.training)  # noqa: E731
        context = self._encode(context_words, context_chars, context_mask)  # C (N, n, d)
        question = self._encode(question_words, question_chars, question_mask)  # Q (N, m, d)
        similarity = self.similarity(context, question)  # S (N, n, m)
        attended = context_query_attention(similarity, context, question, context_mask, question_mask)  # (N, n, 4d)
        m0 = self.model_encoder(drop(self.model_projection(attended)), context_mask)  # M₀ (N, n, d)
        m1 = self.model_encoder(drop(m0), context_mask)  # M₁
        m2 = self.model_encoder(drop(m1), context_mask)  # M₂
        start_logits = self.start_output(torch.cat([m0, m1], dim=-1)).squeeze(-1)  # (N, n)
        end_logits = self.end_output(torch.cat([m0, m2], dim=-1)).squeeze(-1)
        return mask_logits(start_logits, context_mask), mask_logits(end_logits, context_mask)


@register_model(QANet, task="reading", paper=PAPER, input_size=(), num_classes=None)
def qanet(**kwargs) -> QANet:
    return QANet(**kwargs)
