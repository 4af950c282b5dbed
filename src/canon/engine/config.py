"""What the engine itself is told: the run, the optimisation, the hardware. Task options live in
each task's own ``Options`` dataclass (``canon.tasks``); the CLI builds ``canon train``'s flags
from both (:mod:`canon.engine.options`).

Batch size, processes and accumulation: ``batch_size`` is the number of samples behind one
optimizer step, whatever the hardware. With ``torchrun --nproc-per-node P`` each process takes
``batch_size / P`` of every batch, and ``accumulate A`` splits each process's share into A
micro-batches whose gradients add up before the step. So the same command on 1 or 8 processes,
with or without accumulation, follows the same optimisation (up to float rounding, batch-norm
statistics and per-process augmentation draws).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import yaml

from canon.engine.optim import OPTIMIZERS, SCHEDULERS
from canon.engine.options import option, parse_float_list, parse_int_list, parse_key_values

__all__ = ["TrainConfig", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda")


def _positive(name: str, value, kind=float, allow_none: bool = False, allow_zero: bool = False):
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or (value < 0 if allow_zero else value <= 0):
        what = "a whole number" if kind is int else "a number"
        bound = ">= 0" if allow_zero else "> 0" if kind is float else ">= 1"
        raise ValueError(f"--{name.replace('_', '-')} must be {what} {bound}, got {value!r}")


@dataclass
class TrainConfig:
    """The engine's options. Every field is a ``canon train`` flag (``batch_size`` -> ``--batch-size``)
    and a key of ``--config`` YAML files and of the run folder's ``config.yaml``."""

    model: str = option(None, "registered model name", cli=False)
    data: str = option("digits", "dataset spec: digits | mnist | fashion-mnist | cifar10 | imagefolder:PATH | "
                                 "isbi-membrane:DIR | ... (canon.data.build_dataset)")
    data_dir: str | None = option(None, "folder holding the dataset's files (mnist, fashion-mnist, cifar10)")
    weights: str | None = option(None, "start from released weights (torchvision, timm, torchvision:TAG), a file or "
                                       "an https:// URL (fine-tuning; a different class count keeps all but the "
                                       "classifier)")
    model_kwargs: dict[str, Any] = option(
        None, "model option, repeatable, e.g. --model-arg small_input=True", flag="--model-arg",
        metavar="K=V", action="append", default_factory=dict)
    # ---------------------------------------------------------------- optimisation
    epochs: int = option(10, "passes over the training set")
    batch_size: int = option(64, "samples per optimizer step, over all processes and accumulated micro-batches")
    lr: float = option(0.01, "base learning rate (the schedule multiplies it)")
    optimizer: str = option("sgd", "optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD / nesterov momentum")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam / AdamW betas, e.g. 0.9,0.98 (the Transformer)",
                                        parse=parse_float_list, metavar="B1,B2")
    eps: float = option(1e-8, "Adam / AdamW / RMSprop epsilon")
    weight_decay: float = option(5e-4, "L2 weight decay (decoupled for adamw)")
    scheduler: str = option("cosine", "learning-rate schedule, stepped after every optimizer step", choices=SCHEDULERS)
    warmup_epochs: float = option(0.0, "linear warm-up, in epochs (may be a fraction)")
    warmup_steps: int | None = option(None, "linear warm-up in optimizer steps (overrides --warmup-epochs); "
                                            "inverse-sqrt's warmup (default 4000)")
    milestones: tuple[int, ...] = option((), "multistep: epochs after which the lr is multiplied by --gamma, "
                                             "e.g. 82,123", parse=parse_int_list, metavar="E1,E2")
    gamma: float = option(0.1, "step / multistep: the factor at each drop")
    d_model: int | None = option(None, "inverse-sqrt: the model width in lr = d_model^-0.5 min(s^-0.5, s w^-1.5) "
                                       "(default: the model's d_model attribute)")
    clip_grad_norm: float | None = option(None, "clip the global gradient norm of each optimizer's parameters "
                                                "to this value before the step", metavar="MAX_NORM")
    clip_grad_value: float | None = option(None, "clip every gradient element to [-V, V] before the step",
                                           metavar="V")
    accumulate: int = option(1, "split each process's share of a batch into N micro-batches whose gradients "
                                "are summed before the step (same update, less memory)", metavar="N")
    # ---------------------------------------------------------------- the run
    seed: int = option(0, "seed of weights, data order and augmentation")
    out: str | None = option(None, "run folder (default runs/MODEL-DATA)")
    resume: bool = option(False, "continue from the run folder's last checkpoint")
    eval_every: int = option(1, "evaluate on the test split every N epochs and after the last", metavar="N")
    train_subset: int | None = option(
        None, "train on N training samples, one fixed draw (class-stratified where the data has labels) that is "
              "the same for every --seed; the test split stays whole", metavar="N")
    max_steps_per_epoch: int | None = option(None, "cap optimizer steps per epoch (quick checks)")
    # ---------------------------------------------------------------- hardware
    device: str = option("auto", "where to train: auto (cuda when available), cpu or cuda", choices=DEVICES)
    threads: int | None = option(None, "CPU threads for torch (default: torch's; 1 suits small models)")
    workers: int = option(0, "DataLoader worker processes (0: load in the training process)")
    channels_last: bool = option(False, "NHWC memory order for weights and image batches (faster depthwise and "
                                        "grouped convolutions on CPU)")
    amp: bool = option(False, "bfloat16 autocast for training steps (weights, optimizer state, evaluation and "
                              "checkpoints stay float32); fast on CPUs with AVX512-BF16 or AMX")
    sync_bn: bool = option(False, "with torchrun: batch-norm statistics over the whole batch of all processes")
    tensorboard: bool = option(False, "also write TensorBoard scalars (and images) to RUN/tensorboard "
                                      "(pip install tensorboard)")
    progress: bool = option(True, "progress bar and per-epoch log on stderr (--no-progress or --quiet to hide)")

    def __post_init__(self):
        if isinstance(self.model_kwargs, (list, tuple)):
            self.model_kwargs = parse_key_values(self.model_kwargs)
        elif self.model_kwargs is None:
            self.model_kwargs = {}
        self.betas = tuple(parse_float_list(self.betas))  # type: ignore[assignment]
        self.milestones = tuple(parse_int_list(self.milestones))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"--betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.device not in DEVICES:
            raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("epochs", "batch_size", "accumulate"):
            _positive(name, getattr(self, name), kind=int)
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ValueError(f"--eval-every must be a whole number of epochs >= 1, got {self.eval_every!r}")
        for name in ("warmup_steps", "max_steps_per_epoch", "d_model", "threads"):
            _positive(name, getattr(self, name), kind=int, allow_none=True)
        _positive("workers", self.workers, kind=int, allow_zero=True)
        _positive("warmup_epochs", self.warmup_epochs, allow_zero=True)
        for name in ("clip_grad_norm", "clip_grad_value"):
            _positive(name, getattr(self, name), allow_none=True)
        if self.scheduler == "multistep" and not self.milestones:
            raise ValueError("--scheduler multistep needs --milestones E1,E2,... (epochs)")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"--milestones must be increasing epochs >= 1, got {self.milestones!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    def to_yaml(self, task_options: dict[str, Any] | None = None, task: str | None = None) -> str:
        d = self.as_dict()
        if task is not None:
            d["task"] = task
        for key, value in (task_options or {}).items():
            d[key] = list(value) if isinstance(value, tuple) else value
        return yaml.safe_dump(d, sort_keys=False)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
