"""canon: the classic deep-learning canon as working, verified software.

``import canon`` gives the registry at once (``create_model``, ``list_models``, ``model_info``) and
every subpackage on first use, as ``torchvision.ops`` does after ``import torchvision``:
``canon.ops.nms``, ``canon.losses.sigmoid_focal_loss``, ``canon.metrics.ssim``, ``canon.layers``,
``canon.data``, ``canon.tasks``, ``canon.engine``; and ``canon.train(model, **options)``,
``canon.export_onnx(model, path)``.
"""
from __future__ import annotations

import importlib

from canon.registry import create_model, list_models, model_info, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "register_model", "train", "export_onnx", "__version__",
           "data", "engine", "layers", "losses", "metrics", "models", "ops", "tasks", "weights", "export", "bench"]

_SUBPACKAGES = ("data", "engine", "layers", "losses", "metrics", "models", "ops", "tasks", "weights", "export", "bench")
_FUNCTIONS = {"train": ("canon.tasks", "train"), "export_onnx": ("canon.export", "export_onnx")}


def __getattr__(name: str):
    # Subpackages load on first use: `import canon` stays quick, and canon.ops works without `import canon.ops`.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"canon.{name}")
    if name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module canon has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
