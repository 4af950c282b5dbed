"""Selective search against OpenCV-contrib's implementation on real images, and against brute force.

References (independent of canon's code):
    - ``cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`` in fast mode (OpenCV-contrib,
      a C++ implementation of the same paper) on the same raccoon images: the recall of the
      ground-truth boxes at IoU 0.5 and the mean best overlap (MABO, the paper's measure);
    - the paper's similarity formulas written out below over explicit pixel sets of a tiny
      segmentation (np.histogram per region, min-intersection, size and fill terms), and a greedy
      grouping that recomputes every similarity from the pixels of the merged sets at each step;
    - the analytic Gaussian derivative of a sinusoid for the oriented texture responses.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from canon.ops import box_iou
from canon.ops.selective_search import (RegionFeatures, SelectiveSearch, Strategy, colour_histograms,
                                        convert_colour_space, hierarchical_grouping, merge, region_adjacency,
                                        region_boxes, selective_search, similarity, strategies_for_mode,
                                        texture_histograms, texture_responses)

cv2 = pytest.importorskip("cv2")


# ----------------------------------------------------------------------------- a tiny segmentation


def tiny_segmentation():
    """A 10 x 12 label map of 6 regions (blocks and an L shape) and a random 3-channel image."""
    labels = np.zeros((10, 12), dtype=np.int64)
    labels[:, 4:8] = 1
    labels[:, 8:] = 2
    labels[5:, :4] = 3
    labels[7:, 4:8] = 4
    labels[2:4, 9:11] = 5  # an island inside region 2
    rng = np.random.default_rng(0)
    image = rng.random((10, 12, 3))
    image[labels == 1] *= 0.5  # regions differ in colour, so similarities differ
    image[labels == 3] = 0.9 - 0.1 * image[labels == 3]
    return labels, image


def brute_histogram(values: np.ndarray, bins: int) -> np.ndarray:
    """Concatenated per-column np.histogram over [0, 1], L1-normalised over all columns."""
    parts = [np.histogram(values[:, c], bins=bins, range=(0.0, 1.0))[0] for c in range(values.shape[1])]
    counts = np.concatenate(parts).astype(np.float64)
    return counts / counts.sum()


def brute_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.where(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def brute_similarity(mask_i, mask_j, image, responses, which) -> float:
    """The paper's s(r_i, r_j) from the two pixel sets directly."""
    size_im = mask_i.size
    total = 0.0
    if "colour" in which:
        total += np.minimum(brute_histogram(image[mask_i], 25), brute_histogram(image[mask_j], 25)).sum()
    if "texture" in which:
        total += np.minimum(brute_histogram(responses[mask_i], 10), brute_histogram(responses[mask_j], 10)).sum()
    if "size" in which:
        total += 1 - (mask_i.sum() + mask_j.sum()) / size_im
    if "fill" in which:
        x1, y1, x2, y2 = brute_box(mask_i | mask_j)
        total += 1 - ((x2 - x1) * (y2 - y1) - mask_i.sum() - mask_j.sum()) / size_im
    return float(total)


def features_of(labels, image, responses):
    num_regions = int(labels.max()) + 1
    boxes, sizes = region_boxes(labels)
    extra = num_regions - 1
    pad = lambda a: np.concatenate([a, np.zeros((extra,) + a.shape[1:], dtype=a.dtype)])  # noqa: E731
    return RegionFeatures(colour=pad(colour_histograms(image, labels)),
                          texture=pad(texture_histograms(responses, labels)), size=pad(sizes), box=pad(boxes),
                          image_size=labels.size)


def test_histograms_boxes_and_adjacency_equal_brute_force():
    labels, image = tiny_segmentation()
    responses = texture_responses(image)
    assert responses.shape == (10, 12, 24) and responses.min() >= 0 and responses.max() <= 1
    colour = colour_histograms(image, labels)
    texture = texture_histograms(responses, labels)
    boxes, sizes = region_boxes(labels)
    assert colour.shape == (6, 75) and texture.shape == (6, 240)
    for r in range(6):
        mask = labels == r
        np.testing.assert_allclose(colour[r], brute_histogram(image[mask], 25), atol=1e-12)
        np.testing.assert_allclose(texture[r], brute_histogram(responses[mask], 10), atol=1e-12)
        assert tuple(boxes[r]) == brute_box(mask) and sizes[r] == mask.sum()
    # 4-neighbours, found pixel by pixel
    expected = set()
    for y in range(10):
        for x in range(12):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < 10 and x + dx < 12 and labels[y, x] != labels[y + dy, x + dx]:
                    a, b = sorted((int(labels[y, x]), int(labels[y + dy, x + dx])))
                    expected.add((a, b))
    assert region_adjacency(labels) == expected
    assert (2, 5) in expected and (0, 5) not in expected


@pytest.mark.parametrize("which", [("colour", "texture", "size", "fill"), ("texture", "size", "fill"), ("fill",),
                                   ("size",), ("colour",)])
def test_similarities_equal_the_formulas_on_pixel_sets(which):
    labels, image = tiny_segmentation()
    responses = texture_responses(image)
    features = features_of(labels, image, responses)
    for i, j in region_adjacency(labels):
        want = brute_similarity(labels == i, labels == j, image, responses, which)
        assert similarity(features, i, j, which) == pytest.approx(want, abs=1e-12)


def test_merged_histograms_are_those_of_the_union():
    labels, image = tiny_segmentation()
    responses = texture_responses(image)
    features = features_of(labels, image, responses)
    merge(features, 0, 1, 6)  # (|r_i| C_i + |r_j| C_j) / (|r_i| + |r_j|), sizes 20 and 28
    union = (labels == 0) | (labels == 1)
    np.testing.assert_allclose(features.colour[6], brute_histogram(image[union], 25), atol=1e-12)
    np.testing.assert_allclose(features.texture[6], brute_histogram(responses[union], 10), atol=1e-12)
    assert features.size[6] == union.sum() and tuple(features.box[6]) == brute_box(union)


@pytest.mark.parametrize("which", [("colour", "texture", "size", "fill"), ("texture", "size", "fill"),
                                   ("colour", "fill")])
def test_hierarchical_grouping_equals_greedy_brute_force(which):
    """Algorithm 1 on explicit pixel sets: merge the most similar neighbouring pair until one region is left.

    (Size or fill alone tie on this block layout; the combinations here have a unique best pair at every step.)
    """
    labels, image = tiny_segmentation()
    responses = texture_responses(image)
    features = features_of(labels, image, responses)
    merges = hierarchical_grouping(features, 6, region_adjacency(labels), which)

    masks = {r: labels == r for r in range(6)}

    def touching(a, b):
        grown = a.copy()
        grown[1:] |= a[:-1]
        grown[:-1] |= a[1:]
        grown[:, 1:] |= a[:, :-1]
        grown[:, :-1] |= a[:, 1:]
        return bool((grown & b).any())

    expected, next_id = [], 6
    while len(masks) > 1:
        pairs = [(i, j) for i in masks for j in masks if i < j and touching(masks[i], masks[j])]
        scores = {p: brute_similarity(masks[p[0]], masks[p[1]], image, responses, which) for p in pairs}
        i, j = max(pairs, key=lambda p: scores[p])
        if len(pairs) > 1:  # the order is well defined: no tie for the best pair
            assert sorted(scores.values())[-1] - sorted(scores.values())[-2] > 1e-9
        masks[next_id] = masks.pop(i) | masks.pop(j)
        expected.append((i, j))
        next_id += 1
    assert [tuple(sorted(m)) for m in merges] == expected
    assert tuple(features.box[10]) == (0, 0, 12, 10) and features.size[10] == 120  # the top: the whole image


def test_texture_responses_are_rectified_oriented_gaussian_derivatives():
    """For f = sin(ω u), u = x cos α + y sin α: D_θ(f * G_σ) = ω e^{-ω²σ²/2} cos(ω u) cos(θ - α)."""
    alpha, omega = math.radians(30), 2 * math.pi / 16
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float64)
    u = xs * math.cos(alpha) + ys * math.sin(alpha)
    responses = texture_responses(((np.sin(omega * u) + 1) / 2)[..., None])  # [64, 64, 8]
    inner = (slice(8, -8), slice(8, -8))
    # one scale per channel: the largest |cos(θ - α)| over the 8 orientations is cos 15°
    scale = max(abs(math.cos(math.radians(45 * k) - alpha)) for k in range(8))
    for k in range(8):
        theta = math.radians(45 * k)
        want = np.maximum(np.cos(omega * u) * math.cos(theta - alpha), 0) / scale
        np.testing.assert_allclose(responses[..., k][inner], want[inner], atol=2e-3)
    assert not texture_responses(np.full((8, 8, 1), 0.5)).any()  # a flat channel has no texture


def test_colour_spaces_are_in_unit_range():
    rng = np.random.default_rng(1)
    image = rng.random((6, 7, 3))
    for space, channels in (("rgb", 3), ("hsv", 3), ("lab", 3), ("rgi", 3), ("intensity", 1), ("hue", 1)):
        converted = convert_colour_space(image, space)
        assert converted.shape == (6, 7, channels) and converted.min() >= 0 and converted.max() <= 1, space
    r, g, b = image[2, 3]
    np.testing.assert_allclose(convert_colour_space(image, "rgi")[2, 3], [r / (r + g + b), g / (r + g + b),
                                                                          (r + g + b) / 3])
    with pytest.raises(ValueError, match="colour space"):
        convert_colour_space(image, "yuv")


def test_paper_modes_and_strategy_checks():
    assert len(strategies_for_mode("single")) == 1
    fast = strategies_for_mode("fast")
    assert len(fast) == 8 and {s.colour_space for s in fast} == {"hsv", "lab"} and {s.k for s in fast} == {50, 100}
    assert len(strategies_for_mode("quality")) == 80
    with pytest.raises(ValueError, match="mode must be one of"):
        strategies_for_mode("fastest")
    with pytest.raises(ValueError, match="similarities"):
        Strategy("hsv", 100, ("colour", "shape"))
    with pytest.raises(ValueError, match="colour_space"):
        Strategy("cmyk", 100, ("size",))
    with pytest.raises(ValueError, match="k"):
        Strategy("hsv", 0, ("size",))


def test_ranking_is_unique_seeded_and_starts_near_the_top():
    labels, image = tiny_segmentation()
    image = np.kron(image, np.ones((4, 4, 1)))  # 40 x 48
    boxes = selective_search(image, mode="single", max_side=None, seed=0)
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
    assert len({tuple(b) for b in boxes.tolist()}) == len(boxes)  # duplicates removed
    assert [0.0, 0.0, 48.0, 40.0] in boxes.tolist()  # the top of the hierarchy
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    again = selective_search(image, mode="single", max_side=None, seed=0)
    other = selective_search(image, mode="single", max_side=None, seed=1)
    assert torch.equal(boxes, again) and sorted(boxes.tolist()) == sorted(other.tolist())
    # the whole-image box is position 1 of its hierarchy: value RND x 1 puts it in the first few
    assert boxes.tolist().index([0.0, 0.0, 48.0, 40.0]) < len(boxes) // 2 + 1


def test_resizing_maps_boxes_back_and_caps_the_count():
    labels, image = tiny_segmentation()
    image = np.kron(image, np.ones((8, 8, 1)))  # 80 x 96
    boxes = SelectiveSearch(mode="single", max_side=48, max_proposals=5)(torch.from_numpy(image).permute(2, 0, 1))
    assert len(boxes) <= 5 and boxes[:, 2].max() <= 96 and boxes[:, 3].max() <= 80
    full = selective_search(image, mode="single", max_side=48)
    assert [0.0, 0.0, 96.0, 80.0] in full.tolist()


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        selective_search(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        selective_search(torch.rand(3, 8, 8) * 255)
    with pytest.raises(TypeError, match="RGB image"):
        selective_search([[0.0]])
    with pytest.raises(ValueError, match="mode must be one of"):
        SelectiveSearch(mode="slow")
    with pytest.raises(ValueError, match="max_proposals"):
        SelectiveSearch(max_proposals=0)


# ----------------------------------------------------------------------------- real images against OpenCV


def raccoon_test_images(root, count, side):
    """The first ``count`` images of the author's raccoon test split, resized so the longer side is ``side``."""
    from PIL import Image
    from skimage.transform import resize

    rows = list(csv.DictReader(open(root / "splits" / "test_labels.csv")))
    out = []
    for name in sorted({r["filename"] for r in rows})[:count]:
        image = np.asarray(Image.open(root / "images" / name).convert("RGB"))
        scale = side / max(image.shape[:2])
        small = resize(image, (round(image.shape[0] * scale), round(image.shape[1] * scale)), order=1,
                       anti_aliasing=True, preserve_range=True).round().astype(np.uint8)
        boxes = torch.tensor([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows
                              if r["filename"] == name]) * scale
        out.append((small, boxes))
    return out


def opencv_fast(image: np.ndarray) -> torch.Tensor:
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))  # OpenCV wants BGR
    search.switchToSelectiveSearchFast()
    rects = torch.tensor(search.process(), dtype=torch.float32)  # (x, y, w, h)
    return torch.cat([rects[:, :2], rects[:, :2] + rects[:, 2:]], dim=1)


def compare_with_opencv(images, cap=2000):
    ours, theirs = [], []
    for image, gt in images:
        ours += box_iou(gt, selective_search(image, mode="fast", max_side=None)[:cap]).max(1).values.tolist()
        theirs += box_iou(gt, opencv_fast(image)[:cap]).max(1).values.tolist()
    ours, theirs = np.array(ours), np.array(theirs)
    return ours, theirs


def test_recall_on_raccoon_images_matches_opencv(shared_data):
    """Fast mode on 3 test images at 200 px: recall at IoU 0.5 and MABO as good as OpenCV-contrib's."""
    root = shared_data / "raccoon"
    if not root.is_dir():
        pytest.skip(f"raccoon data not found in {root}")
    assert hasattr(cv2, "ximgproc"), "needs opencv-contrib-python-headless (cv2.ximgproc)"
    ours, theirs = compare_with_opencv(raccoon_test_images(root, 3, 200))
    assert (ours >= 0.5).mean() >= (theirs >= 0.5).mean()
    assert ours.mean() >= theirs.mean() - 0.03, (ours.mean(), theirs.mean())


@pytest.mark.slow
def test_recall_on_raccoon_images_matches_opencv_at_500px(shared_data):
    """R-CNN's setting: fast mode, longer side 500, the first 2,000 boxes, 8 test images (10 boxes)."""
    root = shared_data / "raccoon"
    if not root.is_dir():
        pytest.skip(f"raccoon data not found in {root}")
    ours, theirs = compare_with_opencv(raccoon_test_images(root, 8, 500))
    assert (ours >= 0.5).mean() >= (theirs >= 0.5).mean() - 1e-9
    assert ours.mean() >= theirs.mean() - 0.03, (ours.mean(), theirs.mean())
    assert (ours >= 0.5).mean() >= 0.9


def test_proposals_are_memoised_by_content_and_mirrored_for_flipped_images(tmp_path):
    labels, image = tiny_segmentation()
    tensor = torch.from_numpy(np.kron(image, np.ones((4, 4, 1)))).permute(2, 0, 1).float().contiguous()  # 40 x 48
    search = SelectiveSearch(mode="single", max_side=None, cache_dir=str(tmp_path))
    first = search(tensor)
    assert search.searches == 1 and torch.equal(search(tensor), first) and search.searches == 1
    assert len(list(tmp_path.glob("*.npy"))) == 1
    mirrored = search(tensor.flip(-1))  # Fast R-CNN's flipped images: the original's boxes, mirrored
    assert search.searches == 1
    torch.testing.assert_close(mirrored, torch.stack([48 - first[:, 2], first[:, 1], 48 - first[:, 0], first[:, 3]], 1))
    fresh = SelectiveSearch(mode="single", max_side=None, cache_dir=str(tmp_path))  # another run, same folder
    assert torch.equal(fresh(tensor), first) and fresh.searches == 0
    other = SelectiveSearch(mode="single", max_side=None, max_proposals=3, cache_dir=str(tmp_path))
    assert len(other(tensor)) == 3 and other.searches == 1  # another configuration is another key
    direct = selective_search(tensor, mode="single", max_side=None)[:2000]
    assert torch.equal(first, direct)
