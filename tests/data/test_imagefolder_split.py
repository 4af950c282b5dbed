"""imagefolder's train-only layout and its ``?val=N`` held-out split.

References: the files each class folder holds, listed here with ``os.scandir`` (not with canon's
own listing); the exact stratified share ``N * n_c / T`` of every class; ``shared/data/SOURCES.md``
for the real CIFAR-10 folder (50,000 training images, 5,000 per class, ten named classes).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from canon.data import DataError, build_dataset

CLASS_SIZES = {"ant": 23, "bee": 17, "cow": 10, "dog": 1}  # uneven on purpose; one class of a single image
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_tree(root, sizes=CLASS_SIZES):
    """``root/<class>/<i>.png`` tiny RGB images; returns ``{class: sorted file paths}``."""
    rng = np.random.default_rng(0)
    for name, count in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    return listing(root)


def listing(root):
    return {entry.name: sorted(os.path.join(entry.path, f.name) for f in os.scandir(entry.path) if f.is_file())
            for entry in sorted(os.scandir(root), key=lambda e: e.name) if entry.is_dir()}


def paths_by_class(ds):
    out = {name: [] for name in ds.info.class_names}
    for path, label in ds.samples:
        assert path.parent.name == ds.info.class_names[label]  # every label is its folder's class
        out[ds.info.class_names[label]].append(str(path))
    return out


# --- a folder holding only train/ --------------------------------------------------------------

def test_train_only_folder_is_split_like_flat_class_folders(tmp_path):
    files = make_tree(tmp_path / "train")
    for split in ("train", "test"):
        train_only = build_dataset(f"imagefolder:{tmp_path}", split)
        flat = build_dataset(f"imagefolder:{tmp_path / 'train'}", split)
        assert train_only.samples == flat.samples and train_only.info == flat.info
    train, test = (paths_by_class(build_dataset(f"imagefolder:{tmp_path}", s)) for s in ("train", "test"))
    for name, count in CLASS_SIZES.items():  # the documented fixed 80/20: round(0.2 n) per class to test
        assert len(test[name]) == round(0.2 * count) and len(train[name]) == count - round(0.2 * count)
        assert sorted(train[name] + test[name]) == files[name]


def test_train_beside_other_folders_is_refused(tmp_path):
    make_tree(tmp_path / "train")
    (tmp_path / "extra").mkdir()
    with pytest.raises(DataError, match="extra"):
        build_dataset(f"imagefolder:{tmp_path}", "train")


# --- ?val=N -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["flat", "train-only", "train+test"])
def test_held_out_split_sizes_stratification_disjointness_determinism(tmp_path, layout):
    root = {"flat": tmp_path, "train-only": tmp_path / "train", "train+test": tmp_path / "train"}[layout]
    files = make_tree(root)
    if layout == "train+test":  # with ?val the test folder is not read: the held-out part is drawn from train
        make_tree(tmp_path / "test", {"ant": 2, "bee": 2, "cow": 2, "dog": 2})
    total, n_val = sum(CLASS_SIZES.values()), 12
    spec = f"imagefolder:{tmp_path}?val={n_val}"
    train, test = build_dataset(spec, "train"), build_dataset(spec, "test")
    assert len(test) == n_val and len(train) == total - n_val
    assert train.info.class_names == test.info.class_names == sorted(CLASS_SIZES)
    held, kept = paths_by_class(test), paths_by_class(train)
    for name, count in CLASS_SIZES.items():
        assert abs(len(held[name]) - n_val * count / total) < 1  # within one image of the exact share
        assert not set(held[name]) & set(kept[name])  # disjoint
        assert sorted(held[name] + kept[name]) == files[name]  # together: every file, once
    assert torch.equal(torch.bincount(test.targets, minlength=4), torch.tensor([len(held[n]) for n in sorted(held)]))
    # fixed: the same draw on every call, and not touched by torch's global seed
    torch.manual_seed(123)
    again_test, again_train = build_dataset(spec, "test"), build_dataset(spec, "train")
    assert again_test.samples == test.samples and again_train.samples == train.samples
    image, label = test[0]
    assert image.shape == (3, 4, 5) and label == int(test.targets[0])


def test_held_out_split_is_the_same_for_every_layout_of_the_same_files(tmp_path):
    make_tree(tmp_path / "a")
    make_tree(tmp_path / "b" / "train")
    flat = build_dataset(f"imagefolder:{tmp_path / 'a'}?val=9", "test")
    train_only = build_dataset(f"imagefolder:{tmp_path / 'b'}?val=9", "test")
    assert [(p.relative_to(tmp_path / "a"), y) for p, y in flat.samples] == \
        [(p.relative_to(tmp_path / "b" / "train"), y) for p, y in train_only.samples]


@pytest.mark.parametrize("query", ["val=0", "val=", "val=abc", "val=-3", "val=1.5", "vall=5", "val=5&x=1", "5"])
def test_bad_val_option_names_the_expected_form(tmp_path, query):
    make_tree(tmp_path)
    with pytest.raises(DataError, match=r"val=N"):
        build_dataset(f"imagefolder:{tmp_path}?{query}", "train")


def test_val_as_large_as_the_training_set_is_refused(tmp_path):
    make_tree(tmp_path)
    total = sum(CLASS_SIZES.values())
    with pytest.raises(DataError, match=f"1 <= N < {total}"):
        build_dataset(f"imagefolder:{tmp_path}?val={total}", "test")
    assert len(build_dataset(f"imagefolder:{tmp_path}?val={total - 1}", "train")) == 1


def test_data_dir_may_repeat_the_folder_of_a_val_spec(tmp_path):
    make_tree(tmp_path / "train")
    assert len(build_dataset(f"imagefolder:{tmp_path}?val=5", "test", data_dir=tmp_path)) == 5
    with pytest.raises(DataError, match="data-dir"):
        build_dataset(f"imagefolder:{tmp_path}?val=5", "test", data_dir=tmp_path / "train")


# --- the real CIFAR-10 folder (counts only: nothing is decoded but one header) ------------------

def test_cifar10_folder_45k_5k_split(shared_data):
    root = shared_data / "cifar10"
    if not (root / "train").is_dir():
        pytest.skip(f"CIFAR-10 images not found in {root / 'train'}")
    files = listing(root / "train")
    assert list(files) == CIFAR_CLASSES and [len(v) for v in files.values()] == [5000] * 10  # SOURCES.md
    train = build_dataset(f"imagefolder:{root}?val=5000", "train")
    test = build_dataset(f"imagefolder:{root}?val=5000", "test")
    assert len(train) == 45_000 and len(test) == 5_000
    assert torch.bincount(test.targets).tolist() == [500] * 10
    assert torch.bincount(train.targets).tolist() == [4500] * 10
    held, kept = paths_by_class(test), paths_by_class(train)
    for name in CIFAR_CLASSES:
        assert not set(held[name]) & set(kept[name]) and sorted(held[name] + kept[name]) == files[name]
    assert train.info.class_names == CIFAR_CLASSES and train.info.image_size == (32, 32)
    assert build_dataset(f"imagefolder:{root}?val=5000", "test").samples == test.samples
    # without ?val the train-only folder gets the fixed 80/20 split
    assert len(build_dataset(f"imagefolder:{root}", "test")) == 10_000
