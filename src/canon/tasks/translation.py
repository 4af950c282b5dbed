"""Machine translation as a task of the one engine: label-smoothed cross-entropy, BLEU, ``canon translate``.

Data (``--data``):

=============================================  =====================================================================
``multi30k:DIR`` (or ``multi30k --data-dir``)   Multi30k (WMT16 multimodal task 1): ``DIR/{train,val,test2016}.{de,en}``
``parallel:DIR``                                any line-aligned parallel text: ``DIR/train.SRC`` + ``DIR/train.TGT``,
                                                ``DIR/val.*``, ``DIR/test.*``
``...?train=STEM&val=STEM&test=STEM``           other file stems, e.g. ``parallel:DIR?val=valid`` or
                                                ``multi30k:DIR?test=val`` (``canon eval`` on the validation split)
=============================================  =====================================================================

``SRC``/``TGT`` are ``--source-lang`` / ``--target-lang`` (de and en by default; Multi30k has
only those two). One raw, untokenised sentence per line (:mod:`canon.data.translation` reads them
and checks that both sides have the same number of lines).

What the task does, in the engine's order:

- ``build_data``: one joint BPE vocabulary (Hugging Face ``tokenizers``, ``--vocab-size``) learned
  from the training split's two sides only and saved as ``RUN/vocabulary.json`` (a resumed run,
  ``canon eval`` and ``canon translate`` load it from there; ``--vocabulary FILE`` reuses another
  run's). During training the engine's "test" split is the **validation** split (its ``test_*``
  columns in ``history.csv`` are validation figures); the test split (test2016) is scored once,
  at the end, by ``canon eval RUN --data multi30k:DIR``.
- batches: padded with their masks (:func:`canon.data.translation.collate_translation`); with
  ``--length-batching`` (default on) each batch holds sentences of similar length (fairseq's
  bucketing: pools of 100 batches sorted by length, then the batches shuffled), so little compute
  goes to padding; ``--batch-size`` counts sentence pairs.
- the loss: ``canon.losses.cross_entropy`` with label smoothing ε (0.1, the paper's ε_ls) over
  the target vocabulary, padding positions ignored, averaged over the real target tokens.
- evaluation: on the validation split every ``--eval-every`` epochs the label-smoothed loss
  (``test_loss``), the plain cross-entropy per token (``test_nll``) and its perplexity, and corpus
  BLEU (``test_bleu``, :func:`canon.metrics.bleu`: sacreBLEU's standard settings on detokenised
  output) from greedy decoding (``--val-bleu``); ``--select-by`` (nll or bleu) picks
  ``best.safetensors``. ``canon eval`` decodes with the run's ``--beam-size`` and
  ``--length-penalty`` (Wu et al.'s α; beam size 1 is greedy search) and writes ``eval.json``
  with the sacreBLEU signature and ``hypotheses.txt`` (one translation per line, in test order).
- ``canon translate RUN "Ein Mann fährt Fahrrad."`` (or ``--file FILE``) prints one translation
  per line; ``canon predict RUN SENTENCE...`` returns the same as JSON.

Decoding (:mod:`canon.models.sequence.decoding`) stops each sentence at its end-of-sentence token
or after source length + 50 tokens (the paper's section 6.1), or ``--max-length`` tokens.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from canon.data.core import data_error
from canon.data.translation import (EOS_ID, PAD_ID, SubwordVocabulary, TranslationDataset, collate_translation,
                                    pad_sequences, read_parallel_text)
from canon.engine.options import option
from canon.engine.trainer import TaskData
from canon.tasks.base import CliCommand, Task

__all__ = ["TranslationOptions", "TranslationTask", "ParallelCorpus", "parse_translation_spec", "translation_loss",
           "translate_sentences", "load_run_vocabulary", "VOCABULARY_FILE", "TRANSLATION_SPECS"]

VOCABULARY_FILE = "vocabulary.json"
HYPOTHESES_FILE = "hypotheses.txt"
TRANSLATION_SPECS = "multi30k:DIR or parallel:DIR (files STEM.SRC / STEM.TGT), each with optional " \
                    "?train=STEM&val=STEM&test=STEM"
VAL_BLEU = ("greedy", "beam", "none")
SELECT_BY = ("nll", "bleu")
DECODE_BATCH_SIZE = 128  # sentences per decoding batch (times the beam size in rows)
_LANGUAGE = re.compile(r"^[A-Za-z0-9_-]+$")


# --- options ------------------------------------------------------------------------------------

@dataclass
class TranslationOptions:
    source_lang: str = option("de", "source language: the suffix of the source files (train.de, ...)")
    target_lang: str = option("en", "target language: the suffix of the target files")
    vocab_size: int = option(8000, "size of the joint source-target BPE vocabulary learned from the training split")
    vocab_min_frequency: int = option(2, "BPE: merge only pairs seen at least this often")
    vocabulary: str | None = option(None, "reuse this vocabulary.json (e.g. another run's) instead of learning one",
                                    metavar="FILE")
    label_smoothing: float = option(0.1, "label smoothing ε of the cross-entropy (the Transformer paper's 0.1)")
    length_batching: bool = option(True, "batch sentences of similar length (less padding; the order stays random)")
    beam_size: int = option(4, "beam size of canon eval and canon translate (1 = greedy search)")
    length_penalty: float = option(0.6, "beam search's length penalty α, lp = ((5 + |Y|) / 6)^α (Wu et al. 2016)")
    max_length: int | None = option(None, "longest translation in tokens (default: source length + 50)")
    val_bleu: str = option("greedy", "BLEU on the validation split at each evaluation: greedy, beam (--beam-size) "
                                     "or none", choices=VAL_BLEU)
    select_by: str = option("nll", "what picks best.safetensors: validation cross-entropy (nll) or BLEU",
                            choices=SELECT_BY)

    def __post_init__(self):
        for name in ("source_lang", "target_lang"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _LANGUAGE.match(value):
                raise ValueError(f"--{name.replace('_', '-')} must be a language code such as de or en "
                                 f"(letters, digits, - or _), got {value!r}")
        if self.source_lang == self.target_lang:
            raise ValueError(f"--source-lang and --target-lang are both {self.source_lang!r}")
        for name, low in (("vocab_size", 5), ("vocab_min_frequency", 1), ("beam_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or self.max_length < 1):
            raise ValueError(f"--max-length must be a whole number of tokens >= 1, got {self.max_length!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not isinstance(self.length_penalty, (int, float)) or self.length_penalty < 0:
            raise ValueError(f"--length-penalty must be a number >= 0, got {self.length_penalty!r}")
        if self.val_bleu not in VAL_BLEU:
            raise ValueError(f"--val-bleu must be one of {', '.join(VAL_BLEU)}, got {self.val_bleu!r}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.select_by == "bleu" and self.val_bleu == "none":
            raise ValueError("--select-by bleu needs validation BLEU: drop --val-bleu none")


# --- data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParallelCorpus:
    """Where a translation spec's files are: ``files[split] = (source file, target file)`` for
    ``split`` in train, val, test."""

    kind: str
    root: Path
    files: dict[str, tuple[Path, Path]]

    def pairs(self, split: str) -> list[tuple[str, str]]:
        source, target = self.files[split]
        return read_parallel_text(source, target)


def parse_translation_spec(spec: str, data_dir: str | None = None, *, source_lang: str = "de",
                           target_lang: str = "en") -> ParallelCorpus:
    """``multi30k:DIR`` / ``parallel:DIR`` with optional ``?train=STEM&val=STEM&test=STEM`` -> the files."""
    if not isinstance(spec, str):
        raise TypeError(f"--data must be a string such as multi30k:DIR, got {type(spec).__name__}")
    head, _, query = spec.partition("?")
    kind, sep, folder = head.partition(":")
    if kind not in ("multi30k", "parallel"):
        raise data_error(None, f"a translation dataset: {TRANSLATION_SPECS}", found=repr(spec))
    if folder and data_dir is not None and Path(data_dir).expanduser().resolve() != Path(folder).expanduser().resolve():
        raise data_error(None, f"no --data-dir for {kind}:DIR (the folder is in the name)",
                         found=f"--data-dir {data_dir} besides {spec}")
    folder = folder or data_dir
    if not folder:
        raise data_error(None, f"a folder: {kind}:DIR (or {kind} --data-dir DIR)", found=repr(spec))
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise data_error(root, f"a folder of parallel text for {kind}", "no such folder")
    stems = {"train": "train", "val": "val", "test": "test2016" if kind == "multi30k" else "test"}
    if query:
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if key not in stems or not eq or not value or "/" in value:
                raise data_error(None, f"?train=STEM&val=STEM&test=STEM after the folder (file stems, no '/')",
                                 found=repr(spec))
            stems[key] = value
    if kind == "multi30k":
        for name, language in (("--source-lang", source_lang), ("--target-lang", target_lang)):
            if language not in ("de", "en"):
                raise ValueError(f"Multi30k has German and English: {name} must be de or en, got {language!r}")
    files = {split: (root / f"{stem}.{source_lang}", root / f"{stem}.{target_lang}") for split, stem in stems.items()}
    return ParallelCorpus(kind=kind, root=root, files=files)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_run_vocabulary(meta: dict[str, Any]) -> SubwordVocabulary:
    """The vocabulary a checkpoint was trained with: ``vocabulary.json`` beside its weights file,
    checked against the SHA-256 the checkpoint recorded."""
    extra = meta.get("extra", {})
    weights = Path(meta["path"])
    path = weights.parent / extra.get("vocabulary", VOCABULARY_FILE)
    if not path.is_file():
        raise data_error(path, f"the vocabulary {weights} was trained with (the run folder's {VOCABULARY_FILE})",
                         "no such file", "keep vocabulary.json beside the weights file")
    vocabulary = SubwordVocabulary.load(path)
    recorded = extra.get("vocabulary_sha256")
    if recorded and _sha256(path) != recorded:
        raise data_error(path, f"the vocabulary {weights} was trained with (sha256 {recorded[:12]}...)",
                         f"a different file (sha256 {_sha256(path)[:12]}...)")
    return vocabulary


# --- the loss -----------------------------------------------------------------------------------

def translation_loss(logits: torch.Tensor, labels: torch.Tensor, *, padding_idx: int = PAD_ID,
                     label_smoothing: float = 0.1, reduction: str = "mean") -> torch.Tensor:
    """Label-smoothed cross-entropy over the target vocabulary, padding positions ignored.

    logits (N, T, V), labels (N, T) the next tokens (``padding_idx`` where there is none).
    Per real position ``-Σ_v q_v log p_v`` with ``q = (1 - ε) one_hot(y) + ε / V`` (Szegedy et
    al.'s uniform prior, torch's definition); ``"mean"`` averages over the real target tokens,
    ``"sum"`` adds them up. Computed in float32 (bfloat16 logits under ``--amp`` are cast).
    """
    from canon.losses import cross_entropy

    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"translation_loss: logits must be (N, T, V) and labels (N, T), got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    return cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=padding_idx,
                         label_smoothing=label_smoothing, reduction=reduction)


def _teacher_forcing(model, batch):
    """The decoder reads ``[<s>, y_1, ..., y_{T-1}]`` and predicts ``[y_1, ..., y_T]``: (logits, labels)."""
    tgt_tokens = batch["tgt_tokens"]
    logits = model(batch["src_tokens"], tgt_tokens[:, :-1], batch["src_padding_mask"],
                   batch["tgt_padding_mask"][:, :-1])                                      # (N, T, V)
    return logits, tgt_tokens[:, 1:]


# --- translating --------------------------------------------------------------------------------

def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def translate_sentences(model: nn.Module, vocabulary: SubwordVocabulary, sentences: Sequence[str], *,
                        beam_size: int = 1, length_penalty: float = 0.6, max_length: int | None = None,
                        batch_size: int = DECODE_BATCH_SIZE, device: torch.device | None = None) -> list[str]:
    """Raw source sentences -> detokenised translations, in the same order.

    Sentences are encoded (subwords + ``</s>``), decoded in batches of similar length (greedy
    search for ``beam_size=1``, else beam search with Wu et al.'s length penalty α) and the
    output ids detokenised by the vocabulary. An empty sentence is an error.
    """
    from canon.models.sequence.decoding import beam_search, greedy_search

    if isinstance(sentences, str):
        raise TypeError("translate_sentences takes a list of sentences, got one string; wrap it in a list")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for number, sentence in enumerate(sentences, start=1):
        if not isinstance(sentence, str):
            raise TypeError(f"sentence {number} must be a string, got {type(sentence).__name__}")
        if not sentence.strip():
            raise ValueError(f"sentence {number} is empty ({sentence!r}): nothing to translate")
    encoded = vocabulary.encode_batch(list(sentences)) if sentences else []
    device = device or _model_device(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    translations: list[str | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        src_tokens, src_padding_mask, _ = pad_sequences(
            [torch.tensor(encoded[i] + [EOS_ID], dtype=torch.long) for i in rows], vocabulary.pad_id)
        src_tokens, src_padding_mask = src_tokens.to(device), src_padding_mask.to(device)
        if beam_size == 1:
            hypotheses = greedy_search(model, src_tokens, src_padding_mask, max_length=max_length)
        else:
            hypotheses = beam_search(model, src_tokens, src_padding_mask, beam_size=beam_size,
                                     alpha=length_penalty, max_length=max_length)
        for i, text in zip(rows, vocabulary.decode_batch([h.tokens for h in hypotheses])):
            translations[i] = text
    return translations  # type: ignore[return-value]


# --- the task -----------------------------------------------------------------------------------

class TranslationTask(Task):
    name = "translation"
    Options = TranslationOptions
    primary_metric = "test_nll"
    higher_is_better = False
    sample_unit = "sentences"
    collate = staticmethod(collate_translation)  # pads with id 0 = <pad>, the vocabulary's and the models' default

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        if self.options.select_by == "bleu":
            self.primary_metric, self.higher_is_better = "test_bleu", True
        self.vocabulary: SubwordVocabulary | None = None
        self.vocabulary_sha256: str | None = None
        self.batch_size: int | None = None
        self.hypotheses: list[str] | None = None  # the last full evaluation's translations
        self._lengths: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ data and model
    def _vocabulary_for_run(self, run, corpus: ParallelCorpus, train_pairs) -> SubwordVocabulary:
        """Learn (or reuse) the vocabulary and keep it in the run folder."""
        from canon.engine.checkpoint import latest_checkpoint_dir
        from canon.engine.distributed import barrier, restart_count

        cfg, o = run.config, self.options
        run_dir = Path(run.run_dir) if run.run_dir is not None else None
        saved = run_dir / VOCABULARY_FILE if run_dir is not None else None
        resuming = (cfg.resume or restart_count() > 0) and run_dir is not None and \
            latest_checkpoint_dir(run_dir) is not None
        if resuming:
            if not saved.is_file():
                raise data_error(saved, f"the vocabulary of the run being resumed ({run_dir})", "no such file",
                                 "a resumed run needs the vocabulary its checkpoints were trained with")
            if o.vocabulary and _sha256(Path(o.vocabulary)) != _sha256(saved):
                raise data_error(o.vocabulary, f"the vocabulary the resumed run was trained with ({saved})",
                                 "a different file")
            return SubwordVocabulary.load(saved)
        if o.vocabulary:
            vocabulary = SubwordVocabulary.load(o.vocabulary)
        elif run.distributed.rank > 0:  # process 0 learns it; the others read its file
            barrier(run.distributed)
            return SubwordVocabulary.load(saved)
        else:
            sentences = [sentence for pair in train_pairs for sentence in pair]  # the training split only
            vocabulary = SubwordVocabulary.train(sentences, vocab_size=o.vocab_size,
                                                 min_frequency=o.vocab_min_frequency)
        if saved is not None and run.distributed.is_main:
            saved.parent.mkdir(parents=True, exist_ok=True)
            vocabulary.save(saved)
        if not o.vocabulary:
            barrier(run.distributed)
        return vocabulary

    def build_data(self, run) -> TaskData:
        cfg, o = run.config, self.options
        corpus = parse_translation_spec(cfg.data, cfg.data_dir, source_lang=o.source_lang, target_lang=o.target_lang)
        train_pairs = corpus.pairs("train")
        val_pairs = corpus.pairs("val")
        vocabulary = self._vocabulary_for_run(run, corpus, train_pairs)
        self._set_vocabulary(vocabulary, Path(run.run_dir) / VOCABULARY_FILE if run.run_dir else None)
        self.batch_size = cfg.batch_size
        return TaskData(train=TranslationDataset(train_pairs, vocabulary),
                        test=TranslationDataset(val_pairs, vocabulary),  # the validation split, see the docstring
                        info=corpus)

    def _set_vocabulary(self, vocabulary: SubwordVocabulary, saved: Path | None) -> None:
        self.vocabulary = vocabulary
        self.vocabulary_sha256 = _sha256(saved) if saved is not None and saved.is_file() else None

    def model_kwargs(self, data: TaskData) -> dict[str, Any]:
        size = len(self.vocabulary)
        return {"src_vocab_size": size, "tgt_vocab_size": size}

    def build_model(self, run, data: TaskData) -> nn.Module:
        model = super().build_model(run, data)
        self._check_model(model)
        return model

    def _check_model(self, model: nn.Module) -> None:
        vocabulary = self.vocabulary
        for name in ("src_vocab_size", "tgt_vocab_size"):
            if getattr(model, name, len(vocabulary)) != len(vocabulary):
                raise ValueError(f"the model's {name} is {getattr(model, name)} but the vocabulary has "
                                 f"{len(vocabulary)} tokens; leave {name} to the task (no --model-arg {name})")
        for name, expected in (("padding_idx", vocabulary.pad_id), ("bos_idx", vocabulary.bos_id),
                               ("eos_idx", vocabulary.eos_id)):
            if getattr(model, name, expected) != expected:
                raise ValueError(f"the model's {name} is {getattr(model, name)}, the vocabulary's is {expected}")

    def sample_order(self, train_set):
        if not self.options.length_batching:
            return None
        key = id(train_set)
        if key not in self._lengths:
            sizes = [(len(source), len(target)) for source, target in (train_set[i] for i in range(len(train_set)))]
            longest_source = max((s for s, _ in sizes), default=0)
            # fairseq's order: by target length, then source length
            self._lengths[key] = torch.tensor([t * (longest_source + 1) + s for s, t in sizes], dtype=torch.long)
        return _length_batched_order(self._lengths[key], self.batch_size or 64)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, batch, step=None):
        logits, labels = _teacher_forcing(model, batch)
        loss = translation_loss(logits, labels, padding_idx=PAD_ID, label_smoothing=self.options.label_smoothing)
        if step is not None:
            step.log(int((labels != PAD_ID).sum()), loss=loss.item())  # a mean per target token
        return loss

    # ------------------------------------------------------------------ evaluation
    def _decoding(self, beam: bool) -> dict[str, Any]:
        o = self.options
        beam_size = o.beam_size if beam else 1
        return {"beam_size": beam_size, "length_penalty": o.length_penalty if beam_size > 1 else None,
                "max_length": o.max_length if o.max_length is not None else "source length + 50"}

    @torch.no_grad()
    def evaluate(self, model, loader, *, full: bool = False):
        """Validation (training) or test (``canon eval``, ``full=True``) loss, perplexity and BLEU."""
        from canon.metrics import bleu

        model.eval()
        loss_sum = nll_sum = tokens = 0.0
        for batch in loader:
            logits, labels = _teacher_forcing(model, batch)
            loss_sum += translation_loss(logits, labels, label_smoothing=self.options.label_smoothing,
                                         reduction="sum").item()
            nll_sum += translation_loss(logits, labels, label_smoothing=0.0, reduction="sum").item()
            tokens += int((labels != PAD_ID).sum())
        nll = nll_sum / max(tokens, 1)
        result: dict[str, Any] = {"test_loss": loss_sum / max(tokens, 1), "test_nll": nll,
                                  "test_perplexity": math.exp(min(nll, 700.0))}
        decoding = "beam" if full else self.options.val_bleu
        if decoding == "none":
            return result
        dataset = loader.dataset
        settings = self._decoding(beam=decoding == "beam")
        o = self.options
        hypotheses = translate_sentences(model, self.vocabulary, [source for source, _ in dataset.pairs],
                                         beam_size=settings["beam_size"], length_penalty=o.length_penalty,
                                         max_length=o.max_length)
        score, signature = bleu(hypotheses, [[target for _, target in dataset.pairs]], return_signature=True)
        result["test_bleu"] = score
        if full:
            self.hypotheses = hypotheses
            result.update({"bleu_signature": signature, "decoding": settings, "sentences": len(hypotheses),
                           "target_tokens": int(tokens)})
        return result

    def checkpoint_meta(self) -> dict[str, Any]:
        o = self.options
        return {"source_lang": o.source_lang, "target_lang": o.target_lang, "vocabulary": VOCABULARY_FILE,
                "vocabulary_sha256": self.vocabulary_sha256, "vocab_size": len(self.vocabulary or ()),
                "beam_size": o.beam_size, "length_penalty": o.length_penalty, "max_length": o.max_length,
                "label_smoothing": o.label_smoothing}

    def _options_from_meta(self, meta: dict[str, Any]) -> None:
        """Decode the way the run was told to (its languages, beam size, α, maximum length)."""
        extra = meta.get("extra", {})
        keys = ("source_lang", "target_lang", "beam_size", "length_penalty", "max_length", "label_smoothing")
        self.options = dataclasses.replace(self.options, **{k: extra[k] for k in keys if k in extra})

    def build_eval_data(self, data, data_dir, meta, model) -> TaskData:
        self._options_from_meta(meta)
        o = self.options
        vocabulary = load_run_vocabulary(meta)
        self.vocabulary = vocabulary
        self._check_model(model)
        corpus = parse_translation_spec(data, data_dir, source_lang=o.source_lang, target_lang=o.target_lang)
        return TaskData(train=None, test=TranslationDataset(corpus.pairs("test"), vocabulary), info=corpus)

    def write_figures(self, model, data, result, out_dir: Path) -> dict[str, Any]:
        if self.hypotheses is None:
            return {}
        from canon.engine.checkpoint import atomic_write_text

        path = Path(out_dir) / HYPOTHESES_FILE
        atomic_write_text(path, "".join(f"{line}\n" for line in self.hypotheses))
        source, target = data.info.files["test"]
        return {"hypotheses": str(path), "source_file": str(source), "reference_file": str(target)}

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, model, meta, inputs, *, save_dir=None, topk: int = 5, device=None):
        """``canon predict RUN SENTENCE...``: ``[{"input": sentence, "translation": text}, ...]``."""
        self._options_from_meta(meta)
        o = self.options
        vocabulary = load_run_vocabulary(meta)
        translations = translate_sentences(model, vocabulary, list(inputs), beam_size=o.beam_size,
                                           length_penalty=o.length_penalty, max_length=o.max_length, device=device)
        return [{"input": sentence, "translation": text} for sentence, text in zip(inputs, translations)]

    @classmethod
    def cli_commands(cls) -> list[CliCommand]:
        return [CliCommand("translate", "translate sentences with a trained translation run "
                                        "(canon translate RUN \"Ein Mann fährt Fahrrad.\")",
                           _translate_arguments, _run_translate)]


def _length_batched_order(lengths: torch.Tensor, batch_size: int, pool_batches: int = 100):
    """fairseq-style bucketing as a sample order: shuffle, sort pools of ``pool_batches`` batches by
    length, cut them into batches of ``batch_size`` and shuffle the batches. Every batch but the
    last is full and the short one (if any) comes last, so the engine's cut into batches of
    ``batch_size`` gives exactly these batches."""
    def order(generator: torch.Generator) -> list[int]:
        permutation = torch.randperm(len(lengths), generator=generator)
        pool = batch_size * pool_batches
        batches = []
        for start in range(0, len(permutation), pool):
            chunk = permutation[start:start + pool]
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
            batches += list(chunk.split(batch_size))
        full = [b for b in batches if len(b) == batch_size]
        short = [b for b in batches if len(b) < batch_size]  # at most one: the last pool's remainder
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return torch.cat(shuffled + short).tolist() if batches else []

    return order


# --- canon translate ------------------------------------------------------------------------------

def _translate_arguments(parser) -> None:
    from canon.engine.config import DEVICES

    parser.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    parser.add_argument("sentences", nargs="*", metavar="SENTENCE", help="source sentences (raw text)")
    parser.add_argument("--file", help="translate this file's sentences, one per line (UTF-8)")
    parser.add_argument("--beam-size", type=int, help="beam size (1 = greedy; default: the run's --beam-size)")
    parser.add_argument("--length-penalty", type=float, help="beam search's α (default: the run's)")
    parser.add_argument("--max-length", type=int, help="longest translation in tokens (default: the run's, "
                                                       "source length + 50)")
    parser.add_argument("--batch-size", type=int, default=DECODE_BATCH_SIZE, help="sentences per decoding batch")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print [{input, translation}, ...] as JSON")


def _run_translate(args) -> int:
    import json

    from canon.data.translation import read_sentences
    from canon.engine.checkpoint import load_model
    from canon.engine.trainer import resolve_device

    if bool(args.sentences) == bool(args.file):
        raise ValueError("give the sentences to translate either as arguments or with --file FILE (not both)"
                         if args.file else "nothing to translate: give sentences as arguments or --file FILE")
    sentences = read_sentences(args.file) if args.file else list(args.sentences)
    model, meta = load_model(args.run)
    if meta.get("extra", {}).get("task") != "translation":
        raise ValueError(f"{meta['path']} is a {meta.get('extra', {}).get('task', 'non-translation')} checkpoint, "
                         "not a translation run")
    task = TranslationTask()
    task._options_from_meta(meta)
    overrides = {k: getattr(args, k) for k in ("beam_size", "length_penalty", "max_length")
                 if getattr(args, k) is not None}
    o = dataclasses.replace(task.options, **overrides)  # checks the values (__post_init__)
    device = resolve_device(args.device)
    model.to(device)
    vocabulary = load_run_vocabulary(meta)
    translations = translate_sentences(model, vocabulary, sentences, beam_size=o.beam_size,
                                       length_penalty=o.length_penalty, max_length=o.max_length,
                                       batch_size=args.batch_size, device=device)
    if args.json:
        print(json.dumps([{"input": s, "translation": t} for s, t in zip(sentences, translations)],
                         ensure_ascii=False, indent=2))
    else:
        for text in translations:
            print(text)
    return 0
