"""Optimizers and learning-rate schedules, by the names the CLI offers.

Every schedule is a multiplier of the base learning rate as a function of the optimizer step
``s`` (0-based), so it is stepped once per optimizer step and resumes exactly from its count.
``w`` is the warm-up length in steps (``--warmup-steps``, or ``--warmup-epochs`` x steps per
epoch), ``T`` the run's total steps. Per-epoch schedules change only at epoch boundaries:

- ``constant``:       1
- ``step``:           gamma ** floor(epoch / step_epochs)          (AlexNet/ResNet style, gamma 0.1)
- ``multistep``:      gamma ** (number of --milestones passed)     (the ResNet paper's CIFAR recipe)

Per-step schedules:

- ``cosine``:         0.5 * (1 + cos(pi * (s - w) / (T - w)))
- ``warmup-linear``:  1 - (s - w) / (T - w)                        (BERT practice)
- ``poly``:           (1 - s / T) ** power, power 0.9              (DeepLab's "poly" policy)
- ``inverse-sqrt``:   d_model^-0.5 * min(n^-0.5, n * w^-1.5), n = s + 1   (the Transformer's schedule,
                      eq. 3 of Vaswani et al. 2017; ``--lr 1`` gives the paper's values, w = 4000 by default)

Every schedule but ``inverse-sqrt`` (whose formula contains its own warm-up) starts with a linear
warm-up ``(s + 1) / w`` for its first ``w`` steps when ``w > 0``.
"""
from __future__ import annotations

import math
from functools import partial

import torch

OPTIMIZERS = ("sgd", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULERS = ("constant", "step", "multistep", "cosine", "warmup-linear", "poly", "inverse-sqrt")
PER_EPOCH_SCHEDULERS = ("constant", "step", "multistep")

__all__ = ["OPTIMIZERS", "SCHEDULERS", "PER_EPOCH_SCHEDULERS", "build_optimizer", "build_scheduler",
           "schedule_factor"]


def build_optimizer(name: str, params, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, momentum=0.0, alpha=0.99, eps=eps)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def schedule_factor(step: int, *, name: str, total_steps: int, steps_per_epoch: int,
                    warmup_steps: int = 0, step_epochs: int = 1, gamma: float = 0.1,
                    power: float = 0.9, milestones: tuple[int, ...] = (), d_model: int | None = None) -> float:
    """The learning-rate multiplier after ``step`` optimizer steps (pure function)."""
    total_steps = max(total_steps, 1)
    if name == "constant":
        return 1.0
    if name == "inverse-sqrt":
        if not d_model:
            raise ValueError("the inverse-sqrt schedule needs d_model (--d-model, or a model with a d_model attribute)")
        n, w = step + 1, max(warmup_steps, 1)
        return d_model ** -0.5 * min(n ** -0.5, n * w ** -1.5)
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    epoch = step // max(steps_per_epoch, 1)
    if name == "step":
        return gamma ** (epoch // max(step_epochs, 1))
    if name == "multistep":
        return gamma ** sum(1 for m in milestones if epoch >= m)
    if name == "cosine":
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if name == "warmup-linear":
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return max(0.0, 1.0 - t)
    # poly
    return max(0.0, 1.0 - step / total_steps) ** power


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                    warmup_epochs: float = 0.0, warmup_steps: int | None = None, step_epochs: int | None = None,
                    gamma: float = 0.1, power: float = 0.9, milestones: tuple[int, ...] = (),
                    d_model: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if step_epochs is None:  # three drops over the run, like the classic 30/60/90 recipe
        step_epochs = max(1, math.ceil(epochs / 3))
    if warmup_steps is None:
        warmup_steps = int(round(warmup_epochs * steps_per_epoch))
        if name == "inverse-sqrt" and warmup_steps == 0:
            warmup_steps = 4000  # the paper's
    if name == "inverse-sqrt" and not d_model:
        raise ValueError("the inverse-sqrt schedule needs d_model (--d-model, or a model with a d_model attribute)")
    factor = partial(schedule_factor, name=name, total_steps=epochs * steps_per_epoch,
                     steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps,
                     step_epochs=step_epochs, gamma=gamma, power=power, milestones=tuple(milestones), d_model=d_model)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
