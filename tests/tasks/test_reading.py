"""The reading task: its step against the span loss written out, the weight average against its
formula, batches of similar length, the data specs and their errors, the vocabularies of the run
folder, --word-vectors, resume, and train / eval / answer / predict through the CLI. The
metrics are canon.metrics.squad_evaluate (checked against the official script in
tests/metrics/test_squad_official.py); the answer of `canon answer` is checked against a double
loop over the spans. The slow test trains each of the four models on real SQuAD questions.

The DataError for an answer that is not at its offset is the data module's
(canon.data.squad.read_squad, tested in tests/data/test_squad.py::
test_answer_not_at_its_offset_is_a_data_error_naming_the_question); here it is checked to reach
the user through the task and the CLI.
"""
from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from canon.data.core import DataError
from canon.data.squad import (
    SQUAD_DEV_FILE, SQUAD_TRAIN_FILE, SquadDataset, build_vocabularies, collate_squad, model_inputs, read_squad,
)
from canon.data.text_tokenize import tokenize_with_offsets
from canon.engine.checkpoint import CheckpointError, load_model, load_weights
from canon.engine.config import TrainConfig
from canon.engine.step import StepContext
from canon.engine.trainer import RunInfo
from canon.metrics import squad_evaluate
from canon.models.reading.bidaf import BiDAF
from canon.tasks.reading import (
    EMA_BEST_FILE, EMA_FILE, VOCABULARY_FILE, ReadingOptions, ReadingTask, WeightAverage, bucketed_order,
    load_vocabularies, squad_files,
)

TINY = ["--model-arg", "hidden_size=8", "--model-arg", "word_dim=8", "--model-arg", "char_dim=4",
        "--model-arg", "char_channels=8"]
TINY_KWARGS = dict(hidden_size=8, word_dim=8, char_dim=4, char_channels=8)

COUNTRIES = ["Aland", "Borvia", "Cadra", "Dunmor", "Esland", "Fenna", "Gorva", "Hestia", "Ilmar", "Jorvik", "Kestra",
             "Lunda", "Morvan", "Nolis", "Orvia", "Pelca"]
CAPITALS = ["Arbor", "Belcastle", "Corren", "Dalvik", "Emberly", "Fairhold", "Glenmoor", "Highmark", "Ironvale",
            "Juniper", "Kingsbridge", "Larkspur", "Millbrook", "Northwatch", "Oakheart", "Pinecrest"]


def synthetic_squad(path: Path, paragraphs: int, seed: int, *, id_prefix: str = "q", padding_words: int = 0) -> Path:
    """A SQuAD v1.1 file of 'The capital of X is Y .' paragraphs, three questions each."""
    rng = random.Random(seed)
    filler = " ".join(["and so on"] * padding_words)
    out = []
    for p in range(paragraphs):
        facts = rng.sample(range(len(COUNTRIES)), 3)
        context = " ".join(f"The capital of {COUNTRIES[i]} is {CAPITALS[i]} ." for i in facts)
        if filler:
            context = f"{filler} {context}"
        qas = []
        for k, i in enumerate(facts):
            start = context.index(f"of {COUNTRIES[i]} is ") + len(f"of {COUNTRIES[i]} is ")
            qas.append({"id": f"{id_prefix}{p}-{k}", "question": f"What is the capital of {COUNTRIES[i]}?",
                        "answers": [{"text": CAPITALS[i], "answer_start": start}]})
        out.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "Synthetic", "paragraphs": out}]}))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("squad")
    return synthetic_squad(folder / "train.json", 40, 0, id_prefix="t"), synthetic_squad(folder / "dev.json", 6, 1)


def _run_info(data: str, run_dir: Path | None = None, **config) -> RunInfo:
    config = TrainConfig(model="bidaf", data=data, **{"progress": False, **config})
    return RunInfo(config=config, device=torch.device("cpu"), run_dir=run_dir)


def _nll(logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits over the real tokens)[target], example by example, written out."""
    return torch.stack([torch.logsumexp(logits[k][mask[k]], dim=0) - logits[k, target[k]] for k in range(len(target))])


# ----------------------------------------------------------------------------- the step
def test_step_is_span_loss_written_out_then_sgd_then_the_average(files):
    train_path, _ = files
    examples = read_squad(train_path)[:6]
    words, chars = build_vocabularies(examples, word_min_count=1, char_min_count=1)
    batch = collate_squad([SquadDataset(examples, words, chars, training=True)[i] for i in range(6)])
    batch["answer_end"] = batch["answer_start"] + 1  # "Y .": start and end differ (the one-word answers do not)
    torch.manual_seed(0)
    model = BiDAF(word_vocab_size=len(words), char_vocab_size=len(chars), dropout=0.0, **TINY_KWARGS)
    reference = copy.deepcopy(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}

    task = ReadingTask(ema_decay=0.9)
    task.ema = WeightAverage(model, 0.9)
    lr = 0.5
    step = StepContext(optimizers={"model": torch.optim.SGD(model.parameters(), lr=lr)}, schedulers={},
                       module=model, device=torch.device("cpu"))
    step.begin_micro_batch(epoch=0, micro_batch=0, loss_weight=1.0, batch_size=6)
    task.train_step(model, batch, step)

    start_logits, end_logits = reference(**model_inputs(batch))
    mask = batch["context_mask"]
    expected = (_nll(start_logits, mask, batch["answer_start"]) + _nll(end_logits, mask, batch["answer_end"])).mean()
    expected.backward()
    assert step.meter.means()["train_loss"] == pytest.approx(expected.item(), rel=1e-5)
    d1 = min(0.9, 2 / 11)  # the average's first update
    for name, param in model.named_parameters():
        ref = dict(reference.named_parameters())[name]
        updated = ref.detach() - lr * ref.grad if ref.grad is not None else ref.detach()
        assert torch.allclose(param.detach(), updated, atol=1e-6), name
        assert torch.allclose(task.ema.shadow[name], d1 * initial[name] + (1 - d1) * updated, atol=1e-6), name


def test_weight_average_follows_its_formula():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    frozen = nn.Parameter(torch.ones(4), requires_grad=False)
    model.register_parameter("frozen", frozen)
    average = WeightAverage(model, 0.9999)
    assert "frozen" not in average.shadow  # frozen weights are their own average
    theta = [model.weight.detach().clone()]
    expected = theta[0].clone()
    for k in range(1, 6):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        theta.append(model.weight.detach().clone())
        average.update(model)
        d = min(0.9999, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * theta[k]
    assert torch.allclose(average.shadow["weight"], expected, atol=1e-6)
    # by hand for the first two updates: d1 = 2/11, d2 = 3/12
    by_hand = 3 / 12 * (2 / 11 * theta[0] + 9 / 11 * theta[1]) + 9 / 12 * theta[2]
    two = WeightAverage(nn.Linear(3, 2), 0.9999)
    two.shadow["weight"] = theta[0].clone()
    two.shadow["bias"] = torch.zeros(2)
    for k in (1, 2):
        holder = nn.Linear(3, 2)
        with torch.no_grad():
            holder.weight.copy_(theta[k])
        two.update(holder)
    assert torch.allclose(two.shadow["weight"], by_hand, atol=1e-6)
    assert average.decay_at(10**7) == 0.9999 and WeightAverage(model, 0.999).decay_at(10**6) == 0.999
    # applied(): the average inside the block, the weights themselves after it
    own = model.weight.detach().clone()
    with average.applied(model):
        assert torch.equal(model.weight, average.shadow["weight"])
    assert torch.equal(model.weight, own)
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(model, 1.0)


def test_bucketed_order_is_a_permutation_of_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(1000)]
    order = bucketed_order(lengths, 32, torch.Generator().manual_seed(0), pool_batches=10)
    assert sorted(order) == list(range(1000))
    batches = [order[k:k + 32] for k in range(0, 1000, 32)]
    assert len(batches[-1]) == 1000 % 32  # the one partial batch comes last
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches[:-1]) / (len(batches) - 1)
    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    random_spread = sum(max(lengths[i] for i in shuffled[k:k + 32]) - min(lengths[i] for i in shuffled[k:k + 32])
                        for k in range(0, 992, 32)) / 31
    assert spread < random_spread / 5
    again = bucketed_order(lengths, 32, torch.Generator().manual_seed(0), pool_batches=10)
    assert again == order  # the order depends on the generator alone (resume)


# ----------------------------------------------------------------------------- data specs and errors
def test_data_specs(tmp_path, files):
    train_path, dev_path = files
    assert squad_files(f"squad:{train_path}:{dev_path}") == (train_path, dev_path)
    official = tmp_path / "official"
    official.mkdir()
    (official / "train-v1.1.json").write_text(train_path.read_text())
    (official / "dev-v1.1.json").write_text(dev_path.read_text())
    assert squad_files(f"squad:{official}") == (official / "train-v1.1.json", official / "dev-v1.1.json")
    assert squad_files("squad", str(official)) == squad_files(f"squad:{official}")
    assert squad_files(f"squad:{dev_path}", need_train=False) == (None, dev_path)  # canon eval: the dev file alone
    shared = tmp_path / "shared"
    (shared / "squad").mkdir(parents=True)
    (shared / "squad-train-rebuilt").mkdir()
    (shared / SQUAD_DEV_FILE).write_text("{}")
    (shared / SQUAD_TRAIN_FILE).write_bytes(b"")
    assert squad_files(f"squad:{shared}") == (shared / SQUAD_TRAIN_FILE, shared / SQUAD_DEV_FILE)

    with pytest.raises(ValueError, match="squad:TRAIN_FILE:DEV_FILE"):
        squad_files("digits")
    with pytest.raises(DataError, match="missing.json.*no such file"):
        squad_files(f"squad:{tmp_path / 'missing.json'}:{dev_path}")
    (official / "train-v1.1.json").unlink()
    with pytest.raises(DataError, match="training file, one of train-v1.1.json"):
        squad_files(f"squad:{official}")
    with pytest.raises(ValueError, match="names one file"):
        squad_files(f"squad:{dev_path}")
    with pytest.raises(ValueError, match="drop --data-dir"):
        squad_files(f"squad:{official}", str(official))


def test_options_are_checked():
    with pytest.raises(ValueError, match="--ema-decay must lie strictly between 0 and 1"):
        ReadingOptions(ema_decay=1.5)
    with pytest.raises(ValueError, match="--max-context-tokens"):
        ReadingOptions(max_context_tokens=0)
    with pytest.raises(ValueError, match="--train-word-vectors needs --word-vectors"):
        ReadingOptions(train_word_vectors=True)
    assert ReadingOptions(max_context_tokens="none").max_context_tokens is None


def test_answer_not_at_its_offset_reaches_the_user_as_a_data_error(tmp_path, files):
    _, dev_path = files
    broken = json.loads(dev_path.read_text())
    broken["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 1
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match="q0-1"):
        ReadingTask().build_data(_run_info(f"squad:{tmp_path / 'broken.json'}:{dev_path}"))
    from canon.cli import main

    code = main(["train", "bidaf", "--data", f"squad:{tmp_path / 'broken.json'}:{dev_path}", "--quiet"])
    assert code == 2


def test_truncation_drops_and_counts_and_the_vocabularies_come_from_the_training_split(tmp_path, files, capsys):
    _, dev_path = files
    # 20 paragraphs whose facts start after 30 words of filler: with 40 tokens kept, the answers of
    # the later sentences lie beyond the limit
    train_path = synthetic_squad(tmp_path / "long.json", 20, 3, padding_words=10)
    examples = read_squad(train_path)
    limit = 40
    beyond = 0
    for e in examples:
        _, offsets = tokenize_with_offsets(e.context)
        last = max(k for k, (s, _) in enumerate(offsets) if s < e.answer_starts[0] + len(e.answers[0]))
        beyond += last >= limit
    assert 0 < beyond < len(examples)
    run_dir = tmp_path / "run"
    task = ReadingTask(max_context_tokens=limit)
    data = task.build_data(_run_info(f"squad:{train_path}:{dev_path}", run_dir, progress=True))
    assert data.extra["dropped"]["answer_beyond_limit"] == beyond and len(data.train) == len(examples) - beyond
    assert f"{beyond:,} dropped with the answer beyond the first {limit}" in capsys.readouterr().err
    assert len(data.test) == len(read_squad(dev_path))  # evaluation keeps every question, whole contexts
    words, chars, sha = load_vocabularies(run_dir / VOCABULARY_FILE)
    expected_words, expected_chars = build_vocabularies(examples)
    assert words.tokens == expected_words.tokens and chars.tokens == expected_chars.tokens
    assert task.checkpoint_meta()["vocabularies_sha256"] == sha
    # --resume reads them back instead of building them again
    (run_dir / VOCABULARY_FILE).write_text((run_dir / VOCABULARY_FILE).read_text().replace('"capital"', '"kapital"'))
    resumed = ReadingTask(max_context_tokens=limit)
    resumed.build_data(_run_info(f"squad:{train_path}:{dev_path}", run_dir, resume=True))
    assert "kapital" in resumed.words.tokens
    with pytest.raises(CheckpointError, match="not the vocabulary file these weights were trained with"):
        load_vocabularies(run_dir / VOCABULARY_FILE, sha256=sha)


def test_word_vectors_from_a_glove_file_set_word_dim_and_stay_frozen(tmp_path, files):
    train_path, dev_path = files
    glove = tmp_path / "glove.txt"
    vectors = {"capital": [0.5, -1.0, 2.0, 0.25, 1.0, 0.0], "aland": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}
    glove.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    from canon.tasks import train

    run_dir = tmp_path / "run"
    train("bidaf", data=f"squad:{train_path}:{dev_path}", epochs=1, max_steps_per_epoch=2, batch_size=8,
          optimizer="adam", lr=0.01, weight_decay=0.0, out=str(run_dir), progress=False, word_vectors=str(glove),
          model_kwargs={k: v for k, v in TINY_KWARGS.items() if k != "word_dim"})
    model, meta = load_model(run_dir / "last.safetensors")
    words, _, _ = load_vocabularies(run_dir / VOCABULARY_FILE)
    assert model.embedding.word_embedding.weight.shape[1] == 6  # word_dim from the file
    for word, vector in vectors.items():  # after two Adam steps, still the file's vectors: frozen
        assert torch.equal(model.embedding.word_embedding.weight[words.index(word)], torch.tensor(vector))
    with pytest.raises(ValueError, match="the file's vectors are 6-d; drop --model-arg word_dim"):
        train("bidaf", data=f"squad:{train_path}:{dev_path}", epochs=1, max_steps_per_epoch=1, batch_size=8,
              out=str(tmp_path / "run2"), progress=False, word_vectors=str(glove), model_kwargs=TINY_KWARGS)


def test_resume_continues_the_weights_and_their_average_exactly(tmp_path, files):
    train_path, dev_path = files
    from canon.tasks import train

    common = dict(data=f"squad:{train_path}:{dev_path}", batch_size=16, max_steps_per_epoch=3, optimizer="adam",
                  lr=0.01, weight_decay=0.0, scheduler="constant", progress=False, ema_decay=0.99,
                  model_kwargs=TINY_KWARGS, seed=3)
    train("bidaf", epochs=2, out=str(tmp_path / "straight"), **common)
    train("bidaf", epochs=1, out=str(tmp_path / "halves"), **common)
    train("bidaf", epochs=2, out=str(tmp_path / "halves"), resume=True, **common)
    for name in ("last.safetensors", EMA_FILE):
        straight, meta = load_weights(tmp_path / "straight" / name)
        halves, _ = load_weights(tmp_path / "halves" / name)
        assert all(torch.equal(straight[k], halves[k]) for k in straight), name
    assert meta["extra"]["ema_updates"] == 6 and meta["extra"]["ema_decay"] == 0.99


# ----------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def trained_run(files, tmp_path_factory):
    """A tiny BiDAF trained through `canon train` (a separate process), with the weight average."""
    train_path, dev_path = files
    run = tmp_path_factory.mktemp("reading") / "run"
    command = [sys.executable, "-m", "canon", "train", "bidaf", "--data", f"squad:{train_path}:{dev_path}",
               "--epochs", "2", "--max-steps-per-epoch", "4", "--batch-size", "16", "--optimizer", "adam",
               "--lr", "0.01", "--weight-decay", "0", "--ema-decay", "0.99", "--max-context-tokens", "60",
               *TINY, "--out", str(run), "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training questions" in done.stderr  # the truncation report
    return run


def test_train_writes_the_run_folder(trained_run):
    for name in ("best.safetensors", "last.safetensors", EMA_FILE, EMA_BEST_FILE, VOCABULARY_FILE, "history.csv"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.0 <= metrics["test_f1"] <= 100.0 and 0.0 <= metrics["test_exact_match"] <= metrics["test_f1"]
    _, meta = load_weights(trained_run / EMA_BEST_FILE)
    assert meta["extra"]["task"] == "reading" and meta["extra"]["ema_updates"] == 4 * meta["extra"]["epoch"]
    assert meta["extra"]["metrics"]["test_f1"] == metrics["best_test_f1"]  # the average's best epoch


def _independent_predictions(weights: Path, vocabularies: Path, dev_path: Path) -> dict[str, tuple[str, float]]:
    """{id: (answer, margin)} by a double loop over i <= j <= i + 15 of p_start(i)·p_end(j) on each
    question alone (no padding), not best_spans; margin: the best product minus the runner-up's."""
    model, _ = load_model(weights)
    words, chars, _ = load_vocabularies(vocabularies)
    predictions = {}
    with torch.no_grad():
        for example in read_squad(dev_path):
            item = SquadDataset([example], words, chars)[0]
            start_logits, end_logits = model(**model_inputs(collate_squad([item])))
            p_start, p_end = start_logits[0].softmax(0), end_logits[0].softmax(0)
            scores = sorted(((float(p_start[i] * p_end[j]), i, j) for i in range(len(item.offsets))
                             for j in range(i, min(i + 16, len(item.offsets)))), reverse=True)
            (best, i, j), runner_up = scores[0], scores[1][0]
            predictions[example.id] = (example.context[item.offsets[i][0]:item.offsets[j][1]], best - runner_up)
    return predictions


def test_eval_writes_official_predictions_and_equals_squad_evaluate(trained_run, files, tmp_path):
    from canon.cli import main

    _, dev_path = files
    out = tmp_path / "eval"
    assert main(["eval", str(trained_run / EMA_BEST_FILE), "--data", f"squad:{dev_path}", "--out", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    predictions = json.loads(Path(result["predictions"]).read_text())
    official = json.loads(dev_path.read_text())
    ids = [qa["id"] for article in official["data"] for p in article["paragraphs"] for qa in p["qas"]]
    assert sorted(predictions) == sorted(ids) and all(isinstance(v, str) for v in predictions.values())
    contexts = {qa["id"]: p["context"] for article in official["data"] for p in article["paragraphs"]
                for qa in p["qas"]}
    assert all(answer in contexts[qid] for qid, answer in predictions.items())
    independent = _independent_predictions(trained_run / EMA_BEST_FILE, trained_run / VOCABULARY_FILE, dev_path)
    clear = [qid for qid, (_, margin) in independent.items() if margin > 1e-4]  # padded batches round differently
    assert len(clear) >= len(independent) // 2
    assert all(predictions[qid] == independent[qid][0] for qid in clear)
    reference = squad_evaluate(official["data"], predictions)
    assert result["exact_match"] == pytest.approx(reference["exact_match"])
    assert result["f1"] == pytest.approx(reference["f1"])
    # training evaluated the same average on the same file: the same figure
    _, meta = load_weights(trained_run / EMA_BEST_FILE)
    assert result["f1"] == pytest.approx(meta["extra"]["metrics"]["test_f1"])


def test_canon_answer_prints_the_best_span_and_its_probability(trained_run, capsys):
    from canon.cli import main

    context = "The capital of Borvia is Belcastle . The capital of Nolis is Northwatch ."
    question = "What is the capital of Nolis?"
    assert main(["answer", str(trained_run), "--context", context, "--question", question, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["weights"].endswith(EMA_BEST_FILE)  # a run folder answers with the average's best weights
    assert context[found["start"]:found["end"]] == found["answer"]
    # the same answer and probability from the model's logits by a double loop
    model, _ = load_model(trained_run / EMA_BEST_FILE)
    words, chars, _ = load_vocabularies(trained_run / VOCABULARY_FILE)
    example = read_squad_free(context, question)
    item = SquadDataset([example], words, chars)[0]
    with torch.no_grad():
        start_logits, end_logits = model(**model_inputs(collate_squad([item])))
    p_start, p_end = start_logits[0].softmax(0), end_logits[0].softmax(0)
    best = max(((float(p_start[i] * p_end[j]), i, j) for i in range(len(item.offsets))
                for j in range(i, min(i + 16, len(item.offsets)))))
    assert found["probability"] == pytest.approx(best[0], rel=1e-5)
    assert found["answer"] == context[item.offsets[best[1]][0]:item.offsets[best[2]][1]]
    assert main(["answer", str(trained_run), "--context", context, "--question", question]) == 0
    printed = capsys.readouterr().out
    assert f"answer: {found['answer']}" in printed and f"probability: {found['probability']:.4f}" in printed


def read_squad_free(context: str, question: str):
    from canon.data.squad import SquadExample

    return SquadExample("free", "", context, question, (), ())


def test_canon_answer_and_predict_errors(trained_run, tmp_path, capsys):
    from canon.cli import main

    assert main(["answer", str(trained_run), "--context", "Some text .", "--question", "   "]) == 2
    assert "--question is empty" in capsys.readouterr().err
    assert main(["answer", str(trained_run), "--context", "", "--question", "Why?"]) == 2
    assert "--context is empty" in capsys.readouterr().err
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "best.safetensors").write_bytes((trained_run / "best.safetensors").read_bytes())
    assert main(["answer", str(lonely), "--context", "A b .", "--question", "What?"]) == 2
    assert "vocabularies" in capsys.readouterr().err
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{"context": "The capital of Cadra is Corren .",
                                      "question": "What is the capital of Cadra?"}]))
    assert main(["predict", str(trained_run / "best.safetensors"), str(questions), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["answer"] in "The capital of Cadra is Corren ." and 0.0 < result["probability"] <= 1.0
    questions.write_text(json.dumps([{"context": "no question here"}]))
    assert main(["predict", str(trained_run / "best.safetensors"), str(questions)]) == 2
    assert '"question" string in item 0' in capsys.readouterr().err


# ----------------------------------------------------------------------------- real SQuAD, each model
SLOW_SIZES = {
    "bidaf": dict(word_dim=32, char_dim=8, char_channels=32, hidden_size=24),
    "rnet": dict(word_dim=32, char_dim=8, char_channels=32, hidden_size=24, attention_size=24, encoder_layers=1),
    "fusionnet": dict(word_dim=32, char_dim=8, char_channels=32, hidden_size=24, word_attention_size=32,
                      attention_size=32),
    "qanet": dict(word_dim=32, char_dim=8, char_channels=32, hidden_size=32, num_heads=2, embedding_convs=2,
                  model_blocks=1, model_convs=2, dropout=0.05),
}


@pytest.fixture(scope="module")
def small_squad(shared_data, tmp_path_factory):
    """1,500 rebuilt training questions and 300 dev questions (of 30 paragraphs), written as SQuAD files."""
    import gzip

    if not (shared_data / SQUAD_TRAIN_FILE).is_file() or not (shared_data / SQUAD_DEV_FILE).is_file():
        pytest.skip("SQuAD files not found in the shared data folder")
    folder = tmp_path_factory.mktemp("real-squad")
    with gzip.open(shared_data / SQUAD_TRAIN_FILE, "rt", encoding="utf-8") as f:
        train = json.load(f)
    paragraphs = [p for article in train["data"] for p in article["paragraphs"]]
    picked = random.Random(0).sample(paragraphs, 320)
    (folder / "train.json").write_text(json.dumps({"data": [{"title": "sample", "paragraphs": picked}]}))
    dev = json.loads((shared_data / SQUAD_DEV_FILE).read_text())
    dev_paragraphs = [p for article in dev["data"] for p in article["paragraphs"]]
    dev_picked = random.Random(1).sample(dev_paragraphs, 60)
    (folder / "dev.json").write_text(json.dumps({"data": [{"title": "sample", "paragraphs": dev_picked}]}))
    return folder / "train.json", folder / "dev.json"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_SIZES))
def test_each_model_learns_real_squad_beyond_the_first_word(name, small_squad, tmp_path):
    """A few epochs on ~1,500 real questions (contexts cut to 100 tokens): the training loss falls and
    dev F1 beats answering the first word of the context."""
    from canon.tasks import train

    train_path, dev_path = small_squad
    torch.set_num_threads(1)
    started = time.perf_counter()
    metrics = train(name, data=f"squad:{train_path}:{dev_path}", epochs=4, batch_size=32, optimizer="adam", lr=4e-3,
                    weight_decay=0.0, scheduler="constant", max_context_tokens=100, max_question_tokens=30,
                    model_kwargs=SLOW_SIZES[name], out=str(tmp_path / "run"), progress=False, eval_every=4)
    seconds = time.perf_counter() - started
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    losses = [float(row.split(",")[header.index("train_loss")]) for row in history[1:]]
    dev = json.loads(dev_path.read_text())["data"]
    baseline = squad_evaluate(dev, {qa["id"]: tokenize_with_offsets(p["context"])[0][0]
                                    for p in dev[0]["paragraphs"] for qa in p["qas"]})
    print(f"\n{name}: {seconds:.0f} s, train loss {' -> '.join(f'{x:.2f}' for x in losses)}; dev F1 "
          f"{metrics['test_f1']:.1f} (EM {metrics['test_exact_match']:.1f}), first-word baseline F1 {baseline['f1']:.1f}")
    assert losses[-1] < losses[0] - 1.0
    assert metrics["test_f1"] > baseline["f1"] + 3.0
