"""Parallel text for translation: sentence pairs from files, a subword vocabulary, padded batches.

    pairs = read_multi30k("/path/to/multi30k", "train")               # [(German, English), ...]
    vocabulary = SubwordVocabulary.train([s for pair in pairs for s in pair], vocab_size=8000)
    vocabulary.save(run_dir / "vocabulary.json")                       # reload: SubwordVocabulary.load(...)
    dataset = TranslationDataset(pairs, vocabulary)                    # ds[i] -> (source ids, target ids)
    loader = DataLoader(dataset, batch_size=64, collate_fn=partial(collate_translation, padding_idx=vocabulary.pad_id))

Files: one raw (untokenised) sentence per line, UTF-8; line i of the source file translates line i of
the target file. A final newline is expected; one extra empty line at the very end (Multi30k's train
and val files end in ``\\n\\n``) is not a sentence and is dropped; any other empty line, a different
number of lines on the two sides, a missing or undecodable file raise :class:`canon.data.DataError`
naming the file(s).

The subword vocabulary is Hugging Face ``tokenizers``' byte-pair encoding (Sennrich et al., "Neural
Machine Translation of Rare Words with Subword Units", 2015, arXiv:1508.07909), the well-kept
library for the job: NFC normalisation, SentencePiece's "▁" word-boundary marker (the Metaspace
pre-tokenizer and decoder) so that decoding ids gives back detokenised text to score with sacreBLEU,
and canon's special tokens at fixed ids: ``<pad>`` 0, ``<s>`` 1 (begin), ``</s>`` 2 (end), ``<unk>`` 3,
the defaults of canon's translation models. Train it on the training split only.

A dataset item is ``(source ids + [</s>], [<s>] + target ids + [</s>])``; the collate pads them and
returns the padding masks (True at padding) and lengths. Teacher forcing reads the target as
decoder input ``tgt_tokens[:, :-1]`` and labels ``tgt_tokens[:, 1:]``.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch.utils.data import Dataset

from canon.data.core import DataError, data_error

__all__ = ["SPECIAL_TOKENS", "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "MULTI30K_SPLITS", "read_sentences",
           "read_parallel_text", "read_multi30k", "SubwordVocabulary", "TranslationDataset", "pad_sequences",
           "collate_translation"]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MULTI30K_SPLITS = ("train", "val", "test2016")
MULTI30K_LANGUAGES = ("de", "en")


# --- reading ------------------------------------------------------------------------------------

def read_sentences(path: str | Path) -> list[str]:
    """The sentences of a one-sentence-per-line UTF-8 file (one extra empty last line is dropped)."""
    path = Path(path)
    if not path.is_file():
        raise data_error(path, "a text file with one sentence per line", "no such file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise data_error(path, "UTF-8 text", f"undecodable bytes at byte {error.start}") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":  # what follows the final newline
        lines.pop()
    if lines and lines[-1] == "":  # the one extra empty line Multi30k's train and val files end with
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise data_error(path, "one non-empty sentence per line", f"an empty line at line {number}")
    return lines


def read_parallel_text(source_path: str | Path, target_path: str | Path) -> list[tuple[str, str]]:
    """Sentence pairs ``(source, target)`` from two line-aligned files."""
    sources, targets = read_sentences(source_path), read_sentences(target_path)
    if len(sources) != len(targets):
        message = (f"{source_path} and {target_path}: expected the same number of sentences on both sides "
                   f"(line i of one translates line i of the other), found {len(sources)} and {len(targets)}")
        raise DataError(message, path=source_path, expected="line-aligned files with equal line counts")
    return list(zip(sources, targets))


def read_multi30k(root: str | Path, split: str, *, source_language: str = "de",
                  target_language: str = "en") -> list[tuple[str, str]]:
    """Multi30k (WMT16 multimodal task 1) pairs: ``split`` in train (29,000), val (1,014), test2016 (1,000)."""
    if split not in MULTI30K_SPLITS:
        close = difflib.get_close_matches(split, MULTI30K_SPLITS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Multi30k split must be one of {MULTI30K_SPLITS}, got {split!r}{hint}")
    for name, language in (("source_language", source_language), ("target_language", target_language)):
        if language not in MULTI30K_LANGUAGES:
            raise ValueError(f"Multi30k {name} must be one of {MULTI30K_LANGUAGES}, got {language!r}")
    if source_language == target_language:
        raise ValueError(f"source and target language are both {source_language!r}")
    root = Path(root)
    return read_parallel_text(root / f"{split}.{source_language}", root / f"{split}.{target_language}")


# --- the subword vocabulary ------------------------------------------------------------------------

def _tokenizers():
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("the subword vocabulary needs Hugging Face tokenizers: pip install tokenizers") from None
    return tokenizers


class SubwordVocabulary:
    """A BPE vocabulary (Hugging Face ``tokenizers``) with canon's special tokens at ids 0-3."""

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, tokenizer, *, source: str | Path | None = None):
        where = source if source is not None else None
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            found = tokenizer.token_to_id(token)
            if found != expected_id:
                raise data_error(where, f"special token {token!r} at id {expected_id}",
                                 f"id {found}" if found is not None else "no such token",
                                 "train the vocabulary with SubwordVocabulary.train")
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, sentences: Iterable[str], *, vocab_size: int = 8000, min_frequency: int = 2) -> SubwordVocabulary:
        """Learn BPE merges from ``sentences`` (the training split only) up to ``vocab_size`` tokens."""
        if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be an integer above {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
        tk = _tokenizers()
        tokenizer = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = tk.normalizers.NFC()
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace()
        tokenizer.decoder = tk.decoders.Metaspace()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                         special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        tokenizer.train_from_iterator(sentences, trainer=trainer)
        return cls(tokenizer)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as ``tokenizers``' JSON, atomically (a temporary file, then a rename)."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp")
        self.tokenizer.save(str(temporary))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | Path) -> SubwordVocabulary:
        path = Path(path)
        if not path.is_file():
            raise data_error(path, "a subword vocabulary JSON file (SubwordVocabulary.save)", "no such file")
        try:
            tokenizer = _tokenizers().Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for malformed JSON
            raise data_error(path, "a Hugging Face tokenizers JSON file (SubwordVocabulary.save)",
                             f"a file it cannot read ({str(error).splitlines()[0][:120]})") from None
        return cls(tokenizer, source=path)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, sentence: str) -> list[int]:
        """A raw sentence -> subword ids (no begin/end tokens)."""
        if not isinstance(sentence, str):
            raise TypeError(f"encode expects a string, got {type(sentence).__name__}")
        return self.tokenizer.encode(sentence, add_special_tokens=False).ids

    def encode_batch(self, sentences: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(sentences), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Subword ids -> detokenised text; special tokens are left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return self.tokenizer.decode_batch([list(ids) for ids in batch], skip_special_tokens=True)


# --- dataset and batches ---------------------------------------------------------------------------

class TranslationDataset(Dataset):
    """Sentence pairs as ids: ``ds[i] = (source ids + [</s>], [<s>] + target ids + [</s>])``, LongTensors.

    ``target_vocabulary`` defaults to ``source_vocabulary`` (one joint vocabulary). ``ds.pairs`` keeps
    the raw sentences (the references for BLEU).
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], source_vocabulary: SubwordVocabulary,
                 target_vocabulary: SubwordVocabulary | None = None):
        target_vocabulary = source_vocabulary if target_vocabulary is None else target_vocabulary
        self.pairs = list(pairs)
        self.source_vocabulary, self.target_vocabulary = source_vocabulary, target_vocabulary
        sources = source_vocabulary.encode_batch([s for s, _ in self.pairs])
        targets = target_vocabulary.encode_batch([t for _, t in self.pairs])
        self.sources = [torch.tensor(ids + [EOS_ID], dtype=torch.long) for ids in sources]
        self.targets = [torch.tensor([BOS_ID] + ids + [EOS_ID], dtype=torch.long) for ids in targets]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sources[index], self.targets[index]


def pad_sequences(sequences: Sequence[torch.Tensor], padding_idx: int = PAD_ID):
    """1-D id tensors -> (tokens (N, L_max) right-padded, padding_mask (N, L_max) True at padding, lengths (N,))."""
    if not sequences:
        raise ValueError("pad_sequences needs at least one sequence")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), padding_idx, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        tokens[i, :len(sequence)] = sequence
    padding_mask = torch.arange(tokens.shape[1])[None, :] >= lengths[:, None]
    return tokens, padding_mask, lengths


def collate_translation(batch: Sequence[tuple[torch.Tensor, torch.Tensor]], padding_idx: int = PAD_ID) -> dict:
    """A list of (source ids, target ids) -> a dict of padded tensors.

    ``src_tokens`` (N, S), ``src_padding_mask`` (N, S), ``src_lengths`` (N,), and the same for ``tgt_*``
    (the target holding <s> ... </s>).
    """
    src_tokens, src_padding_mask, src_lengths = pad_sequences([s for s, _ in batch], padding_idx)
    tgt_tokens, tgt_padding_mask, tgt_lengths = pad_sequences([t for _, t in batch], padding_idx)
    return {"src_tokens": src_tokens, "src_padding_mask": src_padding_mask, "src_lengths": src_lengths,
            "tgt_tokens": tgt_tokens, "tgt_padding_mask": tgt_padding_mask, "tgt_lengths": tgt_lengths}
