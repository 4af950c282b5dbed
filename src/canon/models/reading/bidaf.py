"""BiDAF: bi-directional attention flow between a context and a question, for span extraction.

Paper: "Bidirectional Attention Flow for Machine Comprehension", Seo, Kembhavi, Farhadi,
Hajishirzi, 2016, arXiv:1611.01603.

Forward contract (shared by every reading model, see :mod:`canon.models.reading._common`)::

    start_logits, end_logits = model(context_words, context_chars, question_words, question_chars,
                                     context_mask, question_mask)      # (N, Lc) each, -inf off the context

Follows the paper (section 2; d = ``hidden_size``, T context and J question tokens):
    - 1-2. Character embedding layer (8-d characters, 100 filters of width 5, max-pooled over the
      word) and word embedding layer, concatenated and passed through a two-layer highway network
      shared by context and question.
    - 3. Contextual embedding layer: one BiLSTM (d per direction) shared by context and question:
      H (T, 2d), U (J, 2d).
    - 4. Attention flow layer: similarity S_tj = α(H_t, U_j) = wᵀ[h; u; h ∘ u] (eq. 1);
      context-to-query a_t = softmax_j(S_t:), Ũ_t = Σ_j a_tj U_j; query-to-context
      b = softmax_t(max_j S_tj), h̃ = Σ_t b_t H_t tiled over T; G_t = [h; ũ; h ∘ ũ; h ∘ h̃] (8d, eq. 2).
    - 5. Modelling layer: two BiLSTM layers over G: M (T, 2d).
    - 6. Output layer: p¹ = softmax(w_p1ᵀ[G; M]), M² = BiLSTM(M), p² = softmax(w_p2ᵀ[G; M²]) (eq. 3-4);
      the loss is -log p¹(y¹) - log p²(y²) (eq. 5, :func:`span_loss`); decoding takes the span
      maximising p¹_i p²_j with i <= j (``canon.data.squad.best_spans``, at most 16 tokens).
    - Dropout 0.2 on the character CNN, on the input of every LSTM layer and before the output
      layers (section 4).

Deviates, and why:
    - Word vectors are trained from scratch by default (no GloVe here; the paper keeps 100-d
      GloVe fixed). ``model.embedding.set_word_vectors(vectors)`` loads and freezes pretrained ones.
    - The two output projections w_p1, w_p2 carry no bias (none in eq. 3-4; a bias would be a
      constant under the softmax anyway).
    - Training concerns live in the task, not here: the paper's AdaDelta with learning rate 0.5,
      batch 60, 12 epochs and the exponential moving average of the weights (decay 0.999) used at
      test time.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.models.reading._common import (
    example_reading_inputs, Highway, RecurrentEncoder, TrilinearSimilarity, WordCharEmbedding, check_reading_inputs, mask_logits,
    masked_softmax,
)
from canon.registry import register_model

__all__ = ["BiDAF", "attention_flow", "bidaf"]

PAPER = "Bidirectional Attention Flow for Machine Comprehension, 2016, arXiv:1611.01603"
# canon.data.squad.build_vocabularies on the rebuilt training split, default settings.
SQUAD_WORDS, SQUAD_CHARS = 49_865, 227


def attention_flow(similarity: torch.Tensor, context: torch.Tensor, question: torch.Tensor,
                   context_mask: torch.Tensor, question_mask: torch.Tensor) -> torch.Tensor:
    """BiDAF eq. 2: G = [H; Ũ; H ∘ Ũ; H ∘ H̃] from the similarity matrix S.

    similarity (N, T, J), context H (N, T, 2d), question U (N, J, 2d), masks True on real
    tokens -> G (N, T, 8d).
    """
    # Context-to-query: a_t = softmax_j(S_tj), Ũ_t = Σ_j a_tj U_j.
    c2q_weights = masked_softmax(similarity, question_mask[:, None, :], dim=2)  # (N, T, J)
    attended_question = c2q_weights @ question  # (N, T, 2d)
    # Query-to-context: b = softmax_t(max_j S_tj), h̃ = Σ_t b_t H_t, tiled over T.
    best_match = mask_logits(similarity, question_mask[:, None, :]).amax(dim=2)  # (N, T)
    q2c_weights = masked_softmax(best_match, context_mask, dim=1)  # (N, T)
    attended_context = (q2c_weights[:, None, :] @ context).expand_as(context)  # (N, T, 2d)
    return torch.cat([context, attended_question, context * attended_question, context * attended_context], dim=-1)


class BiDAF(nn.Module):
    """Bi-directional attention flow (Seo et al. 2016); sizes default to the paper's."""

    def __init__(self, *, word_vocab_size: int = SQUAD_WORDS, char_vocab_size: int = SQUAD_CHARS,
                 word_dim: int = 100, char_dim: int = 8, char_channels: int = 100, char_kernel_size: int = 5,
                 hidden_size: int = 100, dropout: float = 0.2):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.word_vocab_size, self.char_vocab_size = word_vocab_size, char_vocab_size
        self.dropout = dropout
        d = hidden_size
        # 1-2. character and word embedding, highway network (shared by context and question).
        self.embedding = WordCharEmbedding(word_vocab_size=word_vocab_size, word_dim=word_dim,
                                           char_vocab_size=char_vocab_size, char_dim=char_dim,
                                           char_channels=char_channels, char_kernel_size=char_kernel_size)
        self.highway = Highway(self.embedding.output_dim, num_layers=2)
        # 3. contextual embedding.
        self.contextual = RecurrentEncoder("lstm", self.embedding.output_dim, d)
        # 4. attention flow.
        self.similarity = TrilinearSimilarity(2 * d)
        # 5. modelling layer.
        self.modeling = RecurrentEncoder("lstm", 8 * d, d, num_layers=2, dropout=dropout)
        # 6. output layer.
        self.end_encoder = RecurrentEncoder("lstm", 2 * d, d)
        self.start_output = nn.Linear(10 * d, 1, bias=False)
        self.end_output = nn.Linear(10 * d, 1, bias=False)

    def _embed(self, words, chars, mask):
        x = self.embedding(words, chars, char_dropout=self.dropout)  # (N, L, word_dim + char_channels)
        x = self.highway(x)
        return self.contextual(F.dropout(x, self.dropout, self.training), mask)  # (N, L, 2d)

    def example_inputs(self, input_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
        """One question's six inputs for ``canon info`` (see ``example_reading_inputs``)."""
        return example_reading_inputs(self, input_shape)

    def forward(self, context_words: torch.Tensor, context_chars: torch.Tensor, question_words: torch.Tensor,
                question_chars: torch.Tensor, context_mask: torch.Tensor, question_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_reading_inputs("BiDAF", context_words, context_chars, question_words, question_chars, context_mask,
                             question_mask, word_vocab_size=self.word_vocab_size,
                             char_vocab_size=self.char_vocab_size)
        drop = lambda x: F.dropout(x, self.dropout, self.training)  # noqa: E731
        context = self._embed(context_words, context_chars, context_mask)  # H (N, T, 2d)
        question = self._embed(question_words, question_chars, question_mask)  # U (N, J, 2d)
        similarity = self.similarity(context, question)  # S (N, T, J)
        flow = attention_flow(similarity, context, question, context_mask, question_mask)  # G (N, T, 8d)
        modeled = self.modeling(drop(flow), context_mask)  # M (N, T, 2d)
        end_modeled = self.end_encoder(drop(modeled), context_mask)  # M² (N, T, 2d)
        start_logits = self.start_output(drop(torch.cat([flow, modeled], dim=-1))).squeeze(-1)  # (N, T)
        end_logits = self.end_output(drop(torch.cat([flow, end_modeled], dim=-1))).squeeze(-1)  # (N, T)
        return mask_logits(start_logits, context_mask), mask_logits(end_logits, context_mask)


@register_model(BiDAF, task="reading", paper=PAPER, input_size=(), num_classes=None)
def bidaf(**kwargs) -> BiDAF:
    return BiDAF(**kwargs)
