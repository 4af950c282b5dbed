"""Greedy and beam search over encode / decode_step, for the Transformer and the LSTM model.

References (independent of the search code):
    - decoding without the cache (the model re-reads the whole prefix every step) for the cached path;
    - greedy search for beam size 1;
    - brute force: every output sequence of a tiny vocabulary enumerated and scored with the model's
      teacher-forced ``decode`` and Wu et al.'s length penalty written out in the test.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from canon.models.sequence.decoding import beam_search, greedy_search
from canon.models.sequence.rnn_seq2seq import LSTMAttentionSeq2Seq
from canon.models.sequence.transformer import Transformer

PAD, BOS, EOS = 0, 1, 2


def tiny_transformer(vocab=12, seed=0):
    torch.manual_seed(seed)
    model = Transformer(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=16, num_heads=2, num_encoder_layers=2,
                        num_decoder_layers=2, d_ff=32, dropout=0.1, share_embeddings=False,
                        tie_output_embedding=False).double()
    with torch.no_grad():  # sharper output distributions than the default init, for varied sequences
        model.output_projection.weight.mul_(4)
    return model


def tiny_lstm(vocab=12, seed=0, input_feeding=True):
    torch.manual_seed(seed)
    model = LSTMAttentionSeq2Seq(src_vocab_size=vocab, tgt_vocab_size=vocab, embedding_dim=8, hidden_size=12,
                                 num_layers=2, dropout=0.1, input_feeding=input_feeding).double()
    with torch.no_grad():  # sharper output distributions than the default init, for varied sequences
        model.output_projection.weight.mul_(8)
    return model


MODELS = {"transformer": tiny_transformer, "lstm": tiny_lstm,
          "lstm_no_input_feeding": lambda **k: tiny_lstm(input_feeding=False, **k)}


def _sources(vocab=12):
    generator = torch.Generator().manual_seed(3)
    src = torch.randint(3, vocab, (3, 6), generator=generator)
    src[1, 4:] = PAD
    src[2, 2:] = PAD
    return src


@pytest.mark.parametrize("name", list(MODELS))
def test_cached_and_uncached_decoding_give_identical_tokens(name):
    model = MODELS[name]()
    src = _sources()
    greedy = [greedy_search(model, src, max_length=12, use_cache=c) for c in (True, False)]
    assert [h.tokens for h in greedy[0]] == [h.tokens for h in greedy[1]]
    assert any(len(h.tokens) > 1 for h in greedy[0])  # not a trivial end-of-sentence-first output
    beams = [beam_search(model, src, beam_size=3, alpha=0.6, max_length=12, use_cache=c, return_all=True)
             for c in (True, False)]
    for cached, uncached in zip(*beams):
        assert [h.tokens for h in cached] == [h.tokens for h in uncached]
        torch.testing.assert_close(torch.tensor([h.score for h in cached]), torch.tensor([h.score for h in uncached]))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("alpha, stop_early", [(0.6, True), (0.0, False), (1.0, True)])
def test_beam_size_one_is_greedy(name, alpha, stop_early):
    model = MODELS[name](seed=1)
    src = _sources()
    greedy = greedy_search(model, src, max_length=10)
    beam = beam_search(model, src, beam_size=1, alpha=alpha, stop_early=stop_early, max_length=10)
    assert [h.tokens for h in beam] == [h.tokens for h in greedy]


def _brute_force(model, src_row: torch.Tensor, max_length: int, alpha: float):
    """Every sequence of at most ``max_length`` words then EOS, scored by teacher forcing."""
    vocab = model.tgt_vocab_size
    words = [t for t in range(vocab) if t not in (PAD, BOS, EOS)]
    sequences = [list(s) for n in range(max_length + 1) for s in itertools.product(words, repeat=n)]
    encoder_out = model.encode(src_row[None])
    scored = []
    for seq in sequences:
        decoder_input = torch.tensor([[BOS, *seq]])
        log_probs = torch.log_softmax(model.decode(decoder_input, encoder_out).double(), dim=-1)[0]  # (len+1, V)
        targets = [*seq, EOS]
        log_p = sum(float(log_probs[i, t]) for i, t in enumerate(targets))
        penalty = ((5 + len(targets)) / 6) ** alpha  # Wu et al. 2016, |Y| with the EOS token
        scored.append((log_p / penalty, seq))
    return sorted(scored, key=lambda s: -s[0])


def _brute_force_model(name: str):
    """A tiny vocabulary: PAD, BOS, EOS and 3 words; the seeds give non-trivial winners (checked below)."""
    if name == "transformer":
        return tiny_transformer(vocab=6, seed=3).eval()
    model = tiny_lstm(vocab=6, seed=2).eval()
    with torch.no_grad():
        model.output_projection.bias[EOS] -= 2
    return model


@pytest.mark.parametrize("name", ["transformer", "lstm"])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_finds_the_best_sequence_by_brute_force(name, alpha):
    vocab, max_length = 6, 3  # 3 words: 1 + 3 + 9 + 27 = 40 possible outputs
    model = _brute_force_model(name)
    src = _sources(vocab)[:2]
    results = beam_search(model, src, beam_size=64, alpha=alpha, max_length=max_length, stop_early=False,
                          return_all=True)
    with torch.no_grad():
        for row, hypotheses in zip(src, results):
            expected = _brute_force(model, row[row != PAD], max_length, alpha)
            assert len(hypotheses) == len(expected) == 40
            assert hypotheses[0].tokens == expected[0][1]
            torch.testing.assert_close(torch.tensor([h.score for h in hypotheses]),
                                       torch.tensor([s for s, _ in expected], dtype=torch.float32))


@pytest.mark.parametrize("name", ["transformer", "lstm"])
def test_length_penalty_changes_the_winner(name):
    """Guards the brute-force test against a degenerate model: α decides between short and long outputs."""
    model = _brute_force_model(name)
    src = _sources(6)[:2]
    with torch.no_grad():
        winners = {alpha: [_brute_force(model, r[r != PAD], 3, alpha)[0][1] for r in src] for alpha in (0.0, 2.0)}
    assert winners[0.0] != winners[2.0] and all(len(w) == 3 for w in winners[2.0])


def test_default_max_length_is_source_length_plus_50():
    model = tiny_lstm()
    with torch.no_grad():
        model.output_projection.bias[EOS] = -1e4  # never ends by itself
    src = _sources()
    source_lengths = (src != PAD).sum(1).tolist()  # [6, 4, 2]
    assert [len(h.tokens) for h in greedy_search(model, src)] == [n + 50 for n in source_lengths]
    assert [len(h.tokens) for h in beam_search(model, src, beam_size=2)] == [n + 50 for n in source_lengths]
    assert [len(h.tokens) for h in greedy_search(model, src, max_length=7)] == [7, 7, 7]


def test_cached_step_feeds_one_position_uncached_the_whole_prefix():
    model = tiny_transformer()
    seen = {True: [], False: []}
    for use_cache in (True, False):
        handle = model.decoder_layers[0].register_forward_pre_hook(
            lambda module, args, use_cache=use_cache: seen[use_cache].append(args[0].shape[1]))
        with torch.no_grad():
            model.output_projection.weight[EOS] = -1.0  # keep generating: long enough to see the pattern
        greedy_search(model, _sources(), max_length=6, use_cache=use_cache)
        handle.remove()
    assert seen[True] == [1] * 6        # O(t) per step: one new position against the cached keys/values
    assert seen[False] == [1, 2, 3, 4, 5, 6]


def test_search_restores_the_training_mode_and_checks_arguments():
    model = tiny_transformer().train()
    greedy_search(model, _sources(), max_length=3)
    assert model.training
    with pytest.raises(ValueError, match="beam_size must be a positive integer"):
        beam_search(model, _sources(), beam_size=0)
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        greedy_search(model, _sources(), max_length=0)
    with pytest.raises(ValueError, match=r"2-D \(N, S\)"):
        greedy_search(model, _sources()[0])
    with pytest.raises(ValueError, match="cache holds 0 positions"):
        model.decode_step(torch.ones(2, 3, dtype=torch.long), model.encode(_sources()[:2]), cache={})
