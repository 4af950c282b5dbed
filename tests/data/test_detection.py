"""Detection readers against their files read directly (xml.etree, csv, json, Pillow, pycocotools),
synthetic VOC and COCO folders written here, and bad annotations."""
from __future__ import annotations

import csv
import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from canon.data import DataError, build_dataset
from canon.data.detection import AnnotationWarning, keypoint_flip_permutation

# pycocotools' RLE decoder trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

# The VOC devkit's class order (VOCcode/VOCinit.m), labels 1..20 after the background.
VOC_DEVKIT_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                      "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                      "train", "tvmonitor"]
# torchvision's keypoint flip (references/detection/transforms.py, _flip_coco_person_keypoints).
TORCHVISION_COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


# ------------------------------------------------------------------------------------- a synthetic VOC
def _xml(filename: str, width: int, height: int, objects) -> str:
    parts = [f"<annotation><folder>VOC</folder><filename>{filename}</filename>",
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
                     f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def _write_image(path: Path, width: int, height: int, seed: int, mode: str = "RGB") -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path, format="PNG" if path.suffix == ".png" else "JPEG", quality=95)
    return pixels


# id: (width, height, objects (name, xmin, ymin, xmax, ymax, difficult)); 1-based inclusive VOC pixels
VOC_IMAGES = {
    "000001": (60, 40, [("dog", 1, 1, 30, 20, 0), ("person", 10, 5, 60, 40, 1)]),
    "000002": (50, 50, [("cat", 5, 6, 25, 30, 0)]),
    "000003": (48, 32, []),  # background only
    "000004": (40, 30, [("car", 2, 3, 20, 15, 0), ("bus", 3, 4, 12, 16, 1)]),
}


def _make_voc(root: Path, sets: dict[str, list[str]], images=None) -> Path:
    images = VOC_IMAGES if images is None else images
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n, (image_id, (width, height, objects)) in enumerate(images.items()):
        _write_image(root / "JPEGImages" / f"{image_id}.jpg", width, height, n)
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(f"{image_id}.jpg", width, height, objects))
    for name, ids in sets.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


VOC07_SETS = {"train": ["000001"], "val": ["000002"], "trainval": ["000001", "000002"], "test": ["000003", "000004"]}


def test_voc_image_sets_boxes_labels_and_difficult(tmp_path):
    root = _make_voc(tmp_path / "voc", VOC07_SETS)
    train = build_dataset(f"voc:{root}", split="train")  # test.txt exists: trainval / test
    test = build_dataset(f"voc:{root}", split="test")
    assert [r.image_path.stem for r in train.records] == ["000001", "000002"]
    assert [r.image_path.stem for r in test.records] == ["000003", "000004"]
    assert train.info.class_names == ["background", *VOC_DEVKIT_CLASSES] and train.info.num_classes == 21
    assert train.info.task == "detection"

    image, target = train[0]
    raw = np.asarray(Image.open(root / "JPEGImages" / "000001.jpg").convert("RGB"))
    assert image.shape == (3, 40, 60) and image.dtype == torch.float32
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), raw / 255.0, atol=1e-6)
    # training drops the difficult person; VOC's 1-based inclusive (1, 1, 30, 20) is (0, 0, 30, 20)
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 0.0, 30.0, 20.0]]))
    assert target["labels"].tolist() == [VOC_DEVKIT_CLASSES.index("dog") + 1]
    assert target["labels"].dtype == torch.int64 and target["iscrowd"].tolist() == [0]
    assert target["difficult"].tolist() == [False] and target["area"].tolist() == [600.0]
    assert int(target["image_id"]) == 0

    _, target = test[1]  # the test split keeps the difficult bus, flagged
    assert target["labels"].tolist() == [VOC_DEVKIT_CLASSES.index("car") + 1, VOC_DEVKIT_CLASSES.index("bus") + 1]
    assert target["difficult"].tolist() == [False, True]
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 2.0, 20.0, 15.0], [2.0, 3.0, 12.0, 16.0]]))
    assert test.targets.tolist() == [7, 6]  # labels of every object, for class counts


def test_voc_image_with_no_objects_is_kept_as_background(tmp_path):
    root = _make_voc(tmp_path / "voc", VOC07_SETS)
    image, target = build_dataset(f"voc:{root}", split="test")[0]
    assert image.shape == (3, 32, 48)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_voc_without_test_list_uses_train_and_val_and_options_choose_sets(tmp_path):
    sets = {k: v for k, v in VOC07_SETS.items() if k != "test"}
    root = _make_voc(tmp_path / "voc", sets)
    assert [r.image_path.stem for r in build_dataset(f"voc:{root}", "train").records] == ["000001"]
    assert [r.image_path.stem for r in build_dataset(f"voc:{root}", "test").records] == ["000002"]
    chosen = build_dataset(f"voc:{root}?train=trainval&test=train", "train")
    assert len(chosen) == 2
    custom = build_dataset(f"voc:{root}?classes=dog,person,cat&test=trainval", "test")
    assert custom.info.class_names == ["background", "dog", "person", "cat"]
    assert custom.records[0].labels.tolist() == [1, 2] and custom.records[1].labels.tolist() == [3]


def test_voc_box_outside_or_of_zero_area_is_dropped_with_a_warning_naming_the_file(tmp_path):
    images = {"000001": (40, 30, [("dog", 6, 5, 5, 20, 0),       # xmax < xmin: zero width (xmin == xmax is 1 pixel)
                                  ("cat", 50, 5, 60, 20, 0),     # right of the 40-wide image
                                  ("cow", 30, 20, 45, 35, 0),    # partly outside: clipped
                                  ("bird", 2, 2, 10, 10, 0)])}
    root = _make_voc(tmp_path / "voc", {"trainval": ["000001"], "test": ["000001"]}, images)
    with pytest.warns(AnnotationWarning, match=r"000001\.xml: dropped 2 box") as caught:
        ds = build_dataset(f"voc:{root}", "train")
    assert "object 0 (dog)" in str(caught[0].message) and "object 1 (cat)" in str(caught[0].message)
    record = ds.records[0]
    assert record.labels.tolist() == [VOC_DEVKIT_CLASSES.index("cow") + 1, VOC_DEVKIT_CLASSES.index("bird") + 1]
    assert torch.equal(record.boxes, torch.tensor([[29.0, 19.0, 40.0, 30.0], [1.0, 1.0, 10.0, 10.0]]))


@pytest.mark.parametrize("xml, field", [
    ("<annotation><size><width>10</width>", "well-formed"),
    (_xml("a.jpg", 40, 30, [("dog", "abc", 1, 5, 5, 0)]), "bndbox/xmin"),
    (_xml("a.jpg", 40, 30, [("dog", 1, 1, 5, 5, 0)]).replace("<height>30</height>", ""), "size/height"),
    (_xml("a.jpg", 40, 30, [("unicorn", 1, 1, 5, 5, 0)]), "<name>"),
    (_xml("a.jpg", 40, 30, [("dog", 1, 1, 5, 5, 2)]), "<difficult>"),
    (_xml("a.jpg", 40, 30, [("dog", 1, 1, 5, 5, 0)]).replace("<bndbox>", "<box>").replace("</bndbox>", "</box>"),
     "<bndbox>"),
])
def test_malformed_voc_annotation_is_a_data_error_naming_file_and_field(tmp_path, xml, field):
    root = _make_voc(tmp_path / "voc", {"trainval": ["000002"], "test": ["000002"]})
    (root / "Annotations" / "000002.xml").write_text(xml)
    with pytest.raises(DataError, match="000002.xml") as caught:
        build_dataset(f"voc:{root}", "train")
    assert field in str(caught.value)


def test_voc_missing_files_and_bad_specs_are_data_errors(tmp_path):
    root = _make_voc(tmp_path / "voc", VOC07_SETS)
    with pytest.raises(DataError, match="ImageSets"):
        build_dataset(f"voc:{tmp_path / 'nowhere'}", "train")
    with pytest.raises(DataError, match="options of voc"):
        build_dataset(f"voc:{root}?masks=1", "train")
    with pytest.raises(DataError, match="Did you mean voc"):
        build_dataset("vocc", "train")  # (with a path, build_dataset answers "no path after" first)
    (root / "Annotations" / "000004.xml").unlink()
    with pytest.raises(DataError, match="000004.xml.*no such file"):
        build_dataset(f"voc:{root}", "test")


def test_image_whose_size_differs_from_its_annotation_is_a_data_error(tmp_path):
    root = _make_voc(tmp_path / "voc", VOC07_SETS)
    _write_image(root / "JPEGImages" / "000002.jpg", 30, 30, 0)  # XML says 50 x 50
    ds = build_dataset(f"voc:{root}", "train")
    with pytest.raises(DataError, match=r"000002.xml.*\(50, 50\).*\(30, 30\)"):
        ds[1]


# ------------------------------------------------------------------------------------- raccoon (voc-xml)
@pytest.fixture(scope="module")
def raccoon_dir(shared_data) -> Path:
    path = shared_data / "raccoon"
    if not (path / "splits" / "train_labels.csv").is_file():
        pytest.skip(f"raccoon not found in {path}")
    return path


def test_raccoon_split_counts_and_every_csv_row_agrees_with_the_reader(raccoon_dir):
    for split, csv_name, n_images, n_boxes in (("train", "train_labels.csv", 160, 173),
                                                ("test", "test_labels.csv", 40, 44)):
        ds = build_dataset(f"voc-xml:{raccoon_dir}", split=split)
        assert ds.info.class_names == ["background", "raccoon"] and ds.info.num_classes == 2
        assert len(ds) == n_images and sum(r.num_objects for r in ds.records) == n_boxes
        rows = list(csv.DictReader(open(raccoon_dir / "splits" / csv_name)))
        assert len(rows) == n_boxes
        by_file = {r.image_path.name: r for r in ds.records}
        assert set(by_file) == {row["filename"] for row in rows}
        expected = {name: Counter() for name in by_file}
        for row in rows:
            record = by_file[row["filename"]]
            assert (record.width, record.height) == (int(row["width"]), int(row["height"]))
            assert row["class"] == "raccoon"
            # CSV (like the XML) holds 1-based inclusive pixels
            expected[row["filename"]][(int(row["xmin"]) - 1, int(row["ymin"]) - 1, int(row["xmax"]),
                                       int(row["ymax"]))] += 1
        for name, record in by_file.items():
            assert Counter(tuple(int(v) for v in box) for box in record.boxes.tolist()) == expected[name]
            assert record.labels.tolist() == [1] * record.num_objects
            assert record.difficult.tolist() == [False] * record.num_objects


def test_raccoon_greyscale_images_are_read_as_rgb(raccoon_dir):
    names = {"raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg"}  # SOURCES.md: the 3 greyscale ones
    for split in ("train", "test"):
        ds = build_dataset(f"voc-xml:{raccoon_dir}", split=split)
        for i, record in enumerate(ds.records):
            if record.image_path.name not in names:
                continue
            names.discard(record.image_path.name)
            assert Image.open(record.image_path).mode != "RGB"
            image, _ = ds[i]
            assert image.shape == (3, record.height, record.width)
            assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert not names


def test_raccoon_box_sizes_and_coco_ground_truth(raccoon_dir):
    ds = build_dataset(f"voc-xml:{raccoon_dir}", split="test")
    rows = list(csv.DictReader(open(raccoon_dir / "splits" / "test_labels.csv")))
    widths = sorted((int(r["xmax"]) - int(r["xmin"]) + 1) / int(r["width"]) for r in rows)
    assert np.allclose(sorted(ds.box_sizes(relative=True)[:, 0].tolist()), widths, atol=1e-6)
    gt = ds.to_coco()
    assert len(gt["images"]) == 40 and len(gt["annotations"]) == 44
    assert gt["categories"] == [{"id": 1, "name": "raccoon"}]
    first = rows[0]
    file_of = {image["id"]: image["file_name"] for image in gt["images"]}
    ann = next(a for a in gt["annotations"] if file_of[a["image_id"]] == first["filename"])
    assert ann["bbox"] == [int(first["xmin"]) - 1, int(first["ymin"]) - 1,
                           int(first["xmax"]) - int(first["xmin"]) + 1, int(first["ymax"]) - int(first["ymin"]) + 1]


def test_voc_xml_needs_its_split_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DataError, match="splits"):
        build_dataset(f"voc-xml:{tmp_path}", "train")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.csv").write_text("name,xmin\nx.jpg,1\n")
    with pytest.raises(DataError, match="'filename' column"):
        build_dataset(f"voc-xml:{tmp_path}", "train")
    (tmp_path / "splits" / "train.csv").write_text("filename\nx.jpg\n")
    with pytest.raises(DataError, match=r"x\.xml.*no such file"):
        build_dataset(f"voc-xml:{tmp_path}", "train")


# ------------------------------------------------------------------------------------- COCO
@pytest.fixture(scope="module")
def coco_dir(shared_data) -> Path:
    path = shared_data / "coco-mini"
    if not (path / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"coco-mini not found in {path}")
    return path


@pytest.mark.parametrize("split, n_images, n_anns, n_crowd", [("train", 80, 739, 8), ("test", 79, 624, 5)])
def test_coco_mini_counts_boxes_and_category_mapping(coco_dir, split, n_images, n_anns, n_crowd):
    ds = build_dataset(f"coco:{coco_dir}", split=split)
    data = json.loads((coco_dir / "annotations" / f"instances_{'train' if split == 'train' else 'val'}2017.json")
                      .read_text())
    assert len(ds) == n_images and sum(r.num_objects for r in ds.records) == n_anns
    assert sum(int(r.iscrowd.sum()) for r in ds.records) == n_crowd
    assert ds.info.num_classes == 81 and ds.info.class_names[1] == "person"
    cats = sorted(data["categories"], key=lambda c: c["id"])
    assert list(ds.info.category_ids) == [0] + [c["id"] for c in cats]
    anns = {a["id"]: a for a in data["annotations"]}
    for record in ds.records:
        for j, ann_id in enumerate(record.annotation_ids):
            ann = anns[ann_id]
            x, y, w, h = ann["bbox"]
            assert record.boxes[j].tolist() == pytest.approx([x, y, x + w, y + h], abs=1e-3)
            assert ds.info.category_ids[int(record.labels[j])] == ann["category_id"]
            assert int(record.iscrowd[j]) == ann["iscrowd"] and float(record.area[j]) == pytest.approx(ann["area"])
            assert record.image_id == ann["image_id"]


def test_coco_masks_equal_pycocotools_ann_to_mask(coco_dir):
    from pycocotools.coco import COCO

    ann_file = coco_dir / "annotations" / "instances_val2017.json"
    ds = build_dataset(f"coco:{coco_dir}?masks", split="test")
    coco = COCO(str(ann_file))
    crowd_image = next(i for i, r in enumerate(ds.records) if r.iscrowd.any())
    for i in (0, 1, crowd_image):
        image, target = ds[i]
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(target["labels"]), *image.shape[1:])
        for j, ann_id in enumerate(ds.records[i].annotation_ids):
            expected = coco.annToMask(coco.loadAnns([ann_id])[0])
            assert np.array_equal(masks[j].numpy(), expected)
    plain = build_dataset(f"coco:{coco_dir}", split="test")
    assert "masks" not in plain[0][1] and "masks" in plain.with_masks()[0][1]
    pickle.loads(pickle.dumps(ds))[0]  # DataLoader workers get a copy


def test_coco_keypoints_with_their_names_and_flip(coco_dir, shared_data):
    kp_dir = shared_data / "coco-keypoints"
    spec = f"coco:{kp_dir / 'person_keypoints_train2017.json'}:{coco_dir / 'train2017'}"
    ds = build_dataset(spec, split="train")
    data = json.loads((kp_dir / "person_keypoints_train2017.json").read_text())
    assert ds.info.class_names == ["background", "person"] and ds.info.name == "coco-keypoints"
    assert list(ds.info.keypoint_names) == data["categories"][0]["keypoints"]
    assert list(ds.info.keypoint_flip) == TORCHVISION_COCO_FLIP
    assert list(keypoint_flip_permutation(data["categories"][0]["keypoints"])) == TORCHVISION_COCO_FLIP
    assert (0, 1) in ds.info.skeleton or (1, 0) in ds.info.skeleton  # COCO's 1-based [1, 2] -> 0-based
    assert len(ds) == 80 and sum(r.num_objects for r in ds.records) == 172
    assert sum(int((r.keypoints[..., 2] > 0).any(1).sum()) for r in ds.records) == 86  # num_keypoints > 0
    anns = {a["id"]: a for a in data["annotations"]}
    for record in ds.records:
        assert record.keypoints.shape == (record.num_objects, 17, 3)
        for j, ann_id in enumerate(record.annotation_ids):
            assert record.keypoints[j].flatten().tolist() == anns[ann_id]["keypoints"]
            assert int((record.keypoints[j, :, 2] > 0).sum()) == anns[ann_id]["num_keypoints"]
    _, target = ds[next(i for i, r in enumerate(ds.records) if r.num_objects)]
    assert target["keypoints"].dtype == torch.float32
    same = build_dataset(f"coco:{coco_dir}?keypoints", split="train")  # the DIR form, same file content
    assert [r.annotation_ids for r in same.records] == [r.annotation_ids for r in ds.records]


def test_coco_to_coco_keeps_the_files_ground_truth(coco_dir):
    ds = build_dataset(f"coco:{coco_dir}", split="test")
    data = json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())
    gt = ds.to_coco()
    assert sorted(i["id"] for i in gt["images"]) == sorted(i["id"] for i in data["images"])
    assert sorted(c["id"] for c in gt["categories"]) == sorted(c["id"] for c in data["categories"])
    key = lambda a: (a["image_id"], a["category_id"], round(a["bbox"][0], 2), round(a["bbox"][1], 2))  # noqa: E731
    ours = sorted(gt["annotations"], key=key)
    theirs = sorted(data["annotations"], key=key)
    for a, b in zip(ours, theirs):
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3) and a["iscrowd"] == b["iscrowd"]
        assert a["segmentation"] == b["segmentation"]
    assert len(ours) == len(theirs)


def _write_coco(root: Path, annotations, images=None, categories=None, keypoints=False) -> Path:
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                        {"id": 2, "file_name": "b.png", "height": 20, "width": 30}]
    for n, meta in enumerate(images):
        _write_image(root / "imgs" / meta["file_name"], meta["width"], meta["height"], n)
    categories = categories or [{"id": 5, "name": "cup"}, {"id": 2, "name": "dog"}]
    if keypoints:
        for c in categories:
            c["keypoints"] = ["nose", "left_eye", "right_eye"]
            c["skeleton"] = [[1, 2], [1, 3]]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(i, image_id=1, category_id=5, bbox=(1, 2, 10, 8), **extra):
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": list(bbox), "area": 80.0,
            "iscrowd": 0, **extra}


def test_coco_synthetic_labels_by_category_id_and_empty_image_kept(tmp_path):
    path = _write_coco(tmp_path, [_ann(1, category_id=5), _ann(2, category_id=2)])
    ds = build_dataset(f"coco:{path}:{tmp_path / 'imgs'}", "train")
    assert ds.info.class_names == ["background", "dog", "cup"]  # sorted by category id: 2, 5
    assert ds.info.category_ids == (0, 2, 5)
    image, target = ds[0]
    assert target["labels"].tolist() == [2, 1] and image.shape == (3, 20, 30)
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 2.0, 11.0, 10.0]] * 2))
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and int(empty["image_id"]) == 2


def test_coco_zero_area_box_is_dropped_with_a_warning(tmp_path):
    path = _write_coco(tmp_path, [_ann(1, bbox=(1, 2, 0, 8)), _ann(2, bbox=(40, 2, 5, 5)), _ann(3)])
    with pytest.warns(AnnotationWarning, match=r"ann\.json: dropped 2 box.*annotation id 1.*annotation id 2"):
        ds = build_dataset(f"coco:{path}:{tmp_path / 'imgs'}", "train")
    assert ds.records[0].annotation_ids == (3,)


@pytest.mark.parametrize("annotation, field", [
    ({k: v for k, v in _ann(1).items() if k != "bbox"}, "'bbox'"),
    (_ann(1, bbox=(1, 2, 3)), "'bbox'"),
    (_ann(1, bbox=(1, 2, "x", 4)), "'bbox'"),
    (_ann(1, category_id=7), "'category_id'"),
    (_ann(1, image_id=9), "'image_id'"),
    (_ann(1, iscrowd=3), "'iscrowd'"),
    (_ann(1, segmentation="nope"), "'segmentation'"),
    (_ann(1, area=-1), "'area'"),
])
def test_malformed_coco_annotation_is_a_data_error_naming_file_and_field(tmp_path, annotation, field):
    path = _write_coco(tmp_path, [annotation])
    with pytest.raises(DataError, match="ann.json") as caught:
        build_dataset(f"coco:{path}:{tmp_path / 'imgs'}", "train")
    assert field in str(caught.value)


def test_coco_keypoints_of_the_wrong_length_are_a_data_error(tmp_path):
    path = _write_coco(tmp_path, [_ann(1, keypoints=[1, 2, 2, 3, 4, 2])], keypoints=True)
    with pytest.raises(DataError, match="'keypoints' of annotation id 1 to be a list of 9 numbers"):
        build_dataset(f"coco:{path}:{tmp_path / 'imgs'}", "train")
    path = _write_coco(tmp_path, [_ann(1, keypoints=[3, 4, 2, 5, 4, 1, 0, 0, 0])], keypoints=True)
    ds = build_dataset(f"coco:{path}:{tmp_path / 'imgs'}", "train")
    assert ds.info.keypoint_flip == (0, 2, 1)
    assert ds[0][1]["keypoints"].tolist() == [[[3.0, 4.0, 2.0], [5.0, 4.0, 1.0], [0.0, 0.0, 0.0]]]


def test_coco_bad_files_and_specs(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        build_dataset(f"coco:{tmp_path}", "train")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json.*COCO annotation json"):
        build_dataset(f"coco:{tmp_path / 'bad.json'}:{tmp_path}", "train")
    (tmp_path / "bad.json").write_text(json.dumps({"images": [], "annotations": {}}))
    with pytest.raises(DataError, match="'annotations'"):
        build_dataset(f"coco:{tmp_path / 'bad.json'}:{tmp_path}", "train")
    with pytest.raises(DataError, match="no \\?keypoints with explicit files"):
        build_dataset(f"coco:{tmp_path / 'bad.json'}:{tmp_path}?keypoints", "train")
    with pytest.raises(DataError, match="\\?masks=1"):
        build_dataset(f"coco:{tmp_path}?masks=maybe", "train")
