"""What every canon dataset shares: the error it raises, the facts it states about itself,
and the in-memory form the small classification sets are kept in.

A dataset built by :func:`canon.data.build_dataset` has

* ``ds.info``: a :class:`DatasetInfo` (classes, channels, image size, normalisation statistics);
* ``ds.targets``: a 1-D ``torch.long`` tensor with every label, for class weights and samplers;
* ``ds[i]``: ``(image, label)`` with ``image`` a float tensor ``[C, H, W]`` in ``[0, 1]``,
  unnormalised and unaugmented, and ``label`` a Python ``int``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

__all__ = ["DataError", "DatasetInfo", "InMemoryImageDataset", "TransformedDataset", "SubsetDataset",
           "stratified_subset", "load_image", "SPLITS"]

SPLITS = ("train", "test")


class DataError(ValueError):
    """A data file or folder is missing, corrupt, or not in the format canon expected.

    The message is a single line that names the file (or folder) and says what was expected
    there, so a command-line tool can print it as is. ``path`` and ``expected`` carry the same
    facts for code; ``path`` is ``None`` when the fault is a name rather than a file.

    The message comes first and alone among the positional arguments so that the error
    survives being re-raised from a ``DataLoader`` worker, which rebuilds it as ``cls(message)``.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, expected: str | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.expected = expected


def data_error(path: str | Path | None, expected: str, found: str | None = None,
               hint: str | None = None) -> DataError:
    """Build a :class:`DataError` whose message reads ``PATH: expected X, found Y. HINT``."""
    where = f"{path}: " if path is not None else ""
    message = f"{where}expected {expected}"
    if found:
        message += f", found {found}"
    if hint:
        message += f". {hint}"
    return DataError(message, path=path, expected=expected)


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """What a classification dataset states about itself.

    ``image_size`` is ``(H, W)`` of the stored images (for an image folder: of its first image;
    the default transforms resize every image to the model's input size). ``mean`` and ``std``
    hold one value per channel, on the ``[0, 1]`` scale, for ``transforms.Normalize``.
    """

    name: str
    task: str = "classification"
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {self.num_classes} classes but {len(self.class_names)} "
                             f"class names")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"{self.name}: mean and std need one value per channel ({self.in_chans}), "
                             f"got mean={self.mean} std={self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{self.name}: std must be positive, got {self.std}")

    def to_dict(self) -> dict:
        """Plain types only, for a run's ``config.yaml`` or a checkpoint."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


class InMemoryImageDataset(Dataset):
    """Images held as one ``uint8`` tensor ``(N, C, H, W)`` with their labels.

    Indexing converts a single image to float in ``[0, 1]``, so the whole set costs one byte per
    pixel in memory and ``__getitem__`` is a slice and a division.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, info: DatasetInfo, split: str):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"{info.name}: images must be a uint8 tensor (N, C, H, W), "
                             f"got {images.dtype} with shape {tuple(images.shape)}")
        if targets.dim() != 1 or len(targets) != len(images):
            raise ValueError(f"{info.name}: need one label per image, got {len(images)} images and "
                             f"labels of shape {tuple(targets.shape)}")
        self.images = images
        self.targets = targets.long()
        self.info = info
        self.split = split

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255.0)  # (C, H, W) in [0, 1]
        return image, int(self.targets[index])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"{type(self).__name__}({self.info.name!r}, split={self.split!r}, n={len(self)}, "
                f"image=({c}, {h}, {w}), classes={self.info.num_classes})")


class TransformedDataset(Dataset):
    """``ds`` with ``transform`` applied to each image; labels, ``info`` and ``targets`` pass through."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor] | None):
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.dataset = dataset
        self.transform = transform

    @property
    def info(self) -> DatasetInfo:
        return self.dataset.info

    @property
    def targets(self) -> torch.Tensor:
        return self.dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return f"TransformedDataset({self.dataset!r}, transform={self.transform!r})"


def stratified_subset(targets: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``size`` samples drawn at random, keeping each class's share of ``targets``.

    Class ``c`` with ``n_c`` of the ``N`` labels gets ``floor(size * n_c / N)`` samples; the
    samples left over go to the classes with the largest remainders, as scikit-learn's stratified
    splits allot them (ties go to the lower class index here; scikit-learn breaks them at random).
    Within a class the samples are drawn without replacement by a generator seeded with ``seed``
    alone, so the subset does not change with the training seed. Returned sorted, as a 1-D ``torch.long`` tensor.
    """
    targets = torch.as_tensor(targets)
    if targets.dim() != 1 or targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be a 1-D integer tensor of class indices, got dtype {targets.dtype} "
                         f"and shape {tuple(targets.shape)}")
    total = len(targets)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= total:
        raise ValueError(f"subset size must be an int in 1..{total} (the number of samples), got {size!r}")
    classes, counts = torch.unique(targets, return_counts=True)
    exact = counts.double() * size / total
    quota = exact.floor().long()
    left = size - int(quota.sum())
    if left:
        remainder = exact - quota
        order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), i))
        quota[order[:left]] += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, take in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(targets == label).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


class SubsetDataset(Dataset):
    """The samples of ``dataset`` at ``indices``; ``info`` passes through, ``targets`` follow the indices."""

    def __init__(self, dataset: Dataset, indices):
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(dataset)):
            raise ValueError(f"indices must lie in 0..{len(dataset) - 1}, got values from {int(indices.min())} "
                             f"to {int(indices.max())}")
        self.dataset = dataset
        self.indices = indices

    @property
    def info(self) -> DatasetInfo:
        return self.dataset.info

    @property
    def targets(self) -> torch.Tensor:
        return self.dataset.targets[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]

    def __repr__(self) -> str:
        return f"SubsetDataset({self.dataset!r}, n={len(self)})"


def load_image(path: str | Path, in_chans: int) -> torch.Tensor:
    """Decode an image file with Pillow into a float tensor [C,H,W] in [0,1] (1 channel: grey, else RGB)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}", path=path)
    try:
        with Image.open(path) as img:
            img = img.convert("L" if in_chans == 1 else "RGB")
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            tensor = data.reshape(img.height, img.width, 1 if in_chans == 1 else 3)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot decode image ({e})", path=path) from None
    return tensor.permute(2, 0, 1).float() / 255.0
