"""Tasks: the plug points that make the one training loop serve every kind of model.

A task knows its data (how to build the train/test datasets and their transforms), its loss,
its running statistics and its evaluation. The :class:`~canon.engine.trainer.Trainer` knows
none of that: it calls the task.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Task", "ClassificationTask", "get_task", "register_task", "TASKS"]


@dataclass
class StepStats:
    """Sums over the batches of an epoch; ``as_dict`` divides by the sample count."""

    loss_sum: float = 0.0
    count: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, count: int, **extra: float) -> None:
        self.loss_sum += loss * count
        self.count += count
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0.0) + v

    def as_dict(self, prefix: str) -> dict[str, float]:
        n = max(self.count, 1)
        out = {f"{prefix}_loss": self.loss_sum / n}
        out.update({f"{prefix}_{k}": v / n for k, v in self.extra.items()})
        return out


class Task:
    """The interface a task implements. See :class:`ClassificationTask` for a full example."""

    name: str = "task"
    primary_metric: str = "test_loss"  # key of ``evaluate``'s result used to pick ``best``
    higher_is_better: bool = False

    def build_datasets(self, data: str, data_dir: str | None, *, input_size: tuple[int, int] | None,
                       augment: str, model_input_size: tuple[int, ...]):
        """Return (train_dataset, test_dataset, dataset_info, input_size)."""
        raise NotImplementedError

    def model_kwargs(self, info) -> dict[str, Any]:
        """Arguments the data fixes for the model (e.g. ``num_classes``, ``in_chans``)."""
        return {}

    def compute_loss(self, model: nn.Module, batch, stats: StepStats, *, teacher: nn.Module | None = None,
                     class_weights: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        raise NotImplementedError


# ----------------------------------------------------------------------------- classification
def _input_size_accepted(model: nn.Module, in_chans: int, size: tuple[int, int]) -> bool:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, *size))
        return True
    except ValueError:
        return False
    finally:
        model.train(was_training)


class ClassificationTask(Task):
    """Image classification: cross-entropy on logits, accuracy, top-5 and per-class metrics.

    Model outputs: a logits tensor; in training, models with auxiliary classifiers may return
    ``{"logits": ..., "aux_logits": [...]}`` (weighted by ``model.aux_loss_weight``) and DeiT's
    distilled models ``{"logits": ..., "dist_logits": ...}`` (DeiT's hard or soft distillation from a teacher).
    """

    name = "classification"
    primary_metric = "test_accuracy"
    higher_is_better = True

    def __init__(self, label_smoothing: float = 0.0, loss: str = "ce", distillation: str = "hard",
                 distillation_alpha: float | None = None, distillation_tau: float = 3.0, mixup: float = 0.0,
                 cutmix: float = 0.0):
        if loss != "ce":
            raise ValueError(f"classification trains with cross-entropy (--loss ce), got {loss!r}")
        if distillation not in ("hard", "soft"):
            raise ValueError(f"--distillation must be 'hard' or 'soft', got {distillation!r}")
        if distillation_alpha is None:  # DeiT's values: ½ and ½ for hard, λ=0.1 for soft
            distillation_alpha = 0.5 if distillation == "hard" else 0.1
        if not 0.0 <= distillation_alpha <= 1.0:
            raise ValueError(f"--distillation-alpha must be in [0, 1], got {distillation_alpha}")
        if not distillation_tau > 0:
            raise ValueError(f"--distillation-tau must be > 0, got {distillation_tau}")
        self.label_smoothing = label_smoothing
        self.distillation, self.distillation_alpha = distillation, distillation_alpha
        self.distillation_tau = distillation_tau
        from canon.data.mixing import BatchMixer

        BatchMixer(2, mixup, cutmix)  # checks the alphas now, before any data is read
        self.mixup, self.cutmix = mixup, cutmix
        self.mixer = None  # built with the class count in build_datasets

    def build_datasets(self, data, data_dir, *, input_size, augment, model_input_size, model=None):
        from canon.data import TransformedDataset, build_dataset
        from canon.data import transforms as T

        train = build_dataset(data, split="train", data_dir=data_dir)
        test = build_dataset(data, split="test", data_dir=data_dir)
        info = train.info
        if self.mixup or self.cutmix:
            from canon.data.mixing import BatchMixer

            self.mixer = BatchMixer(info.num_classes, self.mixup, self.cutmix)
        if input_size is None:
            native = tuple(info.image_size)
            # Train at the data's own size when the model takes it; otherwise at the model's size.
            if model is not None and _input_size_accepted(model, info.in_chans, native):
                input_size = native
            else:
                input_size = tuple(model_input_size[-2:])
        train_tf = T.default_transforms(info, input_size, train=True, augment=augment)
        test_tf = T.default_transforms(info, input_size, train=False, augment=augment)
        return TransformedDataset(train, train_tf), TransformedDataset(test, test_tf), info, tuple(input_size)

    def model_kwargs(self, info):
        return {"num_classes": info.num_classes, "in_chans": info.in_chans}

    def compute_loss(self, model, batch, stats, *, teacher=None, class_weights=None):
        images, labels = batch
        if self.mixer:  # mixup / CutMix: mixed images against soft targets (the teacher sees the mix too)
            images, labels = self.mixer(images, labels)
        output = model(images)
        ce = lambda logits, target: F.cross_entropy(  # noqa: E731
            logits, target, weight=class_weights, label_smoothing=self.label_smoothing)
        if isinstance(output, dict):
            logits = output["logits"]
            if "dist_logits" in output:
                if teacher is None:
                    raise ValueError("the model returns distillation logits but no teacher was given; "
                                     "pass --teacher RUN_DIR or turn distilled_training off")
                loss = self._distillation_loss(logits, output["dist_logits"], labels, teacher, images, ce)
                logits = (logits + output["dist_logits"]) / 2
            else:
                loss = ce(logits, labels)
            for aux in output.get("aux_logits", []):
                loss = loss + getattr(model, "aux_loss_weight", 0.3) * ce(aux, labels)
        else:
            logits = output
            if teacher is not None:  # one head learns from both (Hinton et al.'s form)
                loss = self._distillation_loss(logits, logits, labels, teacher, images, ce)
            else:
                loss = ce(logits, labels)
        hard_labels = labels.argmax(dim=1) if labels.is_floating_point() else labels  # mixed: the larger share
        correct = (logits.detach().argmax(dim=1) == hard_labels).sum().item()
        stats.add(loss.item(), len(hard_labels), accuracy=correct)
        return loss

    def _distillation_loss(self, logits, dist_logits, labels, teacher, images, ce):
        """DeiT: (1−α)·CE(class head, y) + α·(what the distillation head learns from the teacher)."""
        from canon.models.classification.deit import distillation_term

        with torch.no_grad():
            teacher_logits = teacher(images)
        alpha = self.distillation_alpha
        return (1 - alpha) * ce(logits, labels) + alpha * distillation_term(
            dist_logits, teacher_logits, self.distillation, self.distillation_tau)

    @torch.no_grad()
    def evaluate(self, model, loader, *, num_classes: int | None = None, full: bool = False):
        """Loss and accuracy; with ``full=True`` also top-5, per-class P/R/F1 and the confusion
        matrix, accumulated over batches by :class:`canon.metrics.ClassificationMetrics`."""
        from canon.metrics import ClassificationMetrics

        model.eval()
        stats = StepStats()
        metrics = None
        for images, labels in loader:
            logits = model(images)
            loss = F.cross_entropy(logits, labels, reduction="sum").item()
            stats.add(loss / max(labels.numel(), 1), labels.numel(),
                      accuracy=(logits.argmax(1) == labels).sum().item())
            if full:
                if metrics is None:
                    k = num_classes or logits.shape[1]
                    metrics = ClassificationMetrics(k, topk=(1, 5) if k >= 5 else (1,))
                metrics.update(logits, labels)
        result = stats.as_dict("test")
        if metrics is not None:
            report = metrics.compute()
            report.pop("accuracy")  # the same number as test_accuracy above
            result.update(report)
        return result


TASKS: dict[str, type[Task]] = {"classification": ClassificationTask}


def register_task(name: str, cls: type[Task]) -> None:
    TASKS[name] = cls


def get_task(name: str, **kwargs) -> Task:
    import canon.engine.segmentation  # noqa: F401  (registers the segmentation task)

    if name not in TASKS:
        raise ValueError(f"no training task for {name!r} models yet; tasks: {', '.join(TASKS)}")
    return TASKS[name](**kwargs)
