"""Optimizers and learning-rate schedules, by the names the CLI offers.

Every schedule is a multiplier of the base learning rate as a function of the optimizer step,
so it is stepped once per batch and resumes exactly from its step count:

- ``constant``:       1
- ``step``:           gamma ** floor(epoch / step_epochs)          (AlexNet/ResNet style, gamma 0.1)
- ``cosine``:         0.5 * (1 + cos(pi * t / T)) after an optional linear warm-up
- ``warmup-linear``:  linear warm-up to 1, then linear decay to 0  (BERT/Transformer practice)
- ``poly``:           (1 - t / T) ** power, power 0.9              (DeepLab's "poly" policy)
"""
from __future__ import annotations

import math
from functools import partial

import torch

OPTIMIZERS = ("sgd", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULERS = ("constant", "step", "cosine", "warmup-linear", "poly")

__all__ = ["OPTIMIZERS", "SCHEDULERS", "build_optimizer", "build_scheduler", "schedule_factor"]


def build_optimizer(name: str, params, *, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, momentum=0.0, alpha=0.99)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def schedule_factor(step: int, *, name: str, total_steps: int, steps_per_epoch: int,
                    warmup_steps: int = 0, step_epochs: int = 1, gamma: float = 0.1,
                    power: float = 0.9) -> float:
    """The learning-rate multiplier after ``step`` optimizer steps (pure function)."""
    total_steps = max(total_steps, 1)
    if name == "constant":
        return 1.0
    if name == "step":
        return gamma ** (step // max(steps_per_epoch * step_epochs, 1))
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "cosine":
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if name == "warmup-linear":
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return max(0.0, 1.0 - t)
    if name == "poly":
        return max(0.0, 1.0 - step / total_steps) ** power
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                    warmup_epochs: float = 0.0, step_epochs: int | None = None,
                    gamma: float = 0.1, power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if step_epochs is None:  # three drops over the run, like the classic 30/60/90 recipe
        step_epochs = max(1, math.ceil(epochs / 3))
    factor = partial(schedule_factor, name=name, total_steps=epochs * steps_per_epoch,
                     steps_per_epoch=steps_per_epoch, warmup_steps=int(round(warmup_epochs * steps_per_epoch)),
                     step_epochs=step_epochs, gamma=gamma, power=power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
