"""canon.metrics' SQuAD exact match and F1 against the logic of the official evaluate-v1.1.py.

Reference: a transcription, written below, of the official SQuAD v1.1 evaluation script's
logic (normalise: lower-case, drop string.punctuation, replace a/an/the by a space, collapse
whitespace; F1 over the bags of normalised tokens, 0 when nothing is shared; the maximum over
the ground truths; a missing prediction counts 0 in the average; 100 × the mean). It is
checked on hand-written cases, on every dev question with the ground truth as prediction
(EM = F1 = 100), and against canon's functions on several kinds of imperfect predictions made
from the dev contexts.
"""
from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest

from canon.data.squad import SQUAD_DEV_FILE, read_squad_json
from canon.metrics.text import normalize_answer, squad_evaluate, squad_exact_match, squad_f1


# ----------------------------------------------------------------------------- the official logic
def official_normalize(s):
    s = s.lower()
    exclude = set(string.punctuation)
    s = "".join(ch for ch in s if ch not in exclude)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def official_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    num_same = sum((Counter(prediction_tokens) & Counter(ground_truth_tokens)).values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_exact_match(prediction, ground_truth):
    return official_normalize(prediction) == official_normalize(ground_truth)


def official_max_over_ground_truths(metric, prediction, ground_truths):
    return max(metric(prediction, gt) for gt in ground_truths)


def official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = [a["text"] for a in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += official_max_over_ground_truths(official_exact_match, prediction, ground_truths)
                f1 += official_max_over_ground_truths(official_f1, prediction, ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


# ----------------------------------------------------------------------------- hand-written cases
CASES = [
    # (prediction, ground truths, exact match, F1 written out by hand)
    ("Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
    ("the Denver Broncos!", ["Denver Broncos"], 1.0, 1.0),  # article and punctuation dropped
    ("  DENVER\tbroncos ", ["denver broncos"], 1.0, 1.0),  # case and whitespace
    ("Broncos", ["Denver Broncos"], 0.0, 2 * 1.0 * 0.5 / 1.5),  # P = 1, R = 1/2
    ("Denver Broncos of Colorado", ["the Denver Broncos"], 0.0, 2 * 0.5 * 1.0 / 1.5),  # P = 2/4, R = 1
    ("Carolina Panthers", ["Denver Broncos"], 0.0, 0.0),
    ("Panthers", ["Denver Broncos", "Carolina Panthers", "Panthers"], 1.0, 1.0),  # max over ground truths
    ("a a b", ["a b b"], 0.0, 2 * 1.0 * 0.5 / 1.5),  # "a" is an article: "b" vs "b b", P = 1, R = 1/2
    ("x x y", ["x y y"], 0.0, 2 * (2 / 3) * (2 / 3) / (4 / 3)),  # bags: min counts x:1, y:1
    ("theatre", ["the atre"], 0.0, 0.0),  # \b: "the" inside a word is kept
    ("an apple", ["apple"], 1.0, 1.0),
    ("U.S.", ["US"], 1.0, 1.0),  # punctuation is deleted, not replaced by a space
    ("1,000", ["1000"], 1.0, 1.0),
    ("state-of-the-art", ["stateoftheart"], 1.0, 1.0),
    ("the", ["a"], 1.0, 0.0),  # both normalise to "": EM 1, F1 0, as the official script gives
    ("", ["Denver"], 0.0, 0.0),
    ("Café—naïve", ["café—naïve"], 1.0, 1.0),  # str.lower on Unicode; the em dash is not string.punctuation
]


@pytest.mark.parametrize("prediction, ground_truths, em, f1", CASES)
def test_hand_written_cases(prediction, ground_truths, em, f1):
    assert official_max_over_ground_truths(official_exact_match, prediction, ground_truths) == em
    assert official_max_over_ground_truths(official_f1, prediction, ground_truths) == pytest.approx(f1)
    assert squad_exact_match(prediction, ground_truths) == em
    assert squad_f1(prediction, ground_truths) == pytest.approx(f1)
    assert normalize_answer(prediction) == official_normalize(prediction)


def test_missing_predictions_score_zero_in_the_mean():
    dataset = [{"paragraphs": [{"qas": [{"id": "1", "answers": [{"text": "Denver"}]},
                                        {"id": "2", "answers": [{"text": "Carolina Panthers"}]}]}]}]
    ours = squad_evaluate(dataset, {"2": "Panthers"})
    reference = official_evaluate(dataset, {"2": "Panthers"})
    assert ours["exact_match"] == reference["exact_match"] == 0.0
    assert ours["f1"] == pytest.approx(reference["f1"]) and reference["f1"] == pytest.approx(100 * (2 / 3) / 2)


# ----------------------------------------------------------------------------- all dev questions
@pytest.fixture(scope="module")
def dev_articles(shared_data):
    path = shared_data / SQUAD_DEV_FILE
    if not path.is_file():
        pytest.skip(f"SQuAD dev set not found at {path}")
    return read_squad_json(path)["data"]


def _questions(articles):
    return [(qa, p["context"]) for a in articles for p in a["paragraphs"] for qa in p["qas"]]


def test_ground_truth_as_prediction_scores_100_on_every_dev_question(dev_articles):
    # The first ground truth of every dev question: EM = F1 = 100 exactly.
    predictions = {qa["id"]: qa["answers"][0]["text"] for qa, _ in _questions(dev_articles)}
    assert len(predictions) == 10_570
    assert official_evaluate(dev_articles, predictions) == {"exact_match": 100.0, "f1": 100.0}
    ours = squad_evaluate(dev_articles, predictions)
    assert (ours["exact_match"], ours["f1"], ours["num_questions"]) == (100.0, 100.0, 10_570)

    # The last ground truth: one dev question (57340d124776f419006617bf) has "." as its last
    # answer, which normalises to "": the official logic gives it EM 1 but F1 0.
    predictions = {qa["id"]: qa["answers"][-1]["text"] for qa, _ in _questions(dev_articles)}
    empty = [qid for qid, text in predictions.items() if not official_normalize(text)]
    assert empty == ["57340d124776f419006617bf"]
    reference = official_evaluate(dev_articles, predictions)
    assert reference == {"exact_match": 100.0, "f1": pytest.approx(100.0 * (10_570 - 1) / 10_570)}
    ours = squad_evaluate(dev_articles, predictions)
    assert ours["exact_match"] == 100.0 and ours["f1"] == pytest.approx(reference["f1"], abs=1e-12)


def test_canon_equals_the_official_logic_on_imperfect_dev_predictions(dev_articles):
    rng = random.Random(0)
    strategies = {
        "first word": lambda answer, context: answer.split()[0] if answer.split() else "",
        "answer plus a neighbour": lambda answer, context: context[max(context.find(answer) - 12, 0):
                                                                  context.find(answer) + len(answer)],
        "upper case and punctuation": lambda answer, context: f"The {answer.upper()}!?",
        "random window": lambda answer, context: context[(k := rng.randrange(len(context))):k + rng.randrange(1, 40)],
    }
    questions = _questions(dev_articles)
    for name, strategy in strategies.items():
        # 2,000 questions a strategy (the others are unanswered and score 0 in both), for time
        predictions = {qa["id"]: strategy(qa["answers"][0]["text"], context)
                       for qa, context in rng.sample(questions, 2000)}
        ours, reference = squad_evaluate(dev_articles, predictions), official_evaluate(dev_articles, predictions)
        assert ours["exact_match"] == pytest.approx(reference["exact_match"], abs=1e-9), name
        assert ours["f1"] == pytest.approx(reference["f1"], abs=1e-9), name
        assert 0.0 < reference["f1"] < 100.0, name  # the strategies really are imperfect
