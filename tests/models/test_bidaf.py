"""BiDAF against the paper's equations written out here, closed-form parameter counts, and a short
real training run on SQuAD scored with the official metric.

References (independent of canon's code):
    - eq. 1-2 (similarity, context-to-query and query-to-context attention, G) as loops over t, j;
    - the parameter count from the layer sizes of section 2 and torch's LSTM parameter formula;
    - the slow test: dev F1 by ``canon.metrics.squad_evaluate`` (checked against the official
      script's logic in tests/metrics/test_squad_official.py) against a trivial baseline, the
      first word of each context.
"""
from __future__ import annotations

import random
import time

import pytest
import torch
from reading_checks import (
    CHARS, WORDS, check_bad_inputs, check_forward_contract, check_gradients_reach_every_parameter,
    check_padding_invariance, check_registry_entry, count, embedding_params, highway_params, lstm_params,
    random_batch,
)
from torch.utils.data import DataLoader

from canon.models.reading.bidaf import BiDAF, attention_flow

SMALL = dict(word_vocab_size=WORDS, char_vocab_size=CHARS, word_dim=10, char_dim=4, char_channels=6,
             char_kernel_size=3, hidden_size=8, dropout=0.0)


def bidaf_params(words, chars, word_dim, char_dim, char_channels, char_kernel_size, hidden_size, **_):
    d, e = hidden_size, word_dim + char_channels
    return (embedding_params(word_dim, char_dim, char_channels, char_kernel_size, words, chars)
            + highway_params(e)  # two highway layers
            + lstm_params(e, d)  # contextual embedding
            + 6 * d  # w of the similarity
            + lstm_params(8 * d, d, layers=2)  # modelling layer
            + lstm_params(2 * d, d)  # M² for the end
            + 2 * 10 * d)  # w_p1, w_p2


def test_registry_and_parameter_counts():
    check_registry_entry("bidaf", BiDAF)
    with torch.device("meta"):
        paper = BiDAF()
    assert count(paper) == bidaf_params(49_865, 227, 100, 8, 100, 5, 100)
    small = SMALL | {"words": WORDS, "chars": CHARS}
    assert count(BiDAF(**SMALL)) == bidaf_params(**small)


def attention_flow_loops(similarity, context, question, context_mask, question_mask):
    n, t_max, _ = similarity.shape
    out = torch.zeros(n, t_max, 4 * context.shape[-1], dtype=similarity.dtype)
    for b in range(n):
        t_len, j_len = int(context_mask[b].sum()), int(question_mask[b].sum())
        s = similarity[b, :t_len, :j_len]
        h, u = context[b, :t_len], question[b, :j_len]
        best = torch.stack([max(s[t]) for t in range(t_len)])  # max_j S_tj
        b_weights = torch.exp(best) / torch.exp(best).sum()
        h_tilde = sum(b_weights[t] * h[t] for t in range(t_len))
        for t in range(t_len):
            a = torch.exp(s[t]) / torch.exp(s[t]).sum()
            u_tilde = sum(a[j] * u[j] for j in range(j_len))
            out[b, t] = torch.cat([h[t], u_tilde, h[t] * u_tilde, h[t] * h_tilde])
    return out


def test_attention_flow_equals_the_equations():
    torch.manual_seed(0)
    batch = random_batch()
    cmask, qmask = batch["context_mask"], batch["question_mask"]
    context = torch.randn(*cmask.shape, 6, dtype=torch.float64)
    question = torch.randn(*qmask.shape, 6, dtype=torch.float64)
    similarity = torch.randn(cmask.shape[0], cmask.shape[1], qmask.shape[1], dtype=torch.float64)
    out = attention_flow(similarity, context, question, cmask, qmask)
    expected = attention_flow_loops(similarity, context, question, cmask, qmask)
    assert out.shape == expected.shape
    assert torch.allclose(out[cmask], expected[cmask])


def test_forward_contract_padding_gradients():
    torch.manual_seed(0)
    model = BiDAF(**SMALL)
    batch = random_batch()
    check_forward_contract(model, batch)
    check_padding_invariance(model, batch)
    check_gradients_reach_every_parameter(model, batch)


def test_bad_inputs_raise():
    check_bad_inputs(BiDAF(**SMALL), random_batch(), "BiDAF")
    with pytest.raises(ValueError, match="dropout"):
        BiDAF(dropout=1.5)


@pytest.mark.slow
def test_small_bidaf_learns_squad_beyond_a_trivial_baseline(shared_data):
    """~2,000 rebuilt training questions, two epochs of Adam (about 1-2 minutes on one thread)."""
    from canon.data.squad import (
        SQUAD_DEV_FILE, SQUAD_TRAIN_FILE, SquadDataset, best_spans, build_vocabularies, collate_squad,
        model_inputs, read_squad, span_texts,
    )
    from canon.metrics.text import squad_evaluate
    from canon.models.reading._common import span_loss

    if not (shared_data / SQUAD_TRAIN_FILE).is_file() or not (shared_data / SQUAD_DEV_FILE).is_file():
        pytest.skip("SQuAD files not found in the shared data folder")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train = random.Random(0).sample(read_squad(shared_data / SQUAD_TRAIN_FILE), 2500)
    dev = read_squad(shared_data / SQUAD_DEV_FILE)[:500]
    words, chars = build_vocabularies(train)
    train_set = SquadDataset(train, words, chars, max_context_tokens=100, training=True)
    dev_set = SquadDataset(dev, words, chars, max_context_tokens=400)
    assert len(train_set) + train_set.dropped["answer_beyond_limit"] == 2500 and len(dev_set) == 500
    dev_articles = [{"paragraphs": [{"qas": [{"id": e.id, "answers": [{"text": a} for a in e.answers]}
                                             for e in dev]}]}]

    model = BiDAF(word_vocab_size=len(words), char_vocab_size=len(chars), word_dim=50, char_channels=50,
                  hidden_size=32, dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, started = [], time.perf_counter()
    for _ in range(2):
        for batch in DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=collate_squad):
            start_logits, end_logits = model(**model_inputs(batch))
            loss = span_loss(start_logits, end_logits, batch["answer_start"], batch["answer_end"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    train_seconds = time.perf_counter() - started

    model.eval()
    predictions = {}
    with torch.no_grad():
        for batch in DataLoader(dev_set, batch_size=64, collate_fn=collate_squad):
            starts, ends, _ = best_spans(*model(**model_inputs(batch)))
            predictions.update(span_texts(batch, starts, ends))
    scores = squad_evaluate(dev_articles, predictions)
    baseline = squad_evaluate(dev_articles, {e.id: e.context.split()[0] for e in dev})
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    print(f"\nBiDAF small: {len(losses)} steps in {train_seconds:.0f}s, loss {first:.2f} -> {last:.2f}; "
          f"dev[:500] EM {scores['exact_match']:.1f} F1 {scores['f1']:.1f}; "
          f"first-word baseline F1 {baseline['f1']:.1f}")
    assert last < first - 1.0
    assert scores["f1"] > baseline["f1"] + 5.0 and scores["f1"] > 3 * baseline["f1"]
