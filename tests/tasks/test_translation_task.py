"""The translation task: its loss against the label-smoothed cross-entropy written out, the
vocabulary it keeps in the run folder, decoding and BLEU against the decoding functions and
sacreBLEU, and train / eval / translate through the CLI on a tiny parallel corpus.

The claim that ``--clip-grad-norm`` keeps an otherwise diverging RNN run finite is shown by
tests/engine/test_clipping.py (``test_a_200_step_exploding_rnn_trains_with_clipping_and_diverges_without``);
a mismatched line count between the two sides raising a DataError that names both files by
tests/data/test_translation.py (``test_mismatched_line_counts_name_both_files``).
"""
from __future__ import annotations

import itertools
import json
import random

import pytest
import sacrebleu
import torch
import torch.nn as nn

from canon.cli import main
from canon.data import DataError
from canon.data.translation import SubwordVocabulary, TranslationDataset, collate_translation, pad_sequences
from canon.engine import TrainConfig
from canon.engine.trainer import RunInfo
from canon.models.sequence.decoding import beam_search, greedy_search
from canon.registry import create_model
from canon.tasks.translation import (TranslationTask, _length_batched_order, parse_translation_spec,
                                     translate_sentences)

TINY_MODEL = ["--model-arg", "d_model=32", "--model-arg", "num_heads=2", "--model-arg", "d_ff=64",
              "--model-arg", "num_encoder_layers=1", "--model-arg", "num_decoder_layers=1"]


def _pairs():
    subjects = [("Ein Mann", "A man"), ("Eine Frau", "A woman"), ("Ein Kind", "A child"), ("Ein Hund", "A dog")]
    verbs = [("fährt Fahrrad", "rides a bike"), ("läuft", "runs"), ("spielt", "plays"), ("sitzt", "sits")]
    places = [("im Park", "in the park"), ("auf der Straße", "on the street"), ("am Strand", "on the beach")]
    pairs = [(f"{s} {v} {p}.", f"{ts} {tv} {tp}.")
             for (s, ts), (v, tv), (p, tp) in itertools.product(subjects, verbs, places)]
    random.Random(0).shuffle(pairs)
    return {"train": pairs[:32], "val": pairs[32:40], "test": pairs[40:]}


@pytest.fixture
def corpus(tmp_path):
    """A 48-pair German-English corpus: train 32, val 8, test 8 (files train.de / train.en, ...)."""
    root = tmp_path / "corpus"
    root.mkdir()
    splits = _pairs()
    for split, pairs in splits.items():
        (root / f"{split}.de").write_text("".join(f"{de}\n" for de, _ in pairs), encoding="utf-8")
        (root / f"{split}.en").write_text("".join(f"{en}\n" for _, en in pairs), encoding="utf-8")
    return root, splits


def _run_info(tmp_path, data, **config):
    cfg = TrainConfig(model="transformer_small", data=data, out=str(tmp_path / "run"), device="cpu", **config)
    return RunInfo(config=cfg, device=torch.device("cpu"), run_dir=tmp_path / "run")


def _tiny_transformer(vocab_size, seed=0):
    torch.manual_seed(seed)
    return create_model("transformer_small", src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, d_model=32,
                        num_heads=2, d_ff=64, num_encoder_layers=1, num_decoder_layers=1).eval()


# --- the loss ---------------------------------------------------------------------------------------

class FixedLogits(nn.Module):
    """Returns the given logits whatever the input (and records the decoder input it was given)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, src_tokens, tgt_tokens, src_padding_mask, tgt_padding_mask):
        self.decoder_input = tgt_tokens
        return self.logits


def test_loss_is_the_label_smoothed_cross_entropy_over_real_target_tokens():
    torch.manual_seed(0)
    vocab, eps = 11, 0.1
    tgt = [torch.tensor([1, 5, 7, 9, 2]), torch.tensor([1, 4, 2])]  # <s> ... </s>, the second padded
    src = [torch.tensor([6, 2]), torch.tensor([8, 8, 3, 2])]
    batch = collate_translation(list(zip(src, tgt)))
    logits = torch.randn(2, 4, vocab)
    model = FixedLogits(logits)
    loss = TranslationTask(label_smoothing=eps).compute_loss(model, batch)
    assert torch.equal(model.decoder_input, batch["tgt_tokens"][:, :-1])  # teacher forcing: [<s>, y_1, ...]

    # written out: q = (1 - ε) one_hot(y) + ε / V at every real next token, -Σ_v q_v log p_v, mean
    terms = []
    for n, sequence in enumerate(tgt):
        for t, label in enumerate(sequence[1:].tolist()):
            log_p = logits[n, t].double().log_softmax(0)
            q = torch.full((vocab,), eps / vocab, dtype=torch.double)
            q[label] += 1 - eps
            terms.append(-(q * log_p).sum())
    assert len(terms) == 6  # 4 + 2 real target tokens; the 2 padding positions count for nothing
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)

    changed = logits.clone()
    changed[1, 2:] = 100 * torch.randn(2, vocab)  # the logits at padding positions do not matter
    assert TranslationTask(label_smoothing=eps).compute_loss(FixedLogits(changed), batch).item() == \
        pytest.approx(loss.item(), rel=1e-6)


# --- the vocabulary ---------------------------------------------------------------------------------

def test_vocabulary_is_learned_from_the_training_split_and_reloads_with_identical_ids(corpus, tmp_path):
    root, splits = corpus
    task = TranslationTask(vocab_size=100)
    data = task.build_data(_run_info(tmp_path, f"parallel:{root}"))
    # the same vocabulary as one learned directly from the training sentences (both sides) alone
    direct = SubwordVocabulary.train([s for pair in splits["train"] for s in pair], vocab_size=100)
    assert task.vocabulary.tokenizer.get_vocab() == direct.tokenizer.get_vocab()
    with_val = SubwordVocabulary.train([s for split in ("train", "val") for pair in splits[split] for s in pair],
                                       vocab_size=100)
    assert with_val.tokenizer.get_vocab() != direct.tokenizer.get_vocab()  # so the check above can fail

    reloaded = SubwordVocabulary.load(tmp_path / "run" / "vocabulary.json")
    sentences = [s for pair in splits["val"] + splits["test"] for s in pair] + ["Ein Zebra!"]
    assert reloaded.encode_batch(sentences) == task.vocabulary.encode_batch(sentences)
    assert len(data.train) == 32 and len(data.test) == 8  # during training, "test" is the validation split
    assert data.test.pairs == splits["val"]
    assert task.model_kwargs(data) == {"src_vocab_size": len(reloaded), "tgt_vocab_size": len(reloaded)}


def test_data_specs(corpus, tmp_path):
    root, _ = corpus
    spec = parse_translation_spec(f"parallel:{root}?test=val", source_lang="en", target_lang="de")
    assert spec.files["test"] == (root / "val.en", root / "val.de")
    assert parse_translation_spec("multi30k", str(root)).files["test"] == (root / "test2016.de", root / "test2016.en")
    with pytest.raises(DataError, match="multi30k:DIR or parallel:DIR"):
        parse_translation_spec("multi-30k:/x")
    with pytest.raises(DataError, match=r"\?train=STEM&val=STEM&test=STEM"):
        parse_translation_spec(f"parallel:{root}?tset=val")
    with pytest.raises(DataError, match="no such folder"):
        parse_translation_spec(f"parallel:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="Multi30k has German and English"):
        parse_translation_spec(f"multi30k:{root}", source_lang="fr")
    with pytest.raises(DataError, match="train.fr: expected a text file"):
        parse_translation_spec(f"parallel:{root}", source_lang="fr").pairs("train")
    with pytest.raises(ValueError, match="--select-by bleu needs validation BLEU"):
        TranslationTask(select_by="bleu", val_bleu="none")
    with pytest.raises(ValueError, match="--source-lang and --target-lang are both 'en'"):
        TranslationTask(source_lang="en")


def test_multi30k_spec_on_the_real_files(shared_data):
    root = shared_data / "multi30k"
    if not (root / "test2016.de").is_file():
        pytest.skip(f"Multi30k not found in {root}")
    corpus = parse_translation_spec(f"multi30k:{root}")
    assert [len(corpus.pairs(split)) for split in ("val", "test")] == [1014, 1000]
    assert corpus.pairs("test")[0][0].startswith("Ein Mann mit einem orangefarbenen Hut")


def test_length_batching_gives_full_batches_of_similar_lengths_in_a_random_order():
    lengths = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0))
    order = _length_batched_order(lengths, batch_size=16, pool_batches=10)
    first, second = order(torch.Generator().manual_seed(1)), order(torch.Generator().manual_seed(2))
    assert sorted(first) == list(range(1000)) and first != second
    batches = [first[i:i + 16] for i in range(0, 1000, 16)]
    assert [len(b) for b in batches] == [16] * 62 + [8]  # the short batch last
    for batch in batches:
        assert lengths[batch].tolist() == sorted(lengths[batch].tolist())  # each batch comes from a sorted pool
    spread = sum(int(lengths[b].max() - lengths[b].min()) for b in batches) / len(batches)
    random_order = torch.randperm(1000, generator=torch.Generator().manual_seed(3)).tolist()
    random_spread = sum(int(lengths[random_order[i:i + 16]].max() - lengths[random_order[i:i + 16]].min())
                        for i in range(0, 1000, 16)) / len(batches)
    assert spread < random_spread / 4, (spread, random_spread)


# --- decoding and BLEU ------------------------------------------------------------------------------

@pytest.fixture
def vocabulary(corpus):
    _, splits = corpus
    return SubwordVocabulary.train([s for pair in splits["train"] for s in pair], vocab_size=100)


def test_translating_through_the_task_equals_the_search_functions(corpus, vocabulary):
    _, splits = corpus
    model = _tiny_transformer(len(vocabulary))
    sentences = [de for de, _ in splits["val"] + splits["test"]]
    # the search functions on one padded batch in the original order (the task sorts by length and cuts batches)
    src_tokens, src_padding_mask, _ = pad_sequences([torch.tensor(ids + [2]) for ids in
                                                     vocabulary.encode_batch(sentences)])
    greedy = [vocabulary.decode(h.tokens) for h in greedy_search(model, src_tokens, src_padding_mask)]
    assert translate_sentences(model, vocabulary, sentences, beam_size=1, batch_size=5) == greedy
    beam = [vocabulary.decode(h.tokens) for h in beam_search(model, src_tokens, src_padding_mask, beam_size=3,
                                                             alpha=0.6, max_length=12)]
    assert translate_sentences(model, vocabulary, sentences, beam_size=3, length_penalty=0.6, max_length=12,
                               batch_size=5) == beam
    with pytest.raises(ValueError, match="sentence 2 is empty"):
        translate_sentences(model, vocabulary, ["Ein Hund.", "  "])


class Oracle(nn.Module):
    """A 'model' that emits the reference translation of each source sentence (looked up by its ids)."""

    padding_idx, bos_idx, eos_idx = 0, 1, 2

    def __init__(self, table, vocab_size):
        super().__init__()
        self.table, self.vocab_size = table, vocab_size
        self.dummy = nn.Parameter(torch.zeros(()))

    def encode(self, src_tokens, src_padding_mask):
        return {"src_tokens": src_tokens, "padding_mask": src_padding_mask}

    def decode_step(self, prefix, encoder_out, cache=None):
        logits = torch.zeros(prefix.shape[0], self.vocab_size)
        for row, (tokens, mask) in enumerate(zip(encoder_out["src_tokens"], encoder_out["padding_mask"])):
            target = self.table[tuple(tokens[~mask].tolist())] + [self.eos_idx]
            logits[row, target[min(prefix.shape[1] - 1, len(target) - 1)]] = 10.0
        return logits, cache

    def forward(self, src_tokens, tgt_tokens, src_padding_mask=None, tgt_padding_mask=None):
        return torch.zeros(*tgt_tokens.shape, self.vocab_size)  # for the loss; uniform


def test_bleu_through_the_task_equals_sacrebleu_on_the_same_strings(corpus, vocabulary):
    _, splits = corpus
    dataset = TranslationDataset(splits["test"], vocabulary)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_translation)

    task = TranslationTask(beam_size=3)
    task.vocabulary = vocabulary
    model = _tiny_transformer(len(vocabulary))
    result = task.evaluate(model, loader, full=True)
    references = [en for _, en in splits["test"]]
    metric = sacrebleu.BLEU()  # sacreBLEU's defaults: 13a tokenisation, mixed case, exponential smoothing
    assert result["test_bleu"] == pytest.approx(metric.corpus_score(task.hypotheses, [references]).score, abs=1e-9)
    assert result["bleu_signature"] == str(metric.get_signature())
    assert task.hypotheses == translate_sentences(model, vocabulary, [de for de, _ in splits["test"]], beam_size=3)

    # An oracle emitting each reference: the hypotheses come back in test order, BLEU 100.
    table = {tuple(vocabulary.encode(de) + [2]): vocabulary.encode(en) for de, en in splits["test"]}
    oracle = TranslationTask(beam_size=1)
    oracle.vocabulary = vocabulary
    result = oracle.evaluate(Oracle(table, len(vocabulary)), loader, full=True)
    assert oracle.hypotheses == references
    assert result["test_bleu"] == pytest.approx(100.0)


# --- the command line -------------------------------------------------------------------------------

def test_train_eval_translate_and_resume_through_the_cli(corpus, tmp_path, capsys):
    root, splits = corpus
    run = tmp_path / "run"
    train = ["train", "transformer_small", "--data", f"parallel:{root}", "--vocab-size", "100", "--epochs", "2",
             "--max-steps-per-epoch", "2", "--batch-size", "8", "--optimizer", "adam", "--lr", "1e-3",
             "--scheduler", "constant", "--out", str(run), "--device", "cpu", "--threads", "1", "--quiet",
             "--max-length", "8", *TINY_MODEL]
    assert main(train) == 0
    capsys.readouterr()
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].split(",")[4:8] == ["test_loss", "test_nll", "test_perplexity", "test_bleu"]
    vocabulary_bytes = (run / "vocabulary.json").read_bytes()

    assert main(["eval", str(run), "--data", f"parallel:{root}", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert result["decoding"] == {"beam_size": 4, "length_penalty": 0.6, "max_length": 8}
    hypotheses = (run / "hypotheses.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hypotheses) == 8 and result["sentences"] == 8
    expected = sacrebleu.corpus_bleu(hypotheses, [[en for _, en in splits["test"]]]).score
    assert result["test_bleu"] == pytest.approx(expected, abs=1e-9)

    assert main(["translate", str(run), "Ein Mann läuft im Park.", "Ein Hund sitzt.", "--beam-size", "1",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 3 and lines[2] == ""
    sentences = tmp_path / "sentences.de"
    sentences.write_text("Ein Mann läuft im Park.\nEine Frau sitzt.\nEin Kind spielt.\n", encoding="utf-8")
    assert main(["translate", str(run), "--file", str(sentences), "--json", "--device", "cpu"]) == 0
    translated = json.loads(capsys.readouterr().out)
    assert [t["input"] for t in translated] == ["Ein Mann läuft im Park.", "Eine Frau sitzt.", "Ein Kind spielt."]
    assert main(["predict", str(run), "Ein Kind spielt.", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["translation"] == translated[2]["translation"]

    # --resume reads the vocabulary from the run folder (a different --vocab-size changes nothing)
    resume = [a if a != "2" or i != train.index("--epochs") + 1 else "3" for i, a in enumerate(train)]
    resume[resume.index("100")] = "50"
    assert main(resume + ["--resume"]) == 0
    capsys.readouterr()
    assert (run / "vocabulary.json").read_bytes() == vocabulary_bytes
    assert len((run / "history.csv").read_text().splitlines()) == 4


def test_user_errors_are_one_line(corpus, tmp_path, capsys):
    root, _ = corpus
    run = tmp_path / "run"
    assert main(["train", "transformer_small", "--data", f"parallel:{root}", "--vocab-size", "100", "--epochs", "1",
                 "--max-steps-per-epoch", "1", "--batch-size", "8", "--val-bleu", "none", "--out", str(run),
                 "--device", "cpu", "--quiet", *TINY_MODEL]) == 0
    capsys.readouterr()
    assert main(["translate", str(run), ""]) == 2
    assert "sentence 1 is empty ('')" in capsys.readouterr().err
    assert main(["translate", str(run)]) == 2
    assert "nothing to translate" in capsys.readouterr().err
    assert main(["translate", str(run), "Ein Hund.", "--beam-size", "0"]) == 2
    assert "--beam-size must be a whole number >= 1" in capsys.readouterr().err
    assert main(["train", "transformer_small", "--data", "digits", "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert "expected a translation dataset: multi30k:DIR or parallel:DIR" in capsys.readouterr().err

    (run / "vocabulary.json").write_text("{}")  # not the file the checkpoint was trained with
    assert main(["translate", str(run), "Ein Hund."]) == 2
    assert "vocabulary.json: expected" in capsys.readouterr().err
    (run / "vocabulary.json").unlink()
    assert main(["eval", str(run), "--data", f"parallel:{root}"]) == 2
    assert "vocabulary.json: expected the vocabulary" in capsys.readouterr().err
