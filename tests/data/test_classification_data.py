"""Classification data: each reader checked against an independent source of truth.

References: scikit-learn's own digits array, the label histograms and decompressed md5s that
``shared/data/SOURCES.md`` publishes for real MNIST, IDX/pickle/PNG files written here by hand
with ``struct``/``pickle``/Pillow, and the formulas for the transforms and class weights.
"""
import dataclasses
import gzip
import hashlib
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from canon.data import (
    DataError, SubsetDataset, TransformedDataset, balanced_sampler, build_dataset, class_weights, stratified_subset,
)
from canon.data import transforms as T
from canon.data.cifar import load_cifar_batch
from canon.data.mnist import SOURCES, read_idx

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # SOURCES.md
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def write_idx(path, array, compress=False):
    """An IDX file from its published definition: 0, 0, type 0x08, ndim, big-endian dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


# --- digits -----------------------------------------------------------------------------------

def test_digits_split_and_labels_follow_sklearn():
    from sklearn.datasets import load_digits
    bunch = load_digits()
    train, test = build_dataset("digits", "train"), build_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.info.image_size == (32, 32) and train.info.in_chans == 1
    image, label = test[0]
    assert image.shape == (1, 32, 32) and 0.0 <= image.min() and image.max() <= 1.0
    # every test label appears in sklearn's targets with the same class histogram overall
    hist = torch.bincount(torch.cat([train.targets, test.targets]), minlength=10)
    assert hist.tolist() == np.bincount(bunch.target, minlength=10).tolist()
    # the fixed split is fixed: building again gives identical data
    again = build_dataset("digits", "test")
    assert torch.equal(again.targets, test.targets) and torch.equal(again[5][0], test[5][0])
    # images are the 8x8 originals upscaled: pooling back down recovers them closely
    ink = F.adaptive_avg_pool2d(train.images.float() / 255, 8).flatten(1)
    originals = torch.from_numpy(bunch.images.reshape(1797, 64) / 16.0).float()
    nearest = torch.cdist(ink[:20], originals).argmin(1)
    assert (torch.from_numpy(bunch.target)[nearest] == train.targets[:20]).all()


def test_unknown_dataset_suggests_the_closest_name():
    with pytest.raises(DataError, match="mnist"):
        build_dataset("mnits")
    with pytest.raises(DataError, match="split"):
        build_dataset("digits", split="validation")


# --- MNIST, real files ------------------------------------------------------------------------

def test_real_mnist_counts_and_label_histograms(mnist_dir):
    train = build_dataset("mnist", "train", data_dir=mnist_dir)
    test = build_dataset("mnist", "test", data_dir=mnist_dir)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.targets, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.targets, minlength=10).tolist() == MNIST_TEST_COUNTS
    # pixels equal a direct parse of the decompressed file (header is 16 bytes)
    raw = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.frombuffer(raw[16:16 + 784], dtype=np.uint8).reshape(28, 28)
    assert torch.equal(test.images[0, 0], torch.from_numpy(first.copy()))
    assert hashlib.md5(raw).hexdigest() == SOURCES["mnist"].md5["t10k-images-idx3-ubyte"][1]


def test_mnist_download_through_a_file_mirror(mnist_dir, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in mnist_dir.glob("t10k-*.gz"):
        shutil.copy(f, mirror / f.name)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CANON_DATA_DIR", str(cache))
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(
        SOURCES["mnist"], mirrors=("file:///nonexistent/", mirror.as_uri() + "/")))
    test = build_dataset("mnist", "test")  # first mirror fails, second passes the content md5
    assert len(test) == 10000 and (cache / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()

    # a mirror serving different bytes is rejected, and nothing is left in the cache
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in mirror.iterdir():
        (bad / f.name).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"abc"))
    monkeypatch.setenv("CANON_DATA_DIR", str(tmp_path / "cache2"))
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(SOURCES["mnist"], mirrors=(bad.as_uri() + "/",)))
    with pytest.raises(DataError, match="md5"):
        build_dataset("mnist", "test")
    assert not list((tmp_path / "cache2" / "mnist").glob("*.gz"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        build_dataset("mnist", "train", download=False)  # not in the cache, download refused


# --- IDX reader on hand-written files -----------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_and_mnist_folder(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 6), dtype=np.uint8)
    labels = np.array([0, 1, 2, 2, 1, 0, 2], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    ds = build_dataset(f"mnist-folder:{tmp_path}", "train")
    assert ds.info.num_classes == 3 and ds.info.image_size == (5, 6)
    assert torch.equal(ds.targets, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(ds[3][0], torch.from_numpy(images[3]).float().unsqueeze(0) / 255)


def test_truncated_and_wrong_magic_files_name_the_file(tmp_path):
    good = write_idx(tmp_path / "x.gz", np.zeros((4, 28, 28)), compress=True)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="truncated.gz"):
        read_idx(truncated)
    wrong = tmp_path / "wrong-magic"
    wrong.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"ab")
    with pytest.raises(DataError, match="wrong-magic"):
        read_idx(wrong)
    short = tmp_path / "short-data"
    short.write_bytes(struct.pack(">BBBB", 0, 0, 8, 1) + struct.pack(">I", 100) + b"abc")
    with pytest.raises(DataError, match="short-data"):
        read_idx(short)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        build_dataset(f"mnist-folder:{tmp_path / 'missing'}", "train")


# --- CIFAR-10 batches -------------------------------------------------------------------------

def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"labels": labels, b"data": data}, f, protocol=2)
    return data, labels


def test_cifar_batch_layout_and_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data, labels = _cifar_batch(folder / "test_batch", 6, 0)
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 4, i)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, f, protocol=2)
    images, targets = load_cifar_batch(folder / "test_batch")
    # the documented row layout: 1024 red, then 1024 green, then 1024 blue values, row-major 32x32
    assert torch.equal(images[2, 1], torch.from_numpy(data[2, 1024:2048].reshape(32, 32)))
    assert targets.tolist() == labels
    train = build_dataset("cifar10", "train", data_dir=tmp_path)
    assert len(train) == 20 and train.info.class_names[0] == "airplane" and train[0][0].shape == (3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_a_pickle_that_calls_code(tmp_path, capsys):
    path = tmp_path / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({"data": _Evil(), "labels": [0]}, f)
    with pytest.raises(DataError, match="refusing"):
        load_cifar_batch(path)
    assert "pwned" not in capsys.readouterr().out
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DataError, match="test_batch"):
        load_cifar_batch(path)


# --- image folders ----------------------------------------------------------------------------

def test_imagefolder_reads_classes_and_names_a_corrupt_file(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(d / f"{i}.png")
    ds = build_dataset(f"imagefolder:{tmp_path}", "test")
    assert ds.info.class_names == ["cat", "dog"] and len(ds) == 6
    image, label = ds[4]
    expected = np.asarray(Image.open(tmp_path / "test" / "dog" / "1.png"), dtype=np.float32) / 255
    assert label == 1 and torch.allclose(image, torch.from_numpy(expected).permute(2, 0, 1))
    (tmp_path / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = build_dataset(f"imagefolder:{tmp_path}", "test")
    with pytest.raises(DataError, match="broken.png"):
        [ds[i] for i in range(len(ds))]


# --- transforms ---------------------------------------------------------------------------------

def test_transforms_against_their_definitions():
    img = torch.rand(3, 8, 10)
    assert torch.equal(T.RandomHorizontalFlip(p=1.0)(img), img.flip(-1))
    assert torch.equal(T.RandomHorizontalFlip(p=0.0)(img), img)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    expected = (img - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(T.Normalize(mean, std)(img), expected)
    resized = T.Resize((16, 20))(img)
    assert resized.shape == (3, 16, 20)
    # a random crop with padding is a window of the zero-padded image
    torch.manual_seed(0)
    out = T.RandomCrop((8, 10), padding=2)(img)
    padded = F.pad(img, (2, 2, 2, 2))
    windows = [padded[:, i:i + 8, j:j + 10] for i in range(5) for j in range(5)]
    assert any(torch.equal(out, w) for w in windows)
    # seeded: the same seed gives the same crop
    torch.manual_seed(0)
    assert torch.equal(T.RandomCrop((8, 10), padding=2)(img), out)
    with pytest.raises(ValueError, match="3"):
        T.Normalize(mean, std)(torch.rand(1, 8, 8))


def test_default_transforms_never_flip_digits():
    info = build_dataset("digits", "test").info
    steps = T.default_transforms(info, (32, 32), train=True).transforms
    assert not any(isinstance(s, T.RandomHorizontalFlip) for s in steps)
    assert any(isinstance(s, T.RandomCrop) for s in steps)
    eval_steps = T.default_transforms(info, (28, 28), train=False).transforms
    assert [type(s) for s in eval_steps] == [T.Resize, T.Normalize]
    ds = TransformedDataset(build_dataset("digits", "test"), T.default_transforms(info, (28, 28), False))
    assert ds[0][0].shape == (1, 28, 28) and ds.info is not None and len(ds.targets) == 360


# --- class imbalance ----------------------------------------------------------------------------

def test_class_weights_follow_the_formulas():
    targets = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    inverse = class_weights(targets, 3, "inverse")
    assert torch.allclose(inverse, torch.tensor([100 / (3 * 90), 100 / (3 * 9), 100 / 3]))
    beta = 0.99
    raw = np.array([(1 - beta) / (1 - beta ** n) for n in (90, 9, 1)])
    expected = raw / raw.sum() * 3
    assert np.allclose(class_weights(targets, 3, "effective", beta).numpy(), expected, rtol=1e-6)
    # beta -> 0 gives equal weights: the effective number of every class is 1
    assert torch.allclose(class_weights(targets, 3, "effective", 0.0), torch.ones(3))
    with pytest.raises(ValueError, match="method"):
        class_weights(targets, 3, "median")


def test_balanced_sampler_balances_the_classes():
    targets = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    g = torch.Generator().manual_seed(0)
    drawn = targets[list(balanced_sampler(targets, num_samples=30000, generator=g))]
    share = torch.bincount(drawn, minlength=3).double() / 30000
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)


def test_stratified_subset_keeps_class_shares_as_sklearn_does():
    from sklearn.model_selection import StratifiedShuffleSplit

    # MNIST's training labels (every class a different size, so no two remainders tie: scikit-learn
    # breaks ties at random), shuffled.
    counts = torch.tensor(MNIST_TRAIN_COUNTS)
    order = torch.randperm(60000, generator=torch.Generator().manual_seed(0))
    targets = torch.repeat_interleave(torch.arange(10), counts)[order]
    for size in (10, 97, 6000, 12345):
        picked = stratified_subset(targets, size, seed=3)
        assert len(picked) == size and len(set(picked.tolist())) == size
        assert torch.equal(picked, picked.sort().values) and 0 <= int(picked.min()) and int(picked.max()) < len(targets)
        # scikit-learn's stratified split allots a class floor(size * share), then the largest remainders.
        train_idx, _ = next(StratifiedShuffleSplit(n_splits=1, train_size=size, random_state=0).split(
            np.zeros(len(targets)), targets.numpy()))
        expected = np.bincount(targets.numpy()[train_idx], minlength=10)
        assert np.bincount(targets[picked].numpy(), minlength=10).tolist() == expected.tolist(), size
    assert torch.equal(stratified_subset(targets, 500, seed=3), stratified_subset(targets, 500, seed=3))
    assert not torch.equal(stratified_subset(targets, 500, seed=3), stratified_subset(targets, 500, seed=4))
    assert torch.equal(stratified_subset(targets, len(targets)), torch.arange(len(targets)))
    for bad in (0, len(targets) + 1, 2.5, True):
        with pytest.raises(ValueError, match="subset size must be an int in 1..60000"):
            stratified_subset(targets, bad)


def test_subset_dataset_serves_the_chosen_samples_and_their_labels():
    ds = build_dataset("digits", split="test")
    indices = torch.tensor([5, 0, 17])
    sub = SubsetDataset(ds, indices)
    assert len(sub) == 3 and sub.info == ds.info
    assert torch.equal(sub.targets, ds.targets[indices])
    for i, j in enumerate(indices.tolist()):
        assert torch.equal(sub[i][0], ds[j][0]) and sub[i][1] == ds[j][1]
    with pytest.raises(ValueError, match=f"0..{len(ds) - 1}"):
        SubsetDataset(ds, [0, len(ds)])
