"""R-Net: gated attention-based recurrent networks and self-matching attention, with a pointer network.

Paper: "Gated Self-Matching Networks for Reading Comprehension and Question Answering", Wang,
Yang, Wei, Chang, Zhou, ACL 2017 (no arXiv id); the model the MSRA report "R-NET: Machine
Reading Comprehension with Self-Matching Networks" (2017) calls R-Net.

Forward contract (shared by every reading model, see :mod:`canon.models.reading._common`)::

    start_logits, end_logits = model(context_words, context_chars, question_words, question_chars,
                                     context_mask, question_mask)      # (N, Lc) each, -inf off the context

Follows the paper (section 3; P the passage, Q the question, H = ``hidden_size``):
    - 3.1 Question and passage encoder: word and character embeddings of each token, then a
      three-layer BiGRU shared by question and passage: u^Q (m, 2H), u^P (n, 2H).
    - 3.2 Gated attention-based recurrent network: s_j^t = vᵀ tanh(W_u^Q u_j^Q + W_u^P u_t^P),
      a^t = softmax_j(s^t), c_t = Σ_j a_j^t u_j^Q; the gate g_t = σ(W_g [u_t^P; c_t]) scales the
      input, v_t^P = GRU(v_{t-1}^P, g_t ⊙ [u_t^P; c_t]).
    - 3.3 Self-matching attention: s_j^t = vᵀ tanh(W_v^P v_j^P + W_v^P̃ v_t^P) over the whole
      passage, c_t = Σ_j a_j^t v_j^P, the same kind of gate on [v_t^P; c_t], h_t^P = BiGRU(...).
    - 3.4 Output layer, a pointer network: its initial state is the attention-pooled question
      r^Q = Σ_i a_i u_i^Q, s_j = vᵀ tanh(W_u^Q u_j^Q + W_v^Q V_r^Q) with a trained V_r^Q;
      for t = 1, 2: s_j^t = vᵀ tanh(W_h^P h_j^P + W_h^a h_{t-1}^a) are the start and end logits,
      c_t = Σ_i a_i^t h_i^P and h_t^a = GRU(h_{t-1}^a, c_t).
    - Hidden size 75 everywhere, dropout 0.2 between layers (section 4.1).

Deviates, and why:
    - The gated attention-based recurrent network drops the W_v^P v_{t-1}^P term from its
      attention score (and runs in both directions, like the match-LSTM it extends): the
      attention then depends on u^P alone and the layer runs as one BiGRU over the passage instead of a
      step-by-step loop over the passage (the simplification the widely used open
      re-implementations make, for speed).
    - Character embeddings come from the shared character CNN (max-pooled), not from the final
      states of a BiGRU over the characters: the same information at a fraction of the cost.
    - Word vectors are trained from scratch by default (no GloVe here);
      ``model.embedding.set_word_vectors(vectors)`` loads and freezes pretrained ones.
    - The question pooling's W_v^Q V_r^Q (a trained vector times a matrix) is stored as the one
      trained vector it amounts to.
    - The self-matching attention is the paper's additive form, so it costs O(N · n² · H) memory;
      cap the context length (``max_context_tokens``) or the batch accordingly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models.reading._common import (
    RecurrentEncoder, WordCharEmbedding, check_reading_inputs, example_reading_inputs, mask_logits,
)
from canon.registry import register_model

__all__ = ["RNet", "AdditiveAttention", "GatedAttentionRNN", "PointerNetwork", "rnet"]

PAPER = "Gated Self-Matching Networks for Reading Comprehension and Question Answering, 2017, ACL (no arXiv id)"
SQUAD_WORDS, SQUAD_CHARS = 49_865, 227


class AdditiveAttention(nn.Module):
    """s_tj = vᵀ tanh(W_k k_j + W_q q_t): queries (N, T, dq), keys (N, J, dk) -> scores (N, T, J)."""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)
        self.key_proj = nn.Linear(key_dim, attention_dim, bias=False)
        self.v = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # (N, T, 1, a) + (N, 1, J, a) -> (N, T, J, a)
        hidden = torch.tanh(self.query_proj(queries)[:, :, None, :] + self.key_proj(keys)[:, None, :, :])
        return self.v(hidden).squeeze(-1)  # (N, T, J)


class GatedAttentionRNN(nn.Module):
    """Attend from each position of ``inputs`` over ``memory``, gate [x_t; c_t], run a BiGRU (sections 3.2-3.3).

    inputs (N, T, d_in), memory (N, J, d_mem) -> (N, T, 2H).
    """

    def __init__(self, input_dim: int, memory_dim: int, hidden_size: int, attention_dim: int):
        super().__init__()
        self.attention = AdditiveAttention(input_dim, memory_dim, attention_dim)
        self.gate = nn.Linear(input_dim + memory_dim, input_dim + memory_dim, bias=False)
        self.rnn = RecurrentEncoder("gru", input_dim + memory_dim, hidden_size)

    def forward(self, inputs, memory, input_mask, memory_mask, dropout: float = 0.0):
        scores = mask_logits(self.attention(inputs, memory), memory_mask[:, None, :])  # (N, T, J)
        attended = scores.softmax(dim=2) @ memory  # c_t (N, T, d_mem)
        joint = torch.cat([inputs, attended], dim=-1)  # [x_t; c_t]
        gated = torch.sigmoid(self.gate(joint)) * joint  # g_t ⊙ [x_t; c_t]
        return self.rnn(F.dropout(gated, dropout, self.training), input_mask)  # (N, T, 2H)


class PointerNetwork(nn.Module):
    """Question pooling into the initial state, then two pointer steps: start and end logits (section 3.4)."""

    def __init__(self, question_dim: int, passage_dim: int, attention_dim: int):
        super().__init__()
        self.question_key = nn.Linear(question_dim, attention_dim, bias=False)  # W_u^Q
        self.question_query = nn.Parameter(torch.empty(attention_dim))  # W_v^Q V_r^Q, one trained vector
        self.question_v = nn.Linear(attention_dim, 1, bias=False)
        self.pointer = AdditiveAttention(question_dim, passage_dim, attention_dim)  # W_h^a, W_h^P, v
        self.cell = nn.GRUCell(passage_dim, question_dim)
        nn.init.normal_(self.question_query, std=attention_dim ** -0.5)

    def forward(self, question, passage, question_mask, passage_mask):
        # r^Q = Σ_i a_i u_i^Q, a = softmax(vᵀ tanh(W_u^Q u^Q + W_v^Q V_r^Q)).
        pool_scores = self.question_v(torch.tanh(self.question_key(question) + self.question_query)).squeeze(-1)
        pooled = mask_logits(pool_scores, question_mask).softmax(dim=1)[:, None, :] @ question  # (N, 1, dq)
        state = pooled.squeeze(1)  # h_0^a (N, dq)
        start_logits = self.pointer(state[:, None, :], passage).squeeze(1)  # s^1 (N, n)
        start_weights = mask_logits(start_logits, passage_mask).softmax(dim=1)  # a^1
        state = self.cell((start_weights[:, None, :] @ passage).squeeze(1), state)  # h_1^a = GRU(h_0^a, c_1)
        end_logits = self.pointer(state[:, None, :], passage).squeeze(1)  # s^2 (N, n)
        return start_logits, end_logits


class RNet(nn.Module):
    """Gated self-matching networks (Wang et al. 2017); sizes default to the paper's."""

    def __init__(self, *, word_vocab_size: int = SQUAD_WORDS, char_vocab_size: int = SQUAD_CHARS,
                 word_dim: int = 300, char_dim: int = 8, char_channels: int = 100, char_kernel_size: int = 5,
                 hidden_size: int = 75, attention_size: int = 75, encoder_layers: int = 3, dropout: float = 0.2):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.word_vocab_size, self.char_vocab_size = word_vocab_size, char_vocab_size
        self.dropout = dropout
        d = 2 * hidden_size  # width of every bidirectional layer's output
        # 3.1 question and passage encoder (shared).
        self.embedding = WordCharEmbedding(word_vocab_size=word_vocab_size, word_dim=word_dim,
                                           char_vocab_size=char_vocab_size, char_dim=char_dim,
                                           char_channels=char_channels, char_kernel_size=char_kernel_size)
        self.encoder = RecurrentEncoder("gru", self.embedding.output_dim, hidden_size, num_layers=encoder_layers,
                                        dropout=dropout)
        # 3.2 gated attention-based recurrent network: passage attends over the question.
        self.question_matching = GatedAttentionRNN(d, d, hidden_size, attention_size)
        # 3.3 self-matching attention: passage attends over itself.
        self.self_matching = GatedAttentionRNN(d, d, hidden_size, attention_size)
        # 3.4 output layer.
        self.pointer = PointerNetwork(d, d, attention_size)

    def example_inputs(self, input_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
        """One question's six inputs for ``canon info`` (see ``example_reading_inputs``)."""
        return example_reading_inputs(self, input_shape)

    def forward(self, context_words: torch.Tensor, context_chars: torch.Tensor, question_words: torch.Tensor,
                question_chars: torch.Tensor, context_mask: torch.Tensor, question_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_reading_inputs("RNet", context_words, context_chars, question_words, question_chars, context_mask,
                             question_mask, word_vocab_size=self.word_vocab_size,
                             char_vocab_size=self.char_vocab_size)
        drop = lambda x: F.dropout(x, self.dropout, self.training)  # noqa: E731
        passage = self.encoder(drop(self.embedding(context_words, context_chars)), context_mask)  # u^P (N, n, 2H)
        question = self.encoder(drop(self.embedding(question_words, question_chars)), question_mask)  # u^Q (N, m, 2H)
        matched = self.question_matching(drop(passage), drop(question), context_mask, question_mask,
                                         dropout=self.dropout)  # v^P (N, n, 2H)
        matched = drop(matched)
        self_matched = self.self_matching(matched, matched, context_mask, context_mask,
                                          dropout=self.dropout)  # h^P (N, n, 2H)
        start_logits, end_logits = self.pointer(question, drop(self_matched), question_mask, context_mask)
        return mask_logits(start_logits, context_mask), mask_logits(end_logits, context_mask)


@register_model(RNet, task="reading", paper=PAPER, input_size=(), num_classes=None)
def rnet(**kwargs) -> RNet:
    return RNet(**kwargs)
