"""The model registry: one name, one small constructor function, and its metadata.

A family file ends with its registered constructors::

    @register_model(ResNet, task="classification", paper=PAPER, input_size=(3, 224, 224),
                    compatible_with="torchvision")
    def resnet18(**kwargs) -> ResNet:
        return ResNet(block=BasicBlock, layers=(2, 2, 2, 2), **kwargs)

``create_model`` checks every keyword argument against the model class's constructor
before calling it, so a typo fails at once with the list of valid names; an unknown model
name fails with the closest registered names. ``create_model(name, weights=...)`` loads a
released checkpoint (``"torchvision"``, ``"timm"``), a file or an ``https://`` URL through
:mod:`canon.weights`.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info", "TASKS"]

# The training task each model belongs to (``canon.tasks`` has one file per task of the same name).
TASKS = ("classification", "segmentation", "detection", "generation", "translation", "reading")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name."""

    name: str
    constructor: Callable[..., nn.Module]
    model_class: type
    task: str
    paper: str
    input_size: tuple[int, ...]  # (C, H, W) for images
    num_classes: int | None = 1000
    compatible_with: str | None = None  # "torchvision", "timm" or None
    # Filled in once measured: {"dataset": ..., "metric": ..., "value": ..., "command": ...}
    results: tuple[dict, ...] = field(default_factory=tuple)

    def valid_kwargs(self) -> list[str]:
        """The keyword arguments ``create_model`` accepts for this name."""
        names = []
        for cls in inspect.getmro(self.model_class):
            if cls is nn.Module or cls is object:
                break
            for p in inspect.signature(cls.__init__).parameters.values():
                if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    continue
                if p.name not in names:
                    names.append(p.name)
            # Only follow the MRO if this __init__ forwards **kwargs to its parent.
            if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
                break
        return names


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    model_class: type,
    *,
    task: str,
    paper: str,
    input_size: tuple[int, ...],
    num_classes: int | None = 1000,
    compatible_with: str | None = None,
    results: tuple[dict, ...] = (),
):
    """Decorator that registers a constructor function under its own ``__name__``.

    ``task`` names the training task (``canon.tasks``): one of canon's :data:`TASKS`, or the name
    of a task of your own registered with ``canon.tasks.register_task``.
    """
    if not isinstance(task, str) or not task:
        raise ValueError(f"task must be a task name such as {TASKS[0]!r}, got {task!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice "
                             f"({_REGISTRY[name].constructor.__module__} and {fn.__module__})")
        _REGISTRY[name] = ModelInfo(
            name=name, constructor=fn, model_class=model_class, task=task, paper=paper,
            input_size=tuple(input_size), num_classes=num_classes,
            compatible_with=compatible_with, results=tuple(results),
        )
        return fn

    return decorator


def _ensure_loaded() -> None:
    # Importing the models package runs every family file's decorators.
    import canon.models  # noqa: F401


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name lists the closest registered ones."""
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} `canon list` shows all {len(_REGISTRY)} models.")
    return _REGISTRY[name]


def create_model(name: str, weights: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model; unknown keyword arguments are rejected before construction.

    ``weights``: ``None`` (fresh initialisation), ``"torchvision"`` or ``"timm"`` (that
    publisher's default checkpoint for ``name``; ``"torchvision:IMAGENET1K_V1"`` picks a tagged
    one), a local file (``.safetensors`` or ``.pth``) or an ``https://`` URL. The checkpoint is
    downloaded into the cache and hash-checked, its keys renamed where the publisher's old
    names need it, and loaded strictly; a different ``num_classes`` keeps everything but the
    classifier (with a warning). The model then carries ``canon_preprocessing`` (resize, crop,
    interpolation, mean, std and the class-name set, or ``None`` when the file records none)
    and ``canon_weights`` (where the weights came from and what loading changed).
    """
    info = model_info(name)
    valid = info.valid_kwargs()
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise TypeError(f"{name}: unknown argument(s) {', '.join(unknown)}; "
                        f"valid arguments are: {', '.join(valid)}")
    state = meta = None
    if weights is not None:
        from canon.weights import load_released_weights

        state, meta = load_released_weights(name, weights)  # fetched and read before building the model
        kwargs = {**meta["model_kwargs"], **kwargs}  # what these weights need, unless the caller overrides
    model = info.constructor(**kwargs)
    model.canon_name = name  # plain attribute: lets checkpoints record how to rebuild the model
    model.canon_kwargs = dict(kwargs)
    if state is not None:
        from canon.weights import load_state_dict_strict

        report = load_state_dict_strict(model, state, name=name)
        preprocessing = meta["preprocessing"]
        if preprocessing is not None:
            preprocessing = {**preprocessing, "categories": meta["categories"]}
        model.canon_preprocessing = preprocessing
        model.canon_weights = {**meta, "notes": meta["notes"] + report.notes, "load": report.to_dict()}
    return model


def list_models(task: str | None = None, pattern: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell-style wildcard such as ``"resnet*"``."""
    _ensure_loaded()
    known = set(TASKS) | {i.task for i in _REGISTRY.values()}
    if task is not None and task not in known:
        raise ValueError(f"task must be one of {tuple(sorted(known))}, got {task!r}")
    names = sorted(n for n, i in _REGISTRY.items() if task is None or i.task == task)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names
