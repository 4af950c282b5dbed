"""Segmentation datasets against direct reads of their files (Pillow, pycocotools) and bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from canon.data import DataError, build_dataset

# pycocotools' RLE decoder trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def isbi_dir(shared_data) -> Path:
    path = shared_data / "isbi-membrane"
    if not (path / "train" / "label" / "0.png").is_file():
        pytest.skip(f"ISBI membrane data not found in {path}")
    return path


@pytest.fixture(scope="module")
def coco_dir(shared_data) -> Path:
    path = shared_data / "coco-mini"
    if not (path / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"coco-mini not found in {path}")
    return path


def test_isbi_split_and_classes_match_the_png_files(isbi_dir):
    train = build_dataset(f"isbi-membrane:{isbi_dir}", split="train")
    test = build_dataset(f"isbi-membrane:{isbi_dir}", split="test")
    assert (len(train), len(test)) == (24, 6)
    assert train.info.task == "segmentation" and train.info.class_names == ["cell", "membrane"]
    image, mask = test[0]  # item 0 of the test split is file 24
    raw_image = np.asarray(Image.open(isbi_dir / "train" / "image" / "24.png"))
    raw_mask = np.asarray(Image.open(isbi_dir / "train" / "label" / "24.png"))
    assert image.shape == (1, 512, 512) and mask.dtype == torch.long
    np.testing.assert_allclose(image[0].numpy(), raw_image / 255.0, atol=1e-6)
    np.testing.assert_array_equal(mask.numpy(), (raw_mask == 0).astype(np.int64))  # membrane (0) -> class 1


def test_isbi_normalisation_constants_are_the_train_split_statistics(isbi_dir):
    pixels = np.stack([np.asarray(Image.open(isbi_dir / "train" / "image" / f"{i}.png")) for i in range(24)]) / 255.0
    info = build_dataset(f"isbi-membrane:{isbi_dir}", split="train").info
    assert info.mean[0] == pytest.approx(pixels.mean(), abs=1e-3)
    assert info.std[0] == pytest.approx(pixels.std(), abs=1e-3)


def test_coco_person_mask_equals_the_union_of_person_instances(coco_dir):
    from pycocotools.coco import COCO

    ds = build_dataset(f"coco-person:{coco_dir}", split="test")
    assert ds.info.class_names == ["background", "person"] and len(ds) == 79
    coco = COCO(str(coco_dir / "annotations" / "instances_val2017.json"))
    person = coco.getCatIds(catNms=["person"])
    checked = 0
    for index, image_id in enumerate(sorted(coco.getImgIds())):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=person, iscrowd=None))
        if not anns or any(a["iscrowd"] for a in anns):
            continue
        expected = np.zeros_like(coco.annToMask(anns[0]), dtype=np.int64)
        for a in anns:
            expected = np.maximum(expected, coco.annToMask(a))
        _, mask = ds[index]
        np.testing.assert_array_equal(mask.numpy(), expected)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_coco_seg_all_categories_and_query_form(coco_dir):
    full = build_dataset(f"coco-seg:{coco_dir}", split="train")
    assert full.info.num_classes == 81 and full.info.class_names[1] == "person"
    two = build_dataset(f"coco-seg:{coco_dir}?categories=person,dog", split="train")
    assert two.info.class_names == ["background", "person", "dog"]
    with pytest.raises(DataError, match="unicorn"):
        build_dataset(f"coco-seg:{coco_dir}?categories=unicorn", split="train")


# ------------------------------------------------------------------------------ a fake VOC tree
def test_coco_seg_explicit_annotation_and_image_paths(coco_dir):
    """The issue's form coco-seg:ANNOTATIONS_JSON:IMAGE_DIR reads the same images and masks as
    the folder form; its test split swaps train for val in both names, as COCO names them."""
    spec = (f"coco-seg:{coco_dir}/annotations/instances_train2017.json:{coco_dir}/train2017"
            "?categories=person")
    train, test = build_dataset(spec, split="train"), build_dataset(spec, split="test")
    folder_test = build_dataset(f"coco-person:{coco_dir}", split="test")
    assert (len(train), len(test)) == (80, 79) and test.info.class_names == ["background", "person"]
    assert torch.equal(test[5][1], folder_test[5][1])
    with pytest.raises(DataError, match="nope.json"):
        build_dataset(f"coco-seg:{coco_dir}/nope.json:{coco_dir}/train2017", split="train")


def _palette_png(path: Path, indices: np.ndarray) -> None:
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def _voc_tree(root: Path, masks: dict[str, np.ndarray], image_size=(6, 8)) -> Path:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        Image.fromarray(np.full((*image_size, 3), 120, dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        _palette_png(root / "SegmentationClass" / f"{name}.png", mask)
    names = "\n".join(masks)
    (root / "ImageSets/Segmentation/train.txt").write_text(names + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text(names + "\n")
    return root


def test_voc_masks_are_palette_indices_with_255_kept(tmp_path):
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[1:3, 2:5] = 15  # person
    mask[0, :] = 255  # the VOC object border: ignore
    root = _voc_tree(tmp_path / "voc", {"2007_000001": mask})
    ds = build_dataset(f"voc-seg:{root}", split="test")
    image, target = ds[0]
    assert ds.info.num_classes == 21 and ds.info.class_names[15] == "person" and ds.info.ignore_index == 255
    assert image.shape == (3, 6, 8)
    np.testing.assert_array_equal(target.numpy(), mask.astype(np.int64))


def test_mask_of_another_size_is_a_data_error_naming_the_file(tmp_path):
    root = _voc_tree(tmp_path / "voc", {"a": np.zeros((5, 8), dtype=np.uint8)})
    with pytest.raises(DataError, match=r"a\.png.*\(6, 8\).*\(5, 8\)"):
        build_dataset(f"voc-seg:{root}", split="train")[0]


def test_label_outside_the_classes_is_a_data_error_naming_the_file(tmp_path):
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[2, 2] = 40  # VOC has 21 classes; 40 is neither a class nor 255
    root = _voc_tree(tmp_path / "voc", {"b": mask})
    with pytest.raises(DataError, match=r"b\.png.*\[40\]"):
        build_dataset(f"voc-seg:{root}", split="train")[0]


def test_unreadable_image_is_a_data_error_naming_the_file(tmp_path):
    root = _voc_tree(tmp_path / "voc", {"c": np.zeros((6, 8), dtype=np.uint8)})
    (root / "JPEGImages" / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"c\.jpg"):
        build_dataset(f"voc-seg:{root}", split="train")[0]


def test_missing_folder_and_bad_spec_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="ImageSets"):
        build_dataset(f"voc-seg:{tmp_path}", split="train")
    with pytest.raises(DataError, match="isbi-membrane:DIR"):
        build_dataset("isbi-membrane:", split="train")
    with pytest.raises(DataError, match="train/image"):
        build_dataset(f"isbi-membrane:{tmp_path}", split="train")


def _isbi_tree(root: Path, label: np.ndarray) -> Path:
    for sub in ("train/image", "train/label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(30):
        Image.fromarray(np.full(label.shape, 128, dtype=np.uint8)).save(root / "train" / "image" / f"{i}.png")
        Image.fromarray(label).save(root / "train" / "label" / f"{i}.png")
    return root


def test_isbi_mask_with_grey_values_is_a_data_error_naming_the_file(tmp_path):
    label = np.full((8, 8), 255, dtype=np.uint8)
    label[3, 3] = 77  # neither membrane (0) nor cell (255)
    ds = build_dataset(f"isbi-membrane:{_isbi_tree(tmp_path / 'isbi', label)}", split="train")
    with pytest.raises(DataError, match=r"label/0\.png.*\[77\]"):
        ds[0]


def test_missing_mask_file_is_a_data_error_naming_it(tmp_path):
    root = _voc_tree(tmp_path / "voc", {"d": np.zeros((6, 8), dtype=np.uint8)})
    (root / "SegmentationClass" / "d.png").unlink()
    with pytest.raises(DataError, match=r"d\.png.*no such file"):
        build_dataset(f"voc-seg:{root}", split="train")[0]


def test_rgb_mask_is_a_data_error(tmp_path):
    root = _voc_tree(tmp_path / "voc", {"e": np.zeros((6, 8), dtype=np.uint8)})
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(root / "SegmentationClass" / "e.png")
    with pytest.raises(DataError, match=r"e\.png.*mode 'RGB'"):
        build_dataset(f"voc-seg:{root}", split="train")[0]
