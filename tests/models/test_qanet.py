"""QANet against its equations written out here and against torch's own layers.

References (independent of canon's code): the encoder block recomputed from ``F.layer_norm``,
``F.conv1d`` and ``torch.nn.MultiheadAttention`` holding the same weights, with the residual
form f(layernorm(x)) + x and stochastic depth's p_l scaling at evaluation; the sinusoidal table
from math.sin / math.cos; context-query attention as loops; closed-form parameter counts.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from reading_checks import (
    CHARS, WORDS, check_bad_inputs, check_forward_contract, check_gradients_reach_every_parameter,
    check_padding_invariance, check_registry_entry, count, embedding_params, highway_params, random_batch,
)

from canon.models.reading.qanet import (
    EncoderBlock, QANet, context_query_attention, sinusoidal_positions, survival_probabilities,
)

SMALL = dict(word_vocab_size=WORDS, char_vocab_size=CHARS, word_dim=10, char_dim=4, char_channels=6,
             char_kernel_size=3, hidden_size=8, num_heads=2, embedding_convs=2, embedding_kernel_size=3,
             model_blocks=2, model_convs=2, model_kernel_size=3, dropout=0.0, word_dropout=0.0, char_dropout=0.0,
             final_survival=1.0)


def block_params(d, convs, kernel):
    conv = 2 * d + (d * kernel + d * d + d)  # layer norm + depthwise (no bias) + pointwise
    attention = 2 * d + (3 * d * d + 3 * d + d * d + d)  # layer norm + in/out projections
    feed_forward = 2 * d + 2 * (d * d + d)
    return convs * conv + attention + feed_forward


def qanet_params(words, chars, word_dim, char_dim, char_channels, char_kernel_size, hidden_size,
                 embedding_convs, embedding_kernel_size, model_blocks, model_convs, model_kernel_size, **_):
    d, e = hidden_size, word_dim + char_channels
    return (embedding_params(word_dim, char_dim, char_channels, char_kernel_size, words, chars)
            + highway_params(e) + (e * d + d)  # highway, projection to d
            + block_params(d, embedding_convs, embedding_kernel_size)  # one embedding-encoder block
            + 3 * d  # trilinear w₀
            + (4 * d * d + d) + model_blocks * block_params(d, model_convs, model_kernel_size)  # one shared stack
            + 2 * 2 * d)  # W₁, W₂


def test_registry_and_parameter_counts():
    check_registry_entry("qanet", QANet)
    with torch.device("meta"):
        paper = QANet()
    assert count(paper) == qanet_params(49_865, 227, 300, 64, 200, 5, 128, 4, 7, 7, 2, 5)
    assert count(QANet(**SMALL)) == qanet_params(WORDS, CHARS, **SMALL)
    assert len(paper.model_encoder.blocks) == 7 and len(paper.embedding_encoder.blocks) == 1


def test_sinusoidal_positions_and_survival_probabilities():
    table = sinusoidal_positions(6, 5)
    for pos in range(6):
        for i in range(5):
            angle = pos / 10000 ** (2 * (i // 2) / 5)
            assert table[pos, i] == pytest.approx(math.sin(angle) if i % 2 == 0 else math.cos(angle), abs=1e-6)
    assert survival_probabilities(4, 0.9) == pytest.approx([0.975, 0.95, 0.925, 0.9])
    # the paper's model encoder: 7 blocks of 2 convolutions + attention + feed-forward = 28 sublayers
    assert survival_probabilities(28, 0.9)[-1] == pytest.approx(0.9)


def test_context_query_attention_equals_the_equations():
    torch.manual_seed(0)
    batch = random_batch()
    cmask, qmask = batch["context_mask"], batch["question_mask"]
    c = torch.randn(*cmask.shape, 3, dtype=torch.float64)
    q = torch.randn(*qmask.shape, 3, dtype=torch.float64)
    s = torch.randn(cmask.shape[0], cmask.shape[1], qmask.shape[1], dtype=torch.float64)
    out = context_query_attention(s, c, q, cmask, qmask)
    for n in range(c.shape[0]):
        n_c, n_q = int(cmask[n].sum()), int(qmask[n].sum())
        sn = s[n, :n_c, :n_q]
        row = torch.exp(sn) / torch.exp(sn).sum(1, keepdim=True)  # S̄
        column = torch.exp(sn) / torch.exp(sn).sum(0, keepdim=True)  # S̄̄
        a = row @ q[n, :n_q]
        b = row @ column.T @ c[n, :n_c]
        expected = torch.cat([c[n, :n_c], a, c[n, :n_c] * a, c[n, :n_c] * b], dim=-1)
        assert torch.allclose(out[n, :n_c], expected)


def reference_block(block: EncoderBlock, x, mask, survival):
    """The block from torch's layers: p·f(layernorm(x)) + x for every sublayer (evaluation form)."""
    attention = nn.MultiheadAttention(x.shape[-1], block.attention.num_heads, batch_first=True).double()
    attention.load_state_dict(block.attention.state_dict())
    keep = mask[..., None].double()
    x = x + torch.tensor([[math.sin(p / 10000 ** (2 * (i // 2) / x.shape[-1])) if i % 2 == 0 else
                           math.cos(p / 10000 ** (2 * (i // 2) / x.shape[-1])) for i in range(x.shape[-1])]
                          for p in range(x.shape[1])], dtype=torch.float64)
    for norm, conv, p in zip(block.conv_norms, block.convs, survival):
        y = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias) * keep
        k = conv.depthwise.weight.shape[-1]
        y = F.conv1d(y.transpose(1, 2), conv.depthwise.weight, padding=k // 2, groups=y.shape[-1])
        y = F.relu(F.conv1d(y, conv.pointwise.weight, conv.pointwise.bias)).transpose(1, 2)
        x = p * y + x
    y = F.layer_norm(x, x.shape[-1:], block.attention_norm.weight, block.attention_norm.bias)
    x = survival[-2] * attention(y, y, y, key_padding_mask=~mask, need_weights=False)[0] + x
    y = F.layer_norm(x, x.shape[-1:], block.feed_forward_norm.weight, block.feed_forward_norm.bias)
    ff = block.feed_forward
    x = survival[-1] * (F.relu(y @ ff[0].weight.T + ff[0].bias) @ ff[2].weight.T + ff[2].bias) + x
    return x * keep


def test_encoder_block_residual_form_and_stochastic_depth():
    torch.manual_seed(0)
    block = EncoderBlock(8, num_convs=2, kernel_size=3, num_heads=2, dropout=0.0).double()
    mask = torch.arange(6)[None] < torch.tensor([[6], [4]])
    x = torch.randn(2, 6, 8, dtype=torch.float64) * mask[..., None]
    survival = [1.0, 0.95, 0.9, 0.85]
    block.eval()
    assert torch.allclose(block(x, mask, survival), reference_block(block, x, mask, survival), atol=1e-10)
    block.train()  # dropout is 0: with survival 1 training computes f(layernorm(x)) + x exactly
    assert torch.allclose(block(x, mask, [1.0] * 4), reference_block(block, x, mask, [1.0] * 4), atol=1e-10)
    skipped = block(x, mask, [1e-12] * 4)  # every sublayer dropped: only the position encoding is added
    assert torch.allclose(skipped, (x + sinusoidal_positions(6, 8, dtype=torch.float64)) * mask[..., None])
    with pytest.raises(ValueError, match="4 survival"):
        block(x, mask, [1.0] * 3)


def test_forward_contract_padding_gradients():
    torch.manual_seed(0)
    model = QANet(**SMALL)
    batch = random_batch()
    check_forward_contract(model, batch)
    check_padding_invariance(model, batch)
    check_gradients_reach_every_parameter(model, batch)


def test_bad_inputs_raise():
    check_bad_inputs(QANet(**SMALL), random_batch(), "QANet")
    with pytest.raises(ValueError, match="divisible"):
        QANet(hidden_size=100, num_heads=8)
    with pytest.raises(ValueError, match="final_survival"):
        QANet(final_survival=0.0)
