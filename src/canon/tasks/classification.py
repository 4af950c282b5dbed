"""Image classification: cross-entropy on logits, accuracy, top-5 and per-class metrics.

Data: a classification dataset of ``canon.data.build_dataset`` (``ds[i] -> (image [C,H,W] in [0,1],
label)``), resized and normalised by ``canon.data.transforms.default_transforms``.

Model outputs: a logits tensor; in training, models with auxiliary classifiers may return
``{"logits": ..., "aux_logits": [...]}`` (weighted by ``model.aux_loss_weight``) and DeiT's
distilled models ``{"logits": ..., "dist_logits": ...}`` (DeiT's hard or soft distillation from a
teacher, ``--teacher RUN_DIR``).

The options this task adds to ``canon train``: the input size and augmentation, label smoothing,
class weights and a class-balanced sampler, mixup / CutMix, and distillation from a teacher.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.engine.checkpoint import CheckpointError, load_model
from canon.engine.options import option, parse_size
from canon.engine.trainer import TaskData
from canon.tasks.base import Task

__all__ = ["ImageOptions", "ClassificationOptions", "ClassificationTask", "TeacherAtItsInputSize"]

AUGMENT = ("default", "none")


@dataclass
class ImageOptions:
    """Options every image task shares."""

    input_size: tuple[int, int] | None = option(
        None, "training input H,W or one size (default: the data's own size if the model takes it, else the "
              "model's)", parse=parse_size, metavar="H,W")
    augment: str = option("default", "training augmentation: the data's default recipe, or none", choices=AUGMENT)

    def __post_init__(self):
        if self.input_size is not None:
            self.input_size = parse_size(self.input_size)
        if self.augment not in AUGMENT:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENT)}, got {self.augment!r}")


@dataclass
class ClassificationOptions(ImageOptions):
    loss: str = option("ce", "classification trains with cross-entropy", choices=("ce",))
    label_smoothing: float = option(0.0, "label smoothing ε of the cross-entropy")
    class_weights: str | None = option(None, "weight the loss by class frequency", choices=("inverse", "effective"))
    balanced_sampler: bool = option(False, "draw every class equally often (with replacement)")
    mixup: float = option(0.0, "mixup with λ ~ Beta(ALPHA, ALPHA) per batch (DeiT: 0.8; 0 = off)", metavar="ALPHA")
    cutmix: float = option(0.0, "CutMix with λ ~ Beta(ALPHA, ALPHA) (DeiT: 1.0); with --mixup, one of the two per "
                                "batch", metavar="ALPHA")
    teacher: str | None = option(None, "distil from a trained canon classifier of the same data (DeiT)",
                                 metavar="RUN_DIR")
    distillation: str = option("hard", "with --teacher: learn the teacher's argmax (DeiT's hard) or its softened "
                                       "distribution (soft, temperature --distillation-tau)", choices=("hard", "soft"))
    distillation_alpha: float | None = option(None, "weight of the teacher's term (default 0.5 hard, 0.1 soft, as in "
                                                    "DeiT)")
    distillation_tau: float = option(3.0, "soft distillation's temperature")

    def __post_init__(self):
        super().__post_init__()
        if self.loss != "ce":
            raise ValueError(f"classification trains with cross-entropy (--loss ce), got {self.loss!r}")
        if self.distillation not in ("hard", "soft"):
            raise ValueError(f"--distillation must be 'hard' or 'soft', got {self.distillation!r}")
        if self.distillation_alpha is not None and not 0.0 <= self.distillation_alpha <= 1.0:
            raise ValueError(f"--distillation-alpha must be in [0, 1], got {self.distillation_alpha}")
        if not self.distillation_tau > 0:
            raise ValueError(f"--distillation-tau must be > 0, got {self.distillation_tau}")
        if self.teacher is None and (self.distillation != "hard" or self.distillation_alpha is not None):
            raise ValueError(f"--distillation {self.distillation} / --distillation-alpha need --teacher RUN_DIR "
                             "(distillation learns from a trained teacher)")
        if self.class_weights not in (None, "inverse", "effective"):
            raise ValueError(f"--class-weights must be inverse or effective, got {self.class_weights!r}")
        from canon.data.mixing import BatchMixer

        BatchMixer(2, self.mixup, self.cutmix)  # checks the alphas now, before any data is read


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
    name = "classification"
    Options = ClassificationOptions
    primary_metric = "test_accuracy"
    higher_is_better = True

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        o = self.options
        # DeiT's values: ½ and ½ for hard, λ=0.1 for soft
        self.distillation_alpha = o.distillation_alpha if o.distillation_alpha is not None else (
            0.5 if o.distillation == "hard" else 0.1)
        self.teacher: nn.Module | None = None  # loaded in build_model from --teacher
        self.class_weights: torch.Tensor | None = None
        self.mixer = None  # built with the class count in build_data
        self.info = None
        self.input_size: tuple[int, int] | None = None

    # ------------------------------------------------------------------ data
    def _datasets(self, data: str, data_dir: str | None, input_size, model_input_size, probe, train: bool = True):
        from canon.data import TransformedDataset, build_dataset
        from canon.data import transforms as T

        train_set = build_dataset(data, split="train", data_dir=data_dir) if train else None
        test_set = build_dataset(data, split="test", data_dir=data_dir)
        info = (train_set or test_set).info
        if getattr(info, "task", "classification") != "classification":
            raise ValueError(f"{data!r} is a {info.task} dataset; classification models need labelled images "
                             "(digits, mnist, fashion-mnist, cifar10, mnist-folder:PATH, imagefolder:PATH)")
        if input_size is None:
            native = tuple(info.image_size)
            # Train at the data's own size when the model takes it; otherwise at the model's size.
            if probe is not None and _input_size_accepted(probe, info.in_chans, native):
                input_size = native
            else:
                input_size = tuple(model_input_size[-2:])
        input_size = tuple(input_size)
        augment = self.options.augment
        test = TransformedDataset(test_set, T.default_transforms(info, input_size, train=False, augment=augment))
        train_ds = None
        if train_set is not None:
            train_ds = TransformedDataset(train_set, T.default_transforms(info, input_size, train=True, augment=augment))
        return train_ds, test, info, input_size

    def build_data(self, run) -> TaskData:
        from canon.data import build_dataset
        from canon.registry import create_model, model_info

        cfg = run.config
        # A probe model (with the data's channel count) decides the training input size.
        probe_info = build_dataset(cfg.data, split="train", data_dir=cfg.data_dir).info
        kwargs = {"num_classes": probe_info.num_classes, "in_chans": probe_info.in_chans, **cfg.model_kwargs}
        probe = create_model(cfg.model, **kwargs) if self.options.input_size is None else None
        train, test, info, input_size = self._datasets(cfg.data, cfg.data_dir, self.options.input_size,
                                                       model_info(cfg.model).input_size, probe)
        del probe
        self.info, self.input_size = info, input_size
        if self.options.mixup or self.options.cutmix:
            from canon.data.mixing import BatchMixer

            self.mixer = BatchMixer(info.num_classes, self.options.mixup, self.options.cutmix)
        return TaskData(train=train, test=test, info=info)

    def model_kwargs(self, data: TaskData) -> dict[str, Any]:
        return {"num_classes": data.info.num_classes, "in_chans": data.info.in_chans}

    def build_model(self, run, data: TaskData) -> nn.Module:
        model = super().build_model(run, data)
        o = self.options
        if o.teacher:
            self.teacher = _load_teacher(o.teacher, self.input_size, data.info).to(run.device)
            if hasattr(model, "distilled_training"):
                model.distilled_training = True
        if o.class_weights:
            from canon.data import class_weights

            self.class_weights = class_weights(data.train.targets, data.info.num_classes,
                                               method=o.class_weights).to(run.device)
        return model

    def sample_order(self, train_set):
        if not self.options.balanced_sampler:
            return None
        from canon.data import balanced_sampler

        targets = train_set.targets
        return lambda generator: list(balanced_sampler(targets, generator=generator))

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, batch, step=None):
        images, labels = batch
        if self.mixer:  # mixup / CutMix: mixed images against soft targets (the teacher sees the mix too)
            images, labels = self.mixer(images, labels)
        output = model(images)
        module = step.module if step is not None else model
        class_weights = self.class_weights
        ce = lambda logits, target: F.cross_entropy(  # noqa: E731
            logits, target, weight=class_weights, label_smoothing=self.options.label_smoothing)
        if isinstance(output, dict):
            logits = output["logits"]
            if "dist_logits" in output:
                if self.teacher is None:
                    raise ValueError("the model returns distillation logits but no teacher was given; "
                                     "pass --teacher RUN_DIR or turn distilled_training off")
                loss = self._distillation_loss(logits, output["dist_logits"], labels, images, ce)
                logits = (logits + output["dist_logits"]) / 2
            else:
                loss = ce(logits, labels)
            for aux in output.get("aux_logits", []):
                loss = loss + getattr(module, "aux_loss_weight", 0.3) * ce(aux, labels)
        else:
            logits = output
            if self.teacher is not None:  # one head learns from both (Hinton et al.'s form)
                loss = self._distillation_loss(logits, logits, labels, images, ce)
            else:
                loss = ce(logits, labels)
        if step is not None:
            hard_labels = labels.argmax(dim=1) if labels.is_floating_point() else labels  # mixed: the larger share
            n = len(hard_labels)
            correct = (logits.detach().argmax(dim=1) == hard_labels).sum().item()
            step.log(n, loss=loss.item(), accuracy=correct / max(n, 1))
        return loss

    def _distillation_loss(self, logits, dist_logits, labels, images, ce):
        """DeiT: (1−α)·CE(class head, y) + α·(what the distillation head learns from the teacher)."""
        from canon.models.classification.deit import distillation_term

        with torch.no_grad():
            teacher_logits = self.teacher(images)
        alpha = self.distillation_alpha
        return (1 - alpha) * ce(logits, labels) + alpha * distillation_term(
            dist_logits, teacher_logits, self.options.distillation, self.options.distillation_tau)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model, loader, *, full: bool = False, num_classes: int | None = None):
        """Loss and accuracy; with ``full=True`` also top-5, per-class P/R/F1 and the confusion
        matrix, accumulated over batches by :class:`canon.metrics.ClassificationMetrics`."""
        from canon.metrics import ClassificationMetrics

        model.eval()
        loss_sum = correct = count = 0.0
        metrics = None
        num_classes = num_classes or (self.info.num_classes if self.info is not None else None)
        for images, labels in loader:
            logits = model(images)
            n = labels.numel()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += n
            if full:
                if metrics is None:
                    k = num_classes or logits.shape[1]
                    metrics = ClassificationMetrics(k, topk=(1, 5) if k >= 5 else (1,))
                metrics.update(logits, labels)
        result = {"test_loss": loss_sum / max(count, 1), "test_accuracy": correct / max(count, 1)}
        if metrics is not None:
            report = metrics.compute()
            report.pop("accuracy")  # the same number as test_accuracy above
            result.update(report)
        return result

    def checkpoint_meta(self) -> dict[str, Any]:
        info = self.info
        return {"input_size": list(self.input_size or ()),
                "class_names": list(getattr(info, "class_names", []) or []),
                "mean": list(getattr(info, "mean", []) or []), "std": list(getattr(info, "std", []) or [])}

    def build_eval_data(self, data, data_dir, meta, model) -> TaskData:
        extra = meta.get("extra", {})
        if extra.get("preprocessing"):  # released weights: the publisher's resize, crop and normalisation
            from functools import partial

            from canon.data import TransformedDataset, build_dataset
            from canon.weights import preprocess

            test_set = build_dataset(data, split="test", data_dir=data_dir)
            self.info, self.input_size = test_set.info, (extra["preprocessing"]["crop"],) * 2
            return TaskData(train=None, test=TransformedDataset(test_set, partial(
                preprocess, preprocessing=extra["preprocessing"])), info=test_set.info)
        input_size = tuple(extra.get("input_size") or ()) or None
        _, test, info, input_size = self._datasets(data, data_dir, input_size, input_size or (32, 32), model,
                                                   train=False)
        self.info, self.input_size = info, input_size
        return TaskData(train=None, test=test, info=info)

    def write_figures(self, model, data, result, out_dir: Path) -> dict[str, Any]:
        if "confusion_matrix" not in result:
            return {}
        from canon.engine.plots import plot_confusion_matrix

        path = Path(out_dir) / "confusion_matrix.png"
        plot_confusion_matrix(result["confusion_matrix"], list(data.info.class_names), path)
        return {"confusion_matrix_png": str(path), "accuracy": result["test_accuracy"]}

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, model, meta, inputs, *, save_dir=None, topk: int = 5, device=None):
        from canon.data import load_image
        from canon.data import transforms as T

        if not inputs:
            raise CheckpointError("no input images given")
        extra = meta.get("extra", {})
        device = device or torch.device("cpu")
        in_chans = model.canon_kwargs.get("in_chans", 3) if hasattr(model, "canon_kwargs") else 3
        size = tuple(extra.get("input_size") or (32, 32))
        mean, std = extra.get("mean") or [0.0] * in_chans, extra.get("std") or [1.0] * in_chans
        class_names = extra.get("class_names") or []
        # the evaluation pipeline of training: resize to the trained input size, then normalise; or, for
        # released weights, the publisher's resize, centre crop and normalisation
        if extra.get("preprocessing"):
            from functools import partial

            from canon.weights import preprocess as released_preprocess

            preprocess = partial(released_preprocess, preprocessing=extra["preprocessing"])
        else:
            preprocess = T.Compose([T.Resize(size), T.Normalize(mean, std)])
        results = []
        for path in inputs:
            image = preprocess(load_image(path, in_chans)).to(device)
            probs = model(image[None]).softmax(dim=1)[0].cpu()
            k = min(topk, probs.numel())
            values, indices = probs.topk(k)
            results.append({"input": str(path), "top": [
                {"class": class_names[i] if i < len(class_names) else str(i), "index": int(i), "probability": float(v)}
                for v, i in zip(values.tolist(), indices.tolist())]})
        return results


def demo(out: str | None = None, quiet: bool = False) -> int:
    """``canon demo``: LeNet-5 on scikit-learn's bundled digits (no download), in well under a minute."""
    import sys
    import time

    from canon.tasks import train

    out = out or "runs/demo-lenet5-digits"
    print("canon demo: training lenet5 on scikit-learn's digits (1,797 real 8x8 scans, upscaled to 32x32)",
          file=sys.stderr)
    # LeNet-5 on 32x32 is too small to split across threads: one thread is as fast on an idle
    # machine and many times faster on a busy one, where threads wait for each other.
    torch.set_num_threads(1)
    started = time.perf_counter()
    metrics = train("lenet5", data="digits", epochs=12, batch_size=32, lr=0.05, optimizer="sgd", scheduler="cosine",
                    weight_decay=5e-4, seed=0, out=out, progress=not quiet)
    seconds = time.perf_counter() - started
    print(f"lenet5 on digits: test accuracy {metrics['test_accuracy']:.4f} "
          f"after {metrics['epochs']} epochs in {seconds:.1f} s (run folder: {out})")
    return 0


ClassificationTask.demo = staticmethod(demo)


class TeacherAtItsInputSize(nn.Module):
    """A frozen teacher that sees the student's batch resized to the size it was trained at.

    DeiT distils at one resolution; here a teacher and a student may need different sizes (a
    ResNet-18 with the ImageNet stem needs 32 px, a patch-4 ViT for MNIST takes 28 px). The batch
    is already normalised with the dataset's statistics, and a bilinear resize commutes with that
    per-channel affine map, so resizing the normalised batch equals normalising a resized image.
    """

    def __init__(self, teacher: nn.Module, input_size: tuple[int, int]):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.input_size = tuple(input_size)

    def train(self, mode: bool = True):  # the teacher stays in eval mode (batch-norm statistics)
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(images, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return self.teacher(images)


def _load_teacher(path: str, student_input_size, data_info) -> nn.Module:
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
