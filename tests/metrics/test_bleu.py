"""canon.metrics.bleu on detokenised text: sacreBLEU's score, and canon's own corpus_bleu agrees.

References: ``sacrebleu.corpus_bleu`` on the same input (the wiring: streams, multiple references,
signature); BLEU worked out by hand for one sentence; canon's independent token-level
``corpus_bleu`` on sacreBLEU's 13a tokens.
"""
from __future__ import annotations

import math

import pytest

sacrebleu = pytest.importorskip("sacrebleu")
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a  # noqa: E402

from canon.metrics import bleu, corpus_bleu  # noqa: E402

HYPOTHESES = ["The cat sat on the mat.", "A man is riding a red bicycle down the street.",
              "Two dogs are playing in the snow, happily.", "There is a woman reading a book in the park."]
REFERENCES_A = ["The cat sat on a mat.", "A man rides a red bike down the street.",
                "Two dogs play in the snow.", "A woman is reading a book in a park."]
REFERENCES_B = ["A cat was sitting on the mat.", "A man is riding his bicycle on the street.",
                "Two dogs are playing happily in the snow.", "There is a woman reading in the park."]


def test_one_reference_equals_sacrebleu():
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES_A])
    assert bleu(HYPOTHESES, [REFERENCES_A]) == expected.score
    assert 0 < expected.score < 100


def test_several_references_equal_sacrebleu_with_signature():
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES_A, REFERENCES_B])
    score, signature = bleu(HYPOTHESES, [REFERENCES_A, REFERENCES_B], return_signature=True)
    assert score == expected.score
    assert score > bleu(HYPOTHESES, [REFERENCES_A])  # the second stream adds matches
    assert signature.startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert signature.endswith(sacrebleu.__version__)


def test_hand_computed_sentence():
    # "the cat sat on the mat" vs "the cat sat on a mat": clipped precisions 5/6, 3/5, 2/4, 1/3; BP = 1.
    expected = 100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert bleu(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(expected, abs=1e-9)


def test_13a_tokenisation_splits_punctuation_of_detokenised_text():
    assert bleu(["The cat sat, happily."], [["The cat sat , happily ."]]) == pytest.approx(100.0)
    assert bleu(["the cat sat, happily."], [["The cat sat, happily."]], lowercase=True) == pytest.approx(100.0)


def test_agrees_with_canons_token_level_corpus_bleu():
    tokenize = Tokenizer13a()
    hypotheses = [tokenize(h).split() for h in HYPOTHESES]
    references = [[tokenize(a).split(), tokenize(b).split()] for a, b in zip(REFERENCES_A, REFERENCES_B)]
    assert bleu(HYPOTHESES, [REFERENCES_A, REFERENCES_B]) == pytest.approx(100 * corpus_bleu(references, hypotheses),
                                                                           abs=1e-9)


def test_bad_inputs_are_explained():
    with pytest.raises(TypeError, match=r"list of reference streams.*bleu\(hypotheses, \[references\]\)"):
        bleu(HYPOTHESES, REFERENCES_A)
    with pytest.raises(ValueError, match="reference stream 1 has 3 sentences for 4 hypotheses"):
        bleu(HYPOTHESES, [REFERENCES_A, REFERENCES_B[:3]])
    with pytest.raises(TypeError, match="hypotheses must be a list of strings"):
        bleu("The cat.", [["The cat."]])
    with pytest.raises(ValueError, match="at least one reference stream"):
        bleu(HYPOTHESES, [])
