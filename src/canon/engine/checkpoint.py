"""Checkpoints that are safe to load and safe to interrupt.

A run folder holds::

    RUN/last.safetensors            weights of the newest epoch (a copy for users and `canon eval`)
    RUN/best.safetensors            weights of the best epoch by the task's primary metric
    RUN/checkpoints/LAST            the name of the newest complete epoch folder
    RUN/checkpoints/epoch_0003/     model.safetensors, optimizer.safetensors, state.json

Weights are safetensors; optimizer tensors are safetensors too; everything else (optimizer
hyper-parameters, scheduler position, RNG states, history) is JSON. Nothing is ever unpickled.

Atomicity: an epoch folder is written under a temporary name and renamed into place, then the
``LAST`` pointer is replaced (temporary file + ``os.replace``). A crash at any moment leaves
``LAST`` naming a complete folder, so ``--resume`` always finds a consistent state.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "canon-checkpoint-1"

__all__ = [
    "CheckpointError", "atomic_write_bytes", "atomic_write_text", "save_weights", "load_weights",
    "load_model", "save_training_checkpoint", "load_training_checkpoint", "latest_checkpoint_dir",
    "resolve_weights_path", "rng_state", "set_rng_state",
]


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, or not a canon checkpoint."""


# ----------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- weights
def _contiguous_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone() gives each tensor its own.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(path: str | os.PathLike, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Save weights plus what is needed to rebuild the model: its registry name and arguments."""
    metadata = {
        "format": FORMAT,
        "model": getattr(model, "canon_name", type(model).__name__),
        "model_kwargs": json.dumps(getattr(model, "canon_kwargs", {})),
        "extra": json.dumps(extra or {}),
    }
    _atomic_save_file(_contiguous_state(model), Path(path), metadata)


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file: (state_dict, metadata with model, model_kwargs and extra decoded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); "
                              "was it truncated or written by something else?") from None
    meta: dict[str, Any] = dict(raw_meta)
    for key in ("model_kwargs", "extra"):
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON") from None
    return state, meta


def resolve_weights_path(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A weights file given a file, or a run folder (``best`` then ``last``)."""
    path = Path(path)
    if path.is_dir():
        order = ("best", "last") if prefer == "best" else ("last", "best")
        for name in order:
            candidate = path / f"{name}.safetensors"
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds no best.safetensors or last.safetensors; "
                              "is it a canon run folder?")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_model(path: str | os.PathLike, prefer: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a registered model from a checkpoint file or run folder and load it strictly."""
    from canon.registry import create_model

    weights = resolve_weights_path(path, prefer)
    state, meta = load_weights(weights)
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{weights} has no canon metadata (format={meta.get('format')!r}); "
                              "load its state_dict into a model you build yourself instead")
    model = create_model(meta["model"], **meta.get("model_kwargs", {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights} does not fit model {meta['model']}: {e}") from None
    model.eval()
    meta["path"] = str(weights)
    return model, meta


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The state of every random generator training uses, as JSON-serialisable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ----------------------------------------------------------------------------- optimizer state
def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors to safetensors (``state.<param index>.<name>``), everything else to JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], js: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, per_param in js["scalars"].items():
        state.setdefault(int(index), {}).update(per_param)
    return {"state": state, "param_groups": js["param_groups"]}


# ----------------------------------------------------------------------------- training checkpoints
def _optimizer_file(name: str, names: list[str]) -> str:
    # One optimizer called "model" (every one-optimizer task) keeps the original file name.
    return "optimizer.safetensors" if names == ["model"] else f"optimizer-{name}.safetensors"


def latest_checkpoint_dir(run_dir: str | os.PathLike) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "LAST"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / "state.json").is_file():
        raise CheckpointError(f"{pointer} names {folder.name}, which is incomplete or missing")
    return folder


def _as_dict(value, default_name: str = "model") -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    return {default_name: value}


def save_training_checkpoint(run_dir: str | os.PathLike, *, epoch: int, model: nn.Module,
                             optimizers=None, schedulers=None, state: dict[str, Any],
                             rng_states: list[dict[str, Any]] | None = None, keep: int = 1,
                             optimizer=None, scheduler=None) -> Path:
    """Write everything needed to resume after ``epoch`` (1-based count of finished epochs).

    ``optimizers`` and ``schedulers``: dicts by name (a GAN's two players); or one ``optimizer``
    and ``scheduler``. ``rng_states``: every process's RNG state, in rank order (default: this
    process's).
    """
    optimizers, schedulers = _as_dict(optimizers if optimizers is not None else optimizer), _as_dict(
        schedulers if schedulers is not None else scheduler)
    if not optimizers:
        raise ValueError("save_training_checkpoint needs the optimizer(s)")
    names = list(optimizers)
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"epoch_{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ckpt_root))
    try:
        save_weights(tmp / "model.safetensors", model, extra={"epoch": epoch})
        optimizer_json = {}
        for opt_name, optimizer in optimizers.items():
            opt_tensors, opt_json = _split_optimizer_state(optimizer)
            _atomic_save_file(opt_tensors, tmp / _optimizer_file(opt_name, names), {"format": FORMAT})
            optimizer_json[opt_name] = opt_json
        rng_states = rng_states or [rng_state()]
        payload = {
            "format": FORMAT, "epoch": epoch, "optimizers": optimizer_json,
            "schedulers": {k: v.state_dict() for k, v in schedulers.items() if v is not None},
            "rng": rng_states[0], "rng_per_rank": rng_states, **state,
        }
        atomic_write_text(tmp / "state.json", json.dumps(payload))
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_root / "LAST", name)
    # Older epoch folders go only after the pointer has moved on.
    folders = sorted(p for p in ckpt_root.glob("epoch_*") if p.is_dir())
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return ckpt_root / name


def load_training_checkpoint(run_dir: str | os.PathLike, *, model: nn.Module, optimizers=None, schedulers=None,
                             rank: int = 0, world_size: int = 1, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Restore model, optimizers, schedulers and this process's RNG from the newest checkpoint;
    return its JSON."""
    optimizers, schedulers = _as_dict(optimizers if optimizers is not None else optimizer), _as_dict(
        schedulers if schedulers is not None else scheduler)
    folder = latest_checkpoint_dir(run_dir)
    if folder is None:
        raise CheckpointError(f"--resume: no checkpoint in {Path(run_dir) / 'checkpoints'}; "
                              "start without --resume")
    try:
        payload = json.loads((folder / "state.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / 'state.json'} is corrupt: {e}") from None
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{folder / 'state.json'}: format {payload.get('format')!r}, expected {FORMAT!r}")
    if "optimizers" not in payload:  # written before tasks could have several optimizers
        only = list(optimizers)[:1] or ["model"]
        payload["optimizers"] = {only[0]: payload.get("optimizer")}
        payload["schedulers"] = {only[0]: payload.get("scheduler")} if payload.get("scheduler") else {}
    saved = list(payload["optimizers"])
    if len(saved) == 1 and len(optimizers) == 1:
        pairs = [(next(iter(optimizers)), saved[0])]  # one optimizer: names need not agree
    elif sorted(saved) == sorted(optimizers):
        pairs = [(name, name) for name in optimizers]
    else:
        raise CheckpointError(f"{folder}: the checkpoint holds optimizers {saved}, this run has {list(optimizers)}; "
                              "resume with the same task and options")
    weights, _ = load_weights(folder / "model.safetensors")
    model.load_state_dict(weights, strict=True)
    for name, saved_name in pairs:
        opt_tensors, _ = load_weights(folder / _optimizer_file(saved_name, saved))
        optimizers[name].load_state_dict(_join_optimizer_state(opt_tensors, payload["optimizers"][saved_name]))
    for name, saved_name in pairs:
        scheduler, saved_state = schedulers.get(name), (payload.get("schedulers") or {}).get(saved_name)
        if scheduler is not None and saved_state is not None:
            scheduler.load_state_dict(saved_state)
    per_rank = payload.get("rng_per_rank") or [payload["rng"]]
    if len(per_rank) != world_size:
        raise CheckpointError(f"{folder} was written by {len(per_rank)} process(es), this run has {world_size}: "
                              "resume with the same --nproc-per-node so that every process continues its own "
                              "random stream")
    set_rng_state(per_rank[rank])
    return payload
