"""Words with their character offsets, vocabularies, and GloVe-format word vectors.

    tokens, offsets = tokenize_with_offsets("The Broncos won 24-10.")
    # tokens  ['The', 'Broncos', 'won', '24', '-', '10', '.']
    # offsets [(0, 3), (4, 11), (12, 15), (16, 18), (18, 19), (19, 21), (21, 22)]
    words = Vocabulary.build(counts, min_count=2, lowercase=True)
    vectors, found = load_word_vectors("glove.840B.300d.txt", words)

Tokenisation is Hugging Face ``tokenizers``' ``BertPreTokenizer`` (a well-kept Rust library):
it splits on whitespace and makes every punctuation character (ASCII or Unicode category P*)
a token of its own; nothing is normalised, so ``text[start:end] == token`` for every token and
an answer span maps back to the exact substring of the context. Offsets are Python string
(code point) indices, the ones ``str`` slicing uses.

Vocabularies keep two special tokens first: ``<pad>`` (index 0) and ``<unk>`` (index 1).
A word vocabulary is usually ``lowercase=True`` (no pretrained vectors here, so fewer, more
frequent types train better); a character vocabulary keeps case.
"""
from __future__ import annotations

import gzip
import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from canon.data.core import data_error

__all__ = ["tokenize_with_offsets", "Vocabulary", "load_word_vectors", "PAD_TOKEN", "UNK_TOKEN",
           "PAD_INDEX", "UNK_INDEX"]

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
PAD_INDEX, UNK_INDEX = 0, 1

_PRE_TOKENIZER = None


def _pre_tokenizer():
    global _PRE_TOKENIZER
    if _PRE_TOKENIZER is None:
        from tokenizers.pre_tokenizers import BertPreTokenizer

        _PRE_TOKENIZER = BertPreTokenizer()
    return _PRE_TOKENIZER


def tokenize_with_offsets(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Split ``text`` into words and punctuation marks: ``(tokens, offsets)``.

    ``offsets[k] = (start, end)`` with ``text[start:end] == tokens[k]``; whitespace is dropped.
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize_with_offsets expects a str, got {type(text).__name__}")
    pieces = _pre_tokenizer().pre_tokenize_str(text)
    return [token for token, _ in pieces], [tuple(span) for _, span in pieces]


class Vocabulary:
    """Tokens <-> indices, with ``<pad>`` = 0 and ``<unk>`` = 1; unknown tokens map to 1.

    ``lowercase=True`` lower-cases every token before it is counted or looked up.
    """

    def __init__(self, tokens: Sequence[str], *, lowercase: bool = False):
        tokens = list(tokens)
        if tokens[:2] != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(f"a Vocabulary's first tokens must be {[PAD_TOKEN, UNK_TOKEN]}, got {tokens[:2]}")
        if len(set(tokens)) != len(tokens):
            duplicates = sorted(t for t, c in Counter(tokens).items() if c > 1)
            raise ValueError(f"a Vocabulary holds each token once, got duplicates {duplicates[:5]}")
        self.tokens = tokens
        self.lowercase = lowercase
        self._index = {token: i for i, token in enumerate(tokens)}

    @classmethod
    def build(cls, tokens: Iterable[str] | Mapping[str, int], *, min_count: int = 1,
              max_size: int | None = None, lowercase: bool = False) -> "Vocabulary":
        """The tokens seen at least ``min_count`` times, most frequent first (ties alphabetically).

        ``tokens``: an iterable of tokens or a ``{token: count}`` mapping. ``max_size`` caps the
        size including the two special tokens.
        """
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be a positive int, got {min_count!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 2):
            raise ValueError(f"max_size must be an int >= 2 (the special tokens) or None, got {max_size!r}")
        counts: Counter = Counter()
        if isinstance(tokens, Mapping):
            for token, count in tokens.items():
                counts[token.lower() if lowercase else token] += count
        else:
            counts.update(t.lower() for t in tokens) if lowercase else counts.update(tokens)
        for special in (PAD_TOKEN, UNK_TOKEN):
            counts.pop(special, None)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size - 2]
        return cls([PAD_TOKEN, UNK_TOKEN, *kept], lowercase=lowercase)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return (token.lower() if self.lowercase else token) in self._index

    def index(self, token: str) -> int:
        """The token's index, ``UNK_INDEX`` for a token not in the vocabulary."""
        return self._index.get(token.lower() if self.lowercase else token, UNK_INDEX)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Indices of a token sequence."""
        return [self.index(t) for t in tokens]

    def state_dict(self) -> dict:
        """Plain types only (for a checkpoint or a json file)."""
        return {"tokens": list(self.tokens), "lowercase": self.lowercase}

    @classmethod
    def from_state_dict(cls, state: Mapping) -> "Vocabulary":
        return cls(state["tokens"], lowercase=bool(state["lowercase"]))

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, lowercase={self.lowercase})"


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def load_word_vectors(path: str | Path, vocab: Vocabulary, *, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Word vectors for ``vocab`` from a GloVe-format text file: ``(vectors, found)``.

    Each line is ``WORD v_1 ... v_d`` separated by single spaces (the word itself may contain
    spaces, as a few lines of glove.840B do: the last d fields are the vector). A word2vec-style
    header line ``COUNT DIM`` is skipped; ``.gz`` files are read compressed. With a lower-casing
    vocabulary the first line whose lower-cased word matches wins (GloVe files are ordered by
    frequency, so that is the most frequent casing).

    Returns ``vectors`` (len(vocab), d) float32 and ``found`` (len(vocab),) bool. Rows of words
    the file lacks are drawn from N(0, s²), s the standard deviation of the loaded values; the
    ``<pad>`` row is zero.
    """
    path = Path(path)
    if not path.is_file():
        raise data_error(path, "a GloVe-format word-vector text file", found="no such file")
    dim = None
    rows: dict[int, list[float]] = {}
    try:
        with _open_text(path) as f:
            for line_number, line in enumerate(f, start=1):
                fields = line.rstrip("\n").rstrip(" ").split(" ")
                if line_number == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
                    dim = int(fields[1])  # word2vec header: count and dimension
                    continue
                if dim is None:
                    dim = len(fields) - 1
                if dim < 1 or len(fields) < dim + 1:
                    raise data_error(path, f"'WORD' followed by {max(dim, 1)} numbers on line {line_number}",
                                     found=f"{len(fields)} field(s)")
                word = " ".join(fields[:-dim])
                index = vocab.index(word)
                if index == UNK_INDEX and word != UNK_TOKEN or index in rows or index == PAD_INDEX:
                    continue
                try:
                    rows[index] = [float(x) for x in fields[-dim:]]
                except ValueError:
                    raise data_error(path, f"{dim} numbers after the word on line {line_number}",
                                     found=repr(line[:80])) from None
    except UnicodeDecodeError as err:
        raise data_error(path, "UTF-8 text", found=str(err)) from None
    except (OSError, EOFError) as err:  # e.g. a truncated or corrupt .gz
        raise data_error(path, "a readable text file", found=f"{type(err).__name__}: {err}") from None
    if dim is None:
        raise data_error(path, "at least one word vector", found="an empty file")
    found = torch.zeros(len(vocab), dtype=torch.bool)
    if rows:
        indices = torch.tensor(sorted(rows))
        loaded = torch.tensor([rows[i] for i in sorted(rows)], dtype=torch.float32)
        found[indices] = True
        scale = float(loaded.std()) if loaded.numel() > 1 else 1.0
        scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    else:
        scale = 1.0
    vectors = torch.randn(len(vocab), dim, generator=generator) * scale
    if rows:
        vectors[indices] = loaded
    vectors[PAD_INDEX] = 0.0
    return vectors, found
