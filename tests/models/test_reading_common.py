"""The pieces the reading models share, against torch and direct computations written here.

References: ``torch.nn.LSTM/GRU(bidirectional=True, num_layers=2)`` on a packed sequence (the
recurrent encoder, same weights); the character CNN, highway network, trilinear similarity and
span loss written out element by element.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from canon.models.reading._common import (
    CharCNN, Highway, RecurrentEncoder, TrilinearSimilarity, WordCharEmbedding, reverse_padded, span_loss,
)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_encoder_equals_torch_on_a_packed_sequence(kind):
    torch.manual_seed(0)
    reference = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](5, 4, num_layers=2, bidirectional=True, batch_first=True)
    encoder = RecurrentEncoder(kind, 5, 4, num_layers=2)
    for k in range(2):  # torch's weight_*_l{k} / weight_*_l{k}_reverse -> our per-direction layers
        for direction, suffix in ((encoder.forward_layers[k], ""), (encoder.backward_layers[k], "_reverse")):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(direction, f"{name}_l0").data.copy_(getattr(reference, f"{name}_l{k}{suffix}"))
    lengths = torch.tensor([7, 3, 5, 1])
    x = torch.randn(4, 7, 5)
    mask = torch.arange(7)[None] < lengths[:, None]
    expected, _ = reference(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    expected, _ = pad_packed_sequence(expected, batch_first=True, total_length=7)
    assert torch.allclose(encoder(x, mask), expected, atol=1e-6)
    assert encoder.output_dim == 8


def test_reverse_padded():
    x = torch.arange(8.0).reshape(2, 4, 1)
    out = reverse_padded(x, torch.tensor([4, 2]))
    assert out[..., 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]
    assert torch.equal(reverse_padded(out, torch.tensor([4, 2])), x)


def test_char_cnn_max_pools_over_the_windows_inside_each_word():
    torch.manual_seed(0)
    cnn = CharCNN(char_vocab_size=10, char_dim=3, channels=4, kernel_size=3).double()
    chars = torch.tensor([[[1, 2, 3, 4, 0, 0], [5, 0, 0, 0, 0, 0], [6, 7, 8, 0, 0, 0]]])  # lengths 4, 1, 3
    out = cnn(chars)
    assert out.shape == (1, 3, 4)
    for k, length in enumerate((4, 1, 3)):
        emb = cnn.embedding.weight[chars[0, k]]  # (W, 3)
        windows = max(length - 3 + 1, 1)
        conv = [torch.relu(cnn.conv.bias + torch.einsum("ocj,jc->o", cnn.conv.weight, emb[i:i + 3]))
                for i in range(windows)]
        assert torch.allclose(out[0, k], torch.stack(conv).amax(0))
    # padding the characters wider, or narrower than the kernel, changes nothing
    assert torch.allclose(cnn(torch.nn.functional.pad(chars, (0, 5))), out)
    assert torch.allclose(cnn(chars[:, 1:2, :1]), out[:, 1:2])


def test_highway_formula():
    torch.manual_seed(0)
    highway = Highway(5, num_layers=2)
    x = torch.randn(3, 5)
    expected = x
    for transform, gate in zip(highway.transforms, highway.gates):
        t = torch.sigmoid(expected @ gate.weight.T + gate.bias)
        expected = t * torch.relu(expected @ transform.weight.T + transform.bias) + (1 - t) * expected
    assert torch.allclose(highway(x), expected)


def test_trilinear_similarity_equals_w_dot_concatenation():
    torch.manual_seed(0)
    similarity = TrilinearSimilarity(4).double()
    c, q = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    out = similarity(c, q)
    expected = torch.empty(2, 5, 3, dtype=torch.float64)
    for n in range(2):
        for i in range(5):
            for j in range(3):
                expected[n, i, j] = similarity.weight @ torch.cat([c[n, i], q[n, j], c[n, i] * q[n, j]])
    assert torch.allclose(out, expected)


def test_span_loss_is_the_negative_log_likelihood_of_both_ends():
    start = torch.tensor([[0.0, 1.0, 2.0, -torch.inf], [3.0, 0.0, 0.0, 1.0]])
    end = torch.tensor([[2.0, 0.0, 1.0, -torch.inf], [0.0, 0.0, 1.0, 1.0]])
    y1, y2 = torch.tensor([1, 0]), torch.tensor([2, 3])
    expected = -(start.log_softmax(1)[[0, 1], y1] + end.log_softmax(1)[[0, 1], y2]).mean()
    assert torch.allclose(span_loss(start, end, y1, y2), expected)
    with pytest.raises(ValueError, match="-1"):
        span_loss(start, end, torch.tensor([-1, 0]), y2)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        span_loss(start, end, y1[:1], y2)


def test_set_word_vectors_copies_and_freezes():
    embedding = WordCharEmbedding(word_vocab_size=6, word_dim=3, char_vocab_size=5, char_dim=2, char_channels=2,
                                  char_kernel_size=2)
    vectors = torch.arange(18.0).reshape(6, 3)
    embedding.set_word_vectors(vectors)
    assert torch.equal(embedding.word_embedding.weight, vectors) and not embedding.word_embedding.weight.requires_grad
    with pytest.raises(ValueError, match=r"\(6, 3\)"):
        embedding.set_word_vectors(torch.zeros(5, 3))
