"""FusionNet: the history of word, fully-aware attention and multi-level fusion.

Paper: "FusionNet: Fusing via Fully-Aware Attention with Application to Machine Comprehension",
Huang, Zhu, Shen, Chen, ICLR 2018, arXiv:1711.07341.

Forward contract (shared by every reading model, see :mod:`canon.models.reading._common`)::

    start_logits, end_logits = model(context_words, context_chars, question_words, question_chars,
                                     context_mask, question_mask)      # (N, Lc) each, -inf off the context

Follows the paper (section 3; h = ``hidden_size`` per direction, C context, Q question):
    - "History of word" (section 2.2): every layer's output of a word is kept and concatenated,
      HoW_i = [g_i; c_i; h_i^l; h_i^h; ...], and attention scores are computed on the whole history.
    - Fully-aware attention (section 2.3): S(x, y) = ReLU(U x)ᵀ D ReLU(U y), U a k × d_HoW
      matrix, D a k × k diagonal matrix, with its own U and D for every attention.
    - 3.1 Input vectors: context words w_i^C = [g_i^C; c_i^C; features; ĝ_i^C] with the word-level
      attention ĝ_i^C = Σ_j α_ij g_j^Q, α_ij ∝ exp(ReLU(W g_i^C)ᵀ ReLU(W g_j^Q)) (no D there);
      question words w_i^Q = [g_i^Q; c_i^Q].
    - Reading: two BiLSTM layers each for context and question give the low-level h^l and
      high-level h^h concepts; question understanding U^Q = BiLSTM([h^Ql; h^Qh]).
    - Fully-aware multi-level fusion: with HoW = [g; c; h^l; h^h] on both sides, three attentions
      S^l, S^h, S^u from the context over the question give ĥ^Cl = Σ α^l h^Ql, ĥ^Ch = Σ α^h h^Qh,
      û^C = Σ α^u U^Q; v^C = BiLSTM([h^Cl; h^Ch; ĥ^Cl; ĥ^Ch; û^C]).
    - Fully-aware self-boosted fusion: HoW^C = [g; c; h^Cl; h^Ch; ĥ^Cl; ĥ^Ch; û^C; v^C] of the
      context attends over itself, v̂_i^C = Σ_j α^s_ij v_j^C; U^C = BiLSTM([v^C; v̂^C]).
    - 3.2 Output: u^Q = Σ_i β_i U_i^Q with β_i ∝ exp(wᵀ U_i^Q); P^S_i ∝ exp(u^Qᵀ W_S U_i^C);
      v^Q = GRU(u^Q, Σ_i P^S_i U_i^C); P^E_i ∝ exp(v^Qᵀ W_E U_i^C).
    - h = 125, attention size k = 250 (word level 300), dropout 0.4 (section 4, appendix).

Deviates, and why:
    - CoVe (a pretrained translation encoder) is not available here: the shared character-CNN
      embedding takes its place as c_i in the history of word.
    - Word features: the paper has three exact-match flags (original, lower-case, lemma), POS
      and NER embeddings and the normalised term frequency. No tagger or lemmatiser is used
      here, so the features are the ones the word indices give: one exact-match flag (the word's
      lower-cased form occurs in the question; ``<pad>``/``<unk>`` never match) and the term
      frequency (count in the context / context length), computed inside ``forward``.
    - Word vectors are trained from scratch by default (the paper fine-tunes the 1000 most
      frequent GloVe vectors); ``model.embedding.set_word_vectors(vectors)`` loads pretrained ones.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.data.text_tokenize import PAD_INDEX, UNK_INDEX
from canon.models.reading._common import (
    example_reading_inputs, RecurrentEncoder, WordCharEmbedding, check_reading_inputs, mask_logits, masked_softmax,
)
from canon.registry import register_model

__all__ = ["FusionNet", "FullyAwareAttention", "word_features", "fusionnet"]

PAPER = "FusionNet: Fusing via Fully-Aware Attention with Application to Machine Comprehension, 2017, arXiv:1711.07341"
SQUAD_WORDS, SQUAD_CHARS = 49_865, 227


def word_features(context_words: torch.Tensor, question_words: torch.Tensor, context_mask: torch.Tensor,
                  question_mask: torch.Tensor) -> torch.Tensor:
    """[exact match, term frequency] of each context word: (N, Lc, 2), zero on padding."""
    known = (context_words != PAD_INDEX) & (context_words != UNK_INDEX)  # (N, Lc)
    in_question = (context_words[:, :, None] == question_words[:, None, :]) & question_mask[:, None, :]
    exact_match = in_question.any(dim=2) & known  # (N, Lc)
    same_word = (context_words[:, :, None] == context_words[:, None, :]) & context_mask[:, None, :]  # (N, Lc, Lc)
    frequency = same_word.sum(dim=2) / context_mask.sum(dim=1, keepdim=True)  # (N, Lc)
    return torch.stack([exact_match.float(), frequency.float()], dim=-1) * context_mask[..., None]


class FullyAwareAttention(nn.Module):
    """Σ_j α_ij values_j with α_ij ∝ exp(S(x_i, y_j)), S(x, y) = ReLU(U x)ᵀ D ReLU(U y), D diagonal.

    x (N, T, d) and y (N, J, d): histories of word; values (N, J, dv); y_mask (N, J) -> (N, T, dv).
    ``diagonal=False`` drops D (the word-level attention's form).
    """

    def __init__(self, input_dim: int, attention_dim: int, *, diagonal: bool = True):
        super().__init__()
        self.projection = nn.Linear(input_dim, attention_dim, bias=False)  # U
        self.diagonal = nn.Parameter(torch.ones(attention_dim)) if diagonal else None  # diag(D)

    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """S(x_i, y_j) for every pair: (N, T, J)."""
        x, y = F.relu(self.projection(x)), F.relu(self.projection(y))  # (N, T, k), (N, J, k)
        if self.diagonal is not None:
            x = x * self.diagonal
        return x @ y.transpose(1, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor, values: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        weights = masked_softmax(self.scores(x, y), y_mask[:, None, :], dim=2)  # (N, T, J)
        return weights @ values


class FusionNet(nn.Module):
    """FusionNet (Huang et al. 2018); sizes default to the paper's."""

    def __init__(self, *, word_vocab_size: int = SQUAD_WORDS, char_vocab_size: int = SQUAD_CHARS,
                 word_dim: int = 300, char_dim: int = 8, char_channels: int = 100, char_kernel_size: int = 5,
                 hidden_size: int = 125, word_attention_size: int = 300, attention_size: int = 250,
                 dropout: float = 0.4):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.word_vocab_size, self.char_vocab_size = word_vocab_size, char_vocab_size
        self.dropout = dropout
        h2 = 2 * hidden_size  # width of a BiLSTM's output
        self.embedding = WordCharEmbedding(word_vocab_size=word_vocab_size, word_dim=word_dim,
                                           char_vocab_size=char_vocab_size, char_dim=char_dim,
                                           char_channels=char_channels, char_kernel_size=char_kernel_size)
        e = self.embedding.output_dim  # [g; c]
        # 3.1 input vectors.
        self.word_attention = FullyAwareAttention(word_dim, word_attention_size, diagonal=False)
        # Reading: low- and high-level concepts, question understanding.
        self.context_low = RecurrentEncoder("lstm", e + 2 + word_dim, hidden_size)
        self.context_high = RecurrentEncoder("lstm", h2, hidden_size)
        self.question_low = RecurrentEncoder("lstm", e, hidden_size)
        self.question_high = RecurrentEncoder("lstm", h2, hidden_size)
        self.question_understanding = RecurrentEncoder("lstm", 2 * h2, hidden_size)
        # Fully-aware multi-level fusion on HoW = [g; c; h^l; h^h].
        history = e + 2 * h2
        self.low_fusion = FullyAwareAttention(history, attention_size)
        self.high_fusion = FullyAwareAttention(history, attention_size)
        self.understanding_fusion = FullyAwareAttention(history, attention_size)
        self.fusion = RecurrentEncoder("lstm", 5 * h2, hidden_size)
        # Fully-aware self-boosted fusion on HoW^C = [g; c; h^l; h^h; ĥ^l; ĥ^h; û; v].
        self.self_fusion = FullyAwareAttention(e + 6 * h2, attention_size)
        self.context_understanding = RecurrentEncoder("lstm", 2 * h2, hidden_size)
        # 3.2 output.
        self.question_summary = nn.Linear(h2, 1, bias=False)  # w
        self.start_bilinear = nn.Linear(h2, h2, bias=False)  # W_S
        self.end_cell = nn.GRUCell(h2, h2)
        self.end_bilinear = nn.Linear(h2, h2, bias=False)  # W_E

    def example_inputs(self, input_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
        """One question's six inputs for ``canon info`` (see ``example_reading_inputs``)."""
        return example_reading_inputs(self, input_shape)

    def forward(self, context_words: torch.Tensor, context_chars: torch.Tensor, question_words: torch.Tensor,
                question_chars: torch.Tensor, context_mask: torch.Tensor, question_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        check_reading_inputs("FusionNet", context_words, context_chars, question_words, question_chars,
                             context_mask, question_mask, word_vocab_size=self.word_vocab_size,
                             char_vocab_size=self.char_vocab_size)
        drop = lambda x: F.dropout(x, self.dropout, self.training)  # noqa: E731
        cmask, qmask = context_mask, question_mask
        context_embedded = self.embedding(context_words, context_chars)  # [g^C; c^C] (N, n, e)
        question_embedded = self.embedding(question_words, question_chars)  # [g^Q; c^Q] (N, m, e)
        word_dim = self.embedding.word_embedding.embedding_dim
        context_glove, question_glove = context_embedded[..., :word_dim], question_embedded[..., :word_dim]

        # 3.1 input vectors: features and word-level attention ĝ^C.
        attended_words = self.word_attention(context_glove, question_glove, question_glove, qmask)  # (N, n, word_dim)
        features = word_features(context_words, question_words, cmask, qmask)  # (N, n, 2)
        context_input = torch.cat([context_embedded, features, attended_words], dim=-1)

        # Reading and question understanding.
        context_low = self.context_low(drop(context_input), cmask)  # h^Cl (N, n, 2h)
        context_high = self.context_high(drop(context_low), cmask)  # h^Ch
        question_low = self.question_low(drop(question_embedded), qmask)  # h^Ql (N, m, 2h)
        question_high = self.question_high(drop(question_low), qmask)  # h^Qh
        question_understood = self.question_understanding(drop(torch.cat([question_low, question_high], -1)),
                                                          qmask)  # U^Q (N, m, 2h)

        # Fully-aware multi-level fusion.
        context_history = drop(torch.cat([context_embedded, context_low, context_high], dim=-1))  # HoW^C
        question_history = drop(torch.cat([question_embedded, question_low, question_high], dim=-1))  # HoW^Q
        fused_low = self.low_fusion(context_history, question_history, question_low, qmask)  # ĥ^Cl
        fused_high = self.high_fusion(context_history, question_history, question_high, qmask)  # ĥ^Ch
        fused_understanding = self.understanding_fusion(context_history, question_history, question_understood,
                                                        qmask)  # û^C
        fused = self.fusion(drop(torch.cat([context_low, context_high, fused_low, fused_high, fused_understanding],
                                           dim=-1)), cmask)  # v^C (N, n, 2h)

        # Fully-aware self-boosted fusion.
        self_history = drop(torch.cat([context_embedded, context_low, context_high, fused_low, fused_high,
                                       fused_understanding, fused], dim=-1))  # HoW^C, all levels
        self_boosted = self.self_fusion(self_history, self_history, fused, cmask)  # v̂^C
        context_understood = self.context_understanding(drop(torch.cat([fused, self_boosted], dim=-1)),
                                                        cmask)  # U^C (N, n, 2h)

        # 3.2 output: u^Q, start, one GRU step, end.
        summary_weights = masked_softmax(self.question_summary(question_understood).squeeze(-1), qmask, dim=1)
        question_vector = (summary_weights[:, None, :] @ question_understood).squeeze(1)  # u^Q (N, 2h)
        start_logits = (self.start_bilinear(context_understood) @ question_vector[:, :, None]).squeeze(-1)  # (N, n)
        start_weights = masked_softmax(start_logits, cmask, dim=1)
        end_question = self.end_cell((start_weights[:, None, :] @ context_understood).squeeze(1),
                                     question_vector)  # v^Q = GRU(u^Q, Σ P^S U^C)
        end_logits = (self.end_bilinear(context_understood) @ end_question[:, :, None]).squeeze(-1)  # (N, n)
        return mask_logits(start_logits, cmask), mask_logits(end_logits, cmask)


@register_model(FusionNet, task="reading", paper=PAPER, input_size=(), num_classes=None)
def fusionnet(**kwargs) -> FusionNet:
    return FusionNet(**kwargs)
