"""FusionNet against its equations written out here (fully-aware attention S(x, y) = ReLU(Ux)ᵀ D ReLU(Uy),
the word features, the output layer) and closed-form parameter counts.
"""
from __future__ import annotations

import pytest
import torch
from reading_checks import (
    CHARS, WORDS, check_bad_inputs, check_forward_contract, check_gradients_reach_every_parameter,
    check_padding_invariance, check_registry_entry, count, embedding_params, lstm_params, random_batch,
)

from canon.data.text_tokenize import UNK_INDEX
from canon.models.reading.fusionnet import FullyAwareAttention, FusionNet, word_features

SMALL = dict(word_vocab_size=WORDS, char_vocab_size=CHARS, word_dim=10, char_dim=4, char_channels=6,
             char_kernel_size=3, hidden_size=5, word_attention_size=7, attention_size=6, dropout=0.0)


def fusionnet_params(words, chars, word_dim, char_dim, char_channels, char_kernel_size, hidden_size,
                     word_attention_size, attention_size, **_):
    h, k = 2 * hidden_size, attention_size
    e = word_dim + char_channels
    return (embedding_params(word_dim, char_dim, char_channels, char_kernel_size, words, chars)
            + word_dim * word_attention_size  # word-level attention's W (no D)
            + lstm_params(e + 2 + word_dim, hidden_size) + lstm_params(h, hidden_size)  # context low, high
            + lstm_params(e, hidden_size) + lstm_params(h, hidden_size)  # question low, high
            + lstm_params(2 * h, hidden_size)  # question understanding
            + 3 * ((e + 2 * h) * k + k)  # three fusions: U and diag(D) each
            + lstm_params(5 * h, hidden_size)  # v^C
            + (e + 6 * h) * k + k  # self-boosted fusion
            + lstm_params(2 * h, hidden_size)  # U^C
            + h + h * h + (3 * h * (h + h) + 6 * h) + h * h)  # w, W_S, GRU cell, W_E


def test_registry_and_parameter_counts():
    check_registry_entry("fusionnet", FusionNet)
    with torch.device("meta"):
        paper = FusionNet()
    assert count(paper) == fusionnet_params(49_865, 227, 300, 8, 100, 5, 125, 300, 250)
    assert count(FusionNet(**SMALL)) == fusionnet_params(WORDS, CHARS, **SMALL)


@pytest.mark.parametrize("diagonal", [True, False])
def test_fully_aware_attention_formula(diagonal):
    torch.manual_seed(0)
    attention = FullyAwareAttention(4, 3, diagonal=diagonal).double()
    if diagonal:
        attention.diagonal.data.copy_(torch.tensor([0.5, 2.0, -1.0]))
    x, y = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    values = torch.randn(2, 3, 2, dtype=torch.float64)
    y_mask = torch.tensor([[True, True, True], [True, True, False]])
    out = attention(x, y, values, y_mask)
    u = attention.projection.weight  # (3, 4)
    d = torch.diag(attention.diagonal) if diagonal else torch.eye(3, dtype=torch.float64)
    for n in range(2):
        j_len = int(y_mask[n].sum())
        for i in range(5):
            s = torch.stack([torch.relu(u @ x[n, i]) @ d @ torch.relu(u @ y[n, j]) for j in range(j_len)])
            alpha = torch.exp(s) / torch.exp(s).sum()
            assert torch.allclose(out[n, i], (alpha[:, None] * values[n, :j_len]).sum(0))


def test_word_features_exact_match_and_term_frequency():
    context = torch.tensor([[5, 6, 5, UNK_INDEX, 7, 0], [8, 9, 9, 0, 0, 0]])
    question = torch.tensor([[5, UNK_INDEX, 0], [9, 3, 8]])
    cmask, qmask = context != 0, torch.tensor([[True, True, False], [True, False, False]])
    out = word_features(context, question, cmask, qmask)
    for n in range(2):
        words = context[n][cmask[n]].tolist()
        asked = set(question[n][qmask[n]].tolist())
        for i, w in enumerate(words):
            assert out[n, i, 0] == float(w in asked and w != UNK_INDEX)  # <unk> never matches
            assert out[n, i, 1] == pytest.approx(words.count(w) / len(words))
        assert (out[n, len(words):] == 0).all()


def test_output_layer_equations():
    torch.manual_seed(0)
    model = FusionNet(**SMALL).double().eval()
    captured = {}
    model.context_understanding.register_forward_hook(lambda m, a, out: captured.update(context=out))
    model.question_understanding.register_forward_hook(lambda m, a, out: captured.update(question=out))
    batch = random_batch()
    start, end = model(**batch)
    for n in range(batch["context_words"].shape[0]):
        c, q = int(batch["context_mask"][n].sum()), int(batch["question_mask"][n].sum())
        u_c, u_q = captured["context"][n, :c], captured["question"][n, :q]
        beta = (u_q @ model.question_summary.weight[0]).softmax(0)
        u = (beta[:, None] * u_q).sum(0)  # u^Q
        s = u_c @ model.start_bilinear.weight.T @ u  # u^Qᵀ W_S U_i^C
        assert torch.allclose(start[n, :c], s)
        v = model.end_cell((s.softmax(0)[:, None] * u_c).sum(0)[None], u[None])[0]  # v^Q
        assert torch.allclose(end[n, :c], u_c @ model.end_bilinear.weight.T @ v)


def test_forward_contract_padding_gradients():
    torch.manual_seed(0)
    model = FusionNet(**SMALL)
    batch = random_batch()
    check_forward_contract(model, batch)
    check_padding_invariance(model, batch)
    check_gradients_reach_every_parameter(model, batch)


def test_bad_inputs_raise():
    check_bad_inputs(FusionNet(**SMALL), random_batch(), "FusionNet")
