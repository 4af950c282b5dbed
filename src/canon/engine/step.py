"""What the engine hands a task's ``train_step``: the optimizers and the helpers every step needs.

A task's step computes its losses and calls :meth:`StepContext.backward` and
:meth:`StepContext.step`; the context does the rest, the same way for every task:

- ``autocast()``: bfloat16 autocast when ``--amp`` is on (a no-op otherwise);
- ``backward(loss)``: stops the run on a NaN/inf loss (on every process at once), scales the
  loss by this micro-batch's share of the batch (gradient accumulation, uneven last batches,
  several processes), and back-propagates;
- ``step(name)``: after the last micro-batch of a batch only, averages the gradients over the
  processes when the engine does not use DDP for this task, clips them (``--clip-grad-norm``,
  ``--clip-grad-value``), steps the optimizer and its schedule, and zeroes the gradients;
- ``log(n, **values)``: per-batch means, averaged over the epoch (weighted by ``n``) into
  ``train_<name>`` columns of ``history.csv``;
- ``step_count``, ``epoch``, ``micro_batch``, ``accumulate``, ``device``, ``module`` (the model
  itself, for attributes, when ``model`` is the DDP wrapper).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["StepContext", "MetricMeter", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class MetricMeter:
    """Weighted means over an epoch: ``add(n, loss=0.3)`` counts 0.3 for n samples."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, n: float, **values: float) -> None:
        for key, value in values.items():
            value = float(value.detach().item()) if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value * n
            self.counts[key] = self.counts.get(key, 0.0) + n

    def means(self, prefix: str = "train") -> dict[str, float]:
        return {f"{prefix}_{k}": self.sums[k] / max(self.counts[k], 1e-12) for k in self.sums}

    def last_means(self) -> dict[str, float]:
        return {k: self.sums[k] / max(self.counts[k], 1e-12) for k in self.sums}


class StepContext:
    """One per training run; the engine moves it along (``begin_micro_batch``) before each call of
    the task's ``train_step``."""

    def __init__(self, *, optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                 module: nn.Module, device: torch.device, amp: bool = False, accumulate: int = 1,
                 clip_grad_norm: float | None = None, clip_grad_value: float | None = None,
                 world_size: int = 1, sync_gradients: bool = False, on_diverged: Callable[[str], None] | None = None,
                 on_optimizer_step: Callable[[str, dict[str, float]], None] | None = None):
        self.optimizers = optimizers
        self.schedulers = schedulers
        self.module = module
        self.device = device
        self.amp = amp
        self.accumulate = accumulate
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.world_size = world_size
        self.sync_gradients = sync_gradients  # all-reduce in step() (tasks the engine does not wrap in DDP)
        self._on_diverged = on_diverged
        self._on_optimizer_step = on_optimizer_step
        self.meter = MetricMeter()
        self.step_count = 0  # optimizer steps finished (batches), over the whole run
        self.epoch = 0  # 0-based
        self.micro_batch = 0  # index within the batch's accumulation window
        self.loss_weight = 1.0  # this micro-batch's share of the batch, times the process count
        self.batch_size = 0  # samples in this micro-batch
        self._stepped: set[str] = set()

    # -------------------------------------------------------------------------------- engine side
    def begin_micro_batch(self, *, epoch: int, micro_batch: int, loss_weight: float, batch_size: int) -> None:
        self.epoch, self.micro_batch, self.loss_weight, self.batch_size = epoch, micro_batch, loss_weight, batch_size

    def end_batch(self) -> None:
        """After the last micro-batch of a batch: the batch counts as one step of the run."""
        self.step_count += 1
        self._stepped.clear()

    @property
    def is_last_micro_batch(self) -> bool:
        return self.micro_batch == self.accumulate - 1

    # -------------------------------------------------------------------------------- task side
    def autocast(self):
        """bfloat16 autocast under ``--amp`` (matrix products and convolutions in bfloat16; losses
        that need float32 cast their inputs), otherwise nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def backward(self, loss: torch.Tensor, *, retain_graph: bool = False) -> None:
        """Back-propagate this micro-batch's loss (a mean over its samples), weighted by its share."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.world_size > 1:  # a NaN on one process stops every process, not just that one
            import torch.distributed as dist

            flag = torch.tensor([0.0 if finite else 1.0], device=loss.device)
            dist.all_reduce(flag)
            finite = flag.item() == 0
        if not finite:
            value = loss.detach().float().item() if loss.numel() == 1 else float("nan")
            if self._on_diverged is not None:
                self._on_diverged(f"loss became {value}")
            raise TrainingDiverged(f"loss became {value}")
        (loss * self.loss_weight).backward(retain_graph=retain_graph)

    def step(self, name: str | None = None) -> float | None:
        """Step optimizer ``name`` (the only one when omitted) after the batch's last micro-batch;
        earlier micro-batches only accumulate. Returns the gradient norm before clipping when
        ``--clip-grad-norm`` is on."""
        name = self._name(name)
        if not self.is_last_micro_batch:
            return None
        optimizer = self.optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.sync_gradients and self.world_size > 1:
            import torch.distributed as dist

            for p in params:
                dist.all_reduce(p.grad)
                p.grad /= self.world_size
        norm = None
        if self.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.clip_grad_value)
        if self.clip_grad_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler = self.schedulers.get(name)
        if scheduler is not None:
            scheduler.step()
        self._stepped.add(name)
        if self._on_optimizer_step is not None:
            extra = {"grad_norm": norm} if norm is not None and math.isfinite(norm) else {}
            self._on_optimizer_step(name, extra)
        return norm

    def zero_grad(self, name: str | None = None) -> None:
        """Drop the gradients of optimizer ``name`` (e.g. a GAN's generator gradients that the
        critic's loss left on it)."""
        self.optimizers[self._name(name)].zero_grad(set_to_none=True)

    def log(self, n: int | None = None, **values: float) -> None:
        """Record per-sample means of this micro-batch (``loss=...``, ``accuracy=...``) for ``n``
        samples (default: the micro-batch's size)."""
        self.meter.add(self.batch_size if n is None else n, **values)

    def lr(self, name: str | None = None) -> float:
        return self.optimizers[self._name(name)].param_groups[0]["lr"]

    def _name(self, name: str | None) -> str:
        if name is None:
            if len(self.optimizers) != 1:
                raise ValueError(f"this task has optimizers {', '.join(self.optimizers)}: name the one to step")
            return next(iter(self.optimizers))
        if name not in self.optimizers:
            raise KeyError(f"no optimizer {name!r}; the task configured {', '.join(self.optimizers)}")
        return name
