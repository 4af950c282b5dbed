"""One entry point from a dataset name (``--data``) to a dataset.

=====================  ==========================================================================
spec                   what it is
=====================  ==========================================================================
``digits``             scikit-learn's 1,797 8x8 digits upscaled to 32x32; bundled, no download
``mnist``              MNIST, 60,000 / 10,000 28x28 digits (IDX files, downloaded and checked)
``fashion-mnist``      Fashion-MNIST, same layout, 10 clothing classes
``cifar10``            CIFAR-10 python batches, 50,000 / 10,000 32x32 RGB images
``mnist-folder:PATH``  any folder of MNIST-format IDX files (``train-*``, ``t10k-*``)
``imagefolder:PATH``   class-per-folder images: ``PATH/train`` + ``PATH/test``, or class folders in
                       ``PATH`` or in ``PATH/train`` alone with a fixed 80/20 split;
                       ``imagefolder:PATH?val=N`` holds out a fixed, class-stratified N of the
                       training images as the test split instead, the rest is train (``?val=5000``
                       on CIFAR-10's 50,000: the ResNet paper's 45k/5k split); see
                       :mod:`canon.data.imagefolder`
=====================  ==========================================================================

Segmentation specs (``isbi-membrane:DIR``, ``voc-seg:DIR``, ``coco-seg:DIR``, ``coco-person:DIR``)
are described in :mod:`canon.data.segmentation`.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from canon.data.core import SPLITS, data_error

__all__ = ["build_dataset", "list_datasets", "DATASETS"]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "mnist-folder:PATH", "imagefolder:PATH[?val=N]",
            "isbi-membrane:DIR", "voc-seg:DIR", "coco-seg:DIR[?categories=A,B]", "coco-person:DIR",
            "voc:DIR", "voc-xml:DIR", "coco:DIR", "coco:ANNOTATIONS_JSON:IMAGE_DIR")  # detection: canon.data.detection
_PATH_KINDS = ("mnist-folder", "imagefolder")
_DOWNLOADABLE = ("mnist", "fashion-mnist", "cifar10")


def list_datasets() -> list[str]:
    """The dataset specs ``build_dataset`` accepts; ``PATH`` stands for a folder of yours."""
    return list(DATASETS)


def build_dataset(spec: str, split: str = "train", data_dir: str | Path | None = None,
                  download: bool = True):
    """The ``split`` (``"train"`` or ``"test"``) of the dataset named by ``spec``.

    ``data_dir`` (mnist, fashion-mnist, cifar10): the folder holding the files; they are read
    from there and never downloaded. Without it the files live in ``~/.cache/canon/<name>``
    (``$CANON_DATA_DIR/<name>`` when set) and are downloaded there when missing and ``download``.
    For ``mnist-folder:PATH`` and ``imagefolder:PATH`` the folder is part of the spec.
    ``imagefolder:PATH?val=N`` makes ``"test"`` a fixed, class-stratified draw of ``N`` training
    images (the same on every call) and ``"train"`` the other training images.

    Returns a dataset with ``info`` (:class:`~canon.data.DatasetInfo`), ``targets`` (1-D long
    tensor) and ``ds[i] -> (float image [C, H, W] in [0, 1], int label)``. Raises ``DataError``
    for unknown names, missing or damaged files.
    """
    if not isinstance(spec, str):
        raise TypeError(f"dataset spec must be a str such as 'mnist', got {type(spec).__name__}")
    if split not in SPLITS:
        raise data_error(None, f"split to be one of {SPLITS}", found=repr(split))
    kind, sep, path = spec.partition(":")
    if kind in ("isbi-membrane", "voc-seg", "coco-seg", "coco-person"):  # canon.data.segmentation
        from canon.data.segmentation import build_segmentation
        return build_segmentation(kind, path, split)
    if kind in ("voc", "voc-xml", "coco"):  # canon.data.detection
        from canon.data.detection import build_detection
        return build_detection(kind, path, split)
    if kind in _PATH_KINDS:
        if not path:
            raise data_error(None, f"a folder after the colon, as in {kind}:PATH", found=repr(spec))
        folder = path.partition("?")[0]  # imagefolder:PATH?val=N
        if data_dir is not None and Path(data_dir).expanduser().resolve() != Path(folder).expanduser().resolve():
            raise data_error(None, f"no --data-dir for {kind} (the folder is in the name)",
                             found=f"--data-dir {data_dir} besides {spec}")
    elif sep:
        raise data_error(None, f"no path after {kind!r} (only {' and '.join(_PATH_KINDS)} take one)",
                         found=repr(spec))
    elif kind == "digits" and data_dir is not None:
        raise data_error(None, "no --data-dir for digits (it ships with scikit-learn)",
                         found=f"--data-dir {data_dir}")

    if kind == "digits":
        from canon.data.digits import build_digits
        return build_digits(split)
    if kind in ("mnist", "fashion-mnist"):
        from canon.data.mnist import build_mnist
        return build_mnist(kind, split, data_dir=data_dir, download=download)
    if kind == "cifar10":
        from canon.data.cifar import build_cifar10
        return build_cifar10(split, data_dir=data_dir, download=download)
    if kind == "mnist-folder":
        from canon.data.mnist import build_mnist_folder
        return build_mnist_folder(path, split)
    if kind == "imagefolder":
        from canon.data.imagefolder import build_imagefolder, parse_imagefolder_options
        folder, _, query = path.partition("?")
        return build_imagefolder(folder, split, **parse_imagefolder_options(query, spec))

    names = [d.split(":")[0] for d in DATASETS]
    close = difflib.get_close_matches(kind, names, n=3, cutoff=0.5)
    hint = f"Did you mean {' or '.join(close)}?" if close else None
    raise data_error(None, f"a dataset among {', '.join(DATASETS)}", found=repr(spec), hint=hint)
