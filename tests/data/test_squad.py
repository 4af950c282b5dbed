"""SQuAD reading, tokenisation with offsets, vocabularies, word vectors, batches and span decoding.

References (independent of canon's code):
    - the raw json read in the test with ``json`` (question, context and article counts; the
      counts SOURCES.md states: 10,570 dev questions in 48 articles, 87,599 rebuilt training
      questions in 442 articles, 9,438 ambiguous ids);
    - the contexts themselves: every token is ``context[start:end]``, and the tokens are exactly
      the context's non-whitespace characters, in order;
    - the official metric on the answers mapped to token spans and back (the oracle span F1);
    - a GloVe-format file written by the test with known vectors;
    - a brute-force double loop over (i, j) for the span decoding.
"""
from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from canon.data.core import DataError
from canon.data.squad import (
    MODEL_INPUT_KEYS, SQUAD_AMBIGUOUS_IDS_FILE, SQUAD_DEV_FILE, SQUAD_TRAIN_FILE, SquadDataset, answer_token_span,
    SquadExample, best_spans, build_vocabularies, collate_squad, model_inputs, question_batch, read_ambiguous_ids,
    read_squad, read_squad_json, span_texts, token_span_text,
)
from canon.data.text_tokenize import (
    PAD_INDEX, UNK_INDEX, Vocabulary, load_word_vectors, tokenize_with_offsets,
)
from canon.metrics.text import squad_exact_match, squad_f1


@pytest.fixture(scope="module")
def dev_path(shared_data) -> Path:
    path = shared_data / SQUAD_DEV_FILE
    if not path.is_file():
        pytest.skip(f"SQuAD dev set not found at {path}")
    return path


@pytest.fixture(scope="module")
def dev(dev_path):
    return read_squad(dev_path)


def write_squad(path: Path, qas, context="The Broncos beat the Panthers 24-10 in Super Bowl 50."):
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": context, "qas": qas}]}]}), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- files
def test_dev_set_matches_the_raw_json(dev_path, dev):
    raw = json.loads(dev_path.read_text(encoding="utf-8"))
    qas = [(qa, p["context"]) for a in raw["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert len(raw["data"]) == 48 and len(dev) == len(qas) == 10_570
    assert len({e.context for e in dev}) == 2_067
    for example, (qa, context) in zip(dev, qas):
        assert example.id == qa["id"] and example.context == context and example.question == qa["question"]
        assert example.answers == tuple(a["text"] for a in qa["answers"])
        assert example.answer_starts == tuple(a["answer_start"] for a in qa["answers"])


def test_rebuilt_training_set_and_its_ambiguous_ids(shared_data):
    path = shared_data / SQUAD_TRAIN_FILE
    if not path.is_file():
        pytest.skip(f"rebuilt SQuAD training set not found at {path}")
    train = read_squad(path)
    assert len({e.title for e in train}) == 442 and len(train) == 87_599
    assert all(len(e.answers) == 1 for e in train)
    ambiguous = read_ambiguous_ids(shared_data / SQUAD_AMBIGUOUS_IDS_FILE)
    assert len(ambiguous) == 9_438 and ambiguous <= {e.id for e in train}
    # SOURCES.md: an ambiguous id's answer text occurs at least twice in its context, the others once.
    for example in train[::10]:
        first = example.context.find(example.answers[0])
        repeated = example.context.find(example.answers[0], first + 1) >= 0
        assert repeated == (example.id in ambiguous), example.id


def test_answer_not_at_its_offset_is_a_data_error_naming_the_question(tmp_path):
    path = write_squad(tmp_path / "bad.json", [
        {"id": "q-good", "question": "Who won?", "answers": [{"text": "Broncos", "answer_start": 4}]},
        {"id": "q-shifted", "question": "Who lost?", "answers": [{"text": "Panthers", "answer_start": 20}]}])
    with pytest.raises(DataError, match="q-shifted") as err:
        read_squad(path)
    assert err.value.path == path and "Panthers" in str(err.value)


@pytest.mark.parametrize("qa, message", [
    ({"question": "Who?", "answers": [{"text": "Broncos", "answer_start": 4}]}, '"id"'),
    ({"id": "q1", "answers": [{"text": "Broncos", "answer_start": 4}]}, '"question" .*q1'),
    ({"id": "q1", "question": "Who?", "answers": []}, "at least one answer for question 'q1'"),
    ({"id": "q1", "question": "Who?", "answers": [{"text": "Broncos", "answer_start": "4"}]}, "answer_start.*int"),
])
def test_malformed_questions_are_data_errors(tmp_path, qa, message):
    with pytest.raises(DataError, match=message):
        read_squad(write_squad(tmp_path / "bad.json", [qa]))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_squad(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"data": [', encoding="utf-8")
    with pytest.raises(DataError, match="broken.json.*valid SQuAD json"):
        read_squad(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match='"data" list'):
        read_squad_json(tmp_path / "list.json")
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="bad.json.gz"):
        read_squad(tmp_path / "bad.json.gz")


# ----------------------------------------------------------------------------- tokenisation
def test_tokens_are_the_context_substrings_on_every_dev_context(dev):
    for context in {e.context for e in dev}:
        tokens, offsets = tokenize_with_offsets(context)
        assert tokens and len(tokens) == len(offsets)
        assert all(context[s:e] == t for t, (s, e) in zip(tokens, offsets))
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(offsets, offsets[1:]))  # in order, disjoint
        # together they are exactly the non-whitespace characters of the context
        assert "".join(tokens) == "".join(context.split())
        assert all(t and not any(ch.isspace() for ch in t) for t in tokens)


def test_tokenizer_splits_punctuation_and_keeps_offsets():
    text = "U.S. troops (1,000) left—on 12 May."
    tokens, offsets = tokenize_with_offsets(text)
    assert tokens == ["U", ".", "S", ".", "troops", "(", "1", ",", "000", ")", "left", "—", "on", "12", "May", "."]
    assert [text[s:e] for s, e in offsets] == tokens
    assert tokenize_with_offsets("  \t\n ") == ([], [])
    with pytest.raises(TypeError, match="str"):
        tokenize_with_offsets(None)


def test_answers_map_to_token_spans_and_back_to_the_exact_substring(dev):
    recovered_em = recovered_f1 = exact = total = 0
    contexts = {c: tokenize_with_offsets(c)[1] for c in {e.context for e in dev}}
    for example in dev:
        offsets = contexts[example.context]
        for text, start in zip(example.answers, example.answer_starts):
            span = answer_token_span(offsets, start, text)
            assert span is not None
            recovered = token_span_text(example.context, offsets, *span)
            # the covering span starts at or before the answer, ends at or after it
            begin, end = offsets[span[0]][0], offsets[span[1]][1]
            assert begin <= start and end >= start + len(text) and recovered == example.context[begin:end]
            assert text in recovered
            total += 1
            if recovered == text:  # EM = F1 = 1; the official metric only matters for the rest
                exact += 1
                continue
            recovered_em += squad_exact_match(recovered, [text])
            recovered_f1 += squad_f1(recovered, [text])
    recovered_em, recovered_f1 = recovered_em + exact, recovered_f1 + exact
    assert total == 34_726
    assert exact / total > 0.995  # the rest start or end inside a token ("1990s" for "1990")
    assert recovered_f1 / total > 0.997 and recovered_em / total > 0.995  # measured: 0.9979


def test_answer_token_span_edge_cases():
    context = "In 1990s Denver, it snowed."
    _, offsets = tokenize_with_offsets(context)  # In | 1990s | Denver | , | it | snowed | .
    assert answer_token_span(offsets, 3, "1990") == (1, 1)  # inside a token: the covering token
    assert answer_token_span(offsets, 9, "Denver, it") == (2, 4)
    assert answer_token_span(offsets, 2, " ") is None
    with pytest.raises(ValueError, match="not inside"):
        token_span_text(context, offsets, 3, 9)


# ----------------------------------------------------------------------------- vocabularies
def test_vocabulary_order_specials_and_unknowns():
    vocab = Vocabulary.build(["b", "a", "B", "c", "a", "b", "d"], min_count=2, lowercase=True)
    assert vocab.tokens == ["<pad>", "<unk>", "b", "a"]  # b: 3 (with "B"), a: 2; c, d below min_count
    assert vocab.index("B") == 2 and vocab.index("zzz") == UNK_INDEX and "A" in vocab and "c" not in vocab
    assert vocab.encode(["a", "q"]) == [3, UNK_INDEX]
    assert Vocabulary.from_state_dict(json.loads(json.dumps(vocab.state_dict()))).tokens == vocab.tokens
    capped = Vocabulary.build({"x": 5, "y": 5, "z": 9}, max_size=4)
    assert capped.tokens == ["<pad>", "<unk>", "z", "x"]
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(["a"], min_count=0)
    with pytest.raises(ValueError, match="first tokens"):
        Vocabulary(["a", "b"])


def test_vocabularies_from_examples_count_each_context_once(dev):
    examples = dev[:200]
    words, chars = build_vocabularies(examples, word_min_count=1, char_min_count=1)
    counts = Counter()
    for context in dict.fromkeys(e.context for e in examples):
        counts.update(t.lower() for t in tokenize_with_offsets(context)[0])
    for example in examples:
        counts.update(t.lower() for t in tokenize_with_offsets(example.question)[0])
    assert len(words) == len(counts) + 2 and set(words.tokens[2:]) == set(counts)
    assert words.tokens[2] == counts.most_common(1)[0][0]
    assert set(chars.tokens[2:]) == {ch for e in examples for ch in e.context + e.question if not ch.isspace()}
    rare = build_vocabularies(examples, word_min_count=3)[0]
    assert len(rare) == 2 + sum(1 for c in counts.values() if c >= 3)


# ----------------------------------------------------------------------------- word vectors
def test_load_word_vectors_from_a_glove_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("the 0.1 0.2 0.3\nThe 9 9 9\nbroncos -1 0.5 2\n. . . 7 8 9\nunseen 1 1 1\n", encoding="utf-8")
    vocab = Vocabulary(["<pad>", "<unk>", "the", "broncos", ". . .", "denver"], lowercase=True)
    vectors, found = load_word_vectors(path, vocab, generator=torch.Generator().manual_seed(0))
    assert vectors.shape == (6, 3) and vectors.dtype == torch.float32
    assert torch.equal(found, torch.tensor([False, False, True, True, True, False]))
    assert torch.allclose(vectors[2], torch.tensor([0.1, 0.2, 0.3]))  # first casing wins, "The" is skipped
    assert torch.allclose(vectors[3], torch.tensor([-1.0, 0.5, 2.0]))
    assert torch.allclose(vectors[4], torch.tensor([7.0, 8.0, 9.0]))  # a word with spaces (glove.840B)
    assert torch.equal(vectors[0], torch.zeros(3)) and vectors[5].abs().sum() > 0  # pad zero, missing random

    word2vec = tmp_path / "w2v.txt.gz"
    with gzip.open(word2vec, "wt", encoding="utf-8") as f:
        f.write("2 2\nbroncos 1 2\ndenver 3 4\n")
    vectors, found = load_word_vectors(word2vec, vocab)
    assert vectors.shape == (6, 2) and found.tolist() == [False, False, False, True, False, True]
    assert vectors[5].tolist() == [3.0, 4.0]


@pytest.mark.parametrize("content, message", [
    ("the 1 2 3\nbroncos 1 2\n", "3 numbers on line 2"),
    ("the 1 2 x\n", "3 numbers after the word on line 1"),
    ("", "empty file"),
])
def test_bad_word_vector_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    vocab = Vocabulary(["<pad>", "<unk>", "the", "broncos"])
    with pytest.raises(DataError, match=message):
        load_word_vectors(path, vocab)
    with pytest.raises(DataError, match="no such file"):
        load_word_vectors(tmp_path / "missing.txt", vocab)


# ----------------------------------------------------------------------------- dataset and batches
def test_truncation_drops_and_counts_answers_beyond_the_limit(dev):
    examples = dev[:600]
    words, chars = build_vocabularies(examples)
    limit = 60
    beyond = 0
    for e in examples:  # counted directly: the answer's last character lies past the limit-th token
        _, offsets = tokenize_with_offsets(e.context)
        beyond += len(offsets) > limit and e.answer_starts[0] + len(e.answers[0]) > offsets[limit - 1][1]
    train = SquadDataset(examples, words, chars, max_context_tokens=limit, training=True)
    assert train.dropped == {"answer_beyond_limit": beyond, "answer_covers_no_token": 0} and beyond > 50
    assert len(train) == len(examples) - beyond
    assert all(len(item.context_words) <= limit and 0 <= item.answer_start <= item.answer_end < limit
               for item in train)
    evaluation = SquadDataset(examples, words, chars, max_context_tokens=limit, training=False)
    assert len(evaluation) == len(examples) and sum(item.answer_start == -1 for item in evaluation) == beyond


def test_collate_pads_and_masks(dev):
    examples = dev[:8]
    words, chars = build_vocabularies(examples, char_min_count=1)
    dataset = SquadDataset(examples, words, chars, max_word_chars=5)
    batch = collate_squad([dataset[i] for i in range(8)])
    n, lc = batch["context_words"].shape
    lengths = [len(tokenize_with_offsets(e.context)[0]) for e in examples]
    assert n == 8 and lc == max(lengths) and batch["context_chars"].shape == (8, lc, 5)
    assert batch["context_mask"].sum(1).tolist() == lengths
    assert batch["question_mask"].sum(1).tolist() == [len(tokenize_with_offsets(e.question)[0]) for e in examples]
    assert (batch["context_words"][~batch["context_mask"]] == PAD_INDEX).all()
    assert (batch["context_chars"][~batch["context_mask"]] == PAD_INDEX).all()
    # the first context token, spelled out
    first = tokenize_with_offsets(examples[0].context)[0][0]
    assert batch["context_words"][0, 0] == words.index(first)
    assert batch["context_chars"][0, 0, :len(first[:5])].tolist() == chars.encode(first[:5])
    assert set(model_inputs(batch)) == set(MODEL_INPUT_KEYS)
    # the target span recovers the answer
    for k, e in enumerate(examples):
        s, t = int(batch["answer_start"][k]), int(batch["answer_end"][k])
        assert e.answers[0] in token_span_text(e.context, batch["offsets"][k], s, t)
    predictions = span_texts(batch, batch["answer_start"], batch["answer_end"])
    assert list(predictions) == [e.id for e in examples]
    assert all(e.answers[0] in predictions[e.id] for e in examples)
    with pytest.raises(ValueError, match="at least one"):
        collate_squad([])


def test_a_single_free_form_question_and_empty_ones():
    words = Vocabulary.build(["who", "won", "the", "broncos"], lowercase=True)
    chars = Vocabulary.build("whonbrcs")
    context = "The  Broncos won."
    batch = question_batch(context, "Who won?", words, chars)
    assert batch["context_words"].tolist() == [[words.index("the"), words.index("broncos"), words.index("won"),
                                                UNK_INDEX]]
    assert batch["question_mask"].tolist() == [[True, True, True]] and batch["answer_start"].tolist() == [-1]
    assert span_texts(batch, torch.tensor([0]), torch.tensor([2])) == {"question": "The  Broncos won"}
    for bad in ("", "  \n"):
        with pytest.raises(ValueError, match="question is empty"):
            question_batch(context, bad, words, chars)
    with pytest.raises(ValueError, match="context is empty"):
        question_batch(" ", "Who?", words, chars)
    with pytest.raises(DataError, match="answer to train on"):
        SquadDataset([SquadExample("q", "", context, "Who?", (), ())], words, chars, training=True)


# ----------------------------------------------------------------------------- span decoding
def brute_force_best_span(p_start, p_end, max_tokens):
    best, best_span = -1.0, None
    for i, j in itertools.product(range(len(p_start)), repeat=2):
        if i <= j <= i + max_tokens and p_start[i] * p_end[j] > best:
            best, best_span = p_start[i] * p_end[j], (i, j)
    return best_span, best


@pytest.mark.parametrize("max_tokens", [0, 3, 15])
def test_best_spans_equals_a_double_loop(max_tokens):
    g = torch.Generator().manual_seed(max_tokens)
    n, length = 12, 40
    start_logits, end_logits = torch.randn(n, length, generator=g) * 3, torch.randn(n, length, generator=g) * 3
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    start_logits, end_logits = start_logits.masked_fill(~mask, -torch.inf), end_logits.masked_fill(~mask, -torch.inf)
    starts, ends, probs = best_spans(start_logits, end_logits, max_tokens)
    for k in range(n):
        p_start, p_end = start_logits[k].double().softmax(0).tolist(), end_logits[k].double().softmax(0).tolist()
        (i, j), best = brute_force_best_span(p_start, p_end, max_tokens)
        assert (int(starts[k]), int(ends[k])) == (i, j) and j < lengths[k]
        assert float(probs[k]) == pytest.approx(best, rel=1e-4)


def test_best_spans_ties_and_errors():
    starts, ends, probs = best_spans(torch.zeros(1, 5), torch.zeros(1, 5))
    assert (int(starts), int(ends)) == (0, 0) and float(probs) == pytest.approx(1 / 25)
    # an end before the best start is never taken
    start, end = torch.tensor([[0.0, 9.0, 0.0]]), torch.tensor([[9.0, 0.0, 1.0]])
    s, e, _ = best_spans(start, end)
    assert (int(s), int(e)) == (1, 2)
    with pytest.raises(ValueError, match="same shape"):
        best_spans(torch.zeros(2, 5), torch.zeros(2, 4))
