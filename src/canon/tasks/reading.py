"""Reading comprehension: span extraction on SQuAD v1.1 as a task of the one engine.

Data (``--data``)::

    squad                        the files in --data-dir DIR (default $CANON_DATA_DIR/squad, else ~/.cache/canon/squad)
    squad:DIR                    the files in DIR
    squad:TRAIN_FILE:DEV_FILE    two SQuAD v1.1 json files (.json or .json.gz)

A folder holds the official names (``train-v1.1.json``, ``dev-v1.1.json``, either may be
gzipped) or canon's shared-data layout (``squad/dev-v1.1.json``,
``squad-train-rebuilt/train-v1.1-rebuilt.json.gz``). ``canon eval`` needs only the dev file,
so ``squad:DEV_FILE`` works there too. Training reads the training split, evaluation the dev
split (the official v1.1 metrics are defined on it). The shared-data training file is a rebuild,
not the official file (synthetic ids; about 2 % of its answer offsets may point at another
occurrence of the answer text): the run says so on stderr and its weights record
``rebuilt_train: true``.

The pipeline, all of it :mod:`canon.data.squad`: the word and character vocabularies are built
from the training split (``build_vocabularies``) and written to ``RUN/vocabularies.json``, which
``canon eval``, ``canon answer`` and ``--resume`` read back (the weights record its sha256);
training contexts keep their first ``--max-context-tokens`` tokens and the questions whose answer
ends beyond them are dropped and counted (stderr, and ``dropped`` in the weights' metadata);
evaluation reads whole contexts. Models follow the forward contract of
:mod:`canon.models.reading` (six inputs -> start and end logits); the loss is
:func:`canon.models.reading._common.span_loss`, decoding ``best_spans`` (argmax of
p_start(i)·p_end(j) over i <= j <= i + 15), and the metrics the official v1.1 exact match and F1
(:func:`canon.metrics.squad_evaluate`) over every question of the dev file.

Options this task adds to ``canon train``: ``--max-context-tokens``, ``--max-question-tokens``,
``--word-min-count``, ``--word-vectors FILE`` (GloVe-format text; frozen unless
``--train-word-vectors``), ``--ema-decay D`` (evaluate the exponential moving average of the
weights: BiDAF 0.999, QANet 0.9999), ``--bucket`` / ``--no-bucket`` (batches of similar context
length) and ``--max-answer-tokens``.

What a run folder gets besides the engine's files: ``vocabularies.json``; with ``--ema-decay``,
``ema.safetensors`` (the average after the newest epoch, also what ``--resume`` continues) and
``ema-best.safetensors`` (at the epoch of the best dev F1 of the average), both ordinary canon
weights files. With ``--ema-decay`` the epoch's ``test_*`` figures are the average's; ``best`` and
``last.safetensors`` keep the trained weights themselves, as the engine writes them.
``canon eval RUN --data squad:...`` writes ``eval.json`` (``exact_match``, ``f1``) and
``predictions.json`` (``{question id: answer}``, the official format);
``canon answer RUN --context ... --question ...`` prints the answer and its probability
(``ema-best``, then ``best``, then ``last`` weights of a run folder); ``canon predict RUN FILE.json``
answers the ``{"context", "question"}`` objects of each file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from canon.data.core import data_error
from canon.data.squad import (
    MAX_ANSWER_TOKENS, SQUAD_DEV_FILE, SQUAD_TRAIN_FILE, SquadDataset, best_spans, build_vocabularies, collate_squad,
    model_inputs, question_batch, read_squad, read_squad_json, span_texts,
)
from canon.data.text_tokenize import Vocabulary, load_word_vectors, tokenize_with_offsets
from canon.engine.checkpoint import (
    CheckpointError, atomic_write_text, latest_checkpoint_dir, load_model, load_weights, resolve_weights_path,
    save_weights,
)
from canon.engine.options import option
from canon.engine.trainer import TaskData
from canon.models.reading._common import span_loss
from canon.tasks.base import CliCommand, Task

__all__ = ["ReadingOptions", "ReadingTask", "WeightAverage", "squad_files", "bucketed_order", "save_vocabularies",
           "load_vocabularies", "load_reader", "answer_question", "VOCABULARY_FILE", "EMA_FILE", "EMA_BEST_FILE"]

VOCABULARY_FILE = "vocabularies.json"
VOCABULARY_FORMAT = "canon-squad-vocabularies-1"
EMA_FILE, EMA_BEST_FILE = "ema.safetensors", "ema-best.safetensors"
# In a folder, the first of these names that exists is the split's file.
TRAIN_FILE_NAMES = ("train-v1.1.json", "train-v1.1.json.gz", SQUAD_TRAIN_FILE, "train-v1.1-rebuilt.json.gz")
DEV_FILE_NAMES = ("dev-v1.1.json", "dev-v1.1.json.gz", SQUAD_DEV_FILE)
DATA_FORMS = "squad (files in --data-dir), squad:DIR or squad:TRAIN_FILE:DEV_FILE"


# ----------------------------------------------------------------------------- options
def token_limit(text) -> int | None:
    """A token limit from flag or YAML text: a whole number >= 1, or ``none`` for no limit."""
    if text is None or (isinstance(text, int) and not isinstance(text, bool)):
        return text
    if isinstance(text, str) and text.strip().lower() in ("none", ""):
        return None
    try:
        return int(str(text))
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a whole number of tokens or none, got {text!r}") from None


@dataclass
class ReadingOptions:
    max_context_tokens: int | None = option(
        400, "training: keep the first N context tokens and drop (and count) the questions whose answer ends "
             "beyond them (BiDAF, QANet: 400); none keeps whole contexts. Evaluation reads whole contexts",
        parse=token_limit, metavar="N")
    max_question_tokens: int | None = option(None, "keep the first N question tokens (QANet: 50; none: all)",
                                             parse=token_limit, metavar="N")
    word_min_count: int = option(2, "vocabulary: the words seen at least this often in the training split (the "
                                    "rest read as <unk>)")
    word_vectors: str | None = option(None, "GloVe-format text file of word vectors (WORD v1 ... vd per line, .txt "
                                            "or .txt.gz) for the vocabulary; sets the model's word_dim", metavar="FILE")
    train_word_vectors: bool = option(False, "with --word-vectors: fine-tune the loaded vectors (default: frozen, as "
                                             "BiDAF and QANet keep GloVe fixed)")
    ema_decay: float | None = option(None, "evaluate an exponential moving average of the weights with this decay "
                                           "(BiDAF: 0.999, QANet: 0.9999); without it, the weights themselves",
                                     metavar="DECAY")
    bucket: bool = option(True, "batches of questions whose contexts have similar lengths (less padding), the "
                                "batches in random order")
    max_answer_tokens: int = option(MAX_ANSWER_TOKENS, "decoding: answers of at most N+1 tokens (j <= i + N)",
                                    metavar="N")

    def __post_init__(self):
        for name in ("max_context_tokens", "max_question_tokens"):
            value = token_limit(getattr(self, name))
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= 1 or none, got {value!r}")
            setattr(self, name, value)
        if isinstance(self.word_min_count, bool) or not isinstance(self.word_min_count, int) or self.word_min_count < 1:
            raise ValueError(f"--word-min-count must be a whole number >= 1, got {self.word_min_count!r}")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float))
                                               and 0.0 < self.ema_decay < 1.0):
            raise ValueError(f"--ema-decay must lie strictly between 0 and 1 (BiDAF 0.999, QANet 0.9999), got "
                             f"{self.ema_decay!r}")
        if isinstance(self.max_answer_tokens, bool) or not isinstance(self.max_answer_tokens, int) \
                or self.max_answer_tokens < 0:
            raise ValueError(f"--max-answer-tokens must be a whole number >= 0, got {self.max_answer_tokens!r}")
        if self.train_word_vectors and not self.word_vectors:
            raise ValueError("--train-word-vectors needs --word-vectors FILE (without it the word vectors are "
                             "trained from scratch anyway)")


# ----------------------------------------------------------------------------- data files
def squad_files(data: str, data_dir: str | None = None, *, need_train: bool = True) -> tuple[Path | None, Path]:
    """The (training, dev) files of a ``--data`` spec (forms in the module docstring).

    ``need_train=False`` (``canon eval``) also accepts ``squad:DEV_FILE`` and returns None for the
    training file when a folder has none.
    """
    if not isinstance(data, str) or not (data == "squad" or data.startswith("squad:")):
        raise ValueError(f"reading models read SQuAD v1.1: --data {DATA_FORMS}; got {data!r}")
    parts = data.split(":")[1:]
    if parts and data_dir:
        raise ValueError(f"--data {data} names its files already; drop --data-dir {data_dir} (or use --data squad)")
    if len(parts) > 2:
        raise ValueError(f"--data {data}: expected {DATA_FORMS} (a path cannot hold ':' here)")
    if len(parts) == 2:
        paths = (Path(parts[0]).expanduser(), Path(parts[1]).expanduser())
        for split, path in zip(("training", "dev"), paths):
            if not path.is_file():
                raise data_error(path, f"the SQuAD v1.1 {split} file of --data squad:TRAIN_FILE:DEV_FILE",
                                 found="no such file")
        return paths
    if parts and Path(parts[0]).expanduser().is_file():
        if need_train:
            raise ValueError(f"--data {data} names one file; training needs squad:TRAIN_FILE:DEV_FILE or squad:DIR")
        return None, Path(parts[0]).expanduser()
    if parts:
        folder = Path(parts[0]).expanduser()
    else:
        from canon.data.download import default_data_dir

        folder = Path(data_dir).expanduser() if data_dir else default_data_dir("squad")
    if not folder.is_dir():
        raise data_error(folder, "a folder holding SQuAD v1.1 files (dev-v1.1.json and a training file)",
                         found="no such folder", hint=f"--data {DATA_FORMS}")

    def find(names, split):
        for name in names:
            if (folder / name).is_file():
                return folder / name
        raise data_error(folder, f"a SQuAD v1.1 {split} file, one of {', '.join(names)}", found="none",
                         hint=f"or name the files: --data squad:TRAIN_FILE:DEV_FILE")

    dev = find(DEV_FILE_NAMES, "dev")
    if not need_train:
        return next((folder / n for n in TRAIN_FILE_NAMES if (folder / n).is_file()), None), dev
    return find(TRAIN_FILE_NAMES, "training"), dev


# ----------------------------------------------------------------------------- vocabularies in the run folder
def save_vocabularies(path: str | Path, words: Vocabulary, chars: Vocabulary, *, built_from: str = "") -> str:
    """Write both vocabularies to ``path`` (json, atomically); return the sha256 of the text."""
    text = json.dumps({"format": VOCABULARY_FORMAT, "built_from": built_from, "words": words.state_dict(),
                       "chars": chars.state_dict()}, ensure_ascii=False)
    atomic_write_text(path, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_vocabularies(path: str | Path, *, sha256: str | None = None) -> tuple[Vocabulary, Vocabulary, str]:
    """``(words, chars, sha256)`` from a file :func:`save_vocabularies` wrote; with ``sha256`` the
    file must be the one the weights were trained with."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: expected the run's vocabularies (written when it trained), found no such "
                              "file; keep vocabularies.json beside the weights")
    text = path.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if sha256 is not None and digest != sha256:
        raise CheckpointError(f"{path} is not the vocabulary file these weights were trained with (sha256 "
                              f"{digest[:12]}..., the weights record {sha256[:12]}...)")
    try:
        state = json.loads(text)
        if state.get("format") != VOCABULARY_FORMAT:
            raise KeyError("format")
        words, chars = Vocabulary.from_state_dict(state["words"]), Vocabulary.from_state_dict(state["chars"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise data_error(path, f"a canon vocabulary file ({VOCABULARY_FORMAT})",
                         found=f"{type(err).__name__}: {err}") from None
    return words, chars, digest


def _run_vocabularies(meta: dict[str, Any]) -> tuple[Vocabulary, Vocabulary]:
    """The vocabularies beside a loaded weights file, checked against its metadata."""
    extra = meta.get("extra", {})
    path = Path(meta["path"]).parent / extra.get("vocabularies", VOCABULARY_FILE)
    words, chars, _ = load_vocabularies(path, sha256=extra.get("vocabularies_sha256"))
    return words, chars


# ----------------------------------------------------------------------------- batches of similar length
def bucketed_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator, *,
                   pool_batches: int = 100) -> list[int]:
    """A random epoch order whose consecutive runs of ``batch_size`` indices hold similar lengths.

    A random permutation is cut into pools of ``pool_batches`` batches; each pool is sorted by
    length and cut into batches; the full batches are shuffled, and the one partial batch (if the
    epoch does not divide evenly) comes last, so that the engine's cut of the order into batches
    of ``batch_size`` falls on these batches. Less padding: on SQuAD's contexts (20-700 tokens)
    a random batch of 32 is padded to about twice its mean length.
    """
    if batch_size < 1 or pool_batches < 1:
        raise ValueError(f"batch_size and pool_batches must be >= 1, got {batch_size} and {pool_batches}")
    permutation = torch.randperm(len(lengths), generator=generator).tolist()
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(permutation), pool):
        chunk = sorted(permutation[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    partial = [b for b in batches if len(b) < batch_size]  # at most one: the last pool's remainder
    shuffled = [full[k] for k in torch.randperm(len(full), generator=generator).tolist()]
    return [i for batch in shuffled + partial for i in batch]


# ----------------------------------------------------------------------------- the average of the weights
class WeightAverage:
    """An exponential moving average of a model's trainable parameters, used at evaluation.

    As TensorFlow's ``ExponentialMovingAverage(decay, num_updates=step)``, which BiDAF's and QANet's
    code use: the average starts at the initial weights θ₀, and update k = 1, 2, ... (after the
    k-th optimizer step) is::

        d_k = min(decay, (1 + k) / (10 + k))
        θ̄ ← d_k · θ̄ + (1 − d_k) · θ

    so that early averages are not dominated by the random initial weights. Frozen parameters
    (pretrained word vectors) are left out: their average is themselves.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie strictly between 0 and 1, got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def decay_at(self, k: int) -> float:
        """The decay of update ``k`` (1-based)."""
        return min(self.decay, (1.0 + k) / (10.0 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        self.num_updates += 1
        d = self.decay_at(self.num_updates)
        params = dict(model.named_parameters())
        for name, average in self.shadow.items():
            weight = params[name].detach()
            if average.device != weight.device:
                average = self.shadow[name] = average.to(weight.device)
            average.mul_(d).add_(weight, alpha=1.0 - d)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model with the averaged weights inside the block, its own weights again after it."""
        params = dict(model.named_parameters())
        saved = {}
        with torch.no_grad():
            for name, average in self.shadow.items():
                saved[name] = params[name].detach().clone()
                params[name].copy_(average)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, weight in saved.items():
                    params[name].copy_(weight)

    def load(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        """Continue from a saved average (the tensors of an ``ema.safetensors`` file)."""
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise CheckpointError(f"the saved average lacks {missing[:3]}...: it belongs to another model")
        for name, average in self.shadow.items():
            if state[name].shape != average.shape:
                raise CheckpointError(f"the saved average of {name} is {tuple(state[name].shape)}, the model's "
                                      f"weight {tuple(average.shape)}")
            self.shadow[name] = state[name].to(average.device, average.dtype).clone()
        self.num_updates = int(num_updates)


# ----------------------------------------------------------------------------- answering free questions
def load_reader(path: str | Path, device: torch.device | str = "cpu"):
    """``(model, meta, words, chars)`` of a reading run folder or weights file.

    A run folder gives its ``ema-best``, then ``best``, then ``last`` weights.
    """
    path = Path(path)
    if path.is_dir() and (path / EMA_BEST_FILE).is_file():
        path = path / EMA_BEST_FILE
    model, meta = load_model(resolve_weights_path(path))
    task = meta.get("extra", {}).get("task")
    if task != "reading":
        raise CheckpointError(f"{meta['path']} holds a {task or 'non-canon'} model ({meta['model']}); a reading "
                              "model (bidaf, rnet, fusionnet, qanet) trained with canon answers questions")
    words, chars = _run_vocabularies(meta)
    if (len(words), len(chars)) != (model.word_vocab_size, model.char_vocab_size):
        raise CheckpointError(f"{meta['path']}: the model has {model.word_vocab_size} words and "
                              f"{model.char_vocab_size} characters, its vocabularies {len(words)} and {len(chars)}")
    return model.to(device).eval(), meta, words, chars


@torch.no_grad()
def answer_question(model: nn.Module, words: Vocabulary, chars: Vocabulary, context: str, question: str, *,
                    max_answer_tokens: int = MAX_ANSWER_TOKENS, device: torch.device | str | None = None
                    ) -> dict[str, Any]:
    """The best span of ``context`` for ``question``: ``{"answer", "probability", "start", "end"}``.

    ``probability`` is p_start(i)·p_end(j) of the chosen tokens i..j; ``start``/``end`` are
    character offsets, ``context[start:end] == answer``. An empty context or question is a
    ValueError.
    """
    batch = question_batch(context, question, words, chars)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    model.eval()
    starts, ends, probabilities = best_spans(*model(**inputs), max_answer_tokens)
    offsets = batch["offsets"][0]
    start, end = offsets[int(starts[0])][0], offsets[int(ends[0])][1]
    return {"answer": context[start:end], "probability": float(probabilities[0]), "start": start, "end": end}


# ----------------------------------------------------------------------------- the task
class ReadingTask(Task):
    """Extractive question answering: span loss, EM/F1 on the dev file, optional weight averaging."""

    name = "reading"
    Options = ReadingOptions
    primary_metric = "test_f1"
    higher_is_better = True
    eval_batch_size = 32  # whole dev contexts, up to ~700 tokens
    sample_unit = "questions"  # history.csv: train_questions_per_s
    collate = staticmethod(collate_squad)

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        self.words: Vocabulary | None = None
        self.chars: Vocabulary | None = None
        self.vocabularies_sha256: str | None = None
        self.word_vectors: torch.Tensor | None = None
        self.dev_articles: list | None = None  # the dev file's "data", for the official metrics
        self.facts: dict[str, Any] = {}  # what the weights record
        self.ema: WeightAverage | None = None
        self.run = None
        self.batch_size = 32
        self.predictions: dict[str, str] | None = None  # the last full evaluation's, for predictions.json
        self._evaluated: dict[str, float] | None = None  # this epoch's figures, for ema-best.safetensors
        self._ema_best: float | None = None

    # ------------------------------------------------------------------ data
    def _dev_dataset(self, dev_path: Path):
        """The whole dev split, ordered by context length (less padding; predictions are by id)."""
        examples = read_squad(dev_path)
        self.dev_articles = read_squad_json(dev_path)["data"]
        dev = SquadDataset(examples, self.words, self.chars, max_question_tokens=self.options.max_question_tokens)
        order = sorted(range(len(dev)), key=lambda i: len(dev[i].context_words))
        return torch.utils.data.Subset(dev, order)

    def build_data(self, run) -> TaskData:
        cfg, o = run.config, self.options
        self.run, self.batch_size = run, cfg.batch_size
        main = run.distributed.is_main
        say = (lambda m: print(f"reading: {m}", file=sys.stderr, flush=True)) if cfg.progress and main else (
            lambda m: None)
        train_path, dev_path = squad_files(cfg.data, cfg.data_dir)
        examples = read_squad(train_path)
        vocab_path = Path(run.run_dir) / VOCABULARY_FILE if run.run_dir is not None else None
        if cfg.resume and vocab_path is not None and vocab_path.is_file():
            self.words, self.chars, self.vocabularies_sha256 = load_vocabularies(vocab_path)
            say(f"vocabularies read back from {vocab_path}")
        else:
            self.words, self.chars = build_vocabularies(examples, word_min_count=o.word_min_count)
            if vocab_path is not None and main:
                vocab_path.parent.mkdir(parents=True, exist_ok=True)
                self.vocabularies_sha256 = save_vocabularies(vocab_path, self.words, self.chars,
                                                             built_from=str(train_path))
            else:
                self.vocabularies_sha256 = None
        train = SquadDataset(examples, self.words, self.chars, max_context_tokens=o.max_context_tokens,
                             max_question_tokens=o.max_question_tokens, training=True)
        rebuilt = "rebuilt" in train_path.name or any(e.id.startswith("rebuilt-") for e in examples[:100])
        dropped = dict(train.dropped)
        say(f"{len(examples):,} training questions in {train_path}: {len(train):,} kept, "
            f"{dropped['answer_beyond_limit']:,} dropped with the answer beyond the first {o.max_context_tokens} "
            f"context tokens, {dropped['answer_covers_no_token']:,} with an answer of no token; vocabularies of "
            f"{len(self.words):,} words and {len(self.chars):,} characters")
        if rebuilt:
            say("the training file is the REBUILT SQuAD training set, not the official file: synthetic question ids, "
                "and about 2 % of its answer offsets may point at another occurrence of the answer text")
        test = self._dev_dataset(dev_path)
        if o.word_vectors:
            self.word_vectors, found = load_word_vectors(o.word_vectors, self.words)
            say(f"word vectors for {int(found.sum()):,} of {len(self.words):,} words from {o.word_vectors} "
                f"({self.word_vectors.shape[1]}-d; the others drawn at random)")
        self.facts = {"vocabularies": VOCABULARY_FILE, "vocabularies_sha256": self.vocabularies_sha256,
                      "train_file": str(train_path), "dev_file": str(dev_path), "rebuilt_train": rebuilt,
                      "training_questions": len(train), "dropped": dropped,
                      "max_context_tokens": o.max_context_tokens, "max_question_tokens": o.max_question_tokens,
                      "max_answer_tokens": o.max_answer_tokens}
        return TaskData(train=train, test=test, extra={"dropped": dropped, "rebuilt_train": rebuilt})

    def model_kwargs(self, data: TaskData) -> dict[str, Any]:
        kwargs = {"word_vocab_size": len(self.words), "char_vocab_size": len(self.chars)}
        if self.word_vectors is not None:
            kwargs["word_dim"] = int(self.word_vectors.shape[1])
        return kwargs

    def build_model(self, run, data: TaskData) -> nn.Module:
        model = super().build_model(run, data)
        if self.word_vectors is not None:
            try:
                model.embedding.set_word_vectors(self.word_vectors, trainable=self.options.train_word_vectors)
            except ValueError as err:
                raise ValueError(f"--word-vectors {self.options.word_vectors}: {err} (the file's vectors are "
                                 f"{self.word_vectors.shape[1]}-d; drop --model-arg word_dim)") from None
        if self.options.ema_decay is not None:
            self.ema = WeightAverage(model, self.options.ema_decay)
            if run.config.resume and run.run_dir is not None:
                self._restore_average(Path(run.run_dir))
        return model

    def sample_order(self, train_set) -> Callable[[torch.Generator], Sequence[int]] | None:
        if not self.options.bucket:
            return None
        lengths = [len(train_set[i].context_words) for i in range(len(train_set))]
        batch_size = self.batch_size
        return lambda generator: bucketed_order(lengths, batch_size, generator)

    # ------------------------------------------------------------------ the step
    def compute_loss(self, model, batch, step=None) -> torch.Tensor:
        start_logits, end_logits = model(**model_inputs(batch))  # (N, Lc) each
        start_logits, end_logits = start_logits.float(), end_logits.float()  # the loss in float32 under --amp
        loss = span_loss(start_logits, end_logits, batch["answer_start"], batch["answer_end"])
        if step is not None:
            with torch.no_grad():
                start_hit = (start_logits.argmax(1) == batch["answer_start"]).float().mean().item()
                end_hit = (end_logits.argmax(1) == batch["answer_end"]).float().mean().item()
            step.log(loss=loss.item(), start_accuracy=start_hit, end_accuracy=end_hit)
        return loss

    def train_step(self, model, batch, step) -> None:
        super().train_step(model, batch, step)
        if self.ema is not None and step.is_last_micro_batch:  # the optimizer has just stepped
            self.ema.update(step.module)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_dev(self, model, loader) -> tuple[dict[str, str], float]:
        """``({question id: answer}, mean span loss over the questions whose answer is in the context read)``."""
        model.eval()
        predictions: dict[str, str] = {}
        loss_sum, known = 0.0, 0
        for batch in loader:
            start_logits, end_logits = model(**model_inputs(batch))
            starts, ends, _ = best_spans(start_logits, end_logits, self.options.max_answer_tokens)
            predictions.update(span_texts(batch, starts, ends))
            has_answer = batch["answer_start"] >= 0
            n = int(has_answer.sum())
            if n:
                loss_sum += n * span_loss(start_logits[has_answer].float(), end_logits[has_answer].float(),
                                          batch["answer_start"][has_answer], batch["answer_end"][has_answer]).item()
                known += n
        return predictions, loss_sum / max(known, 1)

    @torch.no_grad()
    def evaluate(self, model, loader, *, full: bool = False) -> dict[str, Any]:
        """Official SQuAD v1.1 exact match and F1 (0-100) over every dev question, and the dev span
        loss; with ``--ema-decay``, of the averaged weights."""
        from canon.metrics import squad_evaluate

        if self.dev_articles is None:
            raise RuntimeError("evaluate needs the dev file: build_data or build_eval_data first")
        with self.ema.applied(model) if self.ema is not None else contextlib.nullcontext():
            predictions, loss = self.predict_dev(model, loader)
        scores = squad_evaluate(self.dev_articles, predictions)
        result = {"test_loss": loss, "test_exact_match": scores["exact_match"], "test_f1": scores["f1"]}
        self._evaluated = result
        if full:
            self.predictions = predictions
            result["num_questions"] = scores["num_questions"]
        return result

    def on_epoch_end(self, model, epoch: int, logger) -> None:
        """With ``--ema-decay``: the average as ``ema.safetensors`` (every epoch) and
        ``ema-best.safetensors`` (when its dev F1 is the best so far)."""
        evaluated, self._evaluated = self._evaluated, None
        if self.ema is None or self.run is None or self.run.run_dir is None:
            return
        run_dir = Path(self.run.run_dir)
        extra = {"epoch": epoch + 1, "task": self.name, "data": self.run.config.data, **self.checkpoint_meta(),
                 "ema_updates": self.ema.num_updates, "metrics": dict(evaluated or {})}
        with self.ema.applied(model):
            save_weights(run_dir / EMA_FILE, model, extra=extra)
            if evaluated is not None and (self._ema_best is None or evaluated["test_f1"] > self._ema_best):
                self._ema_best = evaluated["test_f1"]
                save_weights(run_dir / EMA_BEST_FILE, model, extra=extra)
                logger.info(f"reading: ema-best.safetensors <- epoch {epoch + 1} (dev F1 {evaluated['test_f1']:.2f})")

    def _restore_average(self, run_dir: Path) -> None:
        """``--resume``: continue the average of ``ema.safetensors`` (fresh when no checkpoint exists)."""
        folder = latest_checkpoint_dir(run_dir)
        if folder is None:
            return
        state, meta = load_weights(run_dir / EMA_FILE)  # CheckpointError when it is missing
        extra = meta.get("extra", {})
        self.ema.load(state, extra.get("ema_updates", 0))
        checkpoint_epoch = json.loads((folder / "state.json").read_text()).get("epoch")
        if extra.get("epoch") != checkpoint_epoch:
            print(f"reading: warning: {run_dir / EMA_FILE} is from epoch {extra.get('epoch')}, the checkpoint from "
                  f"epoch {checkpoint_epoch}; the average continues from the older one", file=sys.stderr)
        if (run_dir / EMA_BEST_FILE).is_file():
            self._ema_best = load_weights(run_dir / EMA_BEST_FILE)[1].get("extra", {}).get("metrics", {}).get("test_f1")

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**self.facts, "ema_decay": self.options.ema_decay}

    # ------------------------------------------------------------------ canon eval / predict
    def build_eval_data(self, data, data_dir, meta, model) -> TaskData:
        extra = meta.get("extra", {})
        _, dev_path = squad_files(data, data_dir, need_train=False)
        self.words, self.chars = _run_vocabularies(meta)
        if (len(self.words), len(self.chars)) != (model.word_vocab_size, model.char_vocab_size):
            raise CheckpointError(f"{meta['path']}: the model has {model.word_vocab_size} words and "
                                  f"{model.char_vocab_size} characters, its vocabularies {len(self.words)} and "
                                  f"{len(self.chars)}")
        self.options.max_question_tokens = extra.get("max_question_tokens")
        self.options.max_answer_tokens = extra.get("max_answer_tokens", MAX_ANSWER_TOKENS)
        return TaskData(train=None, test=self._dev_dataset(dev_path))

    def write_figures(self, model, data, result, out_dir: Path) -> dict[str, Any]:
        """``predictions.json``: ``{question id: answer}``, what the official evaluation script reads."""
        if self.predictions is None:
            return {}
        path = Path(out_dir) / "predictions.json"
        atomic_write_text(path, json.dumps(self.predictions, ensure_ascii=False, indent=1))
        return {"exact_match": result["test_exact_match"], "f1": result["test_f1"], "predictions": str(path)}

    @torch.no_grad()
    def predict(self, model, meta, inputs, *, save_dir=None, topk: int = 5, device=None) -> list[dict[str, Any]]:
        """``canon predict RUN FILE.json ...``: each file holds one ``{"context", "question"}`` object or
        a list of them; one result per question."""
        if not inputs:
            raise ValueError("no input files given: each is a json file of {\"context\": ..., \"question\": ...}")
        words, chars = _run_vocabularies(meta)
        max_answer_tokens = meta.get("extra", {}).get("max_answer_tokens", MAX_ANSWER_TOKENS)
        results = []
        for path in inputs:
            for k, item in enumerate(_read_questions(Path(path))):
                found = answer_question(model, words, chars, item["context"], item["question"],
                                        max_answer_tokens=max_answer_tokens, device=device)
                results.append({"input": f"{path}[{k}]: {item['question']}", **found,
                                "top": [{"class": found["answer"], "index": found["start"],
                                         "probability": found["probability"]}]})
        return results

    # ------------------------------------------------------------------ canon answer
    @classmethod
    def cli_commands(cls) -> list[CliCommand]:
        return [CliCommand("answer", "answer a question about a context with a trained reading model (prints the "
                                     "answer span and its probability)", _answer_arguments, _run_answer)]


def _read_questions(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise data_error(path, 'a json file of {"context": ..., "question": ...} objects', found="no such file")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise data_error(path, "valid json", found=f"{type(err).__name__}: {err}") from None
    items = [items] if isinstance(items, dict) else items
    if not isinstance(items, list):
        raise data_error(path, 'a {"context", "question"} object or a list of them', found=type(items).__name__)
    for k, item in enumerate(items):
        for key in ("context", "question"):
            if not isinstance(item, dict) or not isinstance(item.get(key), str):
                raise data_error(path, f'a "{key}" string in item {k}', found="none")
    return items


def _answer_arguments(parser) -> None:
    from canon.engine.config import DEVICES

    parser.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a reading run folder (its ema-best, best or last weights) or a weights file")
    parser.add_argument("--context", required=True, help="the passage to read")
    parser.add_argument("--question", required=True, help="the question, answered by a span of the context")
    parser.add_argument("--max-answer-tokens", type=int, default=None,
                        help="answers of at most N+1 tokens (default: the run's, 15)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print a json object")


def _run_answer(args) -> int:
    from canon.engine.trainer import resolve_device

    for name in ("context", "question"):
        if not tokenize_with_offsets(getattr(args, name))[0]:
            raise ValueError(f"--{name} is empty: give a {name} with at least one word "
                             f"(got {getattr(args, name)!r})")
    device = resolve_device(args.device)
    model, meta, words, chars = load_reader(args.checkpoint, device)
    max_answer_tokens = args.max_answer_tokens
    if max_answer_tokens is None:
        max_answer_tokens = meta.get("extra", {}).get("max_answer_tokens", MAX_ANSWER_TOKENS)
    found = answer_question(model, words, chars, args.context, args.question, max_answer_tokens=max_answer_tokens,
                            device=device)
    if args.json:
        print(json.dumps({**found, "weights": meta["path"]}, ensure_ascii=False))
    else:
        print(f"answer: {found['answer']}")
        print(f"probability: {found['probability']:.4f}")
    return 0
