"""CIFAR-10 from its "python version" batches, read without trusting the pickle format.

A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", technical report,
University of Toronto, 2009 (no arXiv id); data at www.cs.toronto.edu/~kriz/cifar.html.

Follows the dataset:
  - the published split: ``data_batch_1`` .. ``data_batch_5`` (50,000 training images) and
    ``test_batch`` (10,000); class names from ``batches.meta``;
  - the batch layout: a dict whose ``data`` is a ``uint8`` array ``(10000, 3072)``, each row the
    red, then green, then blue 32x32 plane in row-major order, and whose ``labels`` is a list
    of ints in 0-9.

Deviates, and why:
  - the batches are Python pickles, and ``pickle.load`` would run whatever a tampered file asks
    for. :class:`RestrictedUnpickler` resolves exactly the four names a numpy array needs
    (``numpy.core.multiarray._reconstruct`` and its ``numpy._core`` alias, ``numpy.ndarray``,
    ``numpy.dtype``) and refuses every other global, so loading a batch can build dicts, lists,
    strings, numbers and numpy arrays and nothing else;
  - only the seven files we read are taken out of the downloaded archive, by name, and written
    by us: no ``tarfile.extractall`` on archive-chosen paths;
  - ``mean``/``std`` are the per-channel statistics of the 50,000 training images
    (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616).
"""
from __future__ import annotations

import codecs
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from canon.data.core import DatasetInfo, InMemoryImageDataset, data_error
from canon.data.download import default_data_dir, download_file, md5_checker

__all__ = ["RestrictedUnpickler", "load_cifar_batch", "build_cifar10", "CIFAR10_URLS", "CIFAR10_TGZ_MD5"]

# --- reading a pickle that may only hold plain data and numpy arrays -------------------------


def _numpy_reconstruct():
    try:  # numpy >= 2 keeps it in numpy._core; numpy.core is a deprecated alias there
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1"): a pure
    # string-to-bytes conversion, safe to allow (re-saved CIFAR batches contain it).
    ("_codecs", "encode"): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose only importable names are the numpy array builders.

    Any other ``GLOBAL``/``STACK_GLOBAL`` (``os.system``, ``builtins.eval``, a class with a
    ``__reduce__``...) raises ``pickle.UnpicklingError`` before anything is called.
    """

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR batch may only reference "
                f"numpy.ndarray, numpy.dtype, numpy's _reconstruct and _codecs.encode") from None


def _text(value) -> str:
    """Python 2 pickles give ``str`` (decoded as latin-1) or ``bytes``; return ``str``."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _unpickle(path: Path) -> dict:
    """The dict stored in one batch file, with ``str`` keys."""
    try:
        with open(path, "rb") as f:
            # latin-1 maps each Python 2 byte string to a str of the same bytes, which is how
            # numpy expects its array buffers from a Python 2 pickle.
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise data_error(path, "a CIFAR python batch (a pickled dict of plain data and numpy arrays)",
                         found=str(exc)) from None
    except OSError as exc:
        raise data_error(path, "a readable CIFAR batch file", found=exc.strerror or str(exc)) from None
    except Exception as exc:  # a damaged pickle can fail in many ways deep inside the unpickler
        raise data_error(path, "a complete CIFAR python batch",
                         found=f"a damaged or truncated file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise data_error(path, "a pickled dict", found=type(obj).__name__)
    return {_text(k): v for k, v in obj.items()}


def load_cifar_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``uint8 (N, 3, 32, 32)`` and labels ``long (N,)`` from one CIFAR-10 python batch."""
    path = Path(path)
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                 else f"{type(data).__name__} (keys: {sorted(batch)})")
        raise data_error(path, "'data': a uint8 array (N, 3072)", found=found)
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.shape != (len(data),):
        raise data_error(path, f"'labels': {len(data)} integers, one per image",
                         found=f"{type(batch.get('labels')).__name__} (keys: {sorted(batch)})")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise data_error(path, "labels in 0-9", found=f"range {labels.min()}-{labels.max()}")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))  # rows are R, G, B planes
    return images, torch.from_numpy(labels)


# --- the CIFAR-10 files ----------------------------------------------------------------------

CIFAR10_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
CIFAR10_TGZ_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_FOLDER = "cifar-10-batches-py"
SPLIT_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
META_FILE = "batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _batch_folder(folder: Path) -> Path:
    """``folder`` itself, or its ``cifar-10-batches-py`` subfolder (the archive's layout)."""
    inner = folder / ARCHIVE_FOLDER
    return inner if inner.is_dir() else folder


def _missing(folder: Path, split: str) -> list[str]:
    return [n for n in SPLIT_BATCHES[split] + (META_FILE,) if not (folder / n).is_file()]


def _extract_batches(archive: Path, dest: Path) -> None:
    """Copy the seven batch files out of the downloaded ``.tar.gz`` into ``dest``, by name."""
    wanted = {f"{ARCHIVE_FOLDER}/{n}": n for n in SPLIT_BATCHES["train"] + SPLIT_BATCHES["test"] + (META_FILE,)}
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    part = dest / f"{wanted[member.name]}.part"
                    with tar.extractfile(member) as src, open(part, "wb") as out:
                        out.write(src.read())
                    part.replace(dest / wanted.pop(member.name))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise data_error(archive, "a complete CIFAR-10 .tar.gz archive", found=str(exc)) from None
    if wanted:
        raise data_error(archive, f"the members {', '.join(sorted(wanted))}", found="they are missing")


def _resolve_folder(split: str, data_dir: str | Path | None, download: bool) -> Path:
    if data_dir is not None:
        folder = _batch_folder(Path(data_dir).expanduser())
        missing = _missing(folder, split)
        if missing:
            raise data_error(folder, f"the CIFAR-10 python batches {', '.join(missing)}",
                             found="no such folder" if not folder.is_dir() else "not all of them",
                             hint="Point --data-dir at cifar-10-batches-py (or its parent), "
                                  "or leave it out to download into the cache")
        return folder
    cache = default_data_dir("cifar10")
    folder = cache / ARCHIVE_FOLDER
    missing = _missing(folder, split)
    if missing and not download:
        raise data_error(folder, f"the CIFAR-10 python batches {', '.join(missing)}",
                         found="no such folder" if not folder.is_dir() else "not all of them",
                         hint="Pass download=True, or --data-dir with the files")
    if missing:
        archive = download_file(CIFAR10_URLS, cache / "cifar-10-python.tar.gz", md5_checker(gz_md5=CIFAR10_TGZ_MD5))
        _extract_batches(archive, folder)
        archive.unlink()
    return folder


def build_cifar10(split: str, data_dir: str | Path | None = None, download: bool = True) -> InMemoryImageDataset:
    """CIFAR-10's published ``split``, held as one uint8 tensor ``(N, 3, 32, 32)``."""
    folder = _resolve_folder(split, data_dir, download)
    parts = [load_cifar_batch(folder / name) for name in SPLIT_BATCHES[split]]
    images = torch.cat([p[0] for p in parts])  # (50000 or 10000, 3, 32, 32)
    targets = torch.cat([p[1] for p in parts])
    meta_path = folder / META_FILE
    names = _unpickle(meta_path).get("label_names")
    if not isinstance(names, list) or [_text(n) for n in names] != list(CLASS_NAMES):
        raise data_error(meta_path, f"'label_names': {list(CLASS_NAMES)}", found=repr(names))
    info = DatasetInfo(name="cifar10", num_classes=10, in_chans=3, image_size=(32, 32),
                       class_names=list(CLASS_NAMES), mean=MEAN, std=STD)
    return InMemoryImageDataset(images, targets, info, split)
