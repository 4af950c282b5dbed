"""Detection transforms move boxes, masks and keypoints with the pixels: every geometric check
re-measures the objects from a painted image; colour steps are checked against Pillow and colorsys."""
from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

from canon.data import detection_transforms as DT
from canon.data.detection import DetectionInfo

# torchvision's keypoint flip for COCO's 17 person keypoints (references/detection/transforms.py)
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def _scene(height=48, width=64, boxes=((4, 6, 20, 30), (30, 10, 60, 24), (10, 34, 26, 46)), keypoints=None):
    """An image whose channel 0 paints each box region and channel 2 marks each keypoint's pixel
    with its index; the target holds the same boxes (continuous xyxy), their masks, and keypoints
    at pixel centres."""
    image = torch.zeros(3, height, width)
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = 1
        image[0, y1:y2, x1:x2] = 1.0
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.arange(1, len(boxes) + 1), "image_id": torch.tensor(7),
              "area": torch.tensor([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes], dtype=torch.float32),
              "iscrowd": torch.zeros(len(boxes), dtype=torch.int64), "masks": masks}
    if keypoints is not None:  # keypoints[i][k] = (px, py) pixel, or None for "not labelled"
        kp = torch.zeros(len(boxes), len(keypoints[0]), 3)
        for i, row in enumerate(keypoints):
            for k, pixel in enumerate(row):
                if pixel is not None:
                    px, py = pixel
                    kp[i, k] = torch.tensor([px + 0.5, py + 0.5, 2.0])
                    image[2, py, px] = (1 + k + 17 * i) / 64.0
        target["keypoints"] = kp
    return image, target


def _measure(mask: torch.Tensor) -> list[float]:
    """The continuous xyxy box of a mask's non-zero pixels."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _keypoint_pixels(image: torch.Tensor) -> dict[int, tuple[int, int]]:
    """Channel 2's marked pixels: marker code -> (x, y)."""
    ys, xs = torch.nonzero(image[2] > 0, as_tuple=True)
    return {int(round(float(image[2, y, x]) * 64)): (int(x), int(y)) for y, x in zip(ys, xs)}


def _coco_keypoints(width: int, height: int, n: int = 2, seed: int = 0):
    """n people with 17 keypoints at distinct random pixels, a few unlabelled."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randperm(width * height, generator=gen)[:n * 17]
    rows = []
    for i in range(n):
        row = [(int(c) % width, int(c) // width) for c in cells[i * 17:(i + 1) * 17]]
        row[3] = None  # left_ear not labelled
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- flip
def test_hflip_moves_boxes_masks_and_keypoints_with_the_pixels_and_swaps_left_right():
    image, target = _scene(keypoints=_coco_keypoints(64, 48))
    before = _keypoint_pixels(image)
    flipped, out = DT.hflip(image, target, COCO_FLIP)
    for i in range(3):
        assert _measure(out["masks"][i]) == out["boxes"][i].tolist()  # masks and boxes agree
    painted = torch.nonzero(flipped[0] > 0)
    assert painted.shape[0] == int(image[0].sum())  # the painted area moved, it did not change
    assert torch.equal(out["masks"].flip(-1), target["masks"])
    after = _keypoint_pixels(flipped)
    for i in range(2):
        for k in range(17):
            source = COCO_FLIP[k]  # keypoint k of the flipped person is keypoint flip[k] of the original
            code = 1 + source + 17 * i
            if source == 3:  # left_ear was not labelled: right_ear of the flipped person is (0, 0, 0)
                assert out["keypoints"][i, k].tolist() == [0.0, 0.0, 0.0]
                continue
            x, y = after[code]
            assert out["keypoints"][i, k].tolist() == [x + 0.5, y + 0.5, 2.0]
            assert before[code] == (63 - x, y)
    twice = DT.hflip(*DT.hflip(image, target, COCO_FLIP), COCO_FLIP)
    assert torch.equal(twice[0], image) and torch.equal(twice[1]["boxes"], target["boxes"])
    assert torch.equal(twice[1]["keypoints"], target["keypoints"])


def test_hflip_names_the_missing_keypoint_permutation():
    image, target = _scene(keypoints=_coco_keypoints(64, 48))
    with pytest.raises(ValueError, match="keypoint_flip"):
        DT.hflip(image, target)


# ------------------------------------------------------------------------------------- resize
def test_resize_by_whole_factors_keeps_boxes_exactly_on_the_painted_pixels():
    image, target = _scene(keypoints=_coco_keypoints(64, 48, n=3))
    resized, out = DT.resize(image, target, (96, 192))  # x2 down, x3 across
    for i in range(3):
        assert _measure(out["masks"][i]) == out["boxes"][i].tolist()
    assert out["area"].tolist() == [a * 6 for a in target["area"].tolist()]
    # each keypoint's pixel becomes a 3 x 2 block; the keypoint sits at the block's centre
    for i in range(3):
        for k in range(17):
            if target["keypoints"][i, k, 2] == 0:
                continue
            px, py = (target["keypoints"][i, k, :2] - 0.5).long().tolist()
            assert out["keypoints"][i, k].tolist() == [px * 3 + 1.5, py * 2 + 1.0, 2.0]


def test_resize_to_any_size_keeps_masks_within_a_pixel_of_the_boxes():
    image, target = _scene(50, 70, boxes=((3, 5, 41, 29), (22, 31, 69, 50)))
    for size in ((37, 53), (81, 29), (50, 140)):
        resized, out = DT.resize(image, target, size)
        assert resized.shape == (3, *size) and out["masks"].shape == (2, *size)
        assert set(out["masks"].unique().tolist()) <= {0, 1}
        for i in range(2):
            assert np.allclose(_measure(out["masks"][i]), out["boxes"][i].tolist(), atol=1.0)
            # bilinear pixels more than half painted lie in the box too (within a pixel)
            region = F.interpolate(target["masks"][i][None, None].float(), size=size, mode="bilinear",
                                   align_corners=False)[0, 0] > 0.5
            assert np.allclose(_measure(region), out["boxes"][i].tolist(), atol=1.0)


@pytest.mark.parametrize("shape, min_size, max_size", [((480, 640), 800, 1333), ((375, 500), 600, 1000),
                                                       ((200, 1000), 800, 1333), ((333, 333), 320, 320),
                                                       ((417, 650), 512, 683)])
def test_min_max_size_is_torchvisions_rule_and_interpolates_output_size(shape, min_size, max_size):
    height, width = shape
    # GeneralizedRCNNTransform: scale = min_size / short; if long * scale > max_size: scale = max_size / long
    scale = min_size / min(shape)
    if max(shape) * scale > max_size:
        scale = max_size / max(shape)
    expected = F.interpolate(torch.zeros(1, 1, height, width), scale_factor=scale, mode="bilinear",
                             recompute_scale_factor=True, align_corners=False).shape[-2:]
    assert DT.min_max_size(height, width, min_size, max_size) == tuple(expected)
    image, target = _scene(height, width, boxes=((1, 2, 30, 40),))
    resized, out = DT.resize_min_max(image, target, min_size, max_size)
    assert tuple(resized.shape[-2:]) == tuple(expected)
    ratio_h, ratio_w = expected[0] / height, expected[1] / width  # torchvision's resize_boxes ratios
    assert out["boxes"][0].tolist() == pytest.approx([1 * ratio_w, 2 * ratio_h, 30 * ratio_w, 40 * ratio_h])


# ------------------------------------------------------------------------------------- crop
def test_crop_shifts_clips_and_drops_boxes_with_their_masks_and_keypoints():
    image, target = _scene(keypoints=_coco_keypoints(64, 48, n=3, seed=1))
    cropped, out = DT.crop(image, target, top=8, left=10, height=30, width=40)
    # box 0 (4, 6, 20, 30) -> clipped (0, 0, 10, 22); box 1 (30, 10, 60, 24) -> (20, 2, 40, 16);
    # box 2 (10, 34, 26, 46) -> (0, 26, 16, 30)
    assert out["boxes"].tolist() == [[0, 0, 10, 22], [20, 2, 40, 16], [0, 26, 16, 30]]
    for i in range(3):
        assert _measure(out["masks"][i]) == out["boxes"][i].tolist()
    assert out["area"].tolist() == out["masks"].flatten(1).sum(1).float().tolist()
    markers = _keypoint_pixels(cropped)
    for i in range(3):
        for k in range(17):
            code = 1 + k + 17 * i
            if code in markers:
                x, y = markers[code]
                assert out["keypoints"][i, k].tolist() == [x + 0.5, y + 0.5, 2.0]
            else:  # outside the window or unlabelled
                assert out["keypoints"][i, k].tolist() == [0.0, 0.0, 0.0]
    _, gone = DT.crop(image, target, top=0, left=40, height=10, width=24)  # above box 1, right of box 0
    assert gone["boxes"].shape == (0, 4) and gone["masks"].shape == (0, 10, 24)
    assert gone["keypoints"].shape == (0, 17, 3) and gone["labels"].shape == (0,)


def test_random_crop_keep_boxes_keeps_every_box_whole():
    torch.manual_seed(0)
    image, target = _scene(80, 100, boxes=((30, 20, 50, 45), (55, 40, 70, 60)))
    tf = DT.RandomCropKeepBoxes(min_scale=0.3)
    sizes = set()
    for _ in range(50):
        cropped, out = tf(image, target)
        sizes.add(tuple(cropped.shape[-2:]))
        assert out["labels"].tolist() == [1, 2]
        assert torch.equal(out["boxes"][:, 2:] - out["boxes"][:, :2], target["boxes"][:, 2:] - target["boxes"][:, :2])
        for i in range(2):
            assert _measure(out["masks"][i]) == out["boxes"][i].tolist()
            assert _measure(cropped[0] * out["masks"][i]) == out["boxes"][i].tolist()
    assert len(sizes) > 10  # it does crop, at many sizes


def test_random_iou_crop_never_loses_every_box_and_keeps_masks_on_boxes():
    torch.manual_seed(0)
    image, target = _scene(keypoints=_coco_keypoints(64, 48, n=3, seed=2))
    tf = DT.RandomIoUCrop()
    cropped_count = 0
    for _ in range(200):
        cropped, out = tf(image, target)
        n = len(out["boxes"])
        assert n >= 1 and out["masks"].shape == (n, *cropped.shape[-2:]) and out["keypoints"].shape[0] == n
        cropped_count += tuple(cropped.shape[-2:]) != (48, 64)
        h, w = cropped.shape[-2:]
        assert (out["boxes"][:, 0::2] >= 0).all() and (out["boxes"][:, 0::2] <= w).all()
        assert (out["boxes"][:, 1::2] >= 0).all() and (out["boxes"][:, 1::2] <= h).all()
        for i in range(n):
            assert _measure(out["masks"][i]) == out["boxes"][i].tolist()
            centre = (out["boxes"][i, :2] + out["boxes"][i, 2:]) / 2
            assert 0 < centre[0] < w and 0 < centre[1] < h
    assert cropped_count > 50
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    assert DT.RandomIoUCrop()(image, empty)[0] is image


def test_iou_crop_meets_its_drawn_minimum_iou():
    torch.manual_seed(1)
    image, target = _scene(100, 100, boxes=((10, 10, 60, 60),))
    for option in (0.5, 0.7, 0.9):
        tf = DT.RandomIoUCrop(options=(option,), trials=200, rounds=1)
        for _ in range(20):
            cropped, out = tf(image, target)
            h, w = cropped.shape[-2:]
            if (h, w) == (100, 100):
                continue
            # the window is (w * h) and contains the kept box's clipped part; IoU >= option of the original
            # box with the window means inter / union >= option, so the window area <= box area / option
            # when the box lies inside it.
            box_area = 50 * 50
            inter = float(out["masks"][0].sum())
            union = box_area + h * w - inter
            assert inter / union >= option - 1e-6


# ------------------------------------------------------------------------------------- photometric
def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("ours, theirs", [(DT.adjust_brightness, ImageEnhance.Brightness),
                                          (DT.adjust_contrast, ImageEnhance.Contrast),
                                          (DT.adjust_saturation, ImageEnhance.Color)])
@pytest.mark.parametrize("factor", [0.5, 0.875, 1.3])
def test_colour_steps_match_pillow(ours, theirs, factor):
    gen = torch.Generator().manual_seed(0)
    tint = torch.tensor([1.0, 0.6, 0.3])[:, None, None]  # channels of different means
    image = (torch.rand(3, 20, 24, generator=gen) * tint * 255).round() / 255
    expected = _from_pil(theirs(_pil(image)).enhance(factor))
    # Pillow rounds to 8 bits (and its grey level to an integer); 2/255 covers the roundings
    assert (ours(image, factor) - expected).abs().max() <= 2.01 / 255


def test_hsv_round_trip_and_hue_shift_match_colorsys():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 10, 12, generator=gen)
    image[:, 0, :3] = 0.5  # greys: no hue
    hsv = DT.rgb_to_hsv(image)
    shifted = DT.adjust_hue(image, 0.2)
    for y in range(10):
        for x in range(12):
            r, g, b = image[:, y, x].tolist()
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            assert hsv[:, y, x].tolist() == pytest.approx([h, s, v], abs=1e-6)
            expected = colorsys.hsv_to_rgb((h + 0.2) % 1.0, s, v)
            assert shifted[:, y, x].tolist() == pytest.approx(list(expected), abs=1e-5)
    assert torch.allclose(DT.hsv_to_rgb(hsv), image, atol=1e-6)


def test_photometric_jitter_leaves_the_target_alone():
    torch.manual_seed(0)
    image, target = _scene()
    image = image + 0.3 * torch.rand_like(image)
    out_image, out = DT.PhotometricJitter(p=1.0)(image.clamp(0, 1), target)
    assert out is target and not torch.equal(out_image, image) and out_image.shape == image.shape
    assert 0 <= out_image.min() and out_image.max() <= 1


# ------------------------------------------------------------------------------------- pipelines
def test_default_ssd_pipeline_keeps_objects_on_their_pixels():
    torch.manual_seed(0)
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle"]
    info = DetectionInfo(name="scene", num_classes=4, in_chans=3, image_size=(48, 64),
                         class_names=["background", "a", "b", "c"], mean=(0.5,) * 3, std=(0.25,) * 3,
                         keypoint_names=tuple(names))
    assert list(info.keypoint_flip) == COCO_FLIP
    image, target = _scene(keypoints=_coco_keypoints(64, 48, n=3))
    target["iscrowd"] = torch.tensor([0, 1, 0])
    tf = DT.default_transforms(info, train=True, augment="ssd", size=(96, 96), normalize=True)
    for _ in range(10):
        out_image, out = tf(image, target)
        assert out_image.shape == (3, 96, 96) and len(out["boxes"]) >= 1
        assert (out["iscrowd"] == 0).all()  # crowd regions dropped for training
        for i in range(len(out["boxes"])):
            assert np.allclose(_measure(out["masks"][i]), out["boxes"][i].tolist(), atol=1.0)
    plain = DT.default_transforms(info, train=False, min_size=32, max_size=100)
    out_image, out = plain(image, target)
    assert out_image.shape == (3, 32, 42) and len(out["boxes"]) == 3


def test_collate_and_pad_to_batch():
    images = [torch.rand(3, 40, 50), torch.rand(3, 65, 33), torch.rand(3, 64, 64)]
    batch, sizes = DT.pad_to_batch(images)
    assert batch.shape == (3, 3, 96, 64) and sizes == [(40, 50), (65, 33), (64, 64)]
    for image, slot in zip(images, batch):
        h, w = image.shape[-2:]
        assert torch.equal(slot[:, :h, :w], image)
        assert slot[:, h:].abs().sum() == 0 and slot[:, :, w:].abs().sum() == 0
    assert DT.pad_to_batch(images, size_divisible=1)[0].shape == (3, 3, 65, 64)

    data = [_scene(20 + i, 30, boxes=((1, 2, 5, 9),)) for i in range(3)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=DT.collate_detection)
    first_images, first_targets = next(iter(loader))
    assert [tuple(i.shape) for i in first_images] == [(3, 20, 30), (3, 21, 30)]
    assert isinstance(first_targets, list) and first_targets[0]["boxes"].shape == (1, 4)


def test_bad_input_is_refused_with_what_was_expected():
    image, target = _scene()
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        DT.hflip(image, {**target, "boxes": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="one row per box"):
        DT.resize(image, {**target, "labels": torch.ones(2, dtype=torch.int64)}, (10, 10))
    with pytest.raises(ValueError, match="image's size"):
        DT.crop(image, {**target, "masks": target["masks"][:, :10]}, 0, 0, 5, 5)
    with pytest.raises(ValueError, match="inside the 48x64 image"):
        DT.crop(image, target, 40, 0, 20, 10)
    with pytest.raises(ValueError, match="at least one image"):
        DT.pad_to_batch([])
    with pytest.raises(ValueError, match="empty batch"):
        DT.collate_detection([])
    with pytest.raises(ValueError, match="hue shift"):
        DT.adjust_hue(image, 0.7)
    with pytest.raises(ValueError, match="augment"):
        DT.default_transforms(None, train=True, augment="heavy")
    assert math.isfinite(float(DT.adjust_contrast(image, 0.5).sum()))
