'''Tasks: what makes the one training loop (``canon.engine``) serve every kind of model.

A task is one file here (``classification.py``, ``segmentation.py``, ...) holding a
:class:`Task` subclass. The engine calls it and knows nothing else about it; the task never
re-implements what the engine does for every task (devices, autocast, gradient accumulation and
clipping, several processes, checkpoints, resume, logging). Every registered model names its task
(``register_model(..., task="segmentation")``); ``canon train MODEL`` picks that task, adds the
task's own options to the command line and hands the task to :class:`canon.engine.Trainer`.

The interface, in the order the engine calls it
-----------------------------------------------

================================================  ===============================================================
``Options``                                       a dataclass of the task's own ``canon train`` flags, declared with
                                                  :func:`canon.engine.options.option` (``mixup`` -> ``--mixup``)
``build_data(run) -> TaskData``                   the train and test datasets for ``run.config.data``
``build_model(run, data) -> nn.Module``           default: the registered model, with ``model_kwargs(data)``
``collate``                                       the DataLoader's ``collate_fn`` (a batch may hold lists of tensors
                                                  and dicts); None: torch's default
``sample_order(train_set)``                       optional: the order of an epoch's samples (a balanced draw)
``configure_optimizers(model, config)``           ``{name: optimizer}``; default one, ``"model"``, from the flags
``configure_schedulers(optimizers, config, ...)`` ``{name: scheduler}``; default the flags' schedule for each
``train_step(model, batch, step)``                one micro-batch: losses, ``step.backward(loss)``,
                                                  ``step.step(name)``; default: ``compute_loss`` + one optimizer
``evaluate(model, loader, full=False)``           ``{"test_...": value}`` on the test split
``on_epoch_end(model, epoch, logger)``            optional figures per epoch (``logger.image(...)``)
``checkpoint_meta()``                             what weights files record (input size, class names, ...)
``build_eval_data`` / ``write_figures``           ``canon eval``: the test data of a checkpoint, figures
``predict(model, meta, inputs, ...)``             ``canon predict``
================================================  ===============================================================

``step`` (:class:`canon.engine.StepContext`) carries ``autocast()``, ``backward(loss)``,
``step(name)``, ``zero_grad(name)``, ``log(n, **means)``, ``step_count``, ``epoch``,
``micro_batch``, ``device`` and ``module`` (the model itself when ``model`` is the DDP wrapper:
run forward passes through ``model``, read attributes from ``step.module``). Batches arrive on
``step.device``. The engine zeroes every optimizer's gradients at the start of each batch; within a
batch, ``step.zero_grad(name)`` drops gradients that one player's loss left on another's.

A worked example
----------------

A task that fits ``y = w·x + b`` to noisy points, with a figure per epoch and a prediction
command; then the same task with two optimizers, the way a GAN alternates its players::

    from dataclasses import dataclass
    import torch, torch.nn as nn, torch.nn.functional as F
    from canon.engine import TaskData
    from canon.engine.options import option
    from canon.tasks import Task, register_task

    @dataclass
    class LineOptions:
        noise: float = option(0.1, "standard deviation of the noise on y")   # becomes --noise

    class LineTask(Task):
        name = "line"                      # models registered with task="line" train with it
        Options = LineOptions
        primary_metric, higher_is_better = "test_loss", False
        sample_unit = "points"             # history.csv gets train_points_per_s

        def build_data(self, run):
            g = torch.Generator().manual_seed(0)
            x = torch.rand(256, 1, generator=g)
            y = 3 * x + 1 + self.options.noise * torch.randn(256, 1, generator=g)
            pairs = list(zip(x, y))
            return TaskData(train=pairs[:200], test=pairs[200:])

        def compute_loss(self, model, batch, step=None):      # what the default train_step calls
            x, y = batch                                         # torch's default collate stacked them
            loss = F.mse_loss(model(x), y)
            if step is not None:
                step.log(loss=loss.item())                       # -> train_loss, averaged over the epoch
            return loss

        @torch.no_grad()
        def evaluate(self, model, loader, *, full=False):
            model.eval()
            errors = [F.mse_loss(model(x), y, reduction="sum").item() for x, y in loader]
            return {"test_loss": sum(errors) / len(loader.dataset)}

        def on_epoch_end(self, model, epoch, logger):
            logger.info(f"w = {model.weight.item():.3f}")       # or logger.image("fit", png_tensor, epoch)

        def predict(self, model, meta, inputs, **_):
            return [{"input": x, "y": model(torch.tensor([[float(x)]])).item()} for x in inputs]

    register_task("line", LineTask)

The default ``train_step`` is ``loss = compute_loss(...)`` under ``step.autocast()``, then
``step.backward(loss)`` and ``step.step()``. A task with two players writes its own::

        def configure_optimizers(self, model, config):
            return {"critic": torch.optim.RMSprop(model.critic.parameters(), lr=5e-5),
                    "generator": torch.optim.RMSprop(model.generator.parameters(), lr=5e-5)}

        data_parallel = "allreduce"        # the step calls the players separately: the engine averages
                                           # each optimizer's gradients over processes in step.step(name)

        def train_step(self, model, batch, step):
            real = batch
            with step.autocast():
                fake = model.generator(torch.randn(len(real), 8, device=step.device))
                critic_loss = model.critic(fake.detach()).mean() - model.critic(real).mean()
            step.backward(critic_loss)
            step.step("critic")                                  # the critic every batch...
            if step.step_count % 5 == 4:                         # ...the generator every 5th
                with step.autocast():
                    generator_loss = -model.critic(fake).mean()
                step.zero_grad("generator")
                step.backward(generator_loss)
                step.step("generator")
            step.log(critic_loss=critic_loss.item())

``tests/engine/test_two_optimizers.py`` drives such a task through the Trainer and checks every
parameter against the hand-computed updates, and that resuming it is bit-exact.

Running a task
--------------
``canon.tasks.train(model, **options)`` splits keyword options between the engine's
:class:`~canon.engine.TrainConfig` and the task's ``Options`` (an unknown key names the valid ones),
builds the task of the model's registry entry and trains; ``evaluate_checkpoint`` and
``predict_images`` serve ``canon eval`` and ``canon predict``.
'''
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from canon.engine.checkpoint import atomic_write_text, load_model
from canon.engine.config import TrainConfig
from canon.engine.options import split_options
from canon.engine.trainer import RunInfo, TaskData, Trainer, resolve_device
from canon.tasks.base import NoOptions, Task

__all__ = ["Task", "NoOptions", "TaskData", "RunInfo", "TASKS", "register_task", "get_task", "task_class",
           "task_for_model", "all_task_classes", "train", "load_for_inference", "evaluate_checkpoint", "predict_images"]

TASKS: dict[str, type[Task]] = {}

# canon's own tasks, imported when first asked for (each file may pull in heavy libraries).
_BUILTIN = {
    "classification": ("canon.tasks.classification", "ClassificationTask"),
    "segmentation": ("canon.tasks.segmentation", "SegmentationTask"),
    "generation": ("canon.tasks.generation", "GenerationTask"),
    "reading": ("canon.tasks.reading", "ReadingTask"),
    "detection": ("canon.tasks.detection", "DetectionTask"),
    "translation": ("canon.tasks.translation", "TranslationTask"),
}


def register_task(name: str, cls: type[Task]) -> None:
    """Make ``cls`` the task of models registered with ``task=name``."""
    if name in TASKS and TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is registered twice ({TASKS[name].__qualname__} and {cls.__qualname__})")
    TASKS[name] = cls


def task_class(name: str) -> type[Task]:
    """The task class for models registered with ``task=name``."""
    if name not in TASKS and name in _BUILTIN:
        import importlib

        module, attr = _BUILTIN[name]
        register_task(name, getattr(importlib.import_module(module), attr))
    if name not in TASKS:
        known = sorted(set(TASKS) | set(_BUILTIN))
        raise ValueError(f"no training task for {name!r} models yet; tasks: {', '.join(known)}")
    return TASKS[name]


def all_task_classes() -> dict[str, type[Task]]:
    """Every task canon knows, by name (imports them all)."""
    for name in _BUILTIN:
        task_class(name)
    return dict(sorted(TASKS.items()))


def get_task(name: str, options=None, **kwargs) -> Task:
    """The task called ``name`` with its options (an ``Options`` instance or keywords)."""
    return task_class(name)(options, **kwargs)


def task_for_model(model: str) -> type[Task]:
    from canon.registry import model_info

    return task_class(model_info(model).task)


def train(model: str | TrainConfig, **options) -> dict[str, Any]:
    """Train a registered model; keyword options go to the engine's TrainConfig or the task's Options.

    ``train("lenet5", data="digits", epochs=3, mixup=0.8)`` or ``train(TrainConfig(...), mixup=0.8)``.
    Returns the final metrics (also in ``RUN/metrics.json``).
    """
    if isinstance(model, TrainConfig):
        config = model
        cls = task_for_model(config.model)
        (task_values,) = split_options(options, cls.Options, source="train()")
    else:
        cls = task_for_model(model)
        _refuse_other_tasks_options(options, cls, model)
        engine_values, task_values = split_options(options, TrainConfig, cls.Options, source="train()")
        config = TrainConfig(model=model, **engine_values)
    return Trainer(config, cls(**task_values)).fit()


def _refuse_other_tasks_options(options: dict, cls: type[Task], model: str) -> None:
    import dataclasses

    own = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(cls.Options)}
    for key in options:
        if key in own:
            continue
        owners = [name for name, other in all_task_classes().items()
                  if key in {f.name for f in dataclasses.fields(other.Options)}]
        if owners:
            raise ValueError(f"{key} is an option of the {' and '.join(owners)} task; {model} is a {cls.name} model")


def load_for_inference(target: str, weights: str | None = None):
    """``(model, meta)`` from a run folder or checkpoint file, or from a registered model name with
    ``weights`` (``"torchvision"``, ``"timm"``, a file, a URL): canon eval's and canon predict's
    input. For released weights, ``meta["extra"]`` carries the publisher's preprocessing and class
    names instead of a training run's input size and normalisation."""
    from pathlib import Path as _Path

    from canon.registry import create_model, model_info

    if weights is None:
        path = _Path(target)
        if not path.exists() and "/" not in target and not path.suffix:  # a model name (or a typo of one)
            model_info(target)  # an unknown name lists the closest registered ones
            raise ValueError(f"{target} is a model name, not a run folder or checkpoint: give --weights "
                             "(torchvision, timm, a file or a URL) to use released weights")
        return load_model(target)
    info = model_info(target)
    model = create_model(target, weights=weights).eval()
    extra = {"task": info.task}
    preprocessing = getattr(model, "canon_preprocessing", None)
    if preprocessing:
        from canon.weights import class_names

        extra["preprocessing"] = {k: v for k, v in preprocessing.items() if k != "categories"}
        categories = preprocessing.get("categories")
        if categories:
            extra["class_names"] = class_names(categories)
    source = getattr(model, "canon_weights", {}) or {}
    return model, {"path": str(source.get("path") or source.get("url") or weights), "model": target, "extra": extra}


def evaluate_checkpoint(checkpoint: str, *, data: str, data_dir: str | None = None, out_dir: str | None = None,
                        batch_size: int = 256, device: str = "auto", weights: str | None = None) -> dict[str, Any]:
    """Evaluate on ``data``'s test split; write ``eval.json`` (and figures) to ``out_dir`` (default:
    the run folder, or the working directory for released weights)."""
    from torch.utils.data import DataLoader

    from canon.engine.data import DeviceLoader

    model, meta = load_for_inference(checkpoint, weights)
    target = resolve_device(device)
    model.to(target)
    task = get_task(meta.get("extra", {}).get("task", "classification"))
    data_obj = task.build_eval_data(data, data_dir, meta, model)
    # Dense prediction evaluates whole test images, which may differ in size (COCO): the task's
    # own batch size (one image) caps the requested one.
    if task.eval_batch_size:
        batch_size = min(batch_size, task.eval_batch_size)
    loader = DeviceLoader(DataLoader(data_obj.test, batch_size=batch_size, shuffle=False, collate_fn=task.collate),
                          target)
    result = task.evaluate(model, loader, full=True)
    out = Path(out_dir) if out_dir else (Path(meta["path"]).parent if weights is None else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": meta["path"], "model": meta["model"], "data": data, **result}
    result.update(task.write_figures(model, data_obj, result, out))
    result["eval_json"] = str(out / "eval.json")
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2))
    return result


def predict_images(checkpoint: str, inputs: list[str], *, topk: int = 5, save_dir: str | None = None,
                   device: str = "auto", weights: str | None = None) -> list[dict]:
    """``canon predict``: the checkpoint's task turns each input into a result dict."""
    model, meta = load_for_inference(checkpoint, weights)
    target = resolve_device(device)
    model.to(target)
    task = get_task(meta.get("extra", {}).get("task", "classification"))
    with torch.no_grad():
        return task.predict(model, meta, list(inputs), save_dir=save_dir, topk=topk, device=target)
