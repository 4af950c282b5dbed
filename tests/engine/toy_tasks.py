"""Small tasks and models for driving the engine in tests, registered only while a test uses them."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import canon.registry as registry
from canon.engine import TaskData
from canon.engine.options import option
from canon.tasks import TASKS, Task, register_task


@contextlib.contextmanager
def registered(model_fn, model_class, task_cls, input_size=()):
    """Register ``model_fn`` (task ``task_cls.name``) and ``task_cls`` for the duration of a test."""
    name = model_fn.__name__
    registry.register_model(model_class, task=task_cls.name, paper="test", input_size=input_size,
                            num_classes=None)(model_fn)
    register_task(task_cls.name, task_cls)
    try:
        yield name
    finally:
        registry._REGISTRY.pop(name, None)
        TASKS.pop(task_cls.name, None)


# ----------------------------------------------------------------------------- two players
class TwoPlayers(nn.Module):
    """Two scalars: ``a`` chases ``b·x``, ``b`` chases ``a·x``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0]))
        self.b = nn.Parameter(torch.tensor([0.5]))


def toy_two_players(**kwargs):
    return TwoPlayers(**kwargs)


@dataclass
class TwoPlayerOptions:
    lr_a: float = option(0.1, "player a's SGD learning rate")
    lr_b: float = option(0.05, "player b's learning rate")
    b_every: int = option(2, "player b steps after every b_every-th batch")
    adam_b: bool = option(False, "Adam for player b (optimizer state to resume)")
    noise: float = option(0.0, "std of Gaussian noise added to x in each step (global RNG)")
    interrupt_at_step: int | None = option(None, "raise KeyboardInterrupt at this optimizer step (tests)")


class TwoPlayerTask(Task):
    """Per batch: a's SGD step on mean((a·x − b)²); every ``b_every``-th batch also b's step on
    mean((b − a·x)²) with the updated a."""

    name = "toy-two-player"
    Options = TwoPlayerOptions
    data_parallel = "allreduce"

    def build_data(self, run):
        xs = [torch.tensor([float(v)]) for v in range(1, 9)]  # 1..8
        return TaskData(train=xs, test=xs[:2])

    def sample_order(self, train_set):
        return lambda generator: list(range(len(train_set)))  # a fixed order the test can follow

    def configure_optimizers(self, model, config):
        b = (torch.optim.Adam([model.b], lr=self.options.lr_b) if self.options.adam_b
             else torch.optim.SGD([model.b], lr=self.options.lr_b, momentum=0.0))
        return {"a": torch.optim.SGD([model.a], lr=self.options.lr_a, momentum=0.0), "b": b}

    def train_step(self, model, x, step):
        if self.options.interrupt_at_step is not None and step.step_count == self.options.interrupt_at_step:
            raise KeyboardInterrupt
        if self.options.noise:
            x = x + self.options.noise * torch.randn_like(x)
        loss_a = ((model.a * x - model.b) ** 2).mean()
        step.backward(loss_a)
        step.step("a")
        if step.step_count % self.options.b_every == self.options.b_every - 1:
            step.zero_grad("b")  # loss_a's backward left a gradient on b
            loss_b = ((model.b - model.a.detach() * x) ** 2).mean()
            step.backward(loss_b)
            step.step("b")
            step.log(loss_b=loss_b.item())
        step.log(loss_a=loss_a.item())

    @torch.no_grad()
    def evaluate(self, model, loader, *, full=False):
        return {"test_gap": float((model.a - model.b).abs())}


# ----------------------------------------------------------------------------- a linear regression
class Linear(nn.Module):
    def __init__(self, in_features: int = 4):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x):
        return self.linear(x)


def toy_linear(**kwargs):
    return Linear(**kwargs)


class RegressionTask(Task):
    """Mean squared error on a fixed random linear problem (64 samples, 4 features)."""

    name = "toy-regression"

    def build_data(self, run):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)
        pairs = list(zip(x, y))
        return TaskData(train=pairs, test=pairs[:16])

    def compute_loss(self, model, batch, step=None):
        x, y = batch
        loss = F.mse_loss(model(x), y)
        if step is not None:
            step.log(loss=loss.item())
        return loss

    @torch.no_grad()
    def evaluate(self, model, loader, *, full=False):
        total = sum(F.mse_loss(model(x), y, reduction="sum").item() for x, y in loader)
        return {"test_loss": total / len(loader.dataset)}


# ----------------------------------------------------------------------------- an exploding RNN
class ExplodingRNN(nn.Module):
    """A ReLU RNN whose recurrent matrix starts at 1.1·I (Le et al.'s identity initialisation,
    scaled up): over 40 steps the state, and the gradient, grow like 1.1^40 ≈ 45."""

    def __init__(self, hidden: int = 32, gain: float = 1.1):
        super().__init__()
        self.rnn = nn.RNN(1, hidden, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(torch.eye(hidden) * gain)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def toy_exploding_rnn(**kwargs):
    return ExplodingRNN(**kwargs)


class SumOfFirstFiveTask(RegressionTask):
    """Sequences of 40 numbers in [-1, 1]; the target is the sum of the first five (remembered
    over 35 steps)."""

    name = "toy-sequence"
    sample_unit = "sequences"

    def build_data(self, run):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(800, 40, 1, generator=g) * 2 - 1
        y = x[:, :5, 0].sum(1, keepdim=True)
        pairs = list(zip(x, y))
        return TaskData(train=pairs, test=pairs[:64])
