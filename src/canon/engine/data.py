"""Batches for the loop: which samples make each batch, which of them this process takes, and how
they reach the device.

The order of an epoch depends on ``(seed, epoch)`` alone, so a resumed run and a run on more
processes see the same batches. A batch of ``B`` samples is cut into ``P`` contiguous shares (one
per process) and each share into ``A`` micro-batches (``--accumulate``); a micro-batch of ``n``
samples weighs ``n * P / b`` in the backward pass (``b``: the batch's real size, smaller for the
last batch of an epoch), so that summing the micro-batches and averaging over the processes
gives the gradient of the mean loss over the whole batch. A last batch with fewer samples than
``P * A`` cannot give every micro-batch a sample and is dropped (only with several processes or
accumulation; a single process without accumulation keeps it, as DataLoader does).

Why not ``torch.utils.data.DistributedSampler``: it pads each epoch by repeating samples so every
process gets the same count, which changes what the last batch holds and so the result of a run on
more processes; cutting each batch instead keeps every batch identical to the one-process run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochPlan", "plan_epoch", "plan_loader", "MicroBatchSampler", "DeviceLoader", "move_to", "to_channels_last",
           "epoch_generator"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


@dataclass
class EpochPlan:
    """This process's micro-batches for one epoch: ``steps[k]`` lists the (indices, weight) pairs
    of batch k, in order."""

    steps: list[list[tuple[list[int], float]]]
    batch_sizes: list[int]  # samples in each whole batch (over every process)
    loader_seed: int  # seeds the DataLoader's own generator (worker seeds)

    def __len__(self) -> int:
        return len(self.steps)


def _shares(items: Sequence[int], parts: int) -> list[list[int]]:
    n = len(items)
    return [list(items[i * n // parts:(i + 1) * n // parts]) for i in range(parts)]


def plan_epoch(num_samples: int, batch_size: int, *, seed: int, epoch: int, world_size: int = 1, rank: int = 0,
               accumulate: int = 1, order: Callable[[torch.Generator], Sequence[int]] | None = None,
               max_steps: int | None = None) -> EpochPlan:
    """The micro-batches of process ``rank`` for ``epoch``.

    ``order(generator)`` gives the epoch's sample order (default: a uniform permutation). The
    generator draws a 64-bit number first, then the order: the same sequence of draws as
    ``DataLoader(shuffle=True, generator=g)``, so a single-process run sees exactly the batches
    earlier canon versions (which used that DataLoader) saw.
    """
    if batch_size < world_size * accumulate:
        raise ValueError(f"--batch-size {batch_size} must be at least processes x --accumulate = "
                         f"{world_size} x {accumulate}: every micro-batch needs a sample")
    generator = epoch_generator(seed, epoch)
    loader_seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
    indices = list(order(generator)) if order is not None else torch.randperm(num_samples, generator=generator).tolist()
    steps, sizes = [], []
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        if len(batch) < world_size * accumulate:
            break  # too small to give every micro-batch of every process a sample
        share = _shares(batch, world_size)[rank]
        micro = _shares(share, accumulate)
        steps.append([(m, len(m) * world_size / len(batch)) for m in micro])
        sizes.append(len(batch))
        if max_steps is not None and len(steps) >= max_steps:
            break
    return EpochPlan(steps=steps, batch_sizes=sizes, loader_seed=loader_seed)


class MicroBatchSampler(Sampler[list[int]]):
    """A batch sampler over a plan's micro-batches, from batch ``start_step`` on."""

    def __init__(self, plan: EpochPlan, start_step: int = 0):
        self.micro_batches = [indices for step in plan.steps[start_step:] for indices, _ in step]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.micro_batches)

    def __len__(self) -> int:
        return len(self.micro_batches)


def plan_loader(dataset: Dataset, plan: EpochPlan, *, collate_fn=None, workers: int = 0, start_step: int = 0,
                pin_memory: bool = False) -> DataLoader:
    # The loader's generator only seeds worker processes; it is separate from the global RNG that
    # in-process augmentation draws from, so the order of draws matches a plain DataLoader's.
    generator = torch.Generator().manual_seed(plan.loader_seed)
    return DataLoader(dataset, batch_sampler=MicroBatchSampler(plan, start_step), collate_fn=collate_fn,
                      num_workers=workers, generator=generator, pin_memory=pin_memory,
                      persistent_workers=False)


def move_to(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor inside (tuples, lists, dicts, nested) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return type(batch)((k, move_to(v, device, non_blocking)) for k, v in batch.items())
    if isinstance(batch, (list, tuple)):
        moved = [move_to(v, device, non_blocking) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def to_channels_last(batch: Any) -> Any:
    """``batch`` with its 4-D float tensors (image batches; not masks or labels) in NHWC order."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return type(batch)((k, to_channels_last(v)) for k, v in batch.items())
    if isinstance(batch, (list, tuple)):
        moved = [to_channels_last(v) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


class DeviceLoader:
    """Iterate a loader with every batch moved to ``device``."""

    def __init__(self, loader: DataLoader, device: torch.device, channels_last: bool = False):
        self.loader, self.device, self.channels_last = loader, device, channels_last
        self.dataset = loader.dataset

    def __iter__(self):
        for batch in self.loader:
            batch = move_to(batch, self.device)
            yield to_channels_last(batch) if self.channels_last else batch

    def __len__(self) -> int:
        return len(self.loader)
