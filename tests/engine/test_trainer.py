"""The training loop on real data (scikit-learn's digits): learning, records, resume, divergence."""
import csv
import json

import pytest
import torch

from canon.engine import TrainConfig, Trainer, TrainingDiverged
from canon.engine.checkpoint import load_weights
from canon.engine.options import split_options
from canon.tasks.classification import ClassificationOptions, ClassificationTask


def _config(tmp_path, **overrides):
    """(engine config, classification options) of a short LeNet-5 run on digits."""
    base = dict(model="lenet5", data="digits", epochs=2, batch_size=32, lr=0.05, optimizer="sgd",
                scheduler="cosine", seed=7, out=str(tmp_path / "run"), progress=False)
    base.update(overrides)
    engine, task = split_options(base, TrainConfig, ClassificationOptions)
    return TrainConfig(**engine), task


def _trainer(config_and_options):
    config, options = config_and_options
    return Trainer(config, ClassificationTask(**options))


def _train(config_and_options):
    return _trainer(config_and_options).fit()


def test_short_real_run_beats_chance_and_leaves_a_complete_record(tmp_path):
    metrics = _train(_config(tmp_path, epochs=3))
    run = tmp_path / "run"
    # 10 balanced classes: chance is 0.10. Three epochs of LeNet-5 on 1,437 real digits get far beyond.
    assert metrics["test_accuracy"] > 0.80
    assert metrics["epochs"] == 3 and metrics["seconds"] > 0
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "config.yaml").is_file()
    _, meta = load_weights(run / "best.safetensors")
    assert meta["model"] == "lenet5" and meta["extra"]["task"] == "classification"


@pytest.mark.parametrize("mixing", [{}, {"mixup": 0.8, "cutmix": 1.0}, {"amp": True}],
                         ids=["plain", "mixup+cutmix", "amp"])
def test_resume_gives_exactly_the_weights_of_an_uninterrupted_run(tmp_path, mixing, monkeypatch):
    full = _config(tmp_path / "a", epochs=3, optimizer="adam", lr=1e-3, **mixing)
    _train(full)
    # Interrupt: a KeyboardInterrupt in the middle of epoch 2 (step 50 of 45 per epoch), then resume.
    original = ClassificationTask.train_step

    def interrupt_in_epoch_two(self, model, batch, step):
        if step.step_count == 50:
            raise KeyboardInterrupt
        return original(self, model, batch, step)

    monkeypatch.setattr(ClassificationTask, "train_step", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _train(_config(tmp_path / "b", epochs=3, optimizer="adam", lr=1e-3, **mixing))
    monkeypatch.undo()
    _train(_config(tmp_path / "b", epochs=3, optimizer="adam", lr=1e-3, resume=True, **mixing))
    a, _ = load_weights(tmp_path / "a" / "run" / "last.safetensors")
    b, _ = load_weights(tmp_path / "b" / "run" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    history = list(csv.DictReader((tmp_path / "b" / "run" / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = ClassificationTask.compute_loss
    calls = {"n": 0}

    def poisoned(self, model, batch, step=None):
        loss = original(self, model, batch, step)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 50 else loss  # epoch 1 has 45 batches of 32

    monkeypatch.setattr(ClassificationTask, "compute_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"nan at epoch 2.*epoch_0001"):
        _train(_config(tmp_path, epochs=3))
    good, meta = load_weights(tmp_path / "run" / "last.safetensors")
    assert meta["extra"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())


def test_channels_last_trains_to_the_same_weights_and_saves_plain_tensors(tmp_path, monkeypatch):
    # LeNet-5 has no batch norm, so float32 noise stays small and the two memory orders must agree
    # closely (deep batch-norm nets amplify summation-order noise to ~1% in both orders alike).
    seen = []
    original = ClassificationTask.compute_loss

    def spy(self, model, batch, step=None):
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        seen.append((batch[0].is_contiguous(memory_format=torch.channels_last),
                     conv.weight.is_contiguous(memory_format=torch.channels_last)))
        return original(self, model, batch, step)

    common = dict(epochs=2, max_steps_per_epoch=4, batch_size=16, augment="none")
    _train(_config(tmp_path / "nchw", **common))
    monkeypatch.setattr(ClassificationTask, "compute_loss", spy)
    _train(_config(tmp_path / "nhwc", channels_last=True, **common))
    assert seen == [(True, True)] * 8
    a, _ = load_weights(tmp_path / "nchw" / "run" / "last.safetensors")
    b, _ = load_weights(tmp_path / "nhwc" / "run" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].is_contiguous(), k
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)



def test_amp_trains_in_bfloat16_evaluates_and_saves_in_float32_and_learns_as_well(tmp_path, monkeypatch):
    seen = {"train": set(), "eval": set()}

    def record(module, inputs, output):
        seen["train" if module.training else "eval"].add(output.dtype)

    original = Trainer._build

    def build_and_hook(self):
        original(self)
        for m in self.model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.register_forward_hook(record)

    common = dict(epochs=3, augment="none")
    reference = _train(_config(tmp_path / "fp32", **common))
    monkeypatch.setattr(Trainer, "_build", build_and_hook)
    metrics = _train(_config(tmp_path / "amp", amp=True, **common))
    monkeypatch.undo()
    assert seen == {"train": {torch.bfloat16}, "eval": {torch.float32}}
    weights, _ = load_weights(tmp_path / "amp" / "run" / "last.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert metrics["test_accuracy"] > 0.85 and reference["test_accuracy"] > 0.85
    # The step itself: one batch's gradient under autocast points where the float32 gradient does.
    trainer = _trainer(_config(tmp_path / "grad", **common))
    trainer._build()
    indices = trainer._plan(0).steps[0][0][0]
    batch = torch.utils.data.default_collate([trainer.data.train[i] for i in indices])
    grads = {}
    for amp in (False, True):
        trainer.model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = trainer.task.compute_loss(trainer.model, batch)
        assert loss.dtype == torch.float32
        loss.backward()
        grads[amp] = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    cosine = torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0)
    assert cosine > 0.999, cosine
    assert (grads[True] - grads[False]).norm() < 0.06 * grads[False].norm()  # bfloat16: 8-bit mantissa
    assert "amp: true" in (tmp_path / "amp" / "run" / "config.yaml").read_text()


def test_train_subset_is_one_fixed_stratified_draw_for_every_seed(tmp_path):
    sets = {}
    for seed in (1, 2):
        trainer = _trainer(_config(tmp_path / f"s{seed}", seed=seed, train_subset=200))
        trainer._build()
        sets[seed] = trainer.data.train
        assert len(trainer.data.train) == 200 and trainer.steps_per_epoch == 7  # ceil(200 / 32)
    assert torch.equal(sets[1].indices, sets[2].indices)  # the training seed does not move the subset
    full = torch.bincount(sets[1].dataset.targets, minlength=10).double()
    share = torch.bincount(sets[1].targets, minlength=10).double()
    assert (share - full * 200 / full.sum()).abs().max() < 1  # each class within one image of its share
    with pytest.raises(ValueError, match="--train-subset must be a whole number in 1..1437"):
        _trainer(_config(tmp_path / "big", train_subset=5000))._build()


def test_eval_every_evaluates_on_its_epochs_and_after_the_last(tmp_path):
    metrics = _train(_config(tmp_path, epochs=3, eval_every=2, max_steps_per_epoch=3))
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [bool(r.get("test_accuracy")) for r in rows] == [False, True, True]
    assert metrics["test_accuracy"] == pytest.approx(float(rows[-1]["test_accuracy"]))
    with pytest.raises(ValueError, match="--eval-every must be a whole number of epochs >= 1, got 0"):
        _config(tmp_path / "zero", eval_every=0)


def test_weights_start_a_run_from_a_file_in_torchvision_format(tmp_path):
    """--weights FILE.pth: the run starts from those weights (lr 0: it ends with them, bit for bit)."""
    import canon

    torch.manual_seed(5)
    start = canon.create_model("lenet5", num_classes=10, in_chans=1).state_dict()
    torch.save(start, tmp_path / "lenet5-start.pth")  # what torchvision publishes: torch.save of a state_dict
    _train(_config(tmp_path, epochs=1, max_steps_per_epoch=2, lr=0.0, momentum=0.0, weight_decay=0.0,
                   weights=str(tmp_path / "lenet5-start.pth")))
    end, meta = load_weights(tmp_path / "run" / "last.safetensors")
    assert end.keys() == start.keys() and all(torch.equal(end[k], start[k]) for k in start)
    assert "weights: " in (tmp_path / "run" / "config.yaml").read_text()
