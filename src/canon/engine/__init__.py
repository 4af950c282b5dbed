"""The task-agnostic training engine: loop, checkpoints, schedules, records."""
from canon.engine.checkpoint import CheckpointError, load_model, load_weights, save_weights
from canon.engine.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from canon.engine.tasks import ClassificationTask, Task, get_task, register_task
from canon.engine.trainer import TrainConfig, Trainer, TrainingDiverged, train

__all__ = ["CheckpointError", "load_model", "load_weights", "save_weights", "OPTIMIZERS", "SCHEDULERS",
           "build_optimizer", "build_scheduler", "ClassificationTask", "Task", "get_task", "register_task",
           "TrainConfig", "Trainer", "TrainingDiverged", "train"]
