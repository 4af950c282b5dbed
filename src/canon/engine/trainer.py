"""The one training loop. Task-agnostic: the task supplies data, loss and evaluation.

Guarantees:
- a checkpoint after every epoch, written atomically (see :mod:`canon.engine.checkpoint`);
- ``resume=True`` continues from the newest checkpoint and ends with exactly the weights an
  uninterrupted run with the same seed ends with (same data order, same augmentation draws);
- a non-finite loss stops training with :class:`TrainingDiverged`, leaving the last good
  checkpoint untouched;
- the run folder gets ``config.yaml``, ``history.csv``, ``metrics.json`` and ``curves.png``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from canon.engine.checkpoint import (
    atomic_write_text, latest_checkpoint_dir, load_model, load_training_checkpoint, save_training_checkpoint,
    save_weights,
)
from canon.engine.optim import build_optimizer, build_scheduler
from canon.engine.tasks import StepStats, get_task
from canon.registry import create_model, model_info

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    model: str
    data: str = "digits"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    loss: str | None = None  # task-specific choice, e.g. segmentation: "ce" | "dice" | "ce+dice"
    seed: int = 0
    out: str = "runs/train"
    resume: bool = False
    augment: str = "default"  # "default" | "none"
    input_size: tuple[int, int] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    distillation: str = "hard"  # with a teacher: "hard" (DeiT's default) | "soft"
    distillation_alpha: float | None = None  # weight of the teacher's term; None: 0.5 hard, 0.1 soft
    distillation_tau: float = 3.0  # soft distillation's temperature
    mixup: float = 0.0  # mixup's Beta(α, α); 0 = off
    cutmix: float = 0.0  # CutMix's Beta(α, α); 0 = off (both on: one of the two per batch)
    class_weights: str | None = None  # None | "inverse" | "effective"
    balanced_sampler: bool = False
    train_subset: int | None = None  # train on this many training images (a fixed stratified draw)
    eval_every: int = 1
    max_steps_per_epoch: int | None = None  # for quick checks; None = the whole training set
    channels_last: bool = False  # NHWC weights and batches: much faster depthwise/grouped convs on CPU
    amp: bool = False  # bfloat16 autocast for the training forward pass and loss; weights stay float32
    progress: bool = True

    def to_yaml(self) -> str:
        d = asdict(self)
        if d["input_size"] is not None:
            d["input_size"] = list(d["input_size"])
        return yaml.safe_dump(d, sort_keys=False)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = Path(config.out)
        info = model_info(config.model)  # fails early, with close names, on a typo
        self.model_info = info
        options = {}
        if info.task == "classification":
            options = {"label_smoothing": config.label_smoothing, "distillation": config.distillation,
                       "distillation_alpha": config.distillation_alpha, "distillation_tau": config.distillation_tau,
                       "mixup": config.mixup, "cutmix": config.cutmix}
        elif config.mixup or config.cutmix:
            raise ValueError(f"--mixup / --cutmix mix classification batches; {config.model} is a {info.task} model")
        if config.teacher is None and (config.distillation != "hard" or config.distillation_alpha is not None):
            raise ValueError(f"--distillation {config.distillation} / --distillation-alpha need --teacher RUN_DIR "
                             "(distillation learns from a trained teacher)")
        if isinstance(config.eval_every, bool) or not isinstance(config.eval_every, int) or config.eval_every < 1:
            raise ValueError(f"--eval-every must be a whole number of epochs >= 1, got {config.eval_every!r}")
        if config.loss is not None:
            options["loss"] = config.loss
        self.task = get_task(info.task, **options)

    # -------------------------------------------------------------------------------- setup
    def _build(self):
        cfg = self.config
        _seed_everything(cfg.seed)
        # A probe model (with the data's channel count) decides the training input size.
        from canon.data import build_dataset

        probe_info = build_dataset(cfg.data, split="train", data_dir=cfg.data_dir).info
        fixed = self.task.model_kwargs(probe_info)
        kwargs = {**fixed, **cfg.model_kwargs}
        probe = create_model(cfg.model, **kwargs)
        self.train_set, self.test_set, self.data_info, self.input_size = self.task.build_datasets(
            cfg.data, cfg.data_dir, input_size=cfg.input_size, augment=cfg.augment,
            model_input_size=self.model_info.input_size, model=probe)
        del probe
        if cfg.train_subset is not None:
            self.train_set = _subset(self.train_set, cfg.train_subset)
        _seed_everything(cfg.seed)  # the model's initial weights depend on the seed alone
        self.model = create_model(cfg.model, **kwargs)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.teacher = None
        if cfg.teacher:
            self.teacher = _load_teacher(cfg.teacher, self.input_size, self.data_info)
            if hasattr(self.model, "distilled_training"):
                self.model.distilled_training = True
        self.class_weights = None
        if cfg.class_weights:
            from canon.data import class_weights

            self.class_weights = class_weights(self.train_set.targets, self.data_info.num_classes,
                                               method=cfg.class_weights)
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters(), lr=cfg.lr,
                                         weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, epochs=cfg.epochs,
                                         steps_per_epoch=self.steps_per_epoch, warmup_epochs=cfg.warmup_epochs)
        self.test_loader = DataLoader(self.test_set, batch_size=getattr(self.task, "eval_batch_size", None)
                                      or max(cfg.batch_size, 256), shuffle=False)

    def _train_loader(self, epoch: int) -> DataLoader:
        # The data order depends on (seed, epoch) alone, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        if self.config.balanced_sampler:
            from canon.data import balanced_sampler

            sampler = balanced_sampler(self.train_set.targets, generator=generator)
            return DataLoader(self.train_set, batch_size=self.config.batch_size, sampler=sampler)
        return DataLoader(self.train_set, batch_size=self.config.batch_size, shuffle=True, generator=generator)

    # -------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        cfg = self.config
        self._build()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        history: list[dict[str, Any]] = []
        start_epoch, best, seconds_before = 0, None, 0.0
        if cfg.resume and latest_checkpoint_dir(self.run_dir) is not None:
            payload = load_training_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer,
                                               scheduler=self.scheduler)
            start_epoch, history, best = payload["epoch"], payload["history"], payload.get("best")
            seconds_before = payload.get("seconds", 0.0)
            self._log(f"resumed from {self.run_dir}/checkpoints (epoch {start_epoch})")
        elif cfg.resume:
            self._log(f"--resume: no checkpoint in {self.run_dir}; starting from scratch")
        atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
        t0 = time.perf_counter() - seconds_before
        for epoch in range(start_epoch, cfg.epochs):
            row = self._train_one_epoch(epoch)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                row.update(self.task.evaluate(self.model, self.test_loader))
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            score = row.get(self.task.primary_metric)
            improved = score is not None and (best is None or (score > best if self.task.higher_is_better
                                                               else score < best))
            if improved:
                best = score
                save_weights(self.run_dir / "best.safetensors", self.model,
                             extra=self._weights_extra(epoch + 1, row))
            save_weights(self.run_dir / "last.safetensors", self.model, extra=self._weights_extra(epoch + 1, row))
            save_training_checkpoint(self.run_dir, epoch=epoch + 1, model=self.model, optimizer=self.optimizer,
                                     scheduler=self.scheduler,
                                     state={"history": history, "best": best, "seconds": row["seconds"],
                                            "config": json.loads(json.dumps(asdict(cfg)))})
            self._write_history(history)
            self._log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        metrics = self._final_metrics(history, best)
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        return metrics

    def _train_one_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        self.model.train()
        stats = StepStats()
        loader = self._train_loader(epoch)
        started = time.perf_counter()
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                       leave=False, dynamic_ncols=True)
        for step, batch in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            if cfg.channels_last:
                batch = _channels_last(batch)
            # --amp: matrix products and convolutions in bfloat16; cross-entropy runs in float32 under torch's
            # autocast rules, and the tasks cast logits to float32 where a loss needs it (soft distillation's KL,
            # Dice). The backward pass follows the forward's dtypes; the optimizer updates float32 weights.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp):
                loss = self.task.compute_loss(self.model, batch, stats, teacher=self.teacher,
                                              class_weights=self.class_weights)
            if not torch.isfinite(loss):
                if bar is not None:
                    bar.close()
                last = latest_checkpoint_dir(self.run_dir)
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} (lr "
                    f"{self.optimizer.param_groups[0]['lr']:.3g}); stopped, {kept}. Try a lower --lr.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if bar is not None:
                elapsed = time.perf_counter() - started
                postfix = {k.removeprefix("train_"): f"{v:.4f}" for k, v in stats.as_dict("train").items()}
                postfix["img/s"] = f"{stats.count / max(elapsed, 1e-9):.0f}"
                bar.set_postfix(postfix)
                bar.update(1)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - started
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update(stats.as_dict("train"))
        row["train_images_per_s"] = stats.count / max(elapsed, 1e-9)
        return row

    # -------------------------------------------------------------------------------- records
    def _weights_extra(self, epoch: int, row: dict) -> dict:
        info = self.data_info
        return {"epoch": epoch, "task": self.task.name, "input_size": list(self.input_size),
                "data": self.config.data, "class_names": list(getattr(info, "class_names", []) or []),
                "mean": list(getattr(info, "mean", []) or []), "std": list(getattr(info, "std", []) or []),
                "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float))}}

    def _write_history(self, history: list[dict]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.run_dir / "history.csv", buf.getvalue())
        try:
            from canon.engine.plots import plot_curves

            plot_curves(history, self.run_dir / "curves.png")
        except Exception as e:  # a plotting problem must never lose a training run
            self._log(f"warning: could not draw curves.png: {e}")

    def _final_metrics(self, history: list[dict], best) -> dict[str, Any]:
        last = history[-1] if history else {}
        metrics = {"model": self.config.model, "data": self.config.data, "epochs": len(history),
                   "seconds": last.get("seconds", 0.0), "input_size": list(self.input_size),
                   f"best_{self.task.primary_metric}": best}
        metrics.update({k: v for k, v in last.items() if k.startswith("test_")})
        return metrics

    def _log(self, message: str) -> None:
        if self.config.progress:
            print(message, file=sys.stderr, flush=True)


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
        targets = torch.zeros(len(train_set), dtype=torch.long)  # no per-image labels: one stratum
    return SubsetDataset(train_set, stratified_subset(targets, size, seed=0))


def _channels_last(batch):
    """The batch with its 4-D tensors (images; not masks or labels) in NHWC memory order."""
    return type(batch)(x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4
                       else x for x in batch)


class TeacherAtItsInputSize(torch.nn.Module):
    """A frozen teacher that sees the student's batch resized to the size it was trained at.

    DeiT distils at one resolution; here a teacher and a student may need different sizes (a
    ResNet-18 with the ImageNet stem needs 32 px, a patch-4 ViT for MNIST takes 28 px). The batch
    is already normalised with the dataset's statistics, and a bilinear resize commutes with that
    per-channel affine map, so resizing the normalised batch equals normalising a resized image.
    """

    def __init__(self, teacher: torch.nn.Module, input_size: tuple[int, int]):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.input_size = tuple(input_size)

    def train(self, mode: bool = True):  # the teacher stays in eval mode (batch-norm statistics)
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.input_size:
            images = torch.nn.functional.interpolate(images, size=self.input_size, mode="bilinear",
                                                     align_corners=False, antialias=True)
        return self.teacher(images)


def _load_teacher(path: str, student_input_size, data_info) -> torch.nn.Module:
    """Load ``--teacher RUN_DIR`` and check it was trained on this data (classes, normalisation)."""
    teacher, meta = load_model(path)
    extra = meta.get("extra", {})
    teacher_classes = extra.get("class_names") or []
    student_classes = list(getattr(data_info, "class_names", []) or [])
    if teacher_classes and student_classes and teacher_classes != student_classes:
        raise ValueError(f"--teacher {meta['path']} was trained on classes {teacher_classes[:5]}... "
                         f"({len(teacher_classes)}), the student's data has {student_classes[:5]}... "
                         f"({len(student_classes)}): a teacher must predict the student's classes")
    for key in ("mean", "std"):
        theirs, ours = extra.get(key) or [], list(getattr(data_info, key, []) or [])
        if theirs and ours and not np.allclose(theirs, ours, atol=1e-6):
            raise ValueError(f"--teacher {meta['path']} was trained with {key} {theirs}, the student's data is "
                             f"normalised with {key} {ours}: train the teacher on the same data")
    size = extra.get("input_size") or list(student_input_size)
    return TeacherAtItsInputSize(teacher, tuple(size[-2:]))


def train(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.model`` and return the final metrics (also written to ``metrics.json``)."""
    return Trainer(config).fit()
