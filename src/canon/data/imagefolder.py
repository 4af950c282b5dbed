"""Class-per-folder images decoded with Pillow: ``imagefolder:PATH`` and ``imagefolder:PATH?val=N``.

Layouts, checked in this order:

1. ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>`` (or ``PATH/val/...``;
   ``test`` wins when both are there): the folders are the split.
2. ``PATH/train/<class>/<image>`` and no other sub-folder of ``PATH`` (a dataset that ships only
   its training images, such as ``shared/data/cifar10``): ``PATH/train`` is read as layout 3.
3. ``PATH/<class>/<image>``: a fixed 80/20 split. Within each class, the files sorted by path
   are shuffled by ``numpy.random.RandomState(0)`` and the first ``round(0.2 * n)`` go to
   ``test``, the rest to ``train``; the same folder always gives the same split, and adding
   files to one class never moves files of another.

``?val=N``: a fixed, class-stratified held-out split of ``N`` training images instead, as the
ResNet paper's 45k/5k split of CIFAR-10 (``imagefolder:PATH?val=5000``): split ``test`` is the
``N`` held-out images, split ``train`` all the other training images (with layout 1 the ``test``
folder is then not read). Class ``c`` with ``n_c`` of the ``T`` training images gives
``floor(N * n_c / T)`` images, or one more for the classes with the largest remainders, drawn
without replacement by a generator seeded with 0 (:func:`canon.data.stratified_subset`), so the
same folder gives the same split on every call and the two splits never share a file.
``1 <= N < T``.

Classes are the sorted sub-folder names of the training split (hidden folders skipped); images
are found recursively below each class folder by extension. Every image is decoded as RGB, so
``in_chans`` is 3. Images are read lazily in ``__getitem__``; ``info.image_size`` is the size of
the first training image, and the default transforms resize every image to the model's input.
``mean``/``std`` are the ImageNet statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), the
usual convention for natural photographs, not measured on the folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from canon.data.core import DatasetInfo, data_error, stratified_subset

__all__ = ["ImageFolderDataset", "build_imagefolder", "parse_imagefolder_options", "IMAGE_EXTENSIONS",
           "load_image"]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_image(path: Path) -> torch.Tensor:
    """Decode one image file to a float tensor ``(3, H, W)`` in ``[0, 1]``."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # convert() forces the full decode, so truncation shows here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise data_error(path, "an image file Pillow can decode", found=f"{type(exc).__name__}: {exc}") from None
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` read from the file header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise data_error(path, "an image file Pillow can decode", found=f"{type(exc).__name__}: {exc}") from None
    return height, width


def _class_folders(split_root: Path) -> list[Path]:
    return sorted(p for p in split_root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _layout(root: Path) -> tuple[Path, Path | None]:
    """``(train_root, test_root)``; ``test_root`` is ``None`` when the split is drawn from ``train_root``."""
    expected = ("PATH/<class>/<image>, PATH/train/<class>/<image> alone, or PATH/train/<class>/<image> "
                "with PATH/test (or val)/<class>/<image>")
    if not root.is_dir():
        raise data_error(root, f"an image folder laid out as {expected}", found="no such folder")
    train, test, val = root / "train", root / "test", root / "val"
    if train.is_dir():
        if test.is_dir():
            return train, test
        if val.is_dir():
            return train, val
        others = [d.name for d in _class_folders(root) if d.name != "train"]
        if others:
            raise data_error(root, f"{test} or {val} beside {train}, or {train} alone",
                             found=f"other sub-folders {others[:5]} beside it",
                             hint="Add the test split, move the other folders out, or move every class "
                                  "folder up into PATH for an 80/20 split")
        return train, None
    return root, None


def parse_imagefolder_options(query: str, spec: str) -> dict:
    """The keyword arguments of ``build_imagefolder`` named after the ``?`` of a spec: ``val=N``."""
    if not query:
        return {}
    expected = "imagefolder:PATH?val=N, N a whole number of training images to hold out (e.g. val=5000)"
    key, _, value = query.partition("=")
    if key != "val" or not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise data_error(None, expected, found=repr(spec))
    return {"val": int(value)}


def _held_out_split(samples: list[tuple[Path, int]], val: int, root: Path
                    ) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """All training samples -> (train, held-out), the fixed stratified draw of the module docstring."""
    if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val < len(samples):
        raise data_error(root, f"?val=N with 1 <= N < {len(samples)} (the training images found)",
                         found=f"val={val!r}")
    targets = torch.tensor([label for _, label in samples], dtype=torch.long)
    held_out = torch.zeros(len(samples), dtype=torch.bool)
    held_out[stratified_subset(targets, val, seed=SPLIT_SEED)] = True
    train = [s for s, out in zip(samples, held_out.tolist()) if not out]
    test = [s for s, out in zip(samples, held_out.tolist()) if out]
    return train, test


def _seeded_split(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """One class's files -> (train, test), the fixed 80/20 split described in the module docstring."""
    order = np.random.RandomState(SPLIT_SEED).permutation(len(files))
    n_test = int(round(TEST_FRACTION * len(files)))
    test = sorted(files[i] for i in order[:n_test])
    train = sorted(files[i] for i in order[n_test:])
    return train, test


class ImageFolderDataset(Dataset):
    """``(path, label)`` samples decoded on access; ``targets`` and ``info`` as every canon dataset."""

    def __init__(self, samples: list[tuple[Path, int]], info: DatasetInfo, split: str, root: Path,
                 val: int | None = None):
        self.samples = samples
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.info = info
        self.split = split
        self.root = root
        self.val = val  # the held-out size of ``?val=N``, or None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_image(path), label

    def __repr__(self) -> str:
        held_out = "" if self.val is None else f", val={self.val}"
        return (f"ImageFolderDataset({str(self.root)!r}, split={self.split!r}{held_out}, n={len(self)}, "
                f"classes={self.info.num_classes})")


def build_imagefolder(path: str | Path, split: str, *, val: int | None = None) -> ImageFolderDataset:
    """The ``split`` of the image folder at ``path`` (layouts and ``val`` in the module docstring)."""
    root = Path(path).expanduser()
    train_root, test_root = _layout(root)
    class_dirs = _class_folders(train_root)
    if not class_dirs:
        raise data_error(train_root, "one sub-folder per class", found="no sub-folders")
    class_names = [d.name for d in class_dirs]

    train_files = {}
    for d in class_dirs:
        files = _images_below(d)
        if not files:
            raise data_error(d, f"images with one of the extensions {' '.join(IMAGE_EXTENSIONS)}", found="none")
        train_files[d.name] = files
    first = train_files[class_names[0]]

    if val is not None:
        everything = [(p, label) for label, name in enumerate(class_names) for p in train_files[name]]
        train, held_out = _held_out_split(everything, val, root)
        samples = train if split == "train" else held_out
    else:
        if test_root is None:
            split_files = {name: _seeded_split(files) for name, files in train_files.items()}
            chosen = {name: pair[0 if split == "train" else 1] for name, pair in split_files.items()}
            first = next(iter(split_files.values()))[0]
        else:
            unknown = [d.name for d in _class_folders(test_root) if d.name not in train_files]
            if unknown:
                raise data_error(test_root / unknown[0], f"a class folder also present in {train_root}",
                                 found=f"classes {unknown} only in {test_root.name}")
            if split == "train":
                chosen = train_files
            else:
                chosen = {name: _images_below(test_root / name) if (test_root / name).is_dir() else []
                          for name in class_names}
        samples = [(p, label) for label, name in enumerate(class_names) for p in chosen[name]]
    info = DatasetInfo(name="imagefolder", num_classes=len(class_names), in_chans=3,
                       image_size=_image_size(first[0]), class_names=class_names,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return ImageFolderDataset(samples, info, split, root, val)
