"""SQuAD v1.1 for span-extraction reading comprehension: files, token spans, batches, answers.

Paper: "SQuAD: 100,000+ Questions for Machine Comprehension of Text", Rajpurkar et al., 2016,
arXiv:1606.05250.

    dev = read_squad(data_dir / SQUAD_DEV_FILE)               # list[SquadExample]
    train = read_squad(data_dir / SQUAD_TRAIN_FILE)
    words, chars = build_vocabularies(train)
    train_set = SquadDataset(train, words, chars, max_context_tokens=400, training=True)
    train_set.dropped                                           # {"answer_beyond_limit": ..., ...}
    loader = DataLoader(train_set, batch_size=32, shuffle=True, collate_fn=collate_squad)
    batch = next(iter(loader))
    start_logits, end_logits = model(**model_inputs(batch))
    starts, ends, probs = best_spans(start_logits, end_logits)  # i <= j <= i + 15
    predictions = span_texts(batch, starts, ends)                # {question id: answer text}
    one = question_batch(context, question, words, chars)        # one free-form question, same keys
    squad_evaluate(read_squad_json(path)["data"], predictions)  # canon.metrics, official v1.1

Files (paths relative to the shared data folder):

- ``squad/dev-v1.1.json``: the official development set (10,570 questions, usually three answers each).
  Evaluate here.
- ``squad-train-rebuilt/train-v1.1-rebuilt.json.gz``: the training set rebuilt from the
  authors' explorer pages, NOT the official file: its question ids are synthetic
  (``rebuilt-AAA-PPP-QQ``) and for the 9,438 questions listed in
  ``ambiguous_answer_start_ids.txt`` the answer text occurs several times in the context and
  the offset was chosen by a heuristic (about 2 % of all answers probably point at another
  occurrence of the same string). Figures trained on it must say so.

Batch format (:func:`collate_squad`), N questions, Lc / Lq the longest context / question in
the batch, W the longest word (capped by ``max_word_chars``); index 0 is padding everywhere:

=====================  =================  ==========================================================
key                    type               content
=====================  =================  ==========================================================
``context_words``      long (N, Lc)       word-vocabulary indices of the context tokens
``context_chars``      long (N, Lc, W)    character indices of each context token
``question_words``     long (N, Lq)
``question_chars``     long (N, Lq, W)
``context_mask``       bool (N, Lc)       True on real tokens (a prefix of each row)
``question_mask``      bool (N, Lq)
``answer_start``       long (N,)          first answer token (inclusive); -1 when not known
``answer_end``         long (N,)          last answer token (inclusive); -1 when not known
``ids``                list[str]          question ids
``contexts``           list[str]          the context strings
``offsets``            list[list[(s, e)]] character span of each (kept) context token
``answers``            list[tuple[str]]   the ground-truth answer texts
=====================  =================  ==========================================================

An answer maps to the tokens that overlap its characters; for the ~0.5 % of answers that
start or end inside a token (``"1990s"`` for ``"1990"``) that span is slightly wider than the
answer, and the training target is that span. Going back, a token span is the context
substring from its first token's start to its last token's end, whitespace and all.

Truncation (``max_context_tokens``): contexts keep their first L tokens. With
``training=True`` an example whose answer ends beyond them is dropped and counted in
``dataset.dropped["answer_beyond_limit"]``; at evaluation every question is kept (an answer
beyond the limit then simply cannot be found).
"""
from __future__ import annotations

import bisect
import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from canon.data.core import DataError, data_error
from canon.data.text_tokenize import PAD_INDEX, Vocabulary, tokenize_with_offsets

__all__ = ["SQUAD_DEV_FILE", "SQUAD_TRAIN_FILE", "SQUAD_AMBIGUOUS_IDS_FILE", "SquadExample", "SquadItem",
           "read_squad_json",
           "read_squad", "read_ambiguous_ids", "answer_token_span", "token_span_text", "build_vocabularies",
           "SquadDataset", "collate_squad", "question_batch", "model_inputs", "MODEL_INPUT_KEYS", "best_spans", "span_texts",
           "MAX_ANSWER_TOKENS"]

SQUAD_DEV_FILE = "squad/dev-v1.1.json"
SQUAD_TRAIN_FILE = "squad-train-rebuilt/train-v1.1-rebuilt.json.gz"
SQUAD_AMBIGUOUS_IDS_FILE = "squad-train-rebuilt/ambiguous_answer_start_ids.txt"
MODEL_INPUT_KEYS = ("context_words", "context_chars", "question_words", "question_chars", "context_mask",
                    "question_mask")
MAX_ANSWER_TOKENS = 15  # decoding: j <= i + 15, as in BiDAF's and QANet's evaluation


# ------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class SquadExample:
    """One question about one context, with its ground-truth answers (character offsets)."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


def read_squad_json(path: str | Path) -> dict:
    """The parsed SQuAD json (``.json`` or ``.json.gz``), checked to hold a ``"data"`` list."""
    path = Path(path)
    if not path.is_file():
        raise data_error(path, "a SQuAD v1.1 json file", found="no such file",
                         hint="the shared data folder has squad/dev-v1.1.json and "
                              "squad-train-rebuilt/train-v1.1-rebuilt.json.gz")
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")) as f:
            dataset = json.load(f)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise data_error(path, "valid SQuAD json", found=f"{type(err).__name__}: {err}") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        found = f"keys {sorted(dataset)[:5]}" if isinstance(dataset, dict) else type(dataset).__name__
        raise data_error(path, 'a json object with a "data" list of articles', found=found)
    return dataset


def _field(record, key: str, kind: type, path: Path, where: str):
    if not isinstance(record, dict) or key not in record:
        raise data_error(path, f'a "{key}" field in {where}', found="none")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise data_error(path, f'"{key}" in {where} to be {kind.__name__}', found=type(value).__name__)
    return value


def read_squad(path: str | Path) -> list[SquadExample]:
    """Every question of a SQuAD v1.1 file, in file order.

    Raises :class:`DataError` naming the file and the question id when a field is missing or
    has the wrong type, a question has no answer, or an answer's text is not found at its
    ``answer_start`` in the context.
    """
    path = Path(path)
    examples = []
    for a, article in enumerate(read_squad_json(path)["data"]):
        title = article.get("title", "") if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, f"article {a}")):
            context = _field(paragraph, "context", str, path, f"article {a} paragraph {p}")
            for qa in _field(paragraph, "qas", list, path, f"article {a} paragraph {p}"):
                qid = _field(qa, "id", str, path, f"a question of article {a} paragraph {p}")
                where = f"question {qid!r}"
                question = _field(qa, "question", str, path, where)
                answers = _field(qa, "answers", list, path, where)
                if not answers:
                    raise data_error(path, f"at least one answer for {where}", found="none")
                texts, starts = [], []
                for answer in answers:
                    text = _field(answer, "text", str, path, f"an answer of {where}")
                    start = _field(answer, "answer_start", int, path, f"an answer of {where}")
                    if context[start:start + len(text)] != text or start < 0:
                        raise data_error(path, f"the answer text {text!r} of {where} at answer_start={start} "
                                               f"of its context", found=repr(context[max(start, 0):][:len(text)]))
                    texts.append(text)
                    starts.append(start)
                examples.append(SquadExample(qid, title, context, question, tuple(texts), tuple(starts)))
    return examples


def read_ambiguous_ids(path: str | Path) -> frozenset[str]:
    """The question ids (one a line) whose answer offset the rebuilt training file had to guess."""
    path = Path(path)
    if not path.is_file():
        raise data_error(path, "a text file of question ids, one a line", found="no such file")
    return frozenset(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


# ------------------------------------------------------------------------------------- spans
def answer_token_span(offsets: Sequence[tuple[int, int]], answer_start: int, answer_text: str
                      ) -> tuple[int, int] | None:
    """The first and last token (inclusive) that overlap ``[answer_start, answer_start + len)``.

    ``offsets``: the (start, end) of each token, in order and disjoint (binary search, O(log L)).
    None when no token overlaps (an answer of whitespace only).
    """
    answer_end = answer_start + len(answer_text)
    first = bisect.bisect_right(offsets, answer_start, key=lambda span: span[1])  # first token ending after it
    last = bisect.bisect_left(offsets, answer_end, key=lambda span: span[0]) - 1  # last token starting before
    return (first, last) if first <= last else None


def token_span_text(context: str, offsets: Sequence[tuple[int, int]], start: int, end: int) -> str:
    """The exact context substring of tokens ``start..end`` (inclusive)."""
    if not 0 <= start <= end < len(offsets):
        raise ValueError(f"token span ({start}, {end}) is not inside a context of {len(offsets)} tokens")
    return context[offsets[start][0]:offsets[end][1]]


# ------------------------------------------------------------------------------------- vocabularies
def build_vocabularies(examples: Iterable[SquadExample], *, word_min_count: int = 2, char_min_count: int = 20,
                       max_words: int | None = None, lowercase_words: bool = True) -> tuple[Vocabulary, Vocabulary]:
    """Word and character vocabularies of the contexts and questions of a (training) split.

    Each distinct context is counted once. Defaults: lower-cased words seen at least twice, so
    that training also meets ``<unk>`` (the singletons) and learns a vector for the unseen
    words of the dev set; characters seen at least 20 times (the rare ones are mostly foreign
    scripts). On the rebuilt training split that gives 49,865 words and 227 characters
    (specials included).
    """
    words: Counter = Counter()
    chars: Counter = Counter()
    seen_contexts = set()
    for example in examples:
        texts = [example.question]
        if example.context not in seen_contexts:
            seen_contexts.add(example.context)
            texts.append(example.context)
        for text in texts:
            words.update(tokenize_with_offsets(text)[0])
    for word, count in words.items():
        for char in word:
            chars[char] += count
    return (Vocabulary.build(words, min_count=word_min_count, max_size=max_words, lowercase=lowercase_words),
            Vocabulary.build(chars, min_count=char_min_count))


# ------------------------------------------------------------------------------------- dataset
@dataclass
class SquadItem:
    """One encoded question: vocabulary indices, the kept tokens' character offsets, the target span."""

    id: str
    context: str
    offsets: list[tuple[int, int]]
    context_words: list[int]
    context_chars: list[list[int]]
    question_words: list[int]
    question_chars: list[list[int]]
    answer_start: int
    answer_end: int
    answers: tuple[str, ...] = field(default_factory=tuple)


class SquadDataset(Dataset):
    """SQuAD examples as vocabulary indices and token spans; items go through :func:`collate_squad`.

    ``max_context_tokens`` / ``max_question_tokens`` keep the first L tokens (None: all).
    ``training=True``: the target is the first answer's token span, and examples whose answer
    falls outside the kept context, or covers no token, are dropped and counted in
    ``self.dropped``. ``training=False``: every question is kept, with the first answer's span
    (or -1 if it lies beyond the limit) for reference.
    """

    def __init__(self, examples: Sequence[SquadExample], word_vocab: Vocabulary, char_vocab: Vocabulary, *,
                 max_context_tokens: int | None = None, max_question_tokens: int | None = None,
                 max_word_chars: int = 16, training: bool = False):
        for name, value in (("max_context_tokens", max_context_tokens), ("max_question_tokens", max_question_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(max_word_chars, int) or max_word_chars < 1:
            raise ValueError(f"max_word_chars must be a positive int, got {max_word_chars!r}")
        self.word_vocab, self.char_vocab = word_vocab, char_vocab
        self.max_word_chars = max_word_chars
        self.training = training
        self.dropped = {"answer_beyond_limit": 0, "answer_covers_no_token": 0}
        self.items: list[SquadItem] = []
        contexts: dict[str, tuple] = {}  # a context is shared by ~5 questions: tokenise it once

        token_chars: dict[str, list[int]] = {}  # tokens repeat: encode each one's characters once

        def encode(tokens):
            chars = [token_chars.get(t) or token_chars.setdefault(t, char_vocab.encode(t[:max_word_chars]))
                     for t in tokens]
            return word_vocab.encode(tokens), chars

        for example in examples:
            if example.context not in contexts:
                tokens, offsets = tokenize_with_offsets(example.context)
                contexts[example.context] = (tokens, offsets, offsets[:max_context_tokens],
                                             *encode(tokens[:max_context_tokens]))
            tokens, offsets, kept_offsets, context_words, context_chars = contexts[example.context]
            if not tokens:
                raise DataError(f"question {example.id!r}: expected a context with at least one token, found "
                                f"{example.context!r}")
            question_tokens, _ = tokenize_with_offsets(example.question)
            if not question_tokens:
                raise DataError(f"question {example.id!r}: expected a question with at least one token, found "
                                f"{example.question!r}")
            question_words, question_chars = encode(question_tokens[:max_question_tokens])
            if example.answers:
                span = answer_token_span(offsets, example.answer_starts[0], example.answers[0])
            elif training:
                raise DataError(f"question {example.id!r}: expected an answer to train on, found none")
            else:
                span = None
            kept = len(context_words)
            if span is None:
                if training:
                    self.dropped["answer_covers_no_token"] += 1
                    continue
                span = (-1, -1)  # no answer given, or one that covers no token
            elif span[1] >= kept:
                if training:
                    self.dropped["answer_beyond_limit"] += 1
                    continue
                span = (-1, -1)
            self.items.append(SquadItem(example.id, example.context, kept_offsets, context_words, context_chars,
                                        question_words, question_chars, span[0], span[1], example.answers))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SquadItem:
        return self.items[index]

    def __repr__(self) -> str:
        return (f"SquadDataset(n={len(self)}, words={len(self.word_vocab)}, chars={len(self.char_vocab)}, "
                f"training={self.training}, dropped={self.dropped})")


def _pad_chars(rows: Sequence[list[list[int]]], length: int, width: int) -> torch.Tensor:
    out = torch.full((len(rows), length, width), PAD_INDEX, dtype=torch.long)
    for n, words in enumerate(rows):
        for k, chars in enumerate(words):
            out[n, k, :len(chars)] = torch.tensor(chars, dtype=torch.long)
    return out


def _pad_words(rows: Sequence[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.full((len(rows), length), PAD_INDEX, dtype=torch.long)
    for n, words in enumerate(rows):
        out[n, :len(words)] = torch.tensor(words, dtype=torch.long)
    lengths = torch.tensor([len(w) for w in rows])
    return out, torch.arange(length)[None, :] < lengths[:, None]


def collate_squad(items: Sequence[SquadItem]) -> dict:
    """Pad a list of :class:`SquadDataset` items into one batch (keys in the module docstring)."""
    if not items:
        raise ValueError("collate_squad needs at least one item")
    context_length = max(len(item.context_words) for item in items)
    question_length = max(len(item.question_words) for item in items)
    width = max(len(chars) for item in items for chars in (*item.context_chars, *item.question_chars))
    context_words, context_mask = _pad_words([item.context_words for item in items], context_length)
    question_words, question_mask = _pad_words([item.question_words for item in items], question_length)
    return {
        "context_words": context_words,
        "context_chars": _pad_chars([item.context_chars for item in items], context_length, width),
        "question_words": question_words,
        "question_chars": _pad_chars([item.question_chars for item in items], question_length, width),
        "context_mask": context_mask,
        "question_mask": question_mask,
        "answer_start": torch.tensor([item.answer_start for item in items], dtype=torch.long),
        "answer_end": torch.tensor([item.answer_end for item in items], dtype=torch.long),
        "ids": [item.id for item in items],
        "contexts": [item.context for item in items],
        "offsets": [item.offsets for item in items],
        "answers": [item.answers for item in items],
    }


def question_batch(context: str, question: str, word_vocab: Vocabulary, char_vocab: Vocabulary, *,
                   max_context_tokens: int | None = None, max_word_chars: int = 16) -> dict:
    """A batch of one question about one context, without an answer (e.g. for ``canon answer``).

    Raises ValueError when the context or the question has no token (empty or whitespace).
    """
    for name, text in (("context", context), ("question", question)):
        if not isinstance(text, str):
            raise TypeError(f"the {name} must be a str, got {type(text).__name__}")
        if not tokenize_with_offsets(text)[0]:
            raise ValueError(f"the {name} is empty: a question needs a context and a question with at least one "
                             f"word each, got {name}={text!r}")
    example = SquadExample("question", "", context, question, (), ())
    dataset = SquadDataset([example], word_vocab, char_vocab, max_context_tokens=max_context_tokens,
                           max_word_chars=max_word_chars)
    return collate_squad([dataset[0]])


def model_inputs(batch: Mapping) -> dict[str, torch.Tensor]:
    """The six tensors a reading model's ``forward`` takes, by name, from a batch."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS}


# ------------------------------------------------------------------------------------- answers
def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, max_answer_tokens: int = MAX_ANSWER_TOKENS
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """argmax over i <= j <= i + max_answer_tokens of p_start(i) · p_end(j), batched.

    start_logits, end_logits (N, L), -inf at positions that cannot be chosen. Returns
    ``(starts, ends, probabilities)``, each (N,); ties go to the smallest i, then the smallest j.
    Vectorised: the end probabilities are unfolded into an (N, L, K) band, K = max + 1, so the
    cost is O(N·L·K), not O(N·L²).
    """
    if start_logits.shape != end_logits.shape or start_logits.dim() != 2:
        raise ValueError(f"best_spans expects start and end logits of the same shape (N, L), got "
                         f"{tuple(start_logits.shape)} and {tuple(end_logits.shape)}")
    if not isinstance(max_answer_tokens, int) or max_answer_tokens < 0:
        raise ValueError(f"max_answer_tokens must be a non-negative int, got {max_answer_tokens!r}")
    n, length = start_logits.shape
    band = max_answer_tokens + 1
    log_start = start_logits.float().log_softmax(dim=1)  # (N, L)
    log_end = end_logits.float().log_softmax(dim=1)  # (N, L)
    # log_end_band[n, i, d] = log p_end(i + d), -inf past the end.
    padded = torch.nn.functional.pad(log_end, (0, band - 1), value=float("-inf"))  # (N, L + K - 1)
    log_end_band = padded.unfold(1, band, 1)  # (N, L, K)
    scores = log_start[:, :, None] + log_end_band  # (N, L, K): log p_start(i) + log p_end(i + d)
    best = scores.reshape(n, -1).argmax(dim=1)  # row-major over (i, d): smallest i, then smallest j
    starts = best // band
    ends = starts + best % band
    probabilities = scores.reshape(n, -1).gather(1, best[:, None]).squeeze(1).exp()
    return starts, ends, probabilities


def span_texts(batch: Mapping, starts: torch.Tensor, ends: torch.Tensor) -> dict[str, str]:
    """``{question id: answer text}`` for the predicted token spans of a batch (official format)."""
    return {qid: token_span_text(context, offsets, int(s), int(e))
            for qid, context, offsets, s, e in zip(batch["ids"], batch["contexts"], batch["offsets"],
                                                   starts.tolist(), ends.tolist())}
