"""Translation data: reading parallel text, the BPE vocabulary, the dataset and its padded batches.

References: hand-written files in tmp_path for the format rules and the errors; the real Multi30k
files with the counts of /work/shared/data/SOURCES.md (29,000 / 1,014 / 1,000 pairs, 345,020
English training words); ``torch.nn.utils.rnn.pad_sequence`` for the padding.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from canon.data import DataError
from canon.data.translation import (
    BOS_ID, EOS_ID, PAD_ID, UNK_ID, SubwordVocabulary, TranslationDataset, collate_translation, read_multi30k,
    read_parallel_text, read_sentences,
)

CORPUS = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest ein Buch.",
          "A man rides a bike.", "Two dogs play in the snow.", "A woman reads a book."] * 5


def _write(path, text: str | bytes):
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


# --- reading ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["a b\nc d\n", "a b\nc d\n\n", "a b\nc d", "a b\r\nc d\r\n"],
                         ids=["final_newline", "extra_empty_line", "no_final_newline", "crlf"])
def test_sentences_per_line(tmp_path, text):
    assert read_sentences(_write(tmp_path / "x.txt", text)) == ["a b", "c d"]


@pytest.mark.parametrize("text, line", [("a\n\nb\n", 2), ("a\nb\n\n\n", 3), ("a\n  \nb\n", 2)])
def test_empty_line_inside_is_an_error_naming_file_and_line(tmp_path, text, line):
    path = _write(tmp_path / "x.de", text)
    with pytest.raises(DataError, match=rf"x\.de: expected one non-empty sentence per line, found an empty line at line {line}"):
        read_sentences(path)


def test_mismatched_line_counts_name_both_files(tmp_path):
    source, target = _write(tmp_path / "train.de", "a\nb\nc\n"), _write(tmp_path / "train.en", "a\nb\n\n")
    with pytest.raises(DataError, match=r"train\.de and .*train\.en: expected the same number of sentences.* found 3 and 2"):
        read_parallel_text(source, target)


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.en: expected a text file .* no such file"):
        read_sentences(tmp_path / "nothere.en")
    with pytest.raises(DataError, match=r"latin1\.de: expected UTF-8 text, found undecodable bytes at byte 4"):
        read_sentences(_write(tmp_path / "latin1.de", b"Grxx\xfc\n"))  # ü in Latin-1: not UTF-8


def test_multi30k_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'test2016'"):
        read_multi30k(tmp_path, "test")
    with pytest.raises(ValueError, match="source_language must be one of"):
        read_multi30k(tmp_path, "train", source_language="fr")
    with pytest.raises(DataError, match=r"train\.de: expected a text file"):
        read_multi30k(tmp_path, "train")


# --- vocabulary -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_vocabulary():
    return SubwordVocabulary.train(CORPUS, vocab_size=120, min_frequency=1)


def test_special_tokens_have_fixed_ids(small_vocabulary):
    for token, expected in (("<pad>", PAD_ID), ("<s>", BOS_ID), ("</s>", EOS_ID), ("<unk>", UNK_ID)):
        assert small_vocabulary.tokenizer.token_to_id(token) == expected
    assert len(small_vocabulary) <= 120


def test_encode_decode_round_trip_and_unknown_characters(small_vocabulary):
    for sentence in set(CORPUS):
        ids = small_vocabulary.encode(sentence)
        assert ids and min(ids) > UNK_ID and small_vocabulary.decode(ids) == sentence
    assert UNK_ID in small_vocabulary.encode("Ein Mann fährt 自転車.")  # never seen: <unk>
    assert small_vocabulary.decode([BOS_ID, *small_vocabulary.encode("Ein Mann"), EOS_ID, PAD_ID]) == "Ein Mann"


def test_save_and_load(tmp_path, small_vocabulary):
    path = tmp_path / "vocabulary.json"
    small_vocabulary.save(path)
    loaded = SubwordVocabulary.load(path)
    assert [loaded.encode(s) for s in CORPUS] == [small_vocabulary.encode(s) for s in CORPUS]
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed


def test_load_errors(tmp_path, small_vocabulary):
    with pytest.raises(DataError, match=r"missing\.json: expected a subword vocabulary JSON file"):
        SubwordVocabulary.load(tmp_path / "missing.json")
    with pytest.raises(DataError, match=r"broken\.json: expected a Hugging Face tokenizers JSON file"):
        SubwordVocabulary.load(_write(tmp_path / "broken.json", "{not json"))
    # A valid tokenizer whose special tokens sit elsewhere: ids would not match the models' defaults.
    small_vocabulary.save(tmp_path / "ok.json")
    data = json.loads((tmp_path / "ok.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["<pad>"], vocab["<s>"] = vocab["<s>"], vocab["<pad>"]
    for token in data["added_tokens"]:
        token["id"] = {"<pad>": 1, "<s>": 0}.get(token["content"], token["id"])
    _write(tmp_path / "swapped.json", json.dumps(data))
    with pytest.raises(DataError, match=r"swapped\.json: expected special token '<pad>' at id 0, found id 1"):
        SubwordVocabulary.load(tmp_path / "swapped.json")


def test_train_arguments_are_checked():
    with pytest.raises(ValueError, match="vocab_size must be an integer above 4"):
        SubwordVocabulary.train(CORPUS, vocab_size=3)


# --- dataset and collate --------------------------------------------------------------------------

def test_dataset_items_and_padded_batches(small_vocabulary):
    pairs = [("Ein Mann fährt Fahrrad.", "A man rides a bike."), ("Zwei Hunde.", "Two dogs play in the snow.")]
    dataset = TranslationDataset(pairs, small_vocabulary)
    assert len(dataset) == 2 and dataset.pairs == pairs
    source, target = dataset[0]
    assert source.tolist() == small_vocabulary.encode(pairs[0][0]) + [EOS_ID]
    assert target.tolist() == [BOS_ID] + small_vocabulary.encode(pairs[0][1]) + [EOS_ID]
    batch = collate_translation([dataset[0], dataset[1]])
    for side, index in (("src", 0), ("tgt", 1)):
        sequences = [dataset[0][index], dataset[1][index]]
        expected = pad_sequence(sequences, batch_first=True, padding_value=PAD_ID)
        assert torch.equal(batch[f"{side}_tokens"], expected)
        assert batch[f"{side}_lengths"].tolist() == [len(s) for s in sequences]
        assert torch.equal(batch[f"{side}_padding_mask"], expected == PAD_ID)  # PAD never occurs inside


def test_collate_pads_with_the_given_index():
    batch = collate_translation([(torch.tensor([5, 2]), torch.tensor([1, 6, 7, 2])),
                                 (torch.tensor([8, 9, 2]), torch.tensor([1, 2]))], padding_idx=9)
    assert batch["tgt_tokens"].tolist() == [[1, 6, 7, 2], [1, 2, 9, 9]]
    assert batch["src_padding_mask"].tolist() == [[False, False, True], [False, False, False]]


# --- the real Multi30k ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def multi30k_root(shared_data):
    root = shared_data / "multi30k"
    if not (root / "train.de").is_file():
        pytest.skip(f"Multi30k not found in {root}")
    return root


@pytest.fixture(scope="module")
def multi30k(multi30k_root):
    return {split: read_multi30k(multi30k_root, split) for split in ("train", "val", "test2016")}


def test_multi30k_pair_counts(multi30k, multi30k_root):
    assert {split: len(pairs) for split, pairs in multi30k.items()} == {"train": 29_000, "val": 1_014, "test2016": 1_000}
    assert multi30k["train"][0] == ("Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
                                    "Two young, White males are outside near many bushes.")
    # Whitespace-separated words, SOURCES.md: train 345,020 (en) / 322,383 (de), test2016 11,877 / 10,905.
    assert sum(len(en.split()) for _, en in multi30k["train"]) == 345_020
    assert sum(len(de.split()) for de, _ in multi30k["train"]) == 322_383
    assert sum(len(en.split()) for _, en in multi30k["test2016"]) == 11_877
    english_to_german = read_multi30k(multi30k_root, "val", source_language="en", target_language="de")
    assert english_to_german[5] == multi30k["val"][5][::-1]


@pytest.mark.slow  # trains BPE on 58,000 sentences: ~4-8 s on two shared cores
def test_multi30k_vocabulary_round_trips_unseen_sentences(multi30k):
    vocabulary = SubwordVocabulary.train([s for pair in multi30k["train"] for s in pair], vocab_size=8000)
    assert len(vocabulary) == 8000
    val = [s for pair in multi30k["val"] for s in pair]
    assert all(vocabulary.decode(vocabulary.encode(s)) == s for s in val)  # detokenised text comes back
    lengths = [len(vocabulary.encode(en)) for _, en in multi30k["val"]]
    assert 10 < sum(lengths) / len(lengths) < 20  # subwords per English sentence (~12 words)
