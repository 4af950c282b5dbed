"""The LSTM encoder-decoder with Luong attention against Luong et al.'s equations written out in the test.

Reference (independent of canon's model code): ``torch.nn.LSTM`` modules holding the model's
weights, ``pack_padded_sequence`` for the padded source, and section 3.1's global "general"
attention with section 3.3's input feeding written step by step with einsum.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import canon
from canon.models.sequence.rnn_seq2seq import LSTMAttentionSeq2Seq

VOCAB, EMBED, HIDDEN, LAYERS = 20, 6, 8, 2


def _sub_state(state: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def luong_reference(model: LSTMAttentionSeq2Seq, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    state = model.state_dict()
    encoder = nn.LSTM(EMBED, HIDDEN // 2, num_layers=LAYERS, bidirectional=True, batch_first=True).double()
    encoder.load_state_dict(_sub_state(state, "encoder."), strict=True)
    decoder = nn.LSTM(EMBED + HIDDEN, HIDDEN, num_layers=LAYERS, batch_first=True).double()
    decoder.load_state_dict(_sub_state(state, "decoder."), strict=True)
    w_a, w_c = state["attention.score_projection.weight"], state["attention.output_projection.weight"]
    w_s, b_s = state["output_projection.weight"], state["output_projection.bias"]

    padding = src == model.padding_idx
    packed = pack_padded_sequence(F.embedding(src, state["src_embedding.weight"]), (~padding).sum(1),
                                  batch_first=True, enforce_sorted=False)
    output, (h_n, c_n) = encoder(packed)
    memory, _ = pad_packed_sequence(output, batch_first=True, total_length=src.shape[1])  # h̄_s: (N, S, H)
    # decoder's initial state, per layer: [forward final; backward final]
    hx = (torch.cat([h_n[0::2], h_n[1::2]], dim=-1), torch.cat([c_n[0::2], c_n[1::2]], dim=-1))
    h_tilde = torch.zeros(src.shape[0], HIDDEN, dtype=torch.double)
    logits = []
    for t in range(tgt.shape[1]):
        x = torch.cat([F.embedding(tgt[:, t], state["tgt_embedding.weight"]), h_tilde], dim=-1)[:, None]  # input feeding
        out, hx = decoder(x, hx)
        h_t = out[:, 0]
        score = torch.einsum("nh,nsh->ns", h_t, memory @ w_a.T)          # h_tᵀ W_a h̄_s
        a_t = score.masked_fill(padding, float("-inf")).softmax(dim=-1)   # over the real source positions
        c_t = torch.einsum("ns,nsh->nh", a_t, memory)
        h_tilde = torch.tanh(torch.cat([c_t, h_t], dim=-1) @ w_c.T)       # h̃_t = tanh(W_c [c_t; h_t])
        logits.append(h_tilde @ w_s.T + b_s)                              # softmax(W_s h̃_t) before the softmax
    return torch.stack(logits, dim=1)


def _model(**kwargs):
    torch.manual_seed(0)
    return LSTMAttentionSeq2Seq(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, embedding_dim=EMBED, hidden_size=HIDDEN,
                                num_layers=LAYERS, dropout=0.2, **kwargs).double().eval()


def _batch():
    generator = torch.Generator().manual_seed(1)
    src = torch.randint(3, VOCAB, (3, 7), generator=generator)
    src[1, 5:] = 0
    src[2, 2:] = 0
    tgt = torch.randint(3, VOCAB, (3, 5), generator=generator)
    tgt[:, 0] = 1
    return src, tgt


@pytest.mark.parametrize("fused_rnn", [True, False], ids=["fused", "from_the_gates"])
def test_matches_luongs_equations(fused_rnn):
    model = _model(fused_rnn=fused_rnn)
    src, tgt = _batch()
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), luong_reference(model, src, tgt), atol=1e-10, rtol=1e-10)


def test_padding_is_masked_and_decode_step_continues_the_sequence():
    model = _model()
    src, tgt = _batch()
    with torch.no_grad():
        logits = model(src, tgt)
        garbage = src.clone()
        garbage[2, 2:] = 9  # under the padding mask
        torch.testing.assert_close(model(garbage, tgt, src_padding_mask=src == 0)[2], logits[2])
        encoder_out, cache = model.encode(src), {}
        for t in range(tgt.shape[1]):
            step_logits, cache = model.decode_step(tgt[:, :t + 1], encoder_out, cache)
            torch.testing.assert_close(step_logits, logits[:, t])


def test_registered_small_model_and_its_parameter_count():
    model = canon.create_model("lstm_attention_small", src_vocab_size=1000, tgt_vocab_size=900)
    e, h, layers, half = 256, 256, 2, 128
    lstm = lambda inp, hid: 4 * hid * inp + 4 * hid * hid + 2 * 4 * hid  # W_ih, W_hh, two biases
    expected = (1000 * e + 900 * e                                           # embeddings
                + 2 * lstm(e, half) + 2 * lstm(h, half)                      # bidirectional encoder, 2 layers
                + lstm(e + h, h) + (layers - 1) * lstm(h, h)                 # decoder with input feeding
                + h * h + 2 * h * h                                          # W_a, W_c
                + h * 900 + 900)                                             # W_s and its bias
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.encoder.fused and model.decoder.fused  # the models run torch's fused LSTM kernel
    src, tgt = torch.randint(3, 1000, (2, 5)), torch.randint(3, 900, (2, 4))
    assert model(src, tgt).shape == (2, 4, 900)
    info = canon.model_info("lstm_attention_small")
    assert info.task == "translation" and info.input_size == () and info.num_classes is None


def test_without_input_feeding_decodes_all_steps_at_once():
    model = _model(input_feeding=False)
    assert model.decoder.input_size == EMBED
    src, tgt = _batch()
    with torch.no_grad():
        logits = model(src, tgt)
        encoder_out, cache = model.encode(src), {}
        for t in range(tgt.shape[1]):
            step_logits, cache = model.decode_step(tgt[:, :t + 1], encoder_out, cache)
            torch.testing.assert_close(step_logits, logits[:, t])


def test_bad_inputs_are_explained():
    model = _model()
    src, tgt = _batch()
    left_padded = torch.tensor([[0, 0, 5, 6]])
    with pytest.raises(ValueError, match="right padding"):
        model(left_padded, tgt[:1])
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 20\)"):
        model(src, tgt + VOCAB)
    with pytest.raises(ValueError, match="at least one non-padding token"):
        model(torch.zeros(1, 3, dtype=torch.long), tgt[:1])
    with pytest.raises(ValueError, match="must be even"):
        LSTMAttentionSeq2Seq(src_vocab_size=10, tgt_vocab_size=10, hidden_size=7)
