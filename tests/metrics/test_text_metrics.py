"""Text metrics: SQuAD EM/F1 against a transcription of the official v1.1 script (on the real dev
set when present), BLEU against NLTK's ``corpus_bleu``, ROUGE-L against Google's ``rouge-score``."""
from __future__ import annotations

import json
import math
import random
import re
import string
from collections import Counter

import pytest

from canon.metrics import corpus_bleu, normalize_answer, rouge_l, squad_evaluate, squad_exact_match, squad_f1


# ----------------------------------------------------------------------------- SQuAD
def _official_normalize(s):
    """Transcription of ``normalize_answer`` from the official SQuAD v1.1 evaluation script."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_f1(prediction, ground_truth):
    prediction_tokens = _official_normalize(prediction).split()
    ground_truth_tokens = _official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _official_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                truths = [a["text"] for a in qa["answers"]]
                exact_match += max(float(_official_normalize(predictions[qa["id"]]) == _official_normalize(t))
                                   for t in truths)
                f1 += max(_official_f1(predictions[qa["id"]], t) for t in truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def test_normalisation_and_single_answers():
    assert normalize_answer("  The Denver  Broncos! ") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("theatre") == "theatre"  # "the" only as a whole word
    assert squad_exact_match("the Broncos.", ["Denver Broncos", "Broncos"]) == 1.0
    assert squad_exact_match("Broncos team", "Broncos") == 0.0
    # "denver broncos" vs "broncos team": overlap 1, P = 1/2, R = 1/2 -> F1 = 1/2; max over truths
    assert squad_f1("Denver Broncos", ["Broncos team", "Carolina"]) == pytest.approx(0.5)
    assert squad_f1("", ["Broncos"]) == 0.0
    with pytest.raises(ValueError, match="ground-truth"):
        squad_f1("x", [])


@pytest.fixture(scope="module")
def squad_dev(shared_data):
    path = shared_data / "squad" / "dev-v1.1.json"
    if not path.is_file():
        pytest.skip(f"SQuAD v1.1 dev set not found at {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)["data"]


def _questions(dataset):
    return [qa for article in dataset for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


@pytest.mark.data
def test_squad_dev_first_ground_truth_scores_100(squad_dev):
    predictions = {qa["id"]: qa["answers"][0]["text"] for qa in _questions(squad_dev)}
    result = squad_evaluate(squad_dev, predictions)
    assert result["num_questions"] == 10570
    assert result["exact_match"] == 100.0 and result["f1"] == 100.0


@pytest.mark.data
def test_squad_dev_perturbed_answers_equal_official_script(squad_dev):
    rng = random.Random(0)
    predictions = {}
    for qa in _questions(squad_dev):
        answer = qa["answers"][-1]["text"]
        choice = rng.randrange(5)
        if choice == 0:
            answer = answer + " in fact"  # extra words: F1 < 1, EM 0
        elif choice == 1:
            answer = " ".join(answer.split()[1:])  # first word dropped
        elif choice == 2:
            answer = "The " + answer.upper() + "."  # article, case, punctuation: still a match
        elif choice == 3:
            continue  # no prediction: scores 0
        predictions[qa["id"]] = answer
    got = squad_evaluate(squad_dev, predictions)
    expected = _official_evaluate(squad_dev, predictions)
    assert got["exact_match"] == pytest.approx(expected["exact_match"], abs=1e-9)
    assert got["f1"] == pytest.approx(expected["f1"], abs=1e-9)
    assert 20 < got["exact_match"] < 80 and got["exact_match"] < got["f1"] < 100  # the perturbation bites


def test_squad_evaluate_empty_dataset_is_nan():
    result = squad_evaluate([], {})
    assert result["num_questions"] == 0 and math.isnan(result["exact_match"]) and math.isnan(result["f1"])


# ----------------------------------------------------------------------------- BLEU
SENTENCES = [
    "the cat sat on the mat while the dog slept by the door",
    "a quick brown fox jumps over the lazy dog near the river bank",
    "machine translation quality is often measured with n gram overlap",
    "the committee approved the budget after a long and heated debate",
    "students who read widely tend to write with a richer vocabulary",
    "heavy rain flooded the streets of the old town on monday night",
    "the new model improves accuracy on every benchmark we tried",
    "she handed him the keys and walked out without a word",
]


def _perturb(tokens, rng):
    """A plausible system output: drop, duplicate and swap a few words."""
    tokens = list(tokens)
    for _ in range(rng.randrange(1, 4)):
        op, i = rng.randrange(3), rng.randrange(len(tokens))
        if op == 0 and len(tokens) > 3:
            del tokens[i]
        elif op == 1:
            tokens.insert(i, tokens[i])
        else:
            j = rng.randrange(len(tokens))
            tokens[i], tokens[j] = tokens[j], tokens[i]
    return tokens


def _corpus(seed=0, num_refs=2):
    rng = random.Random(seed)
    references, hypotheses = [], []
    for sentence in SENTENCES:
        tokens = sentence.split()
        references.append([tokens] + [_perturb(tokens, rng) for _ in range(num_refs - 1)])
        hypotheses.append(_perturb(tokens, rng))
    return references, hypotheses


@pytest.mark.parametrize("seed, num_refs", [(0, 1), (1, 2), (2, 3)])
def test_corpus_bleu_equals_nltk(seed, num_refs):
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    references, hypotheses = _corpus(seed, num_refs)
    expected = bleu_score.corpus_bleu(references, hypotheses)
    assert 0.2 < expected < 1.0
    assert corpus_bleu(references, hypotheses) == pytest.approx(expected, abs=1e-12)
    # strings are whitespace-tokenised
    as_strings = corpus_bleu([[" ".join(r) for r in refs] for refs in references],
                             [" ".join(h) for h in hypotheses])
    assert as_strings == pytest.approx(expected, abs=1e-12)


def test_corpus_bleu_with_hypotheses_shorter_than_four_tokens():
    """The paper counts no 4-gram in a 3-token hypothesis; NLTK's corpus_bleu counts one (its
    max(1, .) denominator). Reference: NLTK's building blocks with the paper's denominators."""
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    references = [[SENTENCES[0].split()], [["a", "big", "dog", "ran"]], [["hello", "there", "friend"]]]
    hypotheses = [SENTENCES[0].split()[:9], ["a", "big", "dog", "ran"], ["hello", "there"]]
    log_precision = 0.0
    for n in range(1, 5):
        matches = sum(bleu_score.modified_precision(refs, hyp, n).numerator
                      for refs, hyp in zip(references, hypotheses))
        totals = sum(max(len(hyp) - n + 1, 0) for hyp in hypotheses)
        log_precision += math.log(matches / totals) / 4
    hyp_len = sum(len(h) for h in hypotheses)
    ref_len = sum(bleu_score.closest_ref_length(refs, len(hyp)) for refs, hyp in zip(references, hypotheses))
    expected = bleu_score.brevity_penalty(ref_len, hyp_len) * math.exp(log_precision)
    assert corpus_bleu(references, hypotheses) == pytest.approx(expected, abs=1e-12)
    assert abs(expected - bleu_score.corpus_bleu(references, hypotheses)) > 1e-3  # NLTK differs here


def test_corpus_bleu_brevity_penalty_and_degenerate_cases():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    ref = SENTENCES[0].split()
    short = ref[:8]  # every n-gram matches: BLEU = BP = exp(1 - 13/8)
    assert corpus_bleu([[ref]], [short]) == pytest.approx(math.exp(1 - len(ref) / len(short)), abs=1e-12)
    assert corpus_bleu([[ref]], [short]) == pytest.approx(bleu_score.corpus_bleu([[ref]], [short]), abs=1e-12)
    assert corpus_bleu([[ref]], [ref]) == pytest.approx(1.0)
    assert corpus_bleu([[ref]], [["nothing", "matches", "here", "at", "all"]]) == 0.0
    assert corpus_bleu([], []) == 0.0
    assert corpus_bleu([[ref]], [[]]) == 0.0
    with pytest.raises(ValueError, match="one list of references per hypothesis"):
        corpus_bleu([[ref]], [ref, ref])


# ----------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_equals_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(3)
    for sentence in SENTENCES:
        prediction = " ".join(_perturb(sentence.split(), rng)).capitalize() + "."
        expected = scorer.score(sentence, prediction)["rougeL"]
        got = rouge_l(prediction, sentence)
        assert got["precision"] == pytest.approx(expected.precision, abs=1e-12)
        assert got["recall"] == pytest.approx(expected.recall, abs=1e-12)
        assert got["fmeasure"] == pytest.approx(expected.fmeasure, abs=1e-12)
    # several references: the best F-measure, as score_multi picks it
    prediction = " ".join(_perturb(SENTENCES[1].split(), rng))
    expected = scorer.score_multi([SENTENCES[0], SENTENCES[1], SENTENCES[2]], prediction)["rougeL"]
    assert rouge_l(prediction, SENTENCES[:3])["fmeasure"] == pytest.approx(expected.fmeasure, abs=1e-12)


def test_rouge_l_by_hand_and_empty():
    # LCS("a b c d e", "a c e f") = "a c e" = 3: P = 3/4, R = 3/5, F = 2PR/(P+R) = 2/3
    got = rouge_l("a c e f", "a b c d e")
    assert (got["precision"], got["recall"]) == (0.75, 0.6)
    assert got["fmeasure"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert rouge_l("", "a b")["fmeasure"] == 0.0 and rouge_l("a b", "!!")["fmeasure"] == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l("a", [])
