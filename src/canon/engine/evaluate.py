"""`canon eval` and `canon predict`: load a checkpoint safely, then ask its task.

The task comes from the checkpoint's metadata, so one command serves classification and
dense prediction alike.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from canon.engine.checkpoint import CheckpointError, atomic_write_text, load_model
from canon.engine.tasks import get_task

__all__ = ["evaluate_checkpoint", "predict_images", "load_image"]


def _checkpoint_task(meta: dict) -> str:
    extra = meta.get("extra", {})
    return extra.get("task", "classification")


def evaluate_checkpoint(checkpoint: str, *, data: str, data_dir: str | None = None, out_dir: str | None = None,
                        batch_size: int = 256) -> dict[str, Any]:
    """Evaluate on ``data``'s test split; write ``eval.json`` (and figures) to ``out_dir``."""
    from torch.utils.data import DataLoader

    model, meta = load_model(checkpoint)
    extra = meta.get("extra", {})
    task = get_task(_checkpoint_task(meta))
    input_size = tuple(extra.get("input_size") or ())
    _, test_set, info, input_size = task.build_datasets(
        data, data_dir, input_size=input_size or None, augment="default",
        model_input_size=input_size, model=model)
    # Dense prediction evaluates whole test images, which may differ in size (COCO): the task's
    # own batch size (one image) caps the requested one.
    task_batch_size = getattr(task, "eval_batch_size", None)
    if task_batch_size:
        batch_size = min(batch_size, task_batch_size)
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False)
    result = task.evaluate(model, loader, num_classes=info.num_classes, full=True)
    out = Path(out_dir) if out_dir else Path(meta["path"]).parent
    out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": meta["path"], "model": meta["model"], "data": data, **result}
    if hasattr(task, "write_figures"):
        result.update(task.write_figures(model, test_set, info, result, out))
    elif "confusion_matrix" in result:
        from canon.engine.plots import plot_confusion_matrix

        plot_confusion_matrix(result["confusion_matrix"], list(info.class_names), out / "confusion_matrix.png")
        result["confusion_matrix_png"] = str(out / "confusion_matrix.png")
    if "test_accuracy" in result:
        result["accuracy"] = result["test_accuracy"]
    result["eval_json"] = str(out / "eval.json")
    atomic_write_text(out / "eval.json", json.dumps(result, indent=2))
    return result


def load_image(path: str | Path, in_chans: int) -> torch.Tensor:
    """Decode an image file with Pillow into a float tensor [C,H,W] in [0,1]."""
    from PIL import Image, UnidentifiedImageError

    from canon.data import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if in_chans == 1 else "RGB")
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            tensor = data.reshape(img.height, img.width, in_chans)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None
    return tensor.permute(2, 0, 1).float() / 255.0


def predict_images(checkpoint: str, inputs: list[str], *, topk: int = 5, save_dir: str | None = None) -> list[dict]:
    model, meta = load_model(checkpoint)
    extra = meta.get("extra", {})
    task_name = _checkpoint_task(meta)
    if task_name != "classification":
        task = get_task(task_name)
        return task.predict(model, meta, inputs, save_dir=save_dir)
    in_chans = model.canon_kwargs.get("in_chans", 3) if hasattr(model, "canon_kwargs") else 3
    size = tuple(extra.get("input_size") or (32, 32))
    mean, std = extra.get("mean") or [0.0] * in_chans, extra.get("std") or [1.0] * in_chans
    class_names = extra.get("class_names") or []
    from canon.data import transforms as T

    # the evaluation pipeline of training: resize to the trained input size, then normalise
    preprocess = T.Compose([T.Resize(size), T.Normalize(mean, std)])
    results = []
    for path in inputs:
        image = preprocess(load_image(path, in_chans))
        with torch.no_grad():
            probs = model(image[None]).softmax(dim=1)[0]
        k = min(topk, probs.numel())
        values, indices = probs.topk(k)
        results.append({"input": str(path), "top": [
            {"class": class_names[i] if i < len(class_names) else str(i), "index": int(i), "probability": float(v)}
            for v, i in zip(values.tolist(), indices.tolist())]})
    if not results:
        raise CheckpointError("no input images given")
    return results
