"""The one training loop. It knows no task: a task (``canon.tasks``) builds the data and the model,
declares its optimizers and runs each step; the loop owns everything else.

Guarantees:
- a checkpoint after every epoch, written atomically (see :mod:`canon.engine.checkpoint`);
- ``resume=True`` continues from the newest checkpoint and ends with exactly the weights an
  uninterrupted run with the same seed ends with (same data order, same augmentation draws, every
  process's random stream restored); under torchrun a restarted group resumes by itself;
- a non-finite loss stops training with :class:`TrainingDiverged`, leaving the last good
  checkpoint untouched;
- the run folder gets ``config.yaml``, ``history.csv``, ``metrics.json`` and ``curves.png``
  (written by the main process alone in a distributed run).

What the loop calls on the task, in order (``canon.tasks.Task`` documents each):
``build_data(run)``, ``build_model(run, data)``, ``configure_optimizers(model, config)``,
``configure_schedulers(optimizers, config, steps_per_epoch, model)``, then per epoch ``sample_order``,
``collate`` (through the DataLoader), ``train_step(model, batch, step)`` per micro-batch,
``evaluate(model, loader)``, ``on_epoch_end(model, epoch, logger)``, and ``checkpoint_meta()``
for what the weights files record.
"""
from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from canon.engine.checkpoint import (
    atomic_write_text, latest_checkpoint_dir, load_training_checkpoint, rng_state, save_training_checkpoint,
    save_weights,
)
from canon.engine.config import TrainConfig
from canon.engine.data import DeviceLoader, move_to, plan_epoch, plan_loader, to_channels_last
from canon.engine.distributed import (
    DistributedInfo, all_gather_objects, barrier, convert_sync_batchnorm, init_distributed, maybe_inject_fault,
    restart_count, shutdown_distributed,
)
from canon.engine.logging import RunLogger, write_history
from canon.engine.step import StepContext, TrainingDiverged
from canon.registry import model_info

__all__ = ["Trainer", "TrainingDiverged", "RunInfo", "TaskData", "resolve_device", "default_run_dir"]


@dataclass
class TaskData:
    """What a task's ``build_data`` returns: the datasets, the dataset's own facts (``info``), and
    anything else the task wants to keep (``extra``)."""

    train: Any
    test: Any
    info: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    """What a task may know about the run it serves."""

    config: TrainConfig
    device: torch.device
    distributed: DistributedInfo = DistributedInfo()
    run_dir: Path | None = None


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def default_run_dir(config: TrainConfig) -> str:
    return f"runs/{config.model}-{config.data.split(':')[0]}"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """``Trainer(config, task).fit()`` trains ``config.model`` with ``task`` and returns the final
    metrics (also written to ``metrics.json``)."""

    def __init__(self, config: TrainConfig, task):
        if task is None:
            raise TypeError("Trainer needs a task (canon.tasks.get_task(name, ...)); canon.tasks.train() builds one "
                            "from the model's registered task")
        if not config.model:
            raise ValueError("no model given: name a registered model (canon list shows them)")
        self.config = config
        self.task = task
        self.model_info = model_info(config.model)  # fails early, with close names, on a typo
        if self.model_info.task != task.name:
            raise ValueError(f"{config.model} is a {self.model_info.task} model; the {task.name} task cannot train it")
        self.run_dir = Path(config.out or default_run_dir(config))
        self._started = False

    # -------------------------------------------------------------------------------- setup
    def _build(self) -> None:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.dist = init_distributed(self.device)
        self.run = RunInfo(config=cfg, device=self.device, distributed=self.dist, run_dir=self.run_dir)
        _seed_everything(cfg.seed)
        self.data = self.task.build_data(self.run)
        if cfg.train_subset is not None:
            self.data.train = _subset(self.data.train, cfg.train_subset)
        _seed_everything(cfg.seed)  # the model's initial weights depend on the seed alone
        model = self.task.build_model(self.run, self.data)
        if cfg.sync_bn and self.dist.enabled:
            model = convert_sync_batchnorm(model, self.device)
        model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.module = model
        if self.dist.rank > 0:  # every process draws its own augmentation (process 0 keeps the one-process stream)
            _seed_everything(cfg.seed + 1_000_003 * self.dist.rank)
        self.optimizers = dict(self.task.configure_optimizers(model, cfg))
        if not self.optimizers:
            raise ValueError(f"{type(self.task).__name__}.configure_optimizers returned no optimizer")
        self.steps_per_epoch = len(self._plan(0))
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set ({len(self.data.train)} samples) gives no batch of --batch-size "
                             f"{cfg.batch_size}")
        self.schedulers = dict(self.task.configure_schedulers(self.optimizers, cfg, self.steps_per_epoch, model))
        self.model = model
        self.uses_ddp = self.dist.enabled and getattr(self.task, "data_parallel", "ddp") == "ddp"
        if self.uses_ddp:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=getattr(self.task, "find_unused_parameters", False))
        self.step = StepContext(
            optimizers=self.optimizers, schedulers=self.schedulers, module=self.module, device=self.device,
            amp=cfg.amp, accumulate=cfg.accumulate, clip_grad_norm=cfg.clip_grad_norm,
            clip_grad_value=cfg.clip_grad_value, world_size=self.dist.world_size,
            sync_gradients=self.dist.enabled and not self.uses_ddp, on_optimizer_step=self._on_optimizer_step)
        eval_batch = getattr(self.task, "eval_batch_size", None) or max(cfg.batch_size, 256)
        self.test_loader = DataLoader(self.data.test, batch_size=eval_batch, shuffle=False,
                                      collate_fn=getattr(self.task, "collate", None), num_workers=cfg.workers)

    def _plan(self, epoch: int):
        cfg = self.config
        train = self.data.train
        order = None
        custom = self.task.sample_order(train)
        if custom is not None:
            order = custom
        return plan_epoch(len(train), cfg.batch_size, seed=cfg.seed, epoch=epoch, world_size=self.dist.world_size,
                          rank=self.dist.rank, accumulate=cfg.accumulate, order=order,
                          max_steps=cfg.max_steps_per_epoch)

    # -------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        cfg = self.config
        self._build()
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        barrier(self.dist)
        self.logger = RunLogger(self.run_dir if main else None, console=cfg.progress,
                                tensorboard=cfg.tensorboard and main)
        history: list[dict[str, Any]] = []
        start_epoch, best, seconds_before = 0, None, 0.0
        resume = cfg.resume or restart_count() > 0
        if resume and latest_checkpoint_dir(self.run_dir) is not None:
            payload = load_training_checkpoint(self.run_dir, model=self.module, optimizers=self.optimizers,
                                               schedulers=self.schedulers, rank=self.dist.rank,
                                               world_size=self.dist.world_size)
            start_epoch, history, best = payload["epoch"], payload["history"], payload.get("best")
            seconds_before = payload.get("seconds", 0.0)
            self.step.step_count = payload.get("step_count", start_epoch * self.steps_per_epoch)
            why = "" if cfg.resume else f" (torchrun restart {restart_count()})"
            if main:  # said even with --quiet: a run that continues an earlier one should say so
                print(f"resumed from {self.run_dir}/checkpoints (epoch {start_epoch}){why}", file=sys.stderr,
                      flush=True)
        elif cfg.resume:
            self.logger.info(f"--resume: no checkpoint in {self.run_dir}; starting from scratch")
        if main:
            atomic_write_text(self.run_dir / "config.yaml",
                              cfg.to_yaml(self.task.options_dict(), task=self.task.name))
        t0 = time.perf_counter() - seconds_before
        try:
            for epoch in range(start_epoch, cfg.epochs):
                row = self._train_one_epoch(epoch)
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    if main:
                        loader = DeviceLoader(self.test_loader, self.device)
                        row.update(self.task.evaluate(self.module, loader))
                    barrier(self.dist)
                row["seconds"] = time.perf_counter() - t0
                history.append(row)
                rng_states = all_gather_objects(self.dist, rng_state())
                if main:
                    best = self._save_epoch(epoch, row, history, best, rng_states)
                    self.task.on_epoch_end(self.module, epoch, self.logger)
                    self.logger.scalars({k: v for k, v in row.items() if k != "epoch"}, epoch + 1, prefix="epoch/")
                    self.logger.flush()
                    self.logger.info(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in row.items()))
                barrier(self.dist)
            metrics = self._final_metrics(history, best)
            if main:
                atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        finally:
            self.logger.close()
        shutdown_distributed(self.dist)
        return metrics

    def _save_epoch(self, epoch: int, row: dict, history: list, best, rng_states):
        primary = self.task.primary_metric
        score = row.get(primary)
        improved = score is not None and (best is None or (score > best if self.task.higher_is_better
                                                           else score < best))
        if improved:
            best = score
            save_weights(self.run_dir / "best.safetensors", self.module, extra=self._weights_extra(epoch + 1, row))
        save_weights(self.run_dir / "last.safetensors", self.module, extra=self._weights_extra(epoch + 1, row))
        save_training_checkpoint(self.run_dir, epoch=epoch + 1, model=self.module, optimizers=self.optimizers,
                                 schedulers=self.schedulers, rng_states=rng_states,
                                 state={"history": history, "best": best, "seconds": row["seconds"],
                                        "step_count": self.step.step_count,
                                        "config": json.loads(json.dumps(self.config.as_dict())),
                                        "task_options": json.loads(json.dumps(self.task.options_dict()))})
        write_history(history, self.run_dir, self.logger.info)
        return best

    def _train_one_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        self.model.train()
        plan = self._plan(epoch)
        loader = plan_loader(self.data.train, plan, collate_fn=getattr(self.task, "collate", None),
                             workers=cfg.workers)
        step = self.step
        step.meter = type(step.meter)()
        started = time.perf_counter()
        samples = 0
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=len(plan), desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr, leave=False,
                       dynamic_ncols=True)
        batches = iter(loader)
        unit = getattr(self.task, "sample_unit", "images")
        try:
            for k, micro_batches in enumerate(plan.steps):
                maybe_inject_fault(self.dist, step.step_count)
                for optimizer in self.optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
                for m, (indices, weight) in enumerate(micro_batches):
                    batch = move_to(next(batches), self.device)
                    if cfg.channels_last:
                        batch = to_channels_last(batch)
                    step.begin_micro_batch(epoch=epoch, micro_batch=m, loss_weight=weight, batch_size=len(indices))
                    no_sync = self.uses_ddp and m < len(micro_batches) - 1
                    with self.model.no_sync() if no_sync else contextlib.nullcontext():
                        try:
                            self.task.train_step(self.model, batch, step)
                        except TrainingDiverged as e:
                            raise self._diverged(e, epoch, k) from None
                step.end_batch()
                samples += plan.batch_sizes[k]
                if self.logger.writer is not None:
                    self.logger.scalars({f"lr_{name}" if len(self.optimizers) > 1 else "lr": o.param_groups[0]["lr"]
                                         for name, o in self.optimizers.items()}, step.step_count, prefix="step/")
                if bar is not None:
                    elapsed = time.perf_counter() - started
                    postfix = {key: f"{value:.4f}" for key, value in step.meter.last_means().items()}
                    postfix[f"{unit}/s"] = f"{samples / max(elapsed, 1e-9):.0f}"
                    bar.set_postfix(postfix)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - started
        if self.dist.enabled:  # the epoch's means over every process's share of the batches
            merged = type(step.meter)()
            for sums, counts in all_gather_objects(self.dist, (step.meter.sums, step.meter.counts)):
                for key, value in sums.items():
                    merged.sums[key] = merged.sums.get(key, 0.0) + value
                    merged.counts[key] = merged.counts.get(key, 0.0) + counts[key]
            step.meter = merged
        row: dict[str, Any] = {"epoch": epoch + 1}
        if len(self.optimizers) == 1:
            row["lr"] = next(iter(self.optimizers.values())).param_groups[0]["lr"]
        else:
            row.update({f"lr_{name}": o.param_groups[0]["lr"] for name, o in self.optimizers.items()})
        row.update(step.meter.means("train"))
        row[f"train_{unit}_per_s"] = samples / max(elapsed, 1e-9)
        return row

    def _on_optimizer_step(self, name: str, extra: dict[str, float]) -> None:
        if extra:
            self.step.meter.add(1, **{(f"{k}_{name}" if len(self.optimizers) > 1 else k): v for k, v in extra.items()})

    def _diverged(self, error: TrainingDiverged, epoch: int, step_in_epoch: int) -> TrainingDiverged:
        last = latest_checkpoint_dir(self.run_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        lrs = ", ".join(f"{o.param_groups[0]['lr']:.3g}" for o in self.optimizers.values())
        return TrainingDiverged(f"{error} at epoch {epoch + 1}, step {step_in_epoch + 1} (lr {lrs}); stopped, "
                                f"{kept}. Try a lower --lr (or --clip-grad-norm).")

    # -------------------------------------------------------------------------------- records
    def _weights_extra(self, epoch: int, row: dict) -> dict:
        return {"epoch": epoch, "task": self.task.name, "data": self.config.data, **self.task.checkpoint_meta(),
                "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float))}}

    def _final_metrics(self, history: list[dict], best) -> dict[str, Any]:
        last = history[-1] if history else {}
        meta = self.task.checkpoint_meta()
        metrics = {"model": self.config.model, "data": self.config.data, "epochs": len(history),
                   "seconds": last.get("seconds", 0.0)}
        if "input_size" in meta:
            metrics["input_size"] = meta["input_size"]
        metrics[f"best_{self.task.primary_metric}"] = best
        metrics.update({k: v for k, v in last.items() if k.startswith("test_")})
        return metrics


def _subset(train_set, size: int):
    """``train_set`` cut to ``size`` samples, the same for every ``--seed``: each class keeps its share
    (labelled sets), otherwise a uniform draw; seeded with 0 so that runs with different seeds and
    a teacher trained with the same ``--train-subset`` all see the same images."""
    from canon.data import SubsetDataset, stratified_subset

    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= len(train_set):
        raise ValueError(f"--train-subset must be a whole number in 1..{len(train_set)} (the training set's size), "
                         f"got {size!r}")
    targets = getattr(train_set, "targets", None)
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or len(targets) != len(train_set):
        targets = torch.zeros(len(train_set), dtype=torch.long)  # no per-sample labels: one stratum
    return SubsetDataset(train_set, stratified_subset(targets, size, seed=0))

