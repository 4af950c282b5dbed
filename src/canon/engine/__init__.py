"""The task-agnostic training engine: the loop, the step helpers, checkpoints, optimizers and
schedules, data parallelism and logging. It imports no task; tasks (``canon.tasks``) import it."""
from canon.engine.checkpoint import CheckpointError, load_model, load_weights, save_weights
from canon.engine.config import TrainConfig
from canon.engine.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, schedule_factor
from canon.engine.step import MetricMeter, StepContext, TrainingDiverged
from canon.engine.trainer import RunInfo, TaskData, Trainer, resolve_device

__all__ = ["CheckpointError", "load_model", "load_weights", "save_weights", "TrainConfig", "OPTIMIZERS",
           "SCHEDULERS", "build_optimizer", "build_scheduler", "schedule_factor", "MetricMeter", "StepContext",
           "TrainingDiverged", "RunInfo", "TaskData", "Trainer", "resolve_device"]
