"""Semantic-segmentation datasets: an image and a mask of class indices per item.

=================================  ===================================================================
spec                               what it is
=================================  ===================================================================
``isbi-membrane:DIR``              ISBI 2012 EM membranes (the U-Net paper's data): ``DIR/train/image/
                                   {0..29}.png`` + ``DIR/train/label/{0..29}.png``. Fixed split: images
                                   0-23 train, 24-29 test (the challenge's test images have no labels).
                                   Class 0 = cell interior (mask 255), class 1 = membrane (mask 0), so
                                   "membrane Dice" is class 1's Dice.
``voc-seg:DIR``                    PASCAL VOC layout: ``JPEGImages/ID.jpg``, ``SegmentationClass/ID.png``
                                   (palette PNG of class indices, 255 = ignore), ``ImageSets/
                                   Segmentation/{train,val}.txt``; train = train.txt, test = val.txt.
``coco-seg:DIR``                   semantic masks rasterised from COCO instance polygons/RLE with
                                   pycocotools: ``DIR/annotations/instances_{train,val}2017.json`` and
                                   ``DIR/{train,val}2017/``; train = train2017, test = val2017. Class 0 =
                                   background, then the categories in id order.
``coco-seg:DIR?categories=A,B``    the same, keeping only the named categories (others: background)
``coco-person:DIR``                alias of ``coco-seg:DIR?categories=person`` (person vs background)
``coco-seg:ANN_JSON:IMAGE_DIR``    explicit files for train; test swaps ``train`` for ``val`` in both
                                   names (see :func:`coco_split_files`); ``?categories=`` works too
=================================  ===================================================================

Every item is ``(image FloatTensor [C, H, W] in [0, 1], mask LongTensor [H, W])``, unnormalised
and unaugmented (:mod:`canon.data.segmentation_transforms` pairs the two). Files are read when an
item is asked for; a mask whose size differs from its image, a label that is neither a class nor
the ignore index, and an unreadable file each raise :class:`~canon.data.DataError` naming the file.

COCO rasterisation (as torchvision's segmentation reference does): crowd regions and pixels
claimed by two different classes get the ignore index 255.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from canon.data.core import DatasetInfo, data_error

__all__ = ["SegmentationInfo", "SegmentationDataset", "build_segmentation", "SEGMENTATION_KINDS",
           "build_isbi_membrane", "build_voc_seg", "build_coco_seg", "VOC_CLASSES"]

SEGMENTATION_KINDS = ("isbi-membrane", "voc-seg", "coco-seg", "coco-person")
IGNORE_INDEX = 255
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Measured over ISBI training images 0-23 (the train split below): mean and std of pixel / 255.
ISBI_MEAN, ISBI_STD = (0.4908,), (0.1708,)
ISBI_TRAIN_IDS, ISBI_TEST_IDS = tuple(range(24)), tuple(range(24, 30))
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


@dataclass(frozen=True, kw_only=True)
class SegmentationInfo(DatasetInfo):
    """A segmentation dataset's facts: a :class:`DatasetInfo` plus the mask's ignore index."""

    task: str = "segmentation"
    ignore_index: int = IGNORE_INDEX


# ------------------------------------------------------------------------------------- file reading
def read_image(path: Path, in_chans: int) -> torch.Tensor:
    """Decode an image file into a float tensor (C, H, W) in [0, 1]; DataError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if in_chans == 1 else "RGB")
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise data_error(path, "an image file", found="no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise data_error(path, "a readable image (PNG, JPEG, ...)", found=f"{type(err).__name__}: {err}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (C, H, W)


def read_index_png(path: Path) -> np.ndarray:
    """A mask PNG as stored: palette indices for a 'P' image, grey values for 'L'. (H, W) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "1"):
                raise data_error(path, "a single-channel mask (palette 'P' or greyscale 'L' PNG)",
                                 found=f"mode {img.mode!r}")
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise data_error(path, "a mask file", found="no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if isinstance(err, ValueError) and hasattr(err, "path"):
            raise
        raise data_error(path, "a readable mask PNG", found=f"{type(err).__name__}: {err}") from None


def check_mask(mask: torch.Tensor, image: torch.Tensor, *, num_classes: int, ignore_index: int,
               path: Path | str) -> torch.Tensor:
    """Raise DataError (naming ``path``) unless ``mask`` (H, W) matches ``image`` (C, H, W) in size
    and holds only class indices ``0..num_classes-1`` or ``ignore_index``."""
    if tuple(mask.shape) != tuple(image.shape[-2:]):
        raise data_error(path, f"a mask of the image's size {tuple(image.shape[-2:])} (H, W)",
                         found=f"{tuple(mask.shape)}")
    bad = (mask >= num_classes) & (mask != ignore_index) | (mask < 0)
    if bad.any():
        values = sorted(set(mask[bad].unique().tolist()))[:5]
        raise data_error(path, f"labels in 0..{num_classes - 1} or the ignore index {ignore_index}",
                         found=f"values {values}")
    return mask


# ------------------------------------------------------------------------------------- the dataset
class SegmentationDataset(Dataset):
    """Lazily read (image, mask) pairs.

    ``items``: one ``(image_path, mask_source)`` per item; ``load_mask(mask_source, image)`` returns
    the (H, W) long mask of class indices, which is checked against the image here.
    """

    def __init__(self, items: Sequence[tuple[Path, object]], load_mask: Callable[[object, torch.Tensor], torch.Tensor],
                 info: SegmentationInfo, split: str):
        self.items = list(items)
        self.load_mask = load_mask
        self.info = info
        self.split = split

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, source = self.items[index]
        image = read_image(image_path, self.info.in_chans)  # (C, H, W)
        mask = self.load_mask(source, image)  # (H, W)
        where = source if isinstance(source, (str, Path)) else image_path
        check_mask(mask, image, num_classes=self.info.num_classes, ignore_index=self.info.ignore_index, path=where)
        return image, mask

    @property
    def targets(self) -> torch.Tensor:
        """Every labelled pixel's class, for class weights (reads every mask once, then cached)."""
        if not hasattr(self, "_targets"):
            pixels = [m[m != self.info.ignore_index].flatten() for _, m in (self[i] for i in range(len(self)))]
            self._targets = torch.cat(pixels) if pixels else torch.zeros(0, dtype=torch.long)
        return self._targets

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.info.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.info.num_classes})")


# ------------------------------------------------------------------------------------- ISBI 2012
def build_isbi_membrane(root: str | Path, split: str) -> SegmentationDataset:
    """ISBI 2012 membranes; masks 255 (cell) -> class 0, 0 (membrane) -> class 1."""
    root = Path(root).expanduser()
    image_dir, label_dir = root / "train" / "image", root / "train" / "label"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise data_error(folder, "a folder of ISBI PNGs {0..29}.png (isbi-membrane:DIR wants "
                             "DIR/train/image and DIR/train/label)", found="no such folder")
    ids = ISBI_TRAIN_IDS if split == "train" else ISBI_TEST_IDS
    items = [(image_dir / f"{i}.png", label_dir / f"{i}.png") for i in ids]

    def load_mask(path, image):
        raw = read_index_png(Path(path))
        odd = np.setdiff1d(np.unique(raw), (0, 255))
        if odd.size:
            raise data_error(path, "an ISBI mask holding only 0 (membrane) and 255 (cell)",
                             found=f"values {odd[:5].tolist()}")
        return torch.from_numpy((raw == 0).astype(np.int64))  # 1 = membrane

    info = SegmentationInfo(name="isbi-membrane", num_classes=2, in_chans=1, image_size=(512, 512),
                            class_names=["cell", "membrane"], mean=ISBI_MEAN, std=ISBI_STD)
    return SegmentationDataset(items, load_mask, info, split)


# ------------------------------------------------------------------------------------- PASCAL VOC
def build_voc_seg(root: str | Path, split: str) -> SegmentationDataset:
    """PASCAL VOC 2012 segmentation: train.txt for ``train``, val.txt for ``test``."""
    root = Path(root).expanduser()
    list_file = root / "ImageSets" / "Segmentation" / ("train.txt" if split == "train" else "val.txt")
    if not list_file.is_file():
        raise data_error(list_file, "a VOC image-id list (voc-seg:DIR wants DIR/ImageSets/Segmentation/"
                         "{train,val}.txt, DIR/JPEGImages, DIR/SegmentationClass)", found="no such file")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise data_error(list_file, "at least one image id", found="an empty list")
    items = [(root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]

    def load_mask(path, image):
        return torch.from_numpy(read_index_png(Path(path)).astype(np.int64))

    info = SegmentationInfo(name="voc-seg", num_classes=21, in_chans=3, image_size=(500, 500),
                            class_names=list(VOC_CLASSES), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return SegmentationDataset(items, load_mask, info, split)


# ------------------------------------------------------------------------------------- COCO
def rasterise_coco(coco, image_id: int, height: int, width: int, class_of: dict[int, int],
                   ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) int64 semantic mask of one COCO image: each kept category's instances painted with
    its class; crowd regions and pixels of two different classes set to ``ignore_index``."""
    mask = np.zeros((height, width), dtype=np.int64)
    owner = np.zeros((height, width), dtype=np.int64)  # the class first painted there, 0 = none
    crowd = np.zeros((height, width), dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None)):
        cls = class_of.get(ann["category_id"])
        if cls is None:
            continue
        region = coco.annToMask(ann).astype(bool)
        if ann.get("iscrowd", 0):
            crowd |= region
            continue
        clash = region & (owner != 0) & (owner != cls)
        owner[region & (owner == 0)] = cls
        mask[region] = cls
        mask[clash] = ignore_index
        owner[clash] = -1
    mask[owner == -1] = ignore_index
    mask[crowd] = ignore_index
    return mask


def build_coco_seg(root: str | Path, split: str, categories: Sequence[str] | None = None) -> SegmentationDataset:
    """COCO 2017 instances as semantic masks; ``categories`` keeps only those names."""
    try:
        from pycocotools.coco import COCO
    except ImportError as err:  # pragma: no cover - pycocotools is a dependency
        raise ImportError("coco-seg needs pycocotools (pip install pycocotools)") from err
    import contextlib
    import io

    root = Path(root).expanduser()
    year_split = "train2017" if split == "train" else "val2017"
    ann_file, image_dir = root / "annotations" / f"instances_{year_split}.json", root / year_split
    return _build_coco_files(ann_file, image_dir, split, categories)


def coco_split_files(ann_file: str | Path, image_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The files of ``split`` for the explicit form ``coco-seg:ANNOTATIONS_JSON:IMAGE_DIR``.

    The two paths name the training files; the test split reads the same paths with ``train``
    replaced by ``val`` in their last components (COCO's own naming: ``instances_train2017.json``
    and ``train2017/`` become ``instances_val2017.json`` and ``val2017/``). Paths without
    ``train`` in their names serve both splits (e.g. to evaluate on one annotation file).
    """
    ann_file, image_dir = Path(ann_file).expanduser(), Path(image_dir).expanduser()
    if split == "train":
        return ann_file, image_dir
    return (ann_file.with_name(ann_file.name.replace("train", "val")),
            image_dir.with_name(image_dir.name.replace("train", "val")))


def _build_coco_files(ann_file: Path, image_dir: Path, split: str,
                      categories: Sequence[str] | None) -> SegmentationDataset:
    from pycocotools.coco import COCO
    import contextlib
    import io

    if not ann_file.is_file():
        raise data_error(ann_file, "COCO instance annotations (coco-seg:DIR wants DIR/annotations/"
                         "instances_{train,val}2017.json and DIR/{train,val}2017/)", found="no such file")
    if not image_dir.is_dir():
        raise data_error(image_dir, "the folder of COCO images", found="no such folder")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(ann_file))
    except (ValueError, KeyError, OSError) as err:
        raise data_error(ann_file, "a COCO annotation json", found=f"{type(err).__name__}: {err}") from None
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    by_name = {c["name"]: c for c in cats}
    if categories:
        unknown = [c for c in categories if c not in by_name]
        if unknown:
            raise data_error(ann_file, f"category names among {sorted(by_name)}", found=repr(unknown))
        cats = [by_name[c] for c in categories]
    class_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    names = ["background"] + [c["name"] for c in cats]
    items = []
    for image_id in sorted(coco.getImgIds()):
        meta = coco.loadImgs([image_id])[0]
        items.append((image_dir / meta["file_name"], (image_id, meta["height"], meta["width"])))

    def load_mask(source, image):
        image_id, height, width = source
        return torch.from_numpy(rasterise_coco(coco, image_id, height, width, class_of))

    suffix = f"?categories={','.join(categories)}" if categories else ""
    info = SegmentationInfo(name=f"coco-seg{suffix}", num_classes=len(names), in_chans=3, image_size=(480, 640),
                            class_names=names, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return SegmentationDataset(items, load_mask, info, split)


# ------------------------------------------------------------------------------------- spec entry point
def build_segmentation(kind: str, path: str, split: str) -> SegmentationDataset:
    """``build_dataset``'s branch for the segmentation specs (``kind`` before the first colon)."""
    if not path:
        raise data_error(None, f"a folder after the colon, as in {kind}:DIR", found=repr(f"{kind}:"))
    if kind == "isbi-membrane":
        return build_isbi_membrane(path, split)
    if kind == "voc-seg":
        return build_voc_seg(path, split)
    folder, _, query = path.partition("?")
    categories = None
    if kind == "coco-person":
        if query:
            raise data_error(None, "no ?options for coco-person (use coco-seg:DIR?categories=...)",
                             found=repr(f"{kind}:{path}"))
        categories = ["person"]
    elif query:
        key, _, value = query.partition("=")
        if key != "categories" or not value:
            raise data_error(None, "coco-seg:DIR?categories=NAME[,NAME...]", found=repr(f"{kind}:{path}"))
        categories = [c.strip() for c in value.split(",") if c.strip()]
    if kind == "coco-seg" and ":" in folder:
        # the explicit form coco-seg:ANNOTATIONS_JSON:IMAGE_DIR
        ann_file, _, image_dir = folder.partition(":")
        if not ann_file.endswith(".json") or not image_dir:
            raise data_error(None, "coco-seg:DIR or coco-seg:ANNOTATIONS_JSON:IMAGE_DIR",
                             found=repr(f"{kind}:{path}"))
        return _build_coco_files(*coco_split_files(ann_file, image_dir, split), split, categories)
    return build_coco_seg(folder, split, categories)
