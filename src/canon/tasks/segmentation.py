"""Semantic segmentation as a task of the one engine: dense loss, IoU/Dice evaluation, figures.

Data contract: a segmentation dataset's items are ``(image FloatTensor [C,H,W] in [0,1],
mask LongTensor [H,W])`` with ``info.task == "segmentation"`` and ``info.ignore_index``.
Model contract: ``model(x)`` returns logits ``(N, num_classes, H, W)`` at the input size, or
``{"out": logits, "aux": logits}`` (torchvision's convention) when an auxiliary head is on.

Evaluation runs on whole test images. Models whose input must be a multiple of their output
stride are fed a mirror-padded image; models declaring ``tile_size`` (valid-convolution U-Net)
or images larger than ``max_eval_size`` use the overlap-tile strategy of the U-Net paper
(:func:`predict_overlap_tile`).

The options this task adds to ``canon train``: the input (crop) size and augmentation, the loss
(``--loss ce|dice|ce+dice``; Dice is ``canon.losses``' soft Dice) and the auxiliary head's weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.engine.options import option
from canon.engine.trainer import TaskData
from canon.losses import functional as LF
from canon.tasks.base import Task
from canon.tasks.classification import ImageOptions

__all__ = ["SegmentationOptions", "SegmentationTask", "predict_full_image", "predict_overlap_tile",
           "SEGMENTATION_LOSSES"]

SEGMENTATION_LOSSES = ("ce", "dice", "ce+dice")


@dataclass
class SegmentationOptions(ImageOptions):
    loss: str = option("ce", "pixel loss: cross-entropy, soft Dice, or their sum", choices=SEGMENTATION_LOSSES)
    aux_weight: float = option(0.4, "weight of an auxiliary head's loss (FCN / DeepLab aux classifiers)")
    max_eval_size: int = option(1024, "evaluate larger test images tile by tile (overlap-tile)")

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in SEGMENTATION_LOSSES:
            raise ValueError(f"segmentation loss must be one of {SEGMENTATION_LOSSES}, got {self.loss!r}")
        if self.aux_weight < 0:
            raise ValueError(f"--aux-weight must be >= 0, got {self.aux_weight}")

# A fixed palette (class 0 black, then distinct colours) for masks and overlays.
PALETTE = torch.tensor([
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
    [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180],
    [0, 0, 128], [128, 128, 128]], dtype=torch.uint8)


def _logits(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(output, dict):
        return output["out"], output.get("aux")
    return output, None


class SegmentationTask(Task):
    name = "segmentation"
    Options = SegmentationOptions
    primary_metric = "test_miou"
    higher_is_better = True
    eval_batch_size = 1  # whole test images, which may differ in size

    def __init__(self, options=None, **kwargs):
        super().__init__(options, **kwargs)
        self.ignore_index = 255
        self.info = None
        self.input_size: tuple[int, int] | None = None

    # ------------------------------------------------------------------ data
    def _datasets(self, data, data_dir, input_size, train: bool = True):
        from canon.data import build_dataset
        from canon.data import segmentation_transforms as ST

        train_set = build_dataset(data, split="train", data_dir=data_dir) if train else None
        test_set = build_dataset(data, split="test", data_dir=data_dir)
        info = (train_set or test_set).info
        if getattr(info, "task", "classification") != "segmentation":
            raise ValueError(f"{data!r} is a {info.task} dataset; segmentation models need masks "
                             "(isbi-membrane:DIR, voc-seg:DIR, coco-seg:DIR[?categories=A,B], coco-person:DIR)")
        self.ignore_index = getattr(info, "ignore_index", 255)
        crop = tuple(input_size)
        augment = self.options.augment
        test = ST.PairedTransformedDataset(test_set, ST.default_transforms(info, crop, train=False, augment=augment))
        train_ds = None
        if train_set is not None:
            train_ds = ST.PairedTransformedDataset(train_set,
                                                   ST.default_transforms(info, crop, train=True, augment=augment))
        self.info, self.input_size = info, crop
        return train_ds, test, info

    def build_data(self, run) -> TaskData:
        from canon.registry import model_info

        cfg = run.config
        crop = self.options.input_size or tuple(model_info(cfg.model).input_size[-2:])
        train, test, info = self._datasets(cfg.data, cfg.data_dir, crop)
        return TaskData(train=train, test=test, info=info)

    def build_eval_data(self, data, data_dir, meta, model) -> TaskData:
        input_size = tuple(meta.get("extra", {}).get("input_size") or ())
        if not input_size:
            from canon.registry import model_info

            input_size = tuple(model_info(meta["model"]).input_size[-2:])
        _, test, info = self._datasets(data, data_dir, input_size, train=False)
        return TaskData(train=None, test=test, info=info)

    def model_kwargs(self, data: TaskData):
        return {"num_classes": data.info.num_classes, "in_chans": data.info.in_chans}

    def checkpoint_meta(self) -> dict[str, Any]:
        info = self.info
        return {"input_size": list(self.input_size or ()),
                "class_names": list(getattr(info, "class_names", []) or []),
                "mean": list(getattr(info, "mean", []) or []), "std": list(getattr(info, "std", []) or [])}

    # ------------------------------------------------------------------ loss
    def _loss(self, logits, masks):
        loss = logits.new_zeros(())
        kind = self.options.loss
        if kind in ("ce", "ce+dice"):
            loss = loss + F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        if kind in ("dice", "ce+dice"):
            # 1 - mean over classes of 2|P∩G| / (|P| + |G|) on softmax probabilities, ignored pixels excluded
            loss = loss + LF.dice_loss(logits, masks, ignore_index=self.ignore_index, smooth=1.0)
        return loss

    def compute_loss(self, model, batch, step=None):
        images, masks = batch
        out, aux = _logits(model(images))
        out = out.float()  # under --amp the logits arrive in bfloat16; Dice's sums over pixels need float32
        aux = aux.float() if aux is not None else None
        masks = _centre_crop_to(masks, out.shape[-2:])  # valid-convolution models predict the centre
        if out.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"model output {tuple(out.shape[-2:])} does not match mask size "
                             f"{tuple(masks.shape[-2:])}; valid-convolution models need masks cropped "
                             "to their output (see the dataset's transforms)")
        loss = self._loss(out, masks)
        if aux is not None:
            loss = loss + self.options.aux_weight * self._loss(aux, masks)
        if step is not None:
            valid = masks != self.ignore_index
            correct = ((out.detach().argmax(1) == masks) & valid).sum().item()
            step.log(images.shape[0], loss=loss.item(), pixel_accuracy=correct / max(valid.sum().item(), 1))
        return loss

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_logits(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Logits (K,H,W) for one normalised image (C,H,W) at its full size."""
        tile = getattr(model, "tile_size", None)
        h, w = image.shape[-2:]
        if tile is not None or max(h, w) > self.options.max_eval_size:
            return predict_overlap_tile(model, image, tile_size=tile or 512)
        return predict_full_image(model, image)

    @torch.no_grad()
    def evaluate(self, model, loader, *, full=False, num_classes=None):
        from canon.metrics import SegmentationMetrics

        model.eval()
        num_classes = num_classes or (self.info.num_classes if self.info is not None else None) or getattr(
            model, "num_classes", None)
        metrics = None
        loss_sum, count = 0.0, 0
        for images, masks in loader:
            for image, mask in zip(images, masks):
                logits = self.predict_logits(model, image)
                if metrics is None:
                    metrics = SegmentationMetrics(num_classes or logits.shape[0], ignore_index=self.ignore_index)
                loss_sum += F.cross_entropy(logits[None], mask[None], ignore_index=self.ignore_index).item()
                count += 1
                metrics.update(logits.argmax(0)[None], mask[None])
        result = metrics.compute() if metrics is not None else {}
        out = {"test_loss": loss_sum / max(count, 1), "test_pixel_accuracy": float(result.get("pixel_accuracy", 0.0)),
               "test_miou": float(result.get("miou", 0.0)), "test_mean_dice": float(result.get("mean_dice", 0.0))}
        if full:
            out["iou"] = [float(v) for v in result.get("iou", [])]
            out["dice"] = [float(v) for v in result.get("dice", [])]
        return out

    # ------------------------------------------------------------------ figures and prediction
    def write_figures(self, model, data, result, out_dir: Path, count: int = 4) -> dict[str, Any]:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        from canon.engine.checkpoint import atomic_write_bytes
        from canon.engine.plots import _figure_bytes

        test_set, info = data.test, data.info
        device = next(model.parameters()).device
        n = min(count, len(test_set))
        fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
        for row in range(n):
            image, mask = test_set[row]
            pred = self.predict_logits(model, image.to(device)).argmax(0).cpu()
            shown = _denormalise(image, info)
            axes[row][0].imshow(shown.permute(1, 2, 0).squeeze(-1), cmap="gray" if shown.shape[0] == 1 else None)
            axes[row][1].imshow(colorize(mask))
            axes[row][2].imshow(colorize(pred))
            for ax, title in zip(axes[row], ("image", "ground truth", "prediction")):
                ax.set_title(title)
                ax.axis("off")
        path = Path(out_dir) / "predictions.png"
        atomic_write_bytes(path, _figure_bytes(fig))
        names = list(getattr(info, "class_names", []) or [])
        per_class = {names[i] if i < len(names) else str(i): {"iou": result["iou"][i], "dice": result["dice"][i]}
                     for i in range(len(result.get("iou", [])))}
        return {"predictions_png": str(path), "per_class": per_class}

    @torch.no_grad()
    def predict(self, model, meta, inputs, *, save_dir=None, topk: int = 5, device=None):
        from PIL import Image

        from canon.data import load_image

        device = device or torch.device("cpu")
        extra = meta.get("extra", {})
        in_chans = getattr(model, "in_chans", 3)
        mean = torch.tensor(extra.get("mean") or [0.0] * in_chans)[:, None, None]
        std = torch.tensor(extra.get("std") or [1.0] * in_chans)[:, None, None]
        names = extra.get("class_names") or []
        out_dir = Path(save_dir) if save_dir else Path(meta["path"]).parent / "predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for path in inputs:
            raw = load_image(path, in_chans)
            pred = self.predict_logits(model, ((raw - mean) / std).to(device)).argmax(0).cpu()
            overlay = overlay_mask(raw, pred)
            target = out_dir / f"{Path(path).stem}_overlay.png"
            Image.fromarray(overlay.permute(1, 2, 0).numpy()).save(target)
            counts = torch.bincount(pred.flatten(), minlength=len(names) or 1)
            areas = {(names[i] if i < len(names) else str(i)): round(counts[i].item() / pred.numel(), 4)
                     for i in range(counts.numel()) if counts[i] > 0}
            results.append({"input": str(path), "overlay": str(target), "areas": areas})
        return results


def _centre_crop_to(masks: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop masks (N,H,W) to ``size`` when it is smaller (a valid-convolution output)."""
    h, w = masks.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if th > h or tw > w or (th, tw) == (h, w):
        return masks
    top, left = (h - th) // 2, (w - tw) // 2
    return masks[..., top:top + th, left:left + tw]


def _denormalise(image: torch.Tensor, info) -> torch.Tensor:
    mean = torch.tensor(getattr(info, "mean", None) or [0.0] * image.shape[0])[:, None, None]
    std = torch.tensor(getattr(info, "std", None) or [1.0] * image.shape[0])[:, None, None]
    return (image * std + mean).clamp(0, 1)


def colorize(mask: torch.Tensor) -> torch.Tensor:
    """(H,W) class indices -> (H,W,3) uint8 colours; the ignore index shows white."""
    colours = torch.cat([PALETTE, torch.full((256 - len(PALETTE), 3), 255, dtype=torch.uint8)])
    return colours[mask.clamp(0, 255).long()]


def overlay_mask(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend class colours over an image in [0,1] (C,H,W); class 0 (background) stays clear."""
    rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    base = (rgb * 255).round().to(torch.uint8)
    colours = colorize(mask).permute(2, 0, 1)
    blend = (alpha * colours.float() + (1 - alpha) * base.float()).round().to(torch.uint8)
    return torch.where((mask > 0)[None], blend, base)


@torch.no_grad()
def predict_full_image(model: nn.Module, image: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Logits (K,H,W) for a whole image: mirror-pad to a multiple of ``multiple``, predict, crop."""
    h, w = image.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    x = image[None]
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    out, _ = _logits(model(x))
    return out[0, :, :h, :w]


@torch.no_grad()
def predict_overlap_tile(model: nn.Module, image: torch.Tensor, *, tile_size: int = 512,
                         overlap: int | None = None) -> torch.Tensor:
    """The U-Net paper's overlap-tile strategy, for images of any size.

    ``model.tile_size`` (input) and ``model.tile_output_size`` (output) describe a valid-
    convolution network such as ``unet_paper`` (572 -> 388): the image is mirror-padded by the
    lost border, cut into input tiles whose outputs tile the image exactly, and stitched. A
    same-size network (output = input) is run on overlapping tiles whose centres are kept.
    Returns logits (K,H,W).
    """
    h, w = image.shape[-2:]
    in_tile = getattr(model, "tile_size", None) or tile_size
    out_tile = getattr(model, "tile_output_size", None)
    if out_tile is None:  # same-size network: keep the centre of overlapping tiles
        margin = overlap if overlap is not None else in_tile // 8
        out_tile = in_tile - 2 * margin
    border = (in_tile - out_tile) // 2
    n_y, n_x = -(-h // out_tile), -(-w // out_tile)
    padded_h, padded_w = n_y * out_tile + 2 * border, n_x * out_tile + 2 * border
    pad = (border, padded_w - w - border, border, padded_h - h - border)
    x = _mirror_pad(image[None], pad)
    out = None
    for ty in range(n_y):
        for tx in range(n_x):
            y0, x0 = ty * out_tile, tx * out_tile
            tile = x[..., y0:y0 + in_tile, x0:x0 + in_tile]
            logits, _ = _logits(model(tile))
            if logits.shape[-1] != out_tile:  # same-size network: crop the centre
                logits = logits[..., border:border + out_tile, border:border + out_tile]
            if out is None:
                out = image.new_zeros(logits.shape[1], n_y * out_tile, n_x * out_tile)
            out[:, y0:y0 + out_tile, x0:x0 + out_tile] = logits[0]
    return out[:, :h, :w]


def _mirror_pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect padding that may exceed the image size (repeated reflection)."""
    left, right, top, bottom = pad
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (left - step[0], right - step[1], top - step[2], bottom - step[3])
    return x

