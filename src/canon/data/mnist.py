"""MNIST, Fashion-MNIST and any MNIST-format folder, read from IDX files (gzip or raw).

MNIST: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-Based Learning Applied to Document
Recognition", Proc. IEEE 1998 (no arXiv id); data at yann.lecun.com/exdb/mnist.
Fashion-MNIST: H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", 2017, arXiv:1708.07747.

Follows the datasets:
  - the fixed split the authors publish: 60,000 training and 10,000 test images
    (``train-*`` and ``t10k-*`` files), 28x28 grayscale, labels 0-9;
  - the IDX format as documented on the MNIST page: two zero bytes, a type code
    (0x08 = unsigned byte), the number of dimensions, each dimension as a big-endian
    32-bit integer, then the data.

Deviates, and why:
  - downloads are checked against the md5 of the *decompressed* content when it is known,
    besides the md5 of the ``.gz`` file: mirrors re-compress the same IDX bytes with different
    gzip wrappers, so only the content identifies the data. Fashion-MNIST publishes only the
    ``.gz`` md5s, and those are what we check for it;
  - ``mean``/``std`` are the usual published training-set statistics for MNIST
    (0.1307, 0.3081) and Fashion-MNIST (0.2860, 0.3530); for an arbitrary ``mnist-folder`` they
    are measured on its training images (or on the split itself if only that split is there).
"""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from canon.data.core import DatasetInfo, InMemoryImageDataset, data_error
from canon.data.download import default_data_dir, download_file, md5_checker

__all__ = ["read_idx", "IdxSource", "SOURCES", "build_mnist", "build_mnist_folder", "SPLIT_FILES"]

# --- the IDX format -------------------------------------------------------------------------

# type code -> numpy dtype (big-endian, as stored)
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise data_error(path, "a readable IDX file", found=exc.strerror or str(exc)) from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise data_error(path, "a complete gzip stream", found=f"a damaged or truncated one ({exc})",
                         hint="Delete the file and download it again") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a native-endian numpy array of the stored shape.

    Raises ``DataError`` naming the file when the magic number is wrong or the data is shorter
    or longer than the header says.
    """
    path = Path(path)
    raw = _read_bytes(path)
    expected_magic = "an IDX header (bytes 00 00, a type code in {08,09,0B,0C,0D,0E}, a dimension count)"
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise data_error(path, expected_magic, found=f"first bytes {raw[:4].hex(' ') or 'none (empty file)'}")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise data_error(path, f"a {header_len}-byte IDX header", found=f"only {len(raw)} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    count = int(np.prod(shape, dtype=np.int64))
    expected_bytes = count * dtype.itemsize
    actual_bytes = len(raw) - header_len
    if actual_bytes != expected_bytes:
        what = "truncated" if actual_bytes < expected_bytes else "trailing bytes"
        raise data_error(path, f"{expected_bytes} bytes of data for shape {shape}",
                         found=f"{actual_bytes} ({what})")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)  # own, writable, native-endian


# --- the MNIST layout -----------------------------------------------------------------------

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxSource:
    """A named MNIST-format dataset: where to download it and how to check it.

    ``md5``: file stem -> (md5 of the ``.gz`` file, md5 of its decompressed content); either may
    be ``None`` when not published.
    """

    name: str
    mirrors: tuple[str, ...]
    md5: dict
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


SOURCES = {
    "mnist": IdxSource(
        name="mnist",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        md5={
            "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
            "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        },
        class_names=tuple(str(d) for d in range(10)),
        mean=(0.1307,), std=(0.3081,),
    ),
    "fashion-mnist": IdxSource(
        name="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        md5={
            "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", None),
            "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", None),
            "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", None),
            "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", None),
        },
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot"),
        mean=(0.2860,), std=(0.3530,),
    ),
}


def _find(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (the raw file first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_files_error(folder: Path, stems: tuple[str, ...], what: str, hint: str):
    wanted = ", ".join(f"{s}[.gz]" for s in stems)
    found = "no such folder" if not folder.is_dir() else "not all of them"
    return data_error(folder, f"the {what} files {wanted}", found=found, hint=hint)


def _read_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``uint8 (N, 1, H, W)`` and labels ``long (N,)`` from one IDX image/label pair."""
    images = read_idx(images_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise data_error(images_path, "IDX images: unsigned bytes with 3 dimensions (magic 2051)",
                         found=f"{images.dtype} with shape {images.shape}")
    labels = read_idx(labels_path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise data_error(labels_path, "IDX labels: unsigned bytes with 1 dimension (magic 2049)",
                         found=f"{labels.dtype} with shape {labels.shape}")
    if len(labels) != len(images):
        raise data_error(labels_path, f"{len(images)} labels, one per image in {images_path.name}",
                         found=str(len(labels)))
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _resolve_folder(source: IdxSource, split: str, data_dir: str | Path | None, download: bool) -> Path:
    """The folder holding ``split``'s two files, downloading them into the cache if allowed."""
    stems = SPLIT_FILES[split]
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        # torchvision keeps the same files in <root>/MNIST/raw; accept that layout too.
        tv = folder / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[source.name] / "raw"
        for candidate in (folder, tv):
            if all(_find(candidate, s) for s in stems):
                return candidate
        raise _missing_files_error(folder, stems, f"{source.name} {split}",
                                   hint="Point --data-dir at the folder holding them, or leave it out "
                                        "to download into the cache")
    folder = default_data_dir(source.name)
    missing = [s for s in stems if _find(folder, s) is None]
    if missing and not download:
        raise _missing_files_error(folder, stems, f"{source.name} {split}",
                                   hint="Pass download=True, or --data-dir with the files")
    for stem in missing:
        gz_md5, content_md5 = source.md5[stem]
        download_file([m + f"{stem}.gz" for m in source.mirrors], folder / f"{stem}.gz",
                      md5_checker(gz_md5, content_md5))
    return folder


def build_mnist(name: str, split: str, data_dir: str | Path | None = None,
                download: bool = True) -> InMemoryImageDataset:
    """MNIST or Fashion-MNIST (``name``), the published ``split``, held as one uint8 tensor."""
    source = SOURCES[name]
    folder = _resolve_folder(source, split, data_dir, download)
    images_stem, labels_stem = SPLIT_FILES[split]
    images, targets = _read_pair(_find(folder, images_stem), _find(folder, labels_stem))
    if images.shape[2:] != (28, 28) or int(targets.max()) >= len(source.class_names):
        raise data_error(_find(folder, images_stem), f"{name}: 28x28 images with labels 0-9",
                         found=f"images {tuple(images.shape[2:])}, largest label {int(targets.max())}",
                         hint="Use mnist-folder:PATH for other MNIST-format data")
    info = DatasetInfo(name=name, num_classes=len(source.class_names), in_chans=1, image_size=(28, 28),
                       class_names=list(source.class_names), mean=source.mean, std=source.std)
    return InMemoryImageDataset(images, targets, info, split)


def _pixel_mean_std(images: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) std of all pixels of a uint8 tensor, on the [0, 1] scale.

    Counted through a 256-bin histogram, so it is exact and needs no float copy of the images.
    """
    counts = np.bincount(images.numpy().ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum()
    mean = float((counts * values).sum() / n)
    std = float(np.sqrt((counts * (values - mean) ** 2).sum() / n))
    return mean, std


def build_mnist_folder(path: str | Path, split: str) -> InMemoryImageDataset:
    """Any folder laid out like MNIST (``train-*``/``t10k-*`` IDX files, gzip or raw).

    Classes are ``0 .. L`` where ``L`` is the largest label in the folder's label files; mean and
    std are measured on the training images (on the requested split if there are none).
    """
    folder = Path(path).expanduser()
    stems = SPLIT_FILES[split]
    if not all(_find(folder, s) for s in stems):
        raise _missing_files_error(folder, stems, f"MNIST-format {split}",
                                   hint="An MNIST-format folder holds train-* and t10k-* IDX files")
    images, targets = _read_pair(_find(folder, stems[0]), _find(folder, stems[1]))
    train_images, train_targets = images, targets
    if split != "train" and all(_find(folder, s) for s in SPLIT_FILES["train"]):
        train_images, train_targets = _read_pair(*(_find(folder, s) for s in SPLIT_FILES["train"]))
    num_classes = int(max(targets.max(), train_targets.max())) + 1
    mean, std = _pixel_mean_std(train_images)
    info = DatasetInfo(name="mnist-folder", num_classes=num_classes, in_chans=1,
                       image_size=tuple(images.shape[2:]), class_names=[str(c) for c in range(num_classes)],
                       mean=(round(mean, 4),), std=(round(std, 4),))
    return InMemoryImageDataset(images, targets, info, split)
