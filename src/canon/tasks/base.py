"""The interface every task implements (documented, with a worked example, in :mod:`canon.tasks`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn as nn

from canon.engine.config import TrainConfig
from canon.engine.optim import build_optimizer, build_scheduler
from canon.engine.step import StepContext
from canon.engine.trainer import RunInfo, TaskData

__all__ = ["Task", "NoOptions", "TaskData", "RunInfo", "CliCommand"]


@dataclass
class NoOptions:
    """A task without options of its own."""


@dataclass(frozen=True)
class CliCommand:
    """A ``canon`` subcommand a task adds (``canon sample``, ``canon translate``...): its name, its
    one-line help, a function that adds its arguments to an ``argparse`` parser, and the function
    that runs it (returns the exit code; raise ``ValueError``/``canon.data.DataError`` for a
    user's mistake, which the CLI prints as one line)."""

    name: str
    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any], int]


class Task:
    """One kind of learning problem: its data, its model contract, its step and its evaluation.

    Class attributes a task sets: ``name`` (the registry's task name), ``Options`` (a dataclass of
    its own ``canon train`` flags, fields declared with :func:`canon.engine.options.option`),
    ``primary_metric`` (the key of ``evaluate``'s result that picks ``best.safetensors``) and
    ``higher_is_better``; optionally ``eval_batch_size`` (e.g. 1 for images of different sizes),
    ``sample_unit`` (the throughput column: ``train_images_per_s``) and ``data_parallel``
    (``"ddp"``: the engine wraps the model in DistributedDataParallel, so the step must run its
    forward passes through the ``model`` argument; ``"allreduce"``: the engine averages each
    optimizer's gradients itself in ``step.step(name)``, for steps that call parts of the model
    separately, like a GAN's players).
    """

    name: ClassVar[str] = "task"
    Options: ClassVar[type] = NoOptions
    primary_metric: ClassVar[str] = "test_loss"
    higher_is_better: ClassVar[bool] = False
    eval_batch_size: ClassVar[int | None] = None
    sample_unit: ClassVar[str] = "images"
    data_parallel: ClassVar[str] = "ddp"
    find_unused_parameters: ClassVar[bool] = False  # DDP's flag, for models whose steps leave parameters unused

    def __init__(self, options=None, **kwargs):
        if options is not None and kwargs:
            raise TypeError("pass either an Options instance or keyword options, not both")
        if options is None:
            valid = [f.name for f in dataclasses.fields(self.Options)]
            unknown = [k for k in kwargs if k not in valid]
            if unknown:
                raise TypeError(f"{self.name} task: unknown option(s) {', '.join(unknown)}; "
                                f"valid options: {', '.join(valid) or 'none'}")
            options = self.Options(**kwargs)
        elif not isinstance(options, self.Options):
            raise TypeError(f"{self.name} task: options must be a {self.Options.__name__}, "
                            f"got {type(options).__name__}")
        self.options = options

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    # ------------------------------------------------------------------ data and model
    def build_data(self, run: RunInfo) -> TaskData:
        """The training and test datasets for ``run.config.data`` (and facts the task keeps)."""
        raise NotImplementedError

    def build_model(self, run: RunInfo, data: TaskData) -> nn.Module:
        """The model to train; by default the registered ``run.config.model`` with the arguments
        the data fixes (:meth:`model_kwargs`) and the user's ``--model-arg`` values, starting from
        ``--weights`` when given."""
        from canon.registry import create_model

        return create_model(run.config.model, weights=run.config.weights,
                            **{**self.model_kwargs(data), **run.config.model_kwargs})

    def model_kwargs(self, data: TaskData) -> dict[str, Any]:
        """Constructor arguments the data fixes (e.g. ``num_classes``, ``in_chans``)."""
        return {}

    collate: Callable[[list], Any] | None = None  # the DataLoader's collate_fn; None: torch's default

    def sample_order(self, train_set) -> Callable[[torch.Generator], Sequence[int]] | None:
        """A function of the epoch's generator giving the epoch's sample order (e.g. a class-
        balanced draw with replacement); None: a uniform permutation."""
        return None

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self, model: nn.Module, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by name; by default one, ``"model"``, over every parameter, from the flags."""
        return {"model": build_optimizer(config.optimizer, model.parameters(), lr=config.lr,
                                         weight_decay=config.weight_decay, momentum=config.momentum,
                                         betas=config.betas, eps=config.eps)}

    def configure_schedulers(self, optimizers: dict[str, torch.optim.Optimizer], config: TrainConfig,
                             steps_per_epoch: int, model: nn.Module) -> dict[str, Any]:
        """One learning-rate schedule per optimizer, stepped after each of its steps; by default the
        flags' schedule for every optimizer (``inverse-sqrt`` takes ``d_model`` from ``--d-model`` or
        the model's ``d_model`` attribute)."""
        return {name: build_scheduler(config.scheduler, optimizer, epochs=config.epochs,
                                      steps_per_epoch=steps_per_epoch, warmup_epochs=config.warmup_epochs,
                                      warmup_steps=config.warmup_steps, milestones=config.milestones,
                                      gamma=config.gamma, d_model=config.d_model or getattr(model, "d_model", None))
                for name, optimizer in optimizers.items()}

    def train_step(self, model: nn.Module, batch: Any, step: StepContext) -> None:
        """One micro-batch: losses, ``step.backward``, ``step.step``. The default serves every task
        with one loss and one optimizer: it calls :meth:`compute_loss` under ``step.autocast()``."""
        with step.autocast():
            loss = self.compute_loss(model, batch, step)
        step.backward(loss)
        step.step()

    def compute_loss(self, model: nn.Module, batch: Any, step: StepContext) -> torch.Tensor:
        """The loss of one micro-batch (a mean over its samples); log what the epoch row should show
        with ``step.log(loss=..., accuracy=...)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation and outputs
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, *, full: bool = False) -> dict[str, Any]:
        """Metrics on the test split, keys prefixed ``test_``; ``full`` adds the detail ``canon eval``
        writes to ``eval.json`` (per-class tables, confusion matrices...)."""
        raise NotImplementedError

    def on_epoch_end(self, model: nn.Module, epoch: int, logger) -> None:
        """After each epoch, in the main process (e.g. write a sample grid, ``logger.image(...)``)."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """What the weights files record besides the weights (input size, class names,
        normalisation...), read back by ``canon eval`` and ``canon predict``."""
        return {}

    def build_eval_data(self, data: str, data_dir: str | None, meta: dict[str, Any], model: nn.Module) -> TaskData:
        """The test data of ``data`` for ``canon eval`` of a checkpoint whose metadata is ``meta``."""
        raise NotImplementedError(f"the {self.name} task has no `canon eval` yet")

    def write_figures(self, model: nn.Module, data: TaskData, result: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        """Figures ``canon eval`` writes beside ``eval.json``; returns the entries to add to it."""
        return {}

    def predict(self, model: nn.Module, meta: dict[str, Any], inputs: list[str], *, save_dir: str | None = None,
                topk: int = 5, device: torch.device | None = None) -> list[dict[str, Any]]:
        """``canon predict``: one result dict per input."""
        raise NotImplementedError(f"the {self.name} task has no `canon predict` yet")

    # ------------------------------------------------------------------ the command line
    @classmethod
    def cli_commands(cls) -> list[CliCommand]:
        """Subcommands this task adds to ``canon`` (none by default)."""
        return []

    demo: ClassVar[Callable[..., int] | None] = None  # ``canon demo TASK``: demo(out=None, quiet=False) -> exit code
