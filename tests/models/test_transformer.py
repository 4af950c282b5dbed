"""The Transformer against torch's Transformer layers, the paper's formulas and its parameter counts.

References (independent of canon's code):
    - ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` holding the same weights
      (names mapped by canon's one mapping function): outputs within 1e-5 with padding and causal
      masks, post-norm and pre-norm, in train mode with dropout 0 and in eval mode (torch's fast path);
    - a whole model assembled in the test from torch's layers, ``nn.Embedding`` scaled by √d_model and
      the sinusoidal table of section 3.5 written out with ``math.sin``/``math.cos``;
    - the parameter counts as closed-form formulas in d_model, d_ff, N and the vocabulary size;
    - label smoothing: the smoothed cross-entropy written out as -Σ_c q_c log p_c.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import canon
from canon.losses import cross_entropy
from canon.models.sequence.transformer import (
    Transformer, TransformerDecoderLayer, TransformerEncoderLayer, sinusoidal_positional_encoding,
    torch_layer_state_dict_to_canon,
)

TOL = dict(atol=1e-5, rtol=1e-5)
D_MODEL, HEADS, D_FF = 16, 4, 32


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _padding_mask(lengths, total):
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]  # True at padding


def _canon_weights_into_torch(torch_layer: nn.Module, canon_state: dict) -> None:
    """Inverse of the mapping: canon's values under torch's names (the renaming keeps the order)."""
    torch_keys = list(torch_layer.state_dict())
    canon_keys = list(torch_layer_state_dict_to_canon(torch_layer.state_dict()))
    torch_layer.load_state_dict({t: canon_state[c] for t, c in zip(torch_keys, canon_keys)}, strict=True)


@pytest.mark.parametrize("mode", ["train_no_dropout", "eval"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_encoder_layer_matches_torch(norm_first, mode):
    reference = nn.TransformerEncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = TransformerEncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, norm_first=norm_first)
    ours.load_state_dict(torch_layer_state_dict_to_canon(reference.state_dict()), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    for module in (reference, ours):
        module.train(mode == "train_no_dropout")
    x = torch.randn(3, 7, D_MODEL)
    padding = _padding_mask([7, 4, 2], 7)
    with torch.no_grad():
        expected = reference(x, src_key_padding_mask=padding)
        got = ours(x, padding)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("mode", ["train_no_dropout", "eval"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_decoder_layer_matches_torch(norm_first, mode):
    reference = nn.TransformerDecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    ours = TransformerDecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, norm_first=norm_first)
    ours.load_state_dict(torch_layer_state_dict_to_canon(reference.state_dict()), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    for module in (reference, ours):
        module.train(mode == "train_no_dropout")
    x, memory = torch.randn(3, 6, D_MODEL), torch.randn(3, 5, D_MODEL)
    tgt_padding, memory_padding = _padding_mask([6, 3, 5], 6), _padding_mask([5, 5, 2], 5)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)  # True above the diagonal: blocked
    with torch.no_grad():
        expected = reference(x, memory, tgt_mask=causal, tgt_key_padding_mask=tgt_padding,
                             memory_key_padding_mask=memory_padding)
        got = ours(x, memory, padding_mask=tgt_padding, memory_padding_mask=memory_padding)
    torch.testing.assert_close(got, expected, **TOL)


def test_name_mapping_rejects_foreign_keys():
    with pytest.raises(KeyError, match="not a torch.nn.TransformerEncoderLayer parameter"):
        torch_layer_state_dict_to_canon({"self_attn.in_proj_weight": torch.zeros(1), "conv.weight": torch.zeros(1)})


# --- the whole model against one assembled from torch's layers --------------------------------------

def _paper_positional_encoding(length: int, d_model: int) -> torch.Tensor:
    """Section 3.5, element by element."""
    table = torch.zeros(length, d_model)
    for pos in range(length):
        for i in range(d_model // 2):
            table[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d_model))
            table[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d_model))
    return table


def test_sinusoidal_encoding_is_the_papers():
    torch.testing.assert_close(sinusoidal_positional_encoding(torch.arange(50), 32), _paper_positional_encoding(50, 32),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_model_matches_a_reference_built_from_torch_layers(norm_first):
    vocab, layers = 30, 2
    model = Transformer(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=D_MODEL, num_heads=HEADS,
                        num_encoder_layers=layers, num_decoder_layers=layers, d_ff=D_FF, dropout=0.0,
                        norm_first=norm_first).eval()
    state = model.state_dict()
    encoder = [nn.TransformerEncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first)
               for _ in range(layers)]
    decoder = [nn.TransformerDecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, batch_first=True, norm_first=norm_first)
               for _ in range(layers)]
    for i, layer in enumerate(encoder):
        _canon_weights_into_torch(layer, {k.removeprefix(f"encoder_layers.{i}."): v for k, v in state.items()
                                          if k.startswith(f"encoder_layers.{i}.")})
    for i, layer in enumerate(decoder):
        _canon_weights_into_torch(layer, {k.removeprefix(f"decoder_layers.{i}."): v for k, v in state.items()
                                          if k.startswith(f"decoder_layers.{i}.")})
    embedding = state["src_embedding.weight"]  # shared: source, target and output (section 3.4)

    src = torch.randint(3, vocab, (2, 7))
    src[1, 4:] = 0
    tgt = torch.randint(3, vocab, (2, 5))
    tgt[:, 0] = 1
    src_padding, tgt_padding = src == 0, tgt == 0
    with torch.no_grad():
        x = F.embedding(src, embedding) * math.sqrt(D_MODEL) + _paper_positional_encoding(7, D_MODEL)
        for layer in encoder:
            x = layer.eval()(x, src_key_padding_mask=src_padding)
        if norm_first:
            x = F.layer_norm(x, (D_MODEL,), state["encoder_norm.weight"], state["encoder_norm.bias"])
        y = F.embedding(tgt, embedding) * math.sqrt(D_MODEL) + _paper_positional_encoding(5, D_MODEL)
        for layer in decoder:
            y = layer.eval()(y, x, tgt_mask=torch.ones(5, 5, dtype=torch.bool).triu(1),
                             memory_key_padding_mask=src_padding)
        if norm_first:
            y = F.layer_norm(y, (D_MODEL,), state["decoder_norm.weight"], state["decoder_norm.bias"])
        expected = y @ embedding.T
        got = model(src, tgt)
    if not norm_first:  # post-norm has no final norms
        assert "encoder_norm.weight" not in state
    torch.testing.assert_close(got, expected, **TOL)


def test_causal_and_padding_masks_hold():
    model = canon.create_model("transformer_small", src_vocab_size=40, tgt_vocab_size=40).eval()
    src = torch.randint(3, 40, (2, 6))
    src[0, 4:] = 0
    tgt = torch.randint(3, 40, (2, 5))
    with torch.no_grad():
        logits = model(src, tgt)
        future = tgt.clone()
        future[:, 3:] = torch.randint(3, 40, (2, 2))      # later target tokens
        torch.testing.assert_close(model(src, future)[:, :3], logits[:, :3], **TOL)
        padded = src.clone()
        padded[0, 4:] = 7                                    # what sits under the padding mask
        torch.testing.assert_close(model(padded, tgt, src_padding_mask=src == 0)[0], logits[0], **TOL)
        assert not torch.allclose(model(padded, tgt)[0], logits[0])  # unmasked, it does matter


def test_learned_positions_option():
    model = Transformer(src_vocab_size=20, tgt_vocab_size=20, d_model=D_MODEL, num_heads=HEADS, d_ff=D_FF,
                        num_encoder_layers=1, num_decoder_layers=1, positional_encoding="learned", max_positions=8)
    assert model.position_embedding.weight.shape == (8, D_MODEL)
    assert model(torch.randint(3, 20, (2, 8)), torch.randint(3, 20, (2, 8))).shape == (2, 8, 20)
    with pytest.raises(ValueError, match="longer than max_positions=8"):
        model(torch.randint(3, 20, (2, 9)), torch.randint(3, 20, (2, 3)))


def test_embeddings_shared_or_separate():
    shared = canon.create_model("transformer_small", src_vocab_size=50, tgt_vocab_size=50)
    assert shared.src_embedding.weight is shared.tgt_embedding.weight is shared.output_projection.weight
    assert shared.src_embedding.weight[0].abs().sum() == 0  # the padding row
    separate = canon.create_model("transformer_small", src_vocab_size=50, tgt_vocab_size=60, share_embeddings=False)
    assert separate.tgt_embedding.weight is separate.output_projection.weight  # tied by default
    assert separate.src_embedding.weight.shape == (50, 256) and separate.output_projection.weight.shape == (60, 256)
    with pytest.raises(ValueError, match="share_embeddings=True needs one shared vocabulary"):
        canon.create_model("transformer_small", src_vocab_size=50, tgt_vocab_size=60)


# --- parameter counts: closed form ------------------------------------------------------------------

def closed_form_parameters(vocab: int, d_model: int, d_ff: int, layers: int) -> int:
    """Shared embeddings (V·d, also the pre-softmax weights) + N encoder + N decoder layers, post-norm.

    attention: 4 d² weights + 4 d biases; FFN: 2 d·d_ff + d_ff + d; LayerNorm: 2 d each.
    """
    attention = 4 * d_model ** 2 + 4 * d_model
    feed_forward = 2 * d_model * d_ff + d_ff + d_model
    encoder_layer = attention + feed_forward + 2 * 2 * d_model
    decoder_layer = 2 * attention + feed_forward + 3 * 2 * d_model
    return vocab * d_model + layers * (encoder_layer + decoder_layer)


@pytest.mark.parametrize("name, d_model, d_ff, paper_millions", [("transformer_base", 512, 2048, 65),
                                                                   ("transformer_big", 1024, 4096, 213)])
def test_parameter_count_closed_form(name, d_model, d_ff, paper_millions):
    with torch.device("meta"):
        model = canon.create_model(name, src_vocab_size=37_000, tgt_vocab_size=37_000)
    count = sum(p.numel() for p in model.parameters())
    assert count == closed_form_parameters(37_000, d_model, d_ff, layers=6)
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.05  # Table 3: 65M and 213M
    info = canon.model_info(name)
    assert info.task == "translation" and info.input_size == () and info.num_classes is None


def test_registered_settings():
    small = canon.create_model("transformer_small", src_vocab_size=100, tgt_vocab_size=100)
    assert len(small.encoder_layers) == len(small.decoder_layers) == 3 and small.d_model == 256
    assert small.encoder_layers[0].self_attention.num_heads == 8
    assert small.encoder_layers[0].feed_forward.linear1.out_features == 512
    with torch.device("meta"):
        big = canon.create_model("transformer_big", src_vocab_size=100, tgt_vocab_size=100, dropout=0.1)
        assert big.encoder_layers[0].dropout.p == 0.1  # keywords override the registered architecture
        assert canon.create_model("transformer_big", src_vocab_size=100, tgt_vocab_size=100).embedding_dropout.p == 0.3


# --- bad input -------------------------------------------------------------------------------------

def test_bad_inputs_are_explained():
    model = canon.create_model("transformer_small", src_vocab_size=30, tgt_vocab_size=30)
    tgt = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 30\)"):
        model(torch.full((2, 4), 30), tgt)
    with pytest.raises(ValueError, match=r"2-D integer tensor \(N, length\)"):
        model(torch.ones(2, 4), tgt)
    with pytest.raises(ValueError, match=r"2-D integer tensor"):
        model(torch.ones(2, 4, 1, dtype=torch.long), tgt)
    with pytest.raises(ValueError, match="boolean .* mask"):
        model(torch.ones(2, 4, dtype=torch.long), tgt, src_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Transformer(src_vocab_size=10, tgt_vocab_size=10, d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="'sinusoidal' or 'learned'"):
        Transformer(src_vocab_size=10, tgt_vocab_size=10, positional_encoding="rotary")
    with pytest.raises(TypeError, match="unknown argument"):
        canon.create_model("transformer_small", vocab_size=100)


# --- label smoothing ε_ls = 0.1 over sequences: canon.losses.cross_entropy, checked by the formula ----

def test_label_smoothed_sequence_loss_is_the_formula():
    vocab, pad, eps = 11, 0, 0.1
    logits = torch.randn(3, 5, vocab, dtype=torch.double)
    target = torch.randint(1, vocab, (3, 5))
    target[1, 3:] = pad
    target[2, 1:] = pad
    loss = cross_entropy(logits.transpose(1, 2), target, ignore_index=pad, label_smoothing=eps)
    terms = []
    for n in range(3):
        for t in range(5):
            if target[n, t] == pad:
                continue
            log_p = torch.log_softmax(logits[n, t], dim=0)
            q = torch.full((vocab,), eps / vocab, dtype=torch.double)   # (1 - ε) one-hot + ε / V
            q[target[n, t]] += 1 - eps
            terms.append(-(q * log_p).sum())
    torch.testing.assert_close(loss, torch.stack(terms).mean())
