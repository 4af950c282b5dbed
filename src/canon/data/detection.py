"""Object-detection datasets: an image and a dict of its objects (boxes, labels, masks, keypoints).

==========================================  ===========================================================
spec                                        what it is
==========================================  ===========================================================
``voc:DIR``                                 PASCAL VOC: ``DIR/JPEGImages/ID.jpg``, ``DIR/Annotations/
                                            ID.xml``, ``DIR/ImageSets/Main/{train,val,trainval,test}
                                            .txt``. With a ``test.txt`` (VOC2007): train = trainval,
                                            test = test; without (VOC2012): train = train, test = val.
``voc:DIR?train=SET&test=SET``              choose the image sets (any ``ImageSets/Main/SET.txt``)
``voc-xml:DIR``                             VOC XML files without ImageSets (e.g. labelImg output, the
                                            raccoon set): ``DIR/images/`` (or ``JPEGImages/``),
                                            ``DIR/annotations/`` (or ``Annotations/``) and the split
                                            files ``DIR/splits/train*.csv``, ``test*.csv`` (a
                                            ``filename`` column; one row per box is fine) or ``.txt``
                                            (one image file name per line); ``val*`` if no ``test*``
``coco:DIR``                                the COCO 2017 layout: ``DIR/annotations/instances_
                                            {train,val}2017.json`` and ``DIR/{train,val}2017/``
``coco:DIR?keypoints``                      the same with ``person_keypoints_{train,val}2017.json``
``coco:ANNOTATIONS_JSON:IMAGE_DIR``         explicit files for train; test reads them with ``train``
                                            replaced by ``val`` in both names (as ``coco-seg``)
``...?masks``                               (coco) also decode instance masks (polygons and RLE)
``...?classes=A,B``                         (voc, voc-xml) the class names, in label order
==========================================  ===========================================================

The target contract (what every item's dict holds; torchvision's detection models read the same):

===============  ====================  ==============================================================
key              type                  meaning
===============  ====================  ==============================================================
``boxes``        float32 ``[N, 4]``    (x1, y1, x2, y2) in pixels, continuous, 0 <= x1 < x2 <= W
``labels``       int64 ``[N]``         class index 1..C; 0 is background and never appears
``image_id``     int64 ``[]``          COCO: the image's id; VOC: the image's position in its split
``area``         float32 ``[N]``       COCO: the annotation's ``area`` (of the mask); VOC: box area
``iscrowd``      int64 ``[N]``         1 for a COCO crowd region (ignored by the COCO evaluation)
``difficult``    bool ``[N]``          VOC only: the object's ``difficult`` flag
``masks``        uint8 ``[N, H, W]``   COCO with ``?masks``: the instance masks, 0/1
``keypoints``    float32 ``[N, K, 3]`` COCO keypoint files: (x, y, visibility 0/1/2); not labelled
                                       keypoints are (0, 0, 0)
===============  ====================  ==============================================================

Labels index ``info.class_names``, whose entry 0 is ``"background"``; ``info.num_classes`` counts
it (C + 1), which is the ``num_classes`` of torchvision's detectors (91 for its COCO weights, 21
for VOC). A detector without a background class (YOLO) has ``info.num_classes - 1`` classes and
predicts ``label - 1``. ``info.category_ids[label]`` is the source's category id (COCO's 1..90 with
gaps; for VOC the label itself) for writing COCO-format results.

Each item is ``(image FloatTensor [3, H, W] in [0, 1], target)``, unnormalised and unaugmented
(:mod:`canon.data.detection_transforms` moves the objects with the image). Images are read when
an item is asked for; ``ds.records`` lists every image's annotations without decoding any
pixels (for anchor k-means, class counts and evaluation), and ``ds.to_coco()`` writes them as a
COCO ground-truth dict for :func:`canon.metrics.coco_evaluate`.

Cleaning, at listing time:

* a box partly outside its image is clipped to it (COCO's float boxes overshoot by fractions of
  a pixel; torchvision's COCO reference clips the same way);
* a box of zero area after clipping (x2 <= x1 or y2 <= y1, or lying wholly outside the image) is
  dropped, with its mask and keypoints, and an :class:`AnnotationWarning` names the file;
* a malformed annotation (unparsable XML, a missing or non-numeric field, an unknown class or
  category, keypoints of the wrong length) raises :class:`~canon.data.DataError` naming the
  file and the field;
* an image with no objects is kept (background only, ``boxes`` of shape ``[0, 4]``).

Follows the sources:

* VOC coordinates are 1-based inclusive pixel indices (labelImg clamps ``xmin`` to 1); a box
  (xmin, ymin, xmax, ymax) covers the continuous box (xmin - 1, ymin - 1, xmax, ymax), as
  detectron2's VOC reader converts it.
* VOC ``difficult`` objects are dropped from the training split by default (the VOC devkit
  and the R-CNN papers train without them) and kept, flagged, in the test split, where the VOC
  AP ignores them.
* COCO ``bbox`` is (x, y, width, height) and becomes (x, y, x + width, y + height); COCO
  categories, sorted by id, get the labels 1..C.

Deviates, and why:

* crowd regions stay in the targets (``iscrowd`` = 1) in both splits, so the data says what the
  file says; a detector trains on ``iscrowd == 0`` only (torchvision's reference drops them), which
  :func:`canon.data.detection_transforms.drop_crowd` does.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from canon.data.core import DatasetInfo, data_error
from canon.data.segmentation import IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES, coco_split_files, read_image

__all__ = ["DetectionInfo", "DetectionDataset", "ImageAnnotations", "AnnotationWarning", "build_detection",
           "build_voc", "build_voc_xml", "build_coco", "DETECTION_KINDS", "keypoint_flip_permutation"]

DETECTION_KINDS = ("voc", "voc-xml", "coco")
BACKGROUND = "background"
_TRUE, _FALSE = ("", "1", "true", "yes"), ("0", "false", "no")


class AnnotationWarning(UserWarning):
    """An annotation was cleaned (a degenerate or outside box dropped); the message names the file."""


# ------------------------------------------------------------------------------------- what a dataset states
def keypoint_flip_permutation(names: Sequence[str]) -> tuple[int, ...]:
    """The left/right swap of a horizontal flip: keypoint ``i`` of the flipped image is keypoint
    ``perm[i]`` of the original. ``left_X`` pairs with ``right_X``; other names map to themselves.

    For COCO's 17 person keypoints this gives torchvision's ``flip_inds``
    (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15).
    """
    index = {name: i for i, name in enumerate(names)}
    perm = []
    for name in names:
        if name.startswith("left_"):
            mirror = "right_" + name[len("left_"):]
        elif name.startswith("right_"):
            mirror = "left_" + name[len("right_"):]
        else:
            mirror = name
        perm.append(index.get(mirror, index[name]))
    return tuple(perm)


@dataclass(frozen=True, kw_only=True)
class DetectionInfo(DatasetInfo):
    """What a detection dataset states about itself: a :class:`DatasetInfo` plus the facts of
    its annotations.

    ``class_names[0]`` is ``"background"`` and ``num_classes`` counts it. ``category_ids[label]``
    is the source's category id of each label (index 0, background, is 0). ``keypoint_names``,
    ``keypoint_flip`` (see :func:`keypoint_flip_permutation`) and ``skeleton`` (0-based index
    pairs) are empty without keypoints. ``image_size`` is ``(H, W)`` of the first image; sizes vary.
    """

    task: str = "detection"
    category_ids: tuple[int, ...] = ()
    keypoint_names: tuple[str, ...] = ()
    keypoint_flip: tuple[int, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        super().__post_init__()
        if not self.class_names or self.class_names[0] != BACKGROUND:
            raise ValueError(f"{self.name}: class_names[0] must be {BACKGROUND!r} (label 0), got "
                             f"{self.class_names[:1]}")
        if not self.category_ids:
            object.__setattr__(self, "category_ids", tuple(range(self.num_classes)))
        if len(self.category_ids) != self.num_classes:
            raise ValueError(f"{self.name}: need one category id per class ({self.num_classes}), got "
                             f"{len(self.category_ids)}")
        k = len(self.keypoint_names)
        if not self.keypoint_flip and k:
            object.__setattr__(self, "keypoint_flip", keypoint_flip_permutation(self.keypoint_names))
        if sorted(self.keypoint_flip) != list(range(k)):
            raise ValueError(f"{self.name}: keypoint_flip must be a permutation of 0..{k - 1}, got "
                             f"{self.keypoint_flip}")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def object_class_names(self) -> list[str]:
        """The class names without the background: those of labels 1..C."""
        return list(self.class_names[1:])

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["category_ids"], d["keypoint_names"] = list(self.category_ids), list(self.keypoint_names)
        d["keypoint_flip"], d["skeleton"] = list(self.keypoint_flip), [list(p) for p in self.skeleton]
        return d


@dataclass(frozen=True)
class ImageAnnotations:
    """One image's objects as its annotation file states them (after cleaning); no pixels read.

    Tensors follow the target contract of the module docstring; ``difficult`` is None outside
    VOC, ``keypoints`` None without keypoints, ``segmentations`` (COCO polygons or RLE, one per
    object) None outside COCO. ``annotation_ids`` are COCO's annotation ids (VOC: 0..N-1).
    """

    image_path: Path
    annotation_path: Path
    image_id: int
    height: int
    width: int
    boxes: Tensor
    labels: Tensor
    area: Tensor
    iscrowd: Tensor
    annotation_ids: tuple[int, ...]
    difficult: Tensor | None = None
    keypoints: Tensor | None = None
    segmentations: tuple | None = None

    @property
    def num_objects(self) -> int:
        return len(self.labels)

    def target(self) -> dict[str, Tensor]:
        """The target dict without masks (fresh tensors: a transform may change them in place)."""
        target = {"boxes": self.boxes.clone(), "labels": self.labels.clone(),
                  "image_id": torch.tensor(self.image_id, dtype=torch.int64), "area": self.area.clone(),
                  "iscrowd": self.iscrowd.clone()}
        if self.difficult is not None:
            target["difficult"] = self.difficult.clone()
        if self.keypoints is not None:
            target["keypoints"] = self.keypoints.clone()
        return target


# ------------------------------------------------------------------------------------- the dataset
class DetectionDataset(Dataset):
    """Lazily read ``(image, target)`` pairs from :class:`ImageAnnotations` records.

    ``masks``: decode instance masks into ``target["masks"]`` (COCO only; needs pycocotools).
    """

    def __init__(self, records: Sequence[ImageAnnotations], info: DetectionInfo, split: str, *,
                 masks: bool = False):
        self.records = list(records)
        self.info = info
        self.split = split
        if masks and any(r.segmentations is None for r in self.records):
            raise ValueError(f"{info.name}: masks=True needs COCO segmentations; this dataset has none")
        self.masks = masks
        self._coco = None

    def with_masks(self, masks: bool = True) -> "DetectionDataset":
        """The same records with mask decoding switched on (or off)."""
        return DetectionDataset(self.records, self.info, self.split, masks=masks)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        record = self.records[index]
        image = read_image(record.image_path, 3)  # (3, H, W); greyscale and palette images become RGB
        if tuple(image.shape[-2:]) != (record.height, record.width):
            raise data_error(record.annotation_path, f"the image size (height, width) = "
                             f"{(record.height, record.width)} stated for {record.image_path.name}",
                             found=f"{tuple(image.shape[-2:])} in the image file")
        target = record.target()
        if self.masks:
            target["masks"] = self._decode_masks(record)
        return image, target

    def _decode_masks(self, record: ImageAnnotations) -> Tensor:
        """(N, H, W) uint8 masks through pycocotools' ``COCO.annToMask``, as coco-seg rasterises."""
        if not record.num_objects:
            return torch.zeros((0, record.height, record.width), dtype=torch.uint8)
        coco = self._coco_index()
        masks = []
        for segmentation in record.segmentations:
            ann = {"image_id": record.image_id, "segmentation": segmentation}
            try:
                masks.append(torch.from_numpy(coco.annToMask(ann)))
            except (TypeError, ValueError, KeyError, IndexError) as err:
                raise data_error(record.annotation_path, f"a polygon list or RLE dict as 'segmentation' "
                                 f"of an object in image {record.image_id}",
                                 found=f"{type(err).__name__}: {err}") from None
        return torch.stack(masks).to(torch.uint8)

    def _coco_index(self):
        """A pycocotools ``COCO`` that knows every image's size (all ``annToMask`` needs)."""
        if self._coco is None:
            try:
                from pycocotools.coco import COCO
            except ImportError as err:  # pragma: no cover - pycocotools is a dependency of coco-seg too
                raise ImportError("decoding COCO masks needs pycocotools (pip install pycocotools)") from err
            coco = COCO()
            coco.dataset = {"images": [{"id": r.image_id, "height": r.height, "width": r.width}
                                       for r in self.records], "annotations": [], "categories": []}
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __getstate__(self):  # DataLoader workers rebuild the pycocotools index themselves
        state = dict(self.__dict__)
        state["_coco"] = None
        return state

    @property
    def targets(self) -> Tensor:
        """Every non-crowd object's label (1-D int64), for class counts and weights."""
        labels = [r.labels[r.iscrowd == 0] for r in self.records]
        return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)

    def box_sizes(self, relative: bool = False, include_crowd: bool = False) -> Tensor:
        """(M, 2) float32 (width, height) of every object's box; ``relative`` divides by the image's
        width and height (the units of YOLO's anchor priors). Crowd regions are left out unless asked."""
        sizes = []
        for r in self.records:
            keep = torch.ones(r.num_objects, dtype=torch.bool) if include_crowd else r.iscrowd == 0
            wh = r.boxes[keep, 2:] - r.boxes[keep, :2]
            if relative:
                wh = wh / torch.tensor([r.width, r.height], dtype=wh.dtype)
            sizes.append(wh)
        return torch.cat(sizes) if sizes else torch.zeros((0, 2))

    def to_coco(self, difficult_as_crowd: bool = True) -> dict:
        """The records as a COCO ground-truth dict for :func:`canon.metrics.coco_evaluate`.

        Category ids are ``info.category_ids``; boxes go back to (x, y, width, height). COCO
        sources keep their segmentations and keypoints. VOC ``difficult`` objects become crowd
        regions when ``difficult_as_crowd`` (the COCO evaluation then neither rewards nor
        penalises detections of them, close to the VOC AP's ignore rule).
        """
        images, annotations, next_id = [], [], 1
        for r in self.records:
            images.append({"id": r.image_id, "height": r.height, "width": r.width, "file_name": r.image_path.name})
            for j in range(r.num_objects):
                x1, y1, x2, y2 = r.boxes[j].tolist()
                crowd = int(r.iscrowd[j]) or int(difficult_as_crowd and r.difficult is not None and r.difficult[j])
                ann = {"id": next_id, "image_id": r.image_id,
                       "category_id": self.info.category_ids[int(r.labels[j])],
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(r.area[j]), "iscrowd": crowd}
                if r.segmentations is not None:
                    ann["segmentation"] = r.segmentations[j]
                if r.keypoints is not None:
                    ann["keypoints"] = r.keypoints[j].flatten().tolist()
                    ann["num_keypoints"] = int((r.keypoints[j, :, 2] > 0).sum())
                annotations.append(ann)
                next_id += 1
        categories = [{"id": cid, "name": name}
                      for cid, name in zip(self.info.category_ids[1:], self.info.class_names[1:])]
        if self.info.keypoint_names:
            for category in categories:
                category["keypoints"] = list(self.info.keypoint_names)
                category["skeleton"] = [[a + 1, b + 1] for a, b in self.info.skeleton]
        return {"images": images, "annotations": annotations, "categories": categories}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.info.name!r}, split={self.split!r}, n={len(self)}, "
                f"objects={sum(r.num_objects for r in self.records)}, classes={self.info.num_classes}, "
                f"masks={self.masks})")


# ------------------------------------------------------------------------------------- cleaning boxes
def _clean_boxes(boxes: Tensor, height: int, width: int, path: Path, what: Sequence[str]) -> Tensor:
    """Clip xyxy boxes (N, 4) to the image in place; return the keep mask, warning (naming
    ``path`` and each ``what[i]``) about every box of zero area after clipping."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.bool)
    original = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    dropped = torch.nonzero(~keep).flatten().tolist()
    if dropped:
        listed = "; ".join(f"{what[i]} {[round(v, 2) for v in original[i].tolist()]}" for i in dropped[:5])
        more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
        warnings.warn(f"{path}: dropped {len(dropped)} box(es) of zero area or outside the {width}x{height} "
                      f"image (x1, y1, x2, y2): {listed}{more}", AnnotationWarning, stacklevel=4)
    return keep


def _number(text: str | None, path: Path, field: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise data_error(path, f"a number in {field}", found=repr(text)) from None
    if not math.isfinite(value):
        raise data_error(path, f"a finite number in {field}", found=repr(text))
    return value


# ------------------------------------------------------------------------------------- VOC XML
def _parse_voc_xml(path: Path, class_index: dict[str, int] | None) -> dict:
    """One VOC XML file as {filename, height, width, names, boxes (N, 4) xyxy continuous, difficult}.

    ``class_index`` maps names to labels (an unknown name is a DataError); None keeps the names only.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise data_error(path, "a VOC annotation XML file", found="no such file") from None
    except ET.ParseError as err:
        raise data_error(path, "well-formed VOC annotation XML", found=f"ParseError: {err}") from None
    if root.tag != "annotation":
        raise data_error(path, "a VOC <annotation> root element", found=f"<{root.tag}>")
    width = _number(root.findtext("size/width"), path, "size/width")
    height = _number(root.findtext("size/height"), path, "size/height")
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise data_error(path, "positive whole numbers in size/width and size/height",
                         found=f"width {width:g}, height {height:g}")
    names, boxes, difficult = [], [], []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise data_error(path, f"a class name in object {i} <name>", found="none")
        if class_index is not None and name not in class_index:
            raise data_error(path, f"object {i} <name> among the classes {sorted(class_index)}",
                             found=repr(name), hint="Name the classes with ?classes=A,B if they are not VOC's")
        if obj.find("bndbox") is None:
            raise data_error(path, f"a <bndbox> in object {i} ({name})", found="none")
        xmin, ymin, xmax, ymax = (_number(obj.findtext(f"bndbox/{k}"), path, f"object {i} bndbox/{k}")
                                  for k in ("xmin", "ymin", "xmax", "ymax"))
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise data_error(path, f"0 or 1 in object {i} <difficult>", found=repr(flag))
        names.append(name)
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])  # 1-based inclusive -> continuous
        difficult.append(flag == "1")
    return {"filename": (root.findtext("filename") or "").strip(), "height": int(height), "width": int(width),
            "names": names, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "difficult": torch.tensor(difficult, dtype=torch.bool)}


def _voc_record(xml_path: Path, image_path: Path, image_id: int, class_index: dict[str, int],
                keep_difficult: bool) -> ImageAnnotations:
    parsed = _parse_voc_xml(xml_path, class_index)
    boxes, difficult = parsed["boxes"], parsed["difficult"]
    what = [f"object {i} ({name})" for i, name in enumerate(parsed["names"])]
    keep = _clean_boxes(boxes, parsed["height"], parsed["width"], xml_path, what)
    if not keep_difficult:
        keep &= ~difficult
    labels = torch.tensor([class_index[n] for n in parsed["names"]], dtype=torch.int64)
    boxes = boxes[keep]
    return ImageAnnotations(
        image_path=image_path, annotation_path=xml_path, image_id=image_id, height=parsed["height"],
        width=parsed["width"], boxes=boxes, labels=labels[keep],
        area=(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        iscrowd=torch.zeros(int(keep.sum()), dtype=torch.int64),
        annotation_ids=tuple(torch.nonzero(keep).flatten().tolist()), difficult=difficult[keep])


def _class_index(names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def _info(name: str, class_names: Sequence[str], records: Sequence[ImageAnnotations], where: Path,
          **extra) -> DetectionInfo:
    if not records:
        raise data_error(where, "at least one image in the split", found="none")
    return DetectionInfo(name=name, num_classes=len(class_names), in_chans=3,
                         image_size=(records[0].height, records[0].width), class_names=list(class_names),
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, **extra)


def build_voc(root: str | Path, split: str, *, image_set: str | None = None,
              classes: Sequence[str] | None = None, keep_difficult: bool | None = None) -> DetectionDataset:
    """PASCAL VOC detection. ``image_set`` (``train``, ``val``, ``trainval``, ``test``, or any
    ``ImageSets/Main/NAME.txt``) overrides the split rule of the module docstring; ``classes``
    (without background) replaces VOC's 20; ``keep_difficult`` defaults to ``split != "train"``."""
    root = Path(root).expanduser()
    main = root / "ImageSets" / "Main"
    if image_set is None:
        has_test = (main / "test.txt").is_file()
        image_set = {"train": "trainval" if has_test else "train", "test": "test" if has_test else "val"}[split]
    list_file = main / f"{image_set}.txt"
    if not list_file.is_file():
        raise data_error(list_file, "a VOC image-id list (voc:DIR wants DIR/ImageSets/Main/{train,val,trainval,"
                         "test}.txt, DIR/JPEGImages/ and DIR/Annotations/)", found="no such file")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    class_names = [BACKGROUND, *(classes if classes else VOC_CLASSES[1:])]
    index = _class_index(class_names)
    keep_difficult = split != "train" if keep_difficult is None else keep_difficult
    records = [_voc_record(root / "Annotations" / f"{i}.xml", root / "JPEGImages" / f"{i}.jpg", n, index,
                           keep_difficult) for n, i in enumerate(ids)]
    return DetectionDataset(records, _info("voc", class_names, records, list_file), split)


def _find_folder(root: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise data_error(root, f"a folder of {what} named {' or '.join(names)}", found="none")


def _split_file(root: Path, split: str) -> Path:
    prefixes = ("train",) if split == "train" else ("test", "val")
    folder = root / "splits"
    for prefix in prefixes:
        found = sorted(p for p in folder.glob(f"{prefix}*") if p.suffix in (".csv", ".txt")) if folder.is_dir() else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise data_error(folder, f"one {prefix}*.csv or {prefix}*.txt split file",
                             found=", ".join(p.name for p in found))
    raise data_error(folder, f"a split file {' or '.join(p + '*.csv' for p in prefixes)} (or .txt) listing the "
                     f"{split} images (voc-xml:DIR wants DIR/splits/, DIR/images/, DIR/annotations/)",
                     found="none")


def _split_filenames(path: Path) -> list[str]:
    """Image file names of a split file, in first-appearance order (a CSV may repeat them, one row per box)."""
    text = path.read_text()
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "filename" not in reader.fieldnames:
            raise data_error(path, "a CSV header with a 'filename' column", found=repr(reader.fieldnames))
        names = [row["filename"].strip() for row in reader]
        if any(not n for n in names):
            raise data_error(path, "an image file name in every row's 'filename'", found="an empty value")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    return list(dict.fromkeys(names))


def build_voc_xml(root: str | Path, split: str, *, classes: Sequence[str] | None = None,
                  keep_difficult: bool | None = None) -> DetectionDataset:
    """VOC XML files with the split given by ``DIR/splits/{train,test}*.{csv,txt}`` (the raccoon
    layout). Classes (without background) are ``classes``, else the sorted names found in all
    the XML files of the folder, so both splits agree."""
    root = Path(root).expanduser()
    image_dir = _find_folder(root, ("images", "JPEGImages"), "images")
    xml_dir = _find_folder(root, ("annotations", "Annotations"), "VOC XML annotations")
    split_file = _split_file(root, split)
    if classes:
        class_names = [BACKGROUND, *classes]
    else:
        found = set()
        for path in sorted(xml_dir.glob("*.xml")):
            found.update(_parse_voc_xml(path, None)["names"])
        class_names = [BACKGROUND, *sorted(found)]
    index = _class_index(class_names)
    keep_difficult = split != "train" if keep_difficult is None else keep_difficult
    records = []
    for n, filename in enumerate(_split_filenames(split_file)):
        xml_path = xml_dir / f"{Path(filename).stem}.xml"
        if not xml_path.is_file():
            raise data_error(xml_path, f"the annotation of {filename} (listed in {split_file.name})",
                             found="no such file")
        records.append(_voc_record(xml_path, image_dir / filename, n, index, keep_difficult))
    return DetectionDataset(records, _info("voc-xml", class_names, records, split_file), split)


# ------------------------------------------------------------------------------------- COCO json
def _field(ann: dict, key: str, path: Path, expected: str):
    if key not in ann:
        raise data_error(path, f"{key!r} ({expected}) in annotation id {ann.get('id', '?')}", found="no such field")
    return ann[key]


def _coco_numbers(value, count: int | None, path: Path, key: str, ann_id) -> list[float]:
    ok = isinstance(value, (list, tuple)) and (count is None or len(value) == count) and \
        all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
        raise data_error(path, f"{key!r} of annotation id {ann_id} to be "
                         f"{'a list of ' + str(count) if count else 'a list of'} numbers", found=shown)
    return [float(v) for v in value]


def _load_coco(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise data_error(ann_file, "COCO annotations (coco:DIR wants DIR/annotations/instances_{train,val}2017.json "
                         "and DIR/{train,val}2017/)", found="no such file")
    try:
        data = json.loads(ann_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise data_error(ann_file, "a COCO annotation json", found=f"{type(err).__name__}: {err}") from None
    if not isinstance(data, dict):
        raise data_error(ann_file, "a json object with 'images', 'annotations', 'categories'",
                         found=type(data).__name__)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise data_error(ann_file, f"a list under {key!r}", found="none" if key not in data else
                             type(data[key]).__name__)
    return data


def build_coco(ann_file: str | Path, image_dir: str | Path, split: str, *, masks: bool = False) -> DetectionDataset:
    """COCO detection from one annotation json and its image folder (instances or person keypoints;
    the dataset is named ``coco-keypoints`` when its categories have keypoints, else ``coco``)."""
    ann_file, image_dir = Path(ann_file).expanduser(), Path(image_dir).expanduser()
    data = _load_coco(ann_file)
    if not image_dir.is_dir():
        raise data_error(image_dir, "the folder of COCO images", found="no such folder")

    for c in data["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise data_error(ann_file, "every category with an integer 'id' and a 'name'", found=repr(c)[:80])
    categories = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
    keypoint_lists = {tuple(c["keypoints"]) for c in categories if c.get("keypoints")}
    if len(keypoint_lists) > 1:
        raise data_error(ann_file, "one keypoint list shared by every category that has one",
                         found=f"{len(keypoint_lists)} different lists")
    keypoint_names = next(iter(keypoint_lists), ())
    skeleton = ()
    if keypoint_names:
        raw = next(c.get("skeleton", []) for c in categories if c.get("keypoints"))
        skeleton = tuple((int(a) - 1, int(b) - 1) for a, b in raw)  # COCO's skeleton is 1-based
    k = len(keypoint_names)

    images = {}
    for meta in data["images"]:
        try:
            ok = isinstance(meta["id"], int) and isinstance(meta["file_name"], str)
            images[meta["id"]] = (meta["file_name"], int(meta["height"]), int(meta["width"]))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise data_error(ann_file, "every image with an integer 'id', a 'file_name', 'height' and 'width'",
                             found=repr(meta)[:80])
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise data_error(ann_file, "every annotation to be an object", found=repr(ann)[:80])
        ann_id = _field(ann, "id", ann_file, "the annotation's id")
        image_id = _field(ann, "image_id", ann_file, "an image id")
        if image_id not in images:
            raise data_error(ann_file, f"'image_id' of annotation id {ann_id} among the listed images",
                             found=repr(image_id))
        category = _field(ann, "category_id", ann_file, "a category id")
        if category not in label_of:
            raise data_error(ann_file, f"'category_id' of annotation id {ann_id} among the categories "
                             f"{sorted(label_of)}", found=repr(category))
        per_image[image_id].append(ann)

    records = []
    for image_id in sorted(images):
        file_name, height, width = images[image_id]
        anns = per_image[image_id]
        boxes, areas, crowd, labels, keypoints = [], [], [], [], []
        for ann in anns:
            x, y, w, h = _coco_numbers(_field(ann, "bbox", ann_file, "[x, y, width, height]"), 4, ann_file,
                                       "bbox", ann["id"])
            boxes.append([x, y, x + w, y + h])
            labels.append(label_of[ann["category_id"]])
            flag = ann.get("iscrowd", 0)
            if flag not in (0, 1):
                raise data_error(ann_file, f"0 or 1 as 'iscrowd' of annotation id {ann['id']}", found=repr(flag))
            crowd.append(int(flag))
            area = ann.get("area", w * h)
            if isinstance(area, bool) or not isinstance(area, (int, float)) or not area >= 0:
                raise data_error(ann_file, f"a number >= 0 as 'area' of annotation id {ann['id']}", found=repr(area))
            areas.append(float(area))
            if masks or "segmentation" in ann:
                segmentation = _field(ann, "segmentation", ann_file, "polygons or RLE")
                if not isinstance(segmentation, (list, dict)) or (isinstance(segmentation, list) and not segmentation):
                    raise data_error(ann_file, f"'segmentation' of annotation id {ann['id']} to be a polygon "
                                     f"list or an RLE dict", found=repr(segmentation)[:80])
            if k:
                values = ann.get("keypoints") or [0] * (3 * k)
                keypoints.append(_coco_numbers(values, 3 * k, ann_file, "keypoints", ann["id"]))
        box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        what = [f"annotation id {ann['id']}" for ann in anns]
        keep = _clean_boxes(box_tensor, height, width, ann_file, what)
        kept = [ann for ann, flag in zip(anns, keep.tolist()) if flag]
        records.append(ImageAnnotations(
            image_path=image_dir / file_name, annotation_path=ann_file, image_id=int(image_id), height=height,
            width=width, boxes=box_tensor[keep], labels=torch.tensor(labels, dtype=torch.int64)[keep],
            area=torch.tensor(areas, dtype=torch.float32)[keep],
            iscrowd=torch.tensor(crowd, dtype=torch.int64)[keep], annotation_ids=tuple(a["id"] for a in kept),
            keypoints=torch.tensor(keypoints, dtype=torch.float32).reshape(-1, k, 3)[keep] if k else None,
            segmentations=tuple(a.get("segmentation") for a in kept)))
    class_names = [BACKGROUND, *(c["name"] for c in categories)]
    info = _info("coco-keypoints" if k else "coco", class_names, records, ann_file,
                 category_ids=(0, *(c["id"] for c in categories)),
                 keypoint_names=tuple(keypoint_names), skeleton=skeleton)
    return DetectionDataset(records, info, split, masks=masks)


# ------------------------------------------------------------------------------------- spec entry point
def _parse_query(kind: str, path: str, allowed: Sequence[str]) -> tuple[str, dict[str, str]]:
    folder, _, query = path.partition("?")
    options = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        if key not in allowed:
            raise data_error(None, f"options of {kind} among {', '.join(allowed) or 'none'}",
                             found=repr(f"{kind}:{path}"))
        options[key] = value
    if not folder:
        raise data_error(None, f"a folder after the colon, as in {kind}:DIR", found=repr(f"{kind}:{path}"))
    return folder, options


def _flag(options: dict[str, str], key: str, spec: str) -> bool:
    if key not in options:
        return False
    value = options[key].lower()
    if value not in _TRUE + _FALSE:
        raise data_error(None, f"?{key} or ?{key}=1 / ?{key}=0", found=repr(spec))
    return value in _TRUE


def _names(options: dict[str, str], spec: str) -> list[str] | None:
    if "classes" not in options:
        return None
    names = [c.strip() for c in options["classes"].split(",") if c.strip()]
    if not names or len(set(names)) != len(names) or BACKGROUND in names:
        raise data_error(None, "?classes=A,B with distinct names other than 'background'", found=repr(spec))
    return names


def build_detection(kind: str, path: str, split: str, *, masks: bool | None = None) -> DetectionDataset:
    """``build_dataset``'s branch for the detection specs (``kind`` before the first colon).

    ``masks`` (COCO): decode instance masks; None takes the spec's ``?masks``.
    """
    spec = f"{kind}:{path}"
    if kind == "voc":
        folder, options = _parse_query(kind, path, ("classes", "train", "test"))
        return build_voc(folder, split, image_set=options.get(split), classes=_names(options, spec))
    if kind == "voc-xml":
        folder, options = _parse_query(kind, path, ("classes",))
        return build_voc_xml(folder, split, classes=_names(options, spec))
    if kind == "coco":
        folder, options = _parse_query(kind, path, ("masks", "keypoints"))
        with_masks = _flag(options, "masks", spec) if masks is None else masks
        if ":" in folder:  # coco:ANNOTATIONS_JSON:IMAGE_DIR
            if "keypoints" in options:
                raise data_error(None, "no ?keypoints with explicit files (name the keypoint json instead)",
                                 found=repr(spec))
            ann_file, _, image_dir = folder.partition(":")
            if not ann_file.endswith(".json") or not image_dir:
                raise data_error(None, "coco:DIR or coco:ANNOTATIONS_JSON:IMAGE_DIR", found=repr(spec))
            return build_coco(*coco_split_files(ann_file, image_dir, split), split, masks=with_masks)
        root = Path(folder).expanduser()
        year_split = "train2017" if split == "train" else "val2017"
        prefix = "person_keypoints" if _flag(options, "keypoints", spec) else "instances"
        return build_coco(root / "annotations" / f"{prefix}_{year_split}.json", root / year_split, split,
                          masks=with_masks)
    raise data_error(None, f"a detection dataset kind among {DETECTION_KINDS}", found=repr(kind))
