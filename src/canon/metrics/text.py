"""Text metrics: SQuAD exact match and F1, corpus BLEU, ROUGE-L.

Papers:
- SQuAD: Rajpurkar, Zhang, Lopyrev, Liang, "SQuAD: 100,000+ Questions for Machine Comprehension
  of Text", EMNLP 2016, arXiv:1606.05250 (metrics as computed by the official v1.1 script).
- BLEU: Papineni, Roukos, Ward, Zhu, "BLEU: a Method for Automatic Evaluation of Machine
  Translation", ACL 2002 (no arXiv id).
- ROUGE-L: Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", ACL workshop 2004
  (no arXiv id).

Follows the papers:
- SQuAD: answers are normalised (lower case, punctuation removed, the articles a/an/the removed,
  whitespace collapsed); exact match is string equality after that, F1 is the token-overlap F1
  (bag of tokens); each question takes its best score over the ground-truth answers, and the
  dataset score is 100 x the mean over questions, a missing prediction scoring 0.
- BLEU: modified (clipped) n-gram precisions for n = 1..4 pooled over the corpus, their
  geometric mean with uniform weights, times the brevity penalty exp(1 - r/c) when c <= r, where
  c is the candidate length and r the sum of the reference lengths closest to each candidate
  (ties to the shorter one, as NLTK does).
- ROUGE-L: R = LCS/|reference|, P = LCS/|prediction|, F = (1 + b^2) R P / (R + b^2 P) with b = 1
  (the F1 the ``rouge-score`` package reports); with several references the best F is kept.

Deviates, and why:
- BLEU counts a hypothesis's n-grams as they are, len - n + 1 or none if shorter than n (the
  paper, sacreBLEU); NLTK's ``corpus_bleu`` counts max(1, len - n + 1), so the two agree exactly
  unless some hypothesis has fewer than ``max_n`` tokens.
- :func:`bleu` is the score to report for translation: detokenised strings, 0-100, computed by
  sacreBLEU itself (its 13a tokenisation and standard settings) so that figures compare with papers.
- :func:`corpus_bleu`'s BLEU is returned in [0, 1] (NLTK's scale), not 0-100 (sacreBLEU's). No smoothing: a corpus with
  no matching n-gram of some order scores 0, as in the paper. An empty corpus or empty candidates
  score 0 (the brevity penalty of zero candidate words is exp(-inf) = 0).
- ROUGE-L tokenises like ``rouge-score`` without stemming: lower case, every run of characters
  other than a-z and 0-9 is a separator. An empty prediction or reference scores 0.
- SQuAD: a question whose answers normalise to the empty string gives EM 1 but F1 0 against an
  empty prediction; that is what the official v1.1 script computes and is kept for comparability.
  A dataset with no questions scores NaN.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Iterable, Mapping, Sequence

__all__ = ["normalize_answer", "squad_exact_match", "squad_f1", "squad_evaluate", "ngram_counts",
           "corpus_bleu", "bleu", "rouge_tokenize", "lcs_length", "rouge_l"]

# ----------------------------------------------------------------------------- SQuAD
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation, drop a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_ground_truths(ground_truths, name: str) -> list[str]:
    if isinstance(ground_truths, str):
        return [ground_truths]
    ground_truths = list(ground_truths)
    if not ground_truths:
        raise ValueError(f"{name}: need at least one ground-truth answer, got none")
    return ground_truths


def _exact_match_one(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _f1_one(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(ground_truth).split()
    overlap = sum((Counter(pred_tokens) & Counter(true_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, ground_truths: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised ground truth, else 0.0."""
    return max(_exact_match_one(prediction, gt) for gt in _check_ground_truths(ground_truths, "squad_exact_match"))


def squad_f1(prediction: str, ground_truths: str | Sequence[str]) -> float:
    """Best token-overlap F1 in [0, 1] of the prediction against the ground truths."""
    return max(_f1_one(prediction, gt) for gt in _check_ground_truths(ground_truths, "squad_f1"))


def squad_evaluate(dataset: Iterable[Mapping], predictions: Mapping[str, str]) -> dict[str, float]:
    """Exact match and F1 (0-100) of ``predictions`` ({question id: answer}) on a SQuAD v1.1 dataset.

    ``dataset``: the ``"data"`` list of the SQuAD json (articles -> paragraphs -> qas, each qa with
    ``id`` and ``answers[*]["text"]``). Questions without a prediction score 0. Returns
    ``{"exact_match": ..., "f1": ..., "num_questions": ...}``; NaN scores for no questions.
    """
    exact_match = f1 = 0.0
    total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                ground_truths = [answer["text"] for answer in qa["answers"]]
                exact_match += squad_exact_match(predictions[qa["id"]], ground_truths)
                f1 += squad_f1(predictions[qa["id"]], ground_truths)
    if total == 0:
        return {"exact_match": float("nan"), "f1": float("nan"), "num_questions": 0}
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total, "num_questions": total}


# ----------------------------------------------------------------------------- BLEU
def _tokens(text: str | Sequence[str], name: str) -> list[str]:
    """A sentence as tokens: a string is split on whitespace, a sequence of strings is kept."""
    if isinstance(text, str):
        return text.split()
    tokens = list(text)
    if not all(isinstance(t, str) for t in tokens):
        raise TypeError(f"{name}: a sentence must be a string or a sequence of string tokens, got {text!r}")
    return tokens


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Counts of the n-grams (as tuples) of a token list."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(references: Sequence[Sequence[str | Sequence[str]]], hypotheses: Sequence[str | Sequence[str]],
                max_n: int = 4) -> float:
    """Corpus BLEU in [0, 1] (Papineni et al. 2002), uniform weights over 1..max_n-grams.

    ``references[i]``: the reference sentences of hypothesis i (one or more); sentences are token
    lists or whitespace-tokenised strings. Same value as ``nltk.translate.bleu_score.corpus_bleu``
    without smoothing whenever every hypothesis has at least ``max_n`` tokens (see the module
    docstring for shorter ones).
    """
    if not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"corpus_bleu: max_n must be a positive integer, got {max_n!r}")
    if len(references) != len(hypotheses):
        raise ValueError(f"corpus_bleu: need one list of references per hypothesis, got "
                         f"{len(references)} reference lists for {len(hypotheses)} hypotheses")
    matches = [0] * max_n  # clipped n-gram matches, per order
    totals = [0] * max_n  # n-grams in the hypotheses, per order
    hyp_length = ref_length = 0
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        if isinstance(refs, str) or not len(refs):
            raise ValueError(f"corpus_bleu: references[{i}] must be a non-empty list of reference "
                             f"sentences, got {refs!r}")
        hyp = _tokens(hyp, "corpus_bleu")
        refs = [_tokens(r, "corpus_bleu") for r in refs]
        for n in range(1, max_n + 1):
            hyp_counts = ngram_counts(hyp, n)
            max_ref_counts: Counter = Counter()
            for ref in refs:
                max_ref_counts |= ngram_counts(ref, n)  # elementwise max over references
            matches[n - 1] += sum(min(count, max_ref_counts[g]) for g, count in hyp_counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
        hyp_length += len(hyp)
        # r: the reference length closest to the candidate's, the shorter one on a tie.
        ref_length += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    if hyp_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity_penalty = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return brevity_penalty * math.exp(log_precision)


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *, tokenize: str = "13a",
         lowercase: bool = False, return_signature: bool = False) -> float | tuple[float, str]:
    """Corpus BLEU on detokenised text, 0-100, computed by sacreBLEU (Post 2018, arXiv:1804.08771).

    Same call as ``sacrebleu.corpus_bleu``: ``hypotheses`` one string per sentence, ``references`` a
    list of reference STREAMS, each with one string per hypothesis (``[refs]`` for one reference per
    sentence, ``[refs_a, refs_b]`` for two). sacreBLEU's standard settings: its 13a tokenisation,
    mixed case, exponential smoothing. With ``return_signature=True`` returns ``(score, signature)``,
    the signature string to report beside the score (e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|
    smooth:exp|version:2.6.0``).

    Why sacreBLEU and not :func:`corpus_bleu`: BLEU scores are only comparable with the same
    tokenisation and settings, and sacreBLEU is the reference implementation papers report; this
    function only checks the inputs and calls it. :func:`corpus_bleu` stays for pre-tokenised text.
    """
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses):
        raise TypeError("bleu: hypotheses must be a list of strings, one detokenised sentence each")
    if isinstance(references, str) or (len(references) and isinstance(references[0], str)):
        raise TypeError("bleu: references must be a list of reference streams, each a list of strings "
                        "with one entry per hypothesis, e.g. bleu(hypotheses, [references])")
    if not len(references):
        raise ValueError("bleu: need at least one reference stream, got none")
    for i, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise ValueError(f"bleu: reference stream {i} has {len(stream)} sentences for {len(hypotheses)} "
                             f"hypotheses; every stream needs one reference per hypothesis")
        if not all(isinstance(r, str) for r in stream):
            raise TypeError(f"bleu: reference stream {i} must hold strings")
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("canon.metrics.bleu needs sacrebleu: pip install sacrebleu") from None
    metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    score = metric.corpus_score(list(hypotheses), [list(stream) for stream in references]).score
    return (score, str(metric.get_signature())) if return_signature else score


# ----------------------------------------------------------------------------- ROUGE-L
_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """Lower case, then split on every run of characters other than a-z and 0-9."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two sequences (dynamic programme, O(|a| |b|))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, references: str | Sequence[str]) -> dict[str, float]:
    """Sentence-level ROUGE-L (Lin 2004): ``{"precision", "recall", "fmeasure"}`` in [0, 1].

    ``references``: one string or several (the one giving the highest F-measure is used, as
    ``rouge_score.RougeScorer.score_multi`` does).
    """
    if isinstance(references, str):
        references = [references]
    references = list(references)
    if not references:
        raise ValueError("rouge_l: need at least one reference, got none")
    pred_tokens = rouge_tokenize(prediction)
    best = {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    for i, reference in enumerate(references):
        ref_tokens = rouge_tokenize(reference)
        if not pred_tokens or not ref_tokens:
            score = {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
        else:
            lcs = lcs_length(pred_tokens, ref_tokens)
            precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
            fmeasure = 2 * precision * recall / (precision + recall) if lcs else 0.0
            score = {"precision": precision, "recall": recall, "fmeasure": fmeasure}
        if i == 0 or score["fmeasure"] > best["fmeasure"]:
            best = score
    return best
