"""Pieces every reading-comprehension model shares: input checks, masked softmax, the span loss,
word + character embeddings, the highway network, the trilinear similarity and the recurrent seam.

The forward contract of every model in :mod:`canon.models.reading`::

    start_logits, end_logits = model(context_words, context_chars, question_words, question_chars,
                                     context_mask, question_mask)

    context_words   long (N, Lc)     word indices (0 = padding)   — as built by canon.data.squad
    context_chars   long (N, Lc, W)  character indices per word (0 = padding)
    question_words  long (N, Lq)
    question_chars  long (N, Lq, W)
    context_mask    bool (N, Lc)     True on real tokens, a prefix of each row, at least one
    question_mask   bool (N, Lq)     True on real tokens, a prefix of each row, at least one
    -> start_logits, end_logits  float (N, Lc), -inf where ``context_mask`` is False

The logits are unnormalised log-probabilities of the answer's first and last token (softmax
over the context). :func:`span_loss` is the training loss, ``canon.data.squad.best_spans``
the decoding.

Papers of the shared pieces:
- character CNN with max-pooling over the word: Kim, "Convolutional Neural Networks for
  Sentence Classification", 2014, arXiv:1408.5882 (as BiDAF section 2 uses it);
- highway network: Srivastava, Greff, Schmidhuber, "Highway Networks", 2015, arXiv:1505.00387;
- trilinear similarity wᵀ[h; u; h∘u]: BiDAF (arXiv:1611.01603) eq. 1, reused by QANet.

Deviates, and why:
- the character CNN max-pools only over windows that start inside the word (a word shorter
  than the kernel keeps its first window), so a word's vector does not depend on how wide the
  batch's padding is; the usual implementations pool over the padded width too.
- :class:`RecurrentEncoder` is the one place where recurrent layers are built
  (:func:`recurrent_layer`: one-directional ``canon.layers.LSTM`` / ``GRU`` layers with
  ``fused=True``, i.e. torch's kernel on canon's parameters, torch's state_dict layout) and
  run: each direction of each layer is its own layer, the backward one reading every sequence
  reversed within its length, which equals a bidirectional torch LSTM on a packed sequence
  (tested) while keeping the fused kernels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers.recurrent import GRU, LSTM

__all__ = ["check_reading_inputs", "mask_logits", "masked_softmax", "span_loss", "CharCNN", "Highway",
           "WordCharEmbedding", "TrilinearSimilarity", "recurrent_layer", "reverse_padded", "RecurrentEncoder"]


# ----------------------------------------------------------------------------- inputs and outputs
def _check_mask(mask, words: torch.Tensor, name: str, model_name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        found = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{model_name}: {name} must be a bool tensor (True on real tokens), got {found}")
    if mask.shape != words.shape:
        raise ValueError(f"{model_name}: {name} must have the shape of its words {tuple(words.shape)}, "
                         f"got {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    empty = (lengths == 0).nonzero().flatten().tolist()
    if empty:
        what = name.replace("_mask", "")
        raise ValueError(f"{model_name}: empty {what} at batch index {empty[:5]}; every example needs at "
                         f"least one {what} token")
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError(f"{model_name}: {name} must be True on a prefix of each row (right padding)")
    return lengths


def check_reading_inputs(model_name: str, context_words, context_chars, question_words, question_chars,
                         context_mask, question_mask, *, word_vocab_size: int, char_vocab_size: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raise a clear error unless the six inputs follow the contract; return the two lengths (N,)."""
    inputs = {"context_words": (context_words, 2), "context_chars": (context_chars, 3),
              "question_words": (question_words, 2), "question_chars": (question_chars, 3)}
    for name, (t, dims) in inputs.items():
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long:
            found = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{model_name}: {name} must be a torch.long tensor of indices, got {found}")
        if t.dim() != dims:
            layout = "(N, L)" if dims == 2 else "(N, L, W)"
            raise ValueError(f"{model_name}: {name} must be {layout}, got shape {tuple(t.shape)}")
    n = context_words.shape[0]
    if context_chars.shape[:2] != context_words.shape or question_chars.shape[:2] != question_words.shape:
        raise ValueError(f"{model_name}: the chars (N, L, W) must match their words (N, L): context "
                         f"{tuple(context_words.shape)} / {tuple(context_chars.shape)}, question "
                         f"{tuple(question_words.shape)} / {tuple(question_chars.shape)}")
    if question_words.shape[0] != n:
        raise ValueError(f"{model_name}: contexts and questions must have the same batch size, got "
                         f"{n} and {question_words.shape[0]}")
    for name, t, size in (("context_words", context_words, word_vocab_size),
                          ("question_words", question_words, word_vocab_size),
                          ("context_chars", context_chars, char_vocab_size),
                          ("question_chars", question_chars, char_vocab_size)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
            raise ValueError(f"{model_name}: {name} must lie in [0, {size}) (the vocabulary size it was built "
                             f"with), got values in [{int(t.min())}, {int(t.max())}]")
    return (_check_mask(context_mask, context_words, "context_mask", model_name),
            _check_mask(question_mask, question_words, "question_mask", model_name))


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits`` with -inf where ``mask`` (broadcastable, True = keep) is False."""
    return logits.masked_fill(~mask, float("-inf"))


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax over ``dim`` of the positions where ``mask`` is True (zero elsewhere)."""
    return mask_logits(logits, mask).softmax(dim=dim)


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, answer_start: torch.Tensor,
              answer_end: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -log p_start(y_start) - log p_end(y_end) (BiDAF eq. 5, QANet eq. 5).

    start_logits, end_logits (N, L) (masked with -inf); answer_start, answer_end (N,) long.
    """
    if start_logits.shape != end_logits.shape or start_logits.dim() != 2:
        raise ValueError(f"span_loss: start and end logits must both be (N, L), got {tuple(start_logits.shape)} "
                         f"and {tuple(end_logits.shape)}")
    n, length = start_logits.shape
    for name, target in (("answer_start", answer_start), ("answer_end", answer_end)):
        if target.shape != (n,):
            raise ValueError(f"span_loss: {name} must be ({n},), got {tuple(target.shape)}")
        if n and (int(target.min()) < 0 or int(target.max()) >= length):
            raise ValueError(f"span_loss: {name} must index the context [0, {length}), got "
                             f"[{int(target.min())}, {int(target.max())}] (examples without a known "
                             f"answer, -1, cannot be trained on)")
    return F.cross_entropy(start_logits, answer_start) + F.cross_entropy(end_logits, answer_end)


# ----------------------------------------------------------------------------- embeddings
class CharCNN(nn.Module):
    """Character embeddings -> 1-D convolution over each word -> ReLU -> max over the word.

    chars (N, L, W) -> (N, L, channels).
    """

    def __init__(self, char_vocab_size: int, char_dim: int, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.embedding = nn.Embedding(char_vocab_size, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, channels, kernel_size)

    def forward(self, chars: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        n, length, width = chars.shape
        if width < self.kernel_size:
            chars = F.pad(chars, (0, self.kernel_size - width))
            width = self.kernel_size
        x = self.embedding(chars.reshape(n * length, width))  # (N·L, W, char_dim)
        x = F.dropout(x, dropout, self.training)
        x = F.relu(self.conv(x.transpose(1, 2)))  # (N·L, channels, W - k + 1)
        word_lengths = (chars.reshape(n * length, width) != 0).sum(dim=1)  # (N·L,)
        windows = torch.arange(x.shape[-1], device=x.device)
        valid = windows[None, :] < (word_lengths - self.kernel_size + 1).clamp(min=1)[:, None]  # (N·L, W-k+1)
        x = x.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=-1)  # (N·L, channels)
        return x.reshape(n, length, -1)


class Highway(nn.Module):
    """``num_layers`` highway layers: x <- t ⊙ ReLU(W_h x + b_h) + (1 - t) ⊙ x, t = σ(W_t x + b_t)."""

    def __init__(self, dim: int, num_layers: int = 2):
        super().__init__()
        self.transforms = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        self.gates = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for transform, gate in zip(self.transforms, self.gates):
            t = torch.sigmoid(gate(x))
            x = t * F.relu(transform(x)) + (1 - t) * x
        return x


class WordCharEmbedding(nn.Module):
    """[word embedding; character-CNN embedding] of each token: (N, L), (N, L, W) -> (N, L, word_dim + char_channels).

    Word vectors are trained from scratch unless :meth:`set_word_vectors` loads pretrained ones
    (``canon.data.text_tokenize.load_word_vectors``).
    """

    def __init__(self, *, word_vocab_size: int, word_dim: int, char_vocab_size: int, char_dim: int,
                 char_channels: int, char_kernel_size: int):
        super().__init__()
        self.word_embedding = nn.Embedding(word_vocab_size, word_dim, padding_idx=0)
        self.char_cnn = CharCNN(char_vocab_size, char_dim, char_channels, char_kernel_size)
        self.output_dim = word_dim + char_channels

    def set_word_vectors(self, vectors: torch.Tensor, *, trainable: bool = False) -> None:
        """Copy pretrained vectors (V, word_dim) into the word embedding; frozen unless ``trainable``."""
        expected = tuple(self.word_embedding.weight.shape)
        if not isinstance(vectors, torch.Tensor) or tuple(vectors.shape) != expected:
            found = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
            raise ValueError(f"word vectors must be (word_vocab_size, word_dim) = {expected}, got {found}")
        with torch.no_grad():
            self.word_embedding.weight.copy_(vectors)
        self.word_embedding.weight.requires_grad_(trainable)

    def forward(self, words: torch.Tensor, chars: torch.Tensor, *, word_dropout: float = 0.0,
                char_dropout: float = 0.0) -> torch.Tensor:
        word = F.dropout(self.word_embedding(words), word_dropout, self.training)  # (N, L, word_dim)
        char = self.char_cnn(chars, dropout=char_dropout)  # (N, L, char_channels)
        return torch.cat([word, char], dim=-1)


# ----------------------------------------------------------------------------- attention
class TrilinearSimilarity(nn.Module):
    """S_ij = wᵀ[c_i; q_j; c_i ∘ q_j] for every pair, without building the (N, Lc, Lq, 3d) tensor.

    ``weight`` (3d,) is w = [w_c; w_q; w_cq], so S = c w_c 1ᵀ + 1 (q w_q)ᵀ + (c ∘ w_cq) qᵀ.
    context (N, Lc, d), question (N, Lq, d) -> (N, Lc, Lq).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(3 * dim))
        bound = 1.0 / (3 * dim) ** 0.5  # nn.Linear(3d, 1)'s initialisation
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, context: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        w_c, w_q, w_cq = self.weight.split(self.dim)
        return ((context @ w_c)[:, :, None] + (question @ w_q)[:, None, :]
                + (context * w_cq) @ question.transpose(1, 2))  # (N, Lc, Lq)


# ----------------------------------------------------------------------------- the recurrent seam
def recurrent_layer(kind: str, input_size: int, hidden_size: int) -> nn.Module:
    """One batch-first, one-directional LSTM or GRU layer: canon's own, on torch's fused kernel.

    ``canon.layers.LSTM`` / ``GRU`` have ``torch.nn.LSTM`` / ``GRU``'s exact state_dict; this is
    the one line to change to run another implementation.
    """
    layers = {"lstm": LSTM, "gru": GRU}
    if kind not in layers:
        raise ValueError(f"kind must be one of {sorted(layers)}, got {kind!r}")
    return layers[kind](input_size, hidden_size, batch_first=True, fused=True)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence within its own length, padding left in place: x (N, L, F), lengths (N,)."""
    positions = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, L)
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)  # (N, L)
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


class RecurrentEncoder(nn.Module):
    """A (bi)directional, stacked LSTM/GRU over right-padded sequences: x (N, L, in), mask (N, L) -> (N, L, D·hidden).

    Computes what ``torch.nn.LSTM(..., bidirectional=True)`` gives on a packed sequence: the
    backward direction starts at each sequence's last real token, and padded positions come out
    as zeros. Each layer and direction is its own one-directional layer, run on the padded
    batch as it is (forward) or with each sequence reversed within its length (backward), so
    torch's fused kernels are used; on CPU a packed sequence falls back to a step-by-step path
    that is several times slower. ``dropout`` acts between stacked layers (training only).
    """

    def __init__(self, kind: str, input_size: int, hidden_size: int, *, num_layers: int = 1,
                 bidirectional: bool = True, dropout: float = 0.0):
        super().__init__()
        directions = 2 if bidirectional else 1
        self.dropout = dropout
        self.forward_layers = nn.ModuleList(
            recurrent_layer(kind, input_size if k == 0 else directions * hidden_size, hidden_size)
            for k in range(num_layers))
        self.backward_layers = nn.ModuleList(
            recurrent_layer(kind, input_size if k == 0 else directions * hidden_size, hidden_size)
            for k in range(num_layers)) if bidirectional else None
        self.output_dim = hidden_size * directions

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1)
        keep = mask[:, :, None].to(x.dtype)
        for k, forward_layer in enumerate(self.forward_layers):
            if k > 0:
                x = F.dropout(x, self.dropout, self.training)
            outputs = [forward_layer(x)[0]]  # padding comes after the real tokens: they never see it
            if self.backward_layers is not None:
                backward = self.backward_layers[k](reverse_padded(x, lengths))[0]
                outputs.append(reverse_padded(backward, lengths))
            x = torch.cat(outputs, dim=-1) * keep  # (N, L, D·hidden)
        return x


def example_reading_inputs(model: nn.Module, input_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """The six inputs of a reading model for one question: a context of ``input_shape[1]`` tokens (default
    40) and a question of 10, every token an ordinary word of 5 characters; for ``canon info``."""
    batch, context_length = tuple(input_shape or (1, 40))[:2]
    device = next(model.parameters()).device
    word = min(2, model.word_vocab_size - 1)  # past <pad> 0 and <unk> 1
    char = min(2, model.char_vocab_size - 1)

    def side(length):
        words = torch.full((batch, length), word, dtype=torch.long, device=device)
        chars = torch.full((batch, length, 5), char, dtype=torch.long, device=device)
        return words, chars, torch.ones(batch, length, dtype=torch.bool, device=device)

    context_words, context_chars, context_mask = side(context_length)
    question_words, question_chars, question_mask = side(10)
    return context_words, context_chars, question_words, question_chars, context_mask, question_mask
