"""--clip-grad-norm / --clip-grad-value: the remedy for exploding RNN gradients."""
import csv

import pytest
import torch

from canon.engine import TrainConfig, Trainer, TrainingDiverged
from canon.engine.step import StepContext

from toy_tasks import ExplodingRNN, SumOfFirstFiveTask, registered, toy_exploding_rnn


def _config(tmp_path, name, **overrides):
    # 800 sequences in batches of 16: 50 steps an epoch, 200 steps in 4 epochs
    base = dict(model=name, epochs=4, batch_size=16, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=0.0,
                scheduler="constant", out=str(tmp_path / "run"), progress=False, device="cpu", threads=1)
    base.update(overrides)
    return TrainConfig(**base)


def test_a_200_step_exploding_rnn_trains_with_clipping_and_diverges_without(tmp_path):
    with registered(toy_exploding_rnn, ExplodingRNN, SumOfFirstFiveTask) as name:
        torch.manual_seed(0)
        model, task = ExplodingRNN(), SumOfFirstFiveTask()
        x, y = map(torch.stack, zip(*task.build_data(None).train[:16]))
        task.compute_loss(model, (x, y)).backward()
        unclipped = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
        assert unclipped > 1e3, unclipped  # the gradient explodes at the start

        with pytest.raises(TrainingDiverged, match="loss became (nan|inf) at epoch 1"):
            Trainer(_config(tmp_path / "plain", name), SumOfFirstFiveTask()).fit()

        metrics = Trainer(_config(tmp_path / "clipped", name, clip_grad_norm=1.0), SumOfFirstFiveTask()).fit()
    rows = list(csv.DictReader((tmp_path / "clipped" / "run" / "history.csv").open()))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 4 and all(loss == loss and loss < float("inf") for loss in losses)
    assert float(rows[0]["train_grad_norm"]) > 1e3  # the norm before clipping, averaged over epoch 1's steps
    assert losses[-1] < 0.1 * losses[0], losses  # it learns: the epoch mean falls by more than 10x
    assert metrics["test_loss"] < 2.0  # predicting 0 for a sum of five U(-1, 1) gives 5/3


def _step_with(params, **clip):
    optimizer = torch.optim.SGD(params, lr=1.0, momentum=0.0)
    ctx = StepContext(optimizers={"model": optimizer}, schedulers={}, module=torch.nn.Module(),
                      device=torch.device("cpu"), **clip)
    ctx.begin_micro_batch(epoch=0, micro_batch=0, loss_weight=1.0, batch_size=1)
    return ctx


def test_clipping_by_norm_and_by_value_against_their_definitions():
    w = torch.nn.Parameter(torch.zeros(3))
    ctx = _step_with([w], clip_grad_norm=1.0)
    ctx.backward((torch.tensor([3.0, -4.0, 12.0]) * w).sum())  # gradient (3, -4, 12), norm 13
    norm = ctx.step()
    assert norm == pytest.approx(13.0)
    torch.testing.assert_close(w.detach(), -torch.tensor([3.0, -4.0, 12.0]) / 13.0, rtol=1e-5, atol=1e-6)

    v = torch.nn.Parameter(torch.zeros(3))
    ctx = _step_with([v], clip_grad_value=2.5)
    ctx.backward((torch.tensor([3.0, -1.0, -12.0]) * v).sum())
    ctx.step()
    torch.testing.assert_close(v.detach(), -torch.tensor([2.5, -1.0, -2.5]))
    with pytest.raises(ValueError, match="--clip-grad-norm must be a number > 0, got -1"):
        TrainConfig(model="lenet5", clip_grad_norm=-1)
