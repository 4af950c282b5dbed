"""R-Net against its equations written out here (additive attention, the gate on [u_t^P; c_t], the
question pooling and pointer network) and closed-form parameter counts.
"""
from __future__ import annotations

import pytest
import torch
from reading_checks import (
    CHARS, WORDS, check_bad_inputs, check_forward_contract, check_gradients_reach_every_parameter,
    check_padding_invariance, check_registry_entry, count, embedding_params, gru_params, random_batch,
)

from canon.models.reading.rnet import AdditiveAttention, GatedAttentionRNN, RNet

SMALL = dict(word_vocab_size=WORDS, char_vocab_size=CHARS, word_dim=10, char_dim=4, char_channels=6,
             char_kernel_size=3, hidden_size=6, attention_size=5, encoder_layers=3, dropout=0.0)


def rnet_params(words, chars, word_dim, char_dim, char_channels, char_kernel_size, hidden_size, attention_size,
                encoder_layers, **_):
    h, a = hidden_size, attention_size
    d = 2 * h  # bidirectional outputs
    gated = (2 * d * a + a) + (2 * d) ** 2 + gru_params(2 * d, h)  # W_u^Q, W_u^P, v; W_g; the BiGRU
    pointer = (d * a + a + a) + (2 * d * a + a) + (3 * d * (d + d) + 6 * d)  # pooling; s^t; GRU cell
    return (embedding_params(word_dim, char_dim, char_channels, char_kernel_size, words, chars)
            + gru_params(word_dim + char_channels, h, layers=encoder_layers) + 2 * gated + pointer)


def test_registry_and_parameter_counts():
    check_registry_entry("rnet", RNet)
    with torch.device("meta"):
        paper = RNet()
    assert count(paper) == rnet_params(49_865, 227, 300, 8, 100, 5, 75, 75, 3)
    assert count(RNet(**SMALL)) == rnet_params(WORDS, CHARS, **SMALL)


def test_additive_attention_formula():
    torch.manual_seed(0)
    attention = AdditiveAttention(3, 4, 5).double()
    q, k = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(2, 6, 4, dtype=torch.float64)
    out = attention(q, k)
    w_q, w_k, v = attention.query_proj.weight, attention.key_proj.weight, attention.v.weight[0]
    for n in range(2):
        for t in range(3):
            for j in range(6):
                assert torch.isclose(out[n, t, j], v @ torch.tanh(w_k @ k[n, j] + w_q @ q[n, t]))


def test_gated_attention_feeds_g_times_x_and_c_to_the_rnn():
    torch.manual_seed(0)
    layer = GatedAttentionRNN(4, 3, hidden_size=2, attention_dim=5).double()
    batch = random_batch()
    x = torch.randn(*batch["context_mask"].shape, 4, dtype=torch.float64)
    memory = torch.randn(*batch["question_mask"].shape, 3, dtype=torch.float64)
    seen = {}
    layer.rnn.register_forward_pre_hook(lambda module, args: seen.update(input=args[0]))
    layer(x, memory, batch["context_mask"], batch["question_mask"])
    for n in range(x.shape[0]):
        j_len = int(batch["question_mask"][n].sum())
        for t in range(int(batch["context_mask"][n].sum())):
            scores = layer.attention(x[n:n + 1, t:t + 1], memory[n:n + 1, :j_len])[0, 0]  # s_j^t, j < |Q|
            c = (scores.softmax(0)[:, None] * memory[n, :j_len]).sum(0)  # c_t
            joint = torch.cat([x[n, t], c])
            expected = torch.sigmoid(layer.gate.weight @ joint) * joint  # g_t ⊙ [u_t^P; c_t]
            assert torch.allclose(seen["input"][n, t], expected)


def test_pointer_network_is_initialised_by_the_pooled_question():
    torch.manual_seed(0)
    model = RNet(**SMALL).double()
    pointer = model.pointer
    batch = random_batch()
    qmask, cmask = batch["question_mask"], batch["context_mask"]
    question = torch.randn(*qmask.shape, 12, dtype=torch.float64)
    passage = torch.randn(*cmask.shape, 12, dtype=torch.float64)
    start, end = pointer(question, passage, qmask, cmask)
    a_r = pointer.question_v.weight[0]
    for n in range(question.shape[0]):
        m, p_len = int(qmask[n].sum()), int(cmask[n].sum())
        pool = torch.stack([a_r @ torch.tanh(pointer.question_key.weight @ question[n, i] + pointer.question_query)
                            for i in range(m)]).softmax(0)
        r_q = (pool[:, None] * question[n, :m]).sum(0)  # r^Q = h_0^a
        w_h, w_a, v = pointer.pointer.key_proj.weight, pointer.pointer.query_proj.weight, pointer.pointer.v.weight[0]
        s1 = torch.stack([v @ torch.tanh(w_h @ passage[n, j] + w_a @ r_q) for j in range(p_len)])
        assert torch.allclose(start[n, :p_len], s1)
        c1 = (s1.softmax(0)[:, None] * passage[n, :p_len]).sum(0)
        h1 = pointer.cell(c1[None], r_q[None])[0]  # h_1^a = GRU(h_0^a, c_1)
        s2 = torch.stack([v @ torch.tanh(w_h @ passage[n, j] + w_a @ h1) for j in range(p_len)])
        assert torch.allclose(end[n, :p_len], s2)


def test_forward_contract_padding_gradients():
    torch.manual_seed(0)
    model = RNet(**SMALL)
    batch = random_batch()
    check_forward_contract(model, batch)
    check_padding_invariance(model, batch)
    check_gradients_reach_every_parameter(model, batch)


def test_bad_inputs_raise():
    check_bad_inputs(RNet(**SMALL), random_batch(), "RNet")
    with pytest.raises(ValueError, match="dropout"):
        RNet(dropout=-0.1)
